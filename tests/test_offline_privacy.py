"""``relay.offline`` (the served detectors: YOLO model + text net at its served size, text policy
"numbers") on real shared photos judged by the shared pixel judge: plates hidden, and little real
background text destroyed. Floors just under the figures measured here (weights/MODEL_CARD.md,
"Session 8: reading the lines")."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import cv2
import pytest

from relay import offline
from relay.settings import DEFAULT_WEIGHTS
from tests.helpers.media import SHARED_DATA

SHARED = SHARED_DATA.parent
BACKGROUNDS = SHARED / "media" / "backgrounds"
ALPR = SHARED_DATA / "openalpr_recall"

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason=f"no trained weights at {DEFAULT_WEIGHTS}"),
    pytest.mark.skipif(not BACKGROUNDS.is_dir(), reason="shared data kit not present"),
]


def _judge() -> ModuleType:
    spec = importlib.util.spec_from_file_location("coverage_judge", SHARED / "tools" / "coverage_judge.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _backgrounds() -> list[Path]:
    """Every 12th COCO photo of the pool without the classes (no choice by result): street scenes,
    signs, buses and shop fronts among them."""
    skip = {
        ln.split("\t")[0]
        for ln in (BACKGROUNDS / "CONTAINS_TARGETS.txt").read_text().splitlines()
        if ln and not ln.startswith("#")
    }
    pool = [p for p in sorted((BACKGROUNDS / "coco128").glob("*.jpg")) if f"coco128/{p.name}" not in skip]
    return pool[::12]


def test_offline_hides_plates_and_spares_background_text(tmp_path: Path) -> None:
    judge = _judge()
    plates = (
        sorted(ALPR.joinpath("images").glob("eu_*.jpg"))[:8]
        + sorted(ALPR.joinpath("images").glob("br_*.jpg"))[:8]
    )
    backgrounds = _backgrounds()
    assert offline.main([*map(str, plates + backgrounds), "--out", str(tmp_path)]) == 0
    covered = judged = 0
    for p in plates:
        ref, got = cv2.imread(str(p)), cv2.imread(str(tmp_path / f"{p.stem}.png"))
        h, w = ref.shape[:2]
        for _, *box in judge.read_labels(ALPR / "labels" / f"{p.stem}.txt", w, h):
            v = judge.judge_box(judge.gray(ref), judge.gray(got), tuple(box))
            judged += v is not None
            covered += bool(v)
    textured = destroyed = 0
    for p in backgrounds:
        ref, got = cv2.imread(str(p)), cv2.imread(str(tmp_path / f"{p.stem}.png"))
        t, d = judge.collateral(judge.gray(ref), judge.gray(got), [])
        textured, destroyed = textured + t, destroyed + d
    # measured: plates 16/16; backgrounds 2.40 % destroyed (session 8: text policy "numbers", barcodes
    # need print around them, net at 576 px, its regions without the detector's margin; 6.86 % under
    # policy "all" at 512). The 2 % target is not met:
    # weights/MODEL_CARD.md, "Session 8: reading the lines".
    assert judged == 16 and covered >= 15, f"{covered}/{judged} plates hidden"
    assert destroyed / textured <= 0.026, f"{destroyed / textured:.2%} of the backgrounds' detail destroyed"
