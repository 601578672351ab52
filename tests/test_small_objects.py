"""training/small_objects.py: 1280x720 frames of real UC3M photos, recall by plate width."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from relay.settings import DEFAULT_WEIGHTS
from training.small_objects import BUCKETS, build_grid_set, evaluate_sizes, main, recall_by_width

SHARED = Path(__file__).resolve().parents[2] / "shared"


def make_folder(root: Path, n: int, size: tuple[int, int] = (320, 240)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), (0, 0), 3)
        cv2.imwrite(str(root / "images" / f"im{i:02d}.png"), img)
        # one box: x 100-140 (40 px at 320 wide), y 100-120
        (root / "labels" / f"im{i:02d}.txt").write_text(
            f"0 {120 / size[0]:.6f} {110 / size[1]:.6f} {40 / size[0]:.6f} {20 / size[1]:.6f}\n"
        )
    return root


def test_grid_frames_keep_pixels_and_move_labels(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", 25)
    out = tmp_path / "grid"
    assert build_grid_set(src, out) == 2  # 25 images -> two full frames of 12
    assert build_grid_set(src, out) == 2  # reused
    frame = cv2.imread(str(out / "images" / "grid_000.jpg"))
    assert frame.shape == (720, 1280, 3)
    cell = cv2.imread(str(src / "images" / "im05.png"))  # 6th image: row 1, column 1
    diff = np.abs(frame[240:480, 320:640].astype(int) - cell.astype(int)).mean()
    assert diff < 8, diff  # the same pixels, through JPEG at quality 97
    rows = [
        list(map(float, line.split())) for line in (out / "labels" / "grid_000.txt").read_text().splitlines()
    ]
    assert len(rows) == 12
    c, cx, cy, w, h = rows[5]
    assert (c, round(cx * 1280), round(cy * 720), round(w * 1280), round(h * 720)) == (0, 440, 350, 40, 20)


def test_a_larger_image_is_scaled_into_its_cell(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", 12, size=(640, 480))
    build_grid_set(src, tmp_path / "grid")
    c, cx, cy, w, h = map(
        float, (tmp_path / "grid" / "labels" / "grid_000.txt").read_text().split("\n")[0].split()
    )
    assert (round(cx * 1280), round(cy * 720), round(w * 1280), round(h * 720)) == (60, 55, 20, 10)


def test_recall_by_width_buckets_and_one_to_one_matching() -> None:
    gts = [np.array([[0, 0, 0, 10, 5], [0, 100, 100, 150, 120], [1, 200, 200, 300, 260]], np.float32)]
    dets = [
        np.array(
            [
                [0, 0, 10, 5, 0.9, 0],  # the 10 px plate
                [1, 1, 10, 5, 0.8, 0],  # a duplicate: matches nothing more
                [200, 200, 300, 260, 0.9, 0],  # right place, wrong class
            ],
            np.float32,
        )
    ]
    rows = recall_by_width(dets, gts)
    by = {(r["min_px"], r["max_px"]): r for r in rows}
    assert by[(0, 15)] == {"min_px": 0, "max_px": 15, "n_gt": 1, "found": 1, "recall": 1.0}
    assert by[(45, 70)]["n_gt"] == 1 and by[(45, 70)]["found"] == 0
    assert by[(70, BUCKETS[-1])]["n_gt"] == 1 and by[(70, BUCKETS[-1])]["found"] == 0
    assert sum(r["n_gt"] for r in rows) == 3


def test_shipped_model_on_real_uc3m_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real path: UC3M evaluation photos from ../shared, the shipped ONNX, the CLI's JSON."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    from training.prepare_data import prepare

    src = prepare(tmp_path / "real", ["uc3m_eval"], shared=SHARED, splits_dir=None)["uc3m_eval"]
    (tmp_path / "few" / "images").mkdir(parents=True)
    (tmp_path / "few" / "labels").mkdir()
    for img in sorted((src / "images").iterdir())[:24]:
        (tmp_path / "few" / "images" / img.name).symlink_to(img.resolve())
        lab = src / "labels" / f"{img.stem}.txt"
        (tmp_path / "few" / "labels" / lab.name).symlink_to(lab.resolve())
    assert (
        main(
            [
                "--weights",
                str(DEFAULT_WEIGHTS),
                "--src",
                str(tmp_path / "few"),
                "--out",
                str(tmp_path / "grid"),
                "--json",
            ]
        )
        == 0
    )
    import json

    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["frames"] == 2
    res = out["by_input_size"]["416"]
    assert res["ms_per_frame"] > 0
    n_gt = sum(
        len((tmp_path / "grid" / "labels" / f"grid_00{i}.txt").read_text().splitlines()) for i in (0, 1)
    )
    assert sum(b["n_gt"] for b in res["buckets"]) == n_gt > 12
    # same numbers through the library call
    again = evaluate_sizes(DEFAULT_WEIGHTS, tmp_path / "grid", [416], 0.6)
    assert [b["found"] for b in again[416]["buckets"]] == [b["found"] for b in res["buckets"]]
