"""training/evaluate.py: matching, COCO-style AP, precision/recall at the threshold, CLI JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.evaluate import Accumulator, average_precision, match_image, plot_pr
from training.export import export_untrained_onnx

REPO = Path(__file__).resolve().parents[1]


def test_perfect_predictions_ap_is_one() -> None:
    acc = Accumulator()
    gts = np.array([[0, 10, 10, 50, 20], [2, 100, 100, 200, 180]], np.float32)
    preds = np.array([[10, 10, 50, 20, 0.9, 0], [100, 100, 200, 180, 0.8, 2]], np.float32)
    acc.add(preds, gts)
    m = acc.compute(conf=0.6)
    assert set(m) == {"license_plate", "shipping_label"}  # only classes with ground truth
    for v in m.values():
        assert v["ap50"] == pytest.approx(1.0) and v["ap50_95"] == pytest.approx(1.0)
        assert v["precision"] == 1.0 and v["recall"] == 1.0


def test_false_positive_ranked_first_and_threshold() -> None:
    # 2 plates; detections: FP (0.95), TP (0.9), TP (0.5)
    gts = np.array([[0, 0, 0, 10, 10], [0, 50, 50, 70, 60]], np.float32)
    preds = np.array(
        [[200, 200, 220, 210, 0.95, 0], [0, 0, 10, 10, 0.9, 0], [50, 50, 70, 60, 0.5, 0]], np.float32
    )
    acc = Accumulator()
    acc.add(preds, gts)
    m = acc.compute(conf=0.6)["license_plate"]
    # PR points: (0, 0), (0.5, 0.5), (1, 2/3); envelope: 2/3 up to recall 1 -> AP = 2/3
    assert m["ap50"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert acc.compute(conf=0.6, recall_only=True)["license_plate"]["recall"] == pytest.approx(0.5)


def test_match_respects_class_and_iou_thresholds() -> None:
    gts = np.array([[0, 0, 0, 100, 100]], np.float32)
    preds = np.array([[0, 0, 100, 80, 0.9, 0], [0, 0, 100, 100, 0.8, 1]], np.float32)
    tp = match_image(preds, gts)
    # IoU 0.8: TP at thresholds 0.5..0.8, not above; other class never matches
    assert tp[0].tolist() == [True] * 7 + [False] * 3
    assert not tp[1].any()
    ap, _, _ = average_precision(np.zeros(0, bool), np.zeros(0), 0)
    assert np.isnan(ap)


def test_cli_json_last_line_and_plot(tmp_path: Path) -> None:
    onnx = export_untrained_onnx(tmp_path / "m.onnx", 160)
    data = tmp_path / "set"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for i in range(3):
        cv2.imwrite(str(data / "images" / f"{i}.jpg"), np.full((120, 200, 3), 90 + 40 * i, np.uint8))
        (data / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.1\n2 0.2 0.3 0.2 0.3\n")
    plot = tmp_path / "pr.png"
    cmd = [
        sys.executable,
        str(REPO / "training" / "evaluate.py"),
        "--weights",
        str(onnx),
        "--data",
        str(data),
        "--imgsz",
        "160",
        "--json",
        "--plot",
        str(plot),
        "--threads",
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(res["per_class"]) == {"license_plate", "shipping_label"}
    assert set(res["per_class"]["license_plate"]) == {"ap50", "ap50_95", "precision", "recall"}
    assert res["ms_per_image"] > 0
    img = cv2.imread(str(plot))
    assert img is not None and img.shape == (480, 640, 3)
    out = subprocess.run(
        cmd[:-4] + ["--recall-only"], capture_output=True, text=True, timeout=120, check=True
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(res["per_class"]["license_plate"]) == {"recall"}


def test_plot_pr_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    plot_pr({"license_plate": (np.array([0.1, 0.5, 0.9]), np.array([1.0, 0.8, 0.4]))}, out, "t")
    assert cv2.imread(str(out)) is not None
