"""Tests of training/prepare_data.py: the UC3M split rule, the committed eval list, clip rendering and
the background pool. They read ../shared and skip only where it is absent."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from training import prepare_data as pd

if not (pd.SHARED / "data" / "uc3m_lp_train").is_dir():
    pytest.skip(f"shared data not found at {pd.SHARED}", allow_module_level=True)


def _stems(d: Path, sub: str = "images") -> set[str]:
    return {p.stem for p in (d / sub).iterdir()}


def test_uc3m_split_is_disjoint_and_follows_the_crc_rule(tmp_path: Path) -> None:
    out = pd.prepare(tmp_path, ["uc3m_train", "uc3m_eval"], splits_dir=tmp_path / "splits")
    tr, ev = _stems(out["uc3m_train"]), _stems(out["uc3m_eval"])
    assert tr and ev and not tr & ev
    src = {p.stem for p in (pd.SHARED / "data" / "uc3m_lp_train" / "images").iterdir()}
    assert tr | ev == src
    assert all(zlib.crc32(s.encode()) % 100 < 15 for s in ev)
    assert all(zlib.crc32(s.encode()) % 100 >= 15 for s in tr)
    assert _stems(out["uc3m_eval"], "labels") == ev
    # symlinks, not copies
    assert all(p.is_symlink() for p in (out["uc3m_eval"] / "images").iterdir())
    # the committed list matches
    committed = (pd.SPLITS_DIR / "uc3m_eval.txt").read_text().split()
    assert set(committed) == ev
    assert (tmp_path / "splits" / "uc3m_eval.txt").read_text().split() == committed
    # idempotent
    again = pd.prepare(tmp_path, ["uc3m_eval"], splits_dir=tmp_path / "splits")
    assert _stems(again["uc3m_eval"]) == ev


def test_eval_only_sets(tmp_path: Path) -> None:
    out = pd.prepare(tmp_path, ["openalpr_eval", "ups_eval", "id_clip_eval"], splits_dir=None)
    assert len(list((out["openalpr_eval"] / "images").iterdir())) == 444
    assert len(list((out["ups_eval"] / "images").iterdir())) == 3
    labels = sorted((out["id_clip_eval"] / "labels").glob("*.txt"))
    assert len(labels) == 30
    n = 0
    for lab in labels:
        for line in lab.read_text().splitlines():
            c, cx, cy, w, h = line.split()
            assert c == "1"
            assert 0 <= float(cx) - float(w) / 2 and float(cx) + float(w) / 2 <= 1.000001
            n += 1
    assert n == 36  # 1 card per frame, 2 in the last 30 frames (every 5th frame)


def test_parcel_clip_frames_match_their_ground_truth(tmp_path: Path) -> None:
    import json

    out = pd.prepare(tmp_path, ["parcel_clip_eval"], splits_dir=None)["parcel_clip_eval"]
    gt = json.loads((pd.SHARED / "media" / "clips" / "parcel_labels" / "gt.json").read_text())
    labels = sorted(out.glob("labels/*.txt"))
    assert len(labels) == 30 and len(list(out.glob("images/*.jpg"))) == 30
    lab = (out / "labels" / "parcel_labels_0010.txt").read_text().split()
    c, x1, y1, x2, y2 = gt["frames"][10][0]
    assert lab[0] == "2"
    assert float(lab[1]) == pytest.approx((x1 + x2) / 2 / 640, abs=1e-4)
    assert float(lab[3]) == pytest.approx((x2 - x1) / 640, abs=1e-4)


def test_background_pool_excludes_images_with_targets(tmp_path: Path) -> None:
    out = pd.prepare(tmp_path, ["backgrounds"], splits_dir=None)
    used, excluded = pd.background_files()
    names = {p.name for p in out["backgrounds"].glob("*.jpg")}
    assert len(names) == len(used) and excluded
    for rel in excluded:
        assert rel.replace("/", "__") not in names
    assert "used\t" in (out["backgrounds"] / "SOURCES.txt").read_text()


def test_road_backgrounds_come_from_the_train_split_only(tmp_path: Path) -> None:
    n = pd.prepare_road_backgrounds(tmp_path / "road", limit=4)
    files = sorted((tmp_path / "road").glob("*.jpg"))
    assert n == 4 and len(files) == 4
    tr, ev = pd.uc3m_split()
    for f in files:
        stem = f.stem.removeprefix("uc3m_")
        assert stem in tr and stem not in ev


def test_yolo_lines_normalise_and_clip_to_the_image() -> None:
    from training.yolo_format import yolo_lines

    assert yolo_lines([(2.0, 10, 20, 50, 60)], 100, 200) == ["2 0.300000 0.200000 0.400000 0.200000"]
    # a box past the border keeps only its part inside the image
    assert yolo_lines([(0, -10, 150, 30, 250)], 100, 200) == ["0 0.150000 0.875000 0.300000 0.250000"]
    assert yolo_lines([], 100, 200) == []
