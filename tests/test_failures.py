"""training/failures.py: the picture of a detector's misses and false positives."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from relay.settings import DEFAULT_WEIGHTS
from training.evaluate import judge
from training.failures import draw, failure_sheet

SHARED = Path(__file__).resolve().parents[2] / "shared"


def test_judge_is_one_to_one_and_respects_threshold_and_class() -> None:
    gts = np.array([[0, 10, 10, 50, 30], [2, 100, 100, 200, 200]], np.float32)
    dets = np.array(
        [
            [10, 10, 50, 30, 0.9, 0],  # finds the plate
            [11, 10, 50, 30, 0.8, 0],  # duplicate: a false positive
            [100, 100, 200, 200, 0.5, 2],  # the label, under the threshold
            [300, 300, 320, 310, 0.7, 1],  # nothing there
        ],
        np.float32,
    )
    found, matched = judge(dets, gts, 0.6)
    assert found.tolist() == [True, False]
    assert matched.tolist() == [True, False, False]  # the three detections at/above 0.6
    found, _ = judge(dets, gts, 0.4)
    assert found.tolist() == [True, True]
    img = np.zeros((240, 320, 3), np.uint8)
    pic = draw(img, dets, gts, 0.6, 0.25)
    assert pic.shape == img.shape and pic.any() and not img.any()


def test_sheet_of_the_shipped_model_on_real_labels(tmp_path: Path) -> None:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    from training.prepare_data import prepare

    ups = prepare(tmp_path / "real", ["ups_eval"], shared=SHARED, splits_dir=None)["ups_eval"]
    out = tmp_path / "sheet.jpg"
    # at a threshold of 1.0 nothing is found: every labelled image is a failure
    records = failure_sheet(DEFAULT_WEIGHTS, [ups], out, n=2, conf=1.0)
    assert len(records) == 2 and all(r["missed"] >= 1 and r["set"] == "ups_eval" for r in records)
    sheet = cv2.imread(str(out))
    assert sheet is not None and sheet.shape == (300, 800, 3)
