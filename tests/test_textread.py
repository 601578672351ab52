"""relay/textread.py: the shipped PP-OCRv6-tiny rec model reads digits; decoding and cropping are pure."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from relay.detector import InvalidWeightsError, WeightsNotFoundError
from relay.textread import UNREAD, TextReader, count_digits, ctc_text, line_crop, rec_input


@pytest.fixture(scope="module")
def reader() -> TextReader:
    return TextReader(threads=1)


def _printed(text: str, height: int = 40) -> np.ndarray:
    """Black print on white, ``height`` px high letters, as a sign or a plate shows it."""
    scale = height / 22
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    img = np.full((h + base + 20, w + 20, 3), 255, np.uint8)
    cv2.putText(img, text, (10, h + 10), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
    return img


def test_ctc_decoding_drops_blanks_and_repeats() -> None:
    chars = ["A", "1", "B"]
    logits = np.eye(4)[[0, 1, 1, 0, 1, 2, 2, 0, 3]]  # blank A A blank A 1 1 blank B
    assert ctc_text(logits, chars) == "AA1B"


def test_digits_of_any_script_count() -> None:
    assert count_digits("AB 1234 CD") == 4
    assert count_digits("STOP") == 0
    assert count_digits("٣٤٥ ب") == 3  # Arabic-Indic digits, as on Gulf plates


def test_crops_turn_upright_lines_and_inputs_are_48_high() -> None:
    img = np.zeros((200, 200, 3), np.uint8)
    upright = line_crop(img, np.array([50, 10, 70, 190, 0.9, 20], np.float32))
    assert upright.shape[1] > upright.shape[0]
    x = rec_input(np.zeros((20, 100, 3), np.uint8))
    assert x.shape == (1, 3, 48, 240) and x.dtype == np.float32 and x.min() >= -1


def test_the_shipped_model_reads_digits_on_a_plate_and_none_on_a_word(reader: TextReader) -> None:
    assert count_digits(reader.read(_printed("B 4721 KX"))) >= 3
    assert count_digits(reader.read(_printed("EXIT"))) == 0


def test_digits_reads_only_the_lines_asked_for_tallest_first(reader: TextReader) -> None:
    img = np.full((200, 600, 3), 255, np.uint8)
    a, b = _printed("90210"), _printed("PARK")
    img[20 : 20 + a.shape[0], 20 : 20 + a.shape[1]] = a
    img[120 : 120 + b.shape[0], 20 : 20 + b.shape[1]] = b
    lines = np.array(
        [
            [20, 20, 20 + a.shape[1], 20 + a.shape[0], 0.9, a.shape[0]],
            [20, 120, 20 + b.shape[1], 120 + b.shape[0], 0.9, b.shape[0]],
            [400, 20, 500, 40, 0.9, 20],
        ],
        np.float32,
    )
    got = reader.digits(img, lines, np.array([True, True, False]), max_lines=5)
    assert got[0] >= 3 and got[1] == 0 and got[2] == UNREAD
    capped = reader.digits(img, lines, np.array([True, True, True]), max_lines=1)
    assert (capped == UNREAD).sum() == 2  # the rest count as unread: hidden by the policy


def test_a_missing_or_broken_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError):
        TextReader(model=tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InvalidWeightsError):
        TextReader(model=bad)
