"""The frames before a scene cut keep what was being carried (issue #11 items 4 and 5: the ID clip's
only leaked box through ``relay.offline`` was the last frame before a cut).

A scripted clip through the offline driver (the live server's stages): a card is found whole once,
then the detector only finds a line of text inside it for the last frames of the scene, and the
scene cuts. The last frame of a scene gets no lookahead boxes (no later frame of its scene is
detected), so it shows exactly what the tracker kept. A part found inside a track must not end the
track: the whole card stays hidden for ``track_hold_s`` after it was last seen whole (before, the
line replaced the card's track and the rest of the card went out raw until the cut). And a carried
frame of the old scene is not "looked at" by the new scene's first detection (relay/lookahead.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from av import VideoFrame

from relay.lookahead import HeldFrame, LookaheadQueue
from relay.model import ClassId
from relay.pipeline import run_offline
from relay.policy import FrameRef, TrackedResult, Verdict
from relay.settings import Settings
from tests.helpers.media import FakeDetector, bgr_to_frame, block_stds, frame_gray, text_scene

pytestmark = pytest.mark.timeout(60)

S = Settings()
W, H = 640, 480
CARD_A = (160, 120, 460, 330)
CARD_B = (40, 200, 300, 420)
LINE_A = (CARD_A[0] + 4, CARD_A[1] + 2, CARD_A[2] - 4, CARD_A[1] + 28)  # the card's first text line
SCENE_A = text_scene(W, H, CARD_A, seed=1)
SCENE_B = text_scene(W, H, CARD_B, seed=2)
CUT = 5  # frames 0-4 show scene A, 5-8 scene B (15 fps)
PTS = 6000  # 1/15 s in the 90 kHz time base


def dets(*boxes: tuple[tuple[int, int, int, int], float, int]) -> np.ndarray:
    return np.array([[*b, score, cls] for b, score, cls in boxes], np.float32).reshape(-1, 6)


class PartsBeforeTheCut(FakeDetector):
    """Scene A: the whole card at 0.9 on its first frame, then only its first text line (0.9);
    scene B: its card at 0.9. ``only_parts``: the control, which never finds scene A's card whole."""

    def __init__(self, only_parts: bool = False) -> None:
        super().__init__()
        self.only_parts = only_parts

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        i = self.calls
        super().detect(img_bgr)
        if i >= CUT:
            return dets((CARD_B, 0.9, ClassId.ID_CARD))
        if i == 0 and not self.only_parts:
            return dets((CARD_A, 0.9, ClassId.ID_CARD))
        return dets((LINE_A, 0.9, ClassId.ID_CARD))


def clip() -> list[tuple[VideoFrame, bool]]:
    return [(bgr_to_frame(SCENE_A if i < CUT else SCENE_B, i * PTS), i == CUT) for i in range(CUT + 4)]


def raw_cards(settings: Settings, detector: FakeDetector) -> list[int]:
    """Frames on which the card of the scene they show keeps readable detail."""
    out = list(run_offline(clip(), detector, settings))
    assert [o.index for o in out] == list(range(CUT + 4))
    card = [CARD_A if o.index < CUT else CARD_B for o in out]
    return [o.index for o, c in zip(out, card, strict=True) if block_stds(frame_gray(o.frame), c).max() > 2]


@pytest.mark.parametrize("lookahead_s", [S.lookahead_s, 0.0])
def test_a_part_found_inside_a_tracked_card_keeps_the_whole_card_hidden_up_to_the_cut(
    lookahead_s: float,
) -> None:
    settings = dataclasses.replace(S, lookahead_s=lookahead_s)
    assert CUT / 15 < S.track_hold_s  # the card was last seen whole less than track_hold_s ago
    assert raw_cards(settings, PartsBeforeTheCut()) == []
    # control: the same clip when the card is never found whole shows it raw (the check sees a leak)
    assert raw_cards(settings, PartsBeforeTheCut(only_parts=True)) == list(range(CUT))


def test_the_new_scene_s_first_detection_confirms_no_carried_frame_of_the_old_scene() -> None:
    """Live, the detector fell behind: frame 4 (scene 0) carries frame 2's boxes; the next result
    is of frame 6, the first of scene 1. It says nothing about what frame 4 shows, so frame 4 goes
    out whole ("never looked for"), as if no result had come. A result of its own scene confirms."""
    boxes = dets((CARD_A, 0.9, ClassId.ID_CARD))

    def held(seq: int) -> HeldFrame:
        r = FrameRef(seq, seq / 15, (W, H), scene=0)
        return HeldFrame(np.zeros((H * 3 // 2, W), np.uint8), r, 16, Verdict.CARRIED, boxes.copy(), 9.0)

    q = LookaheadQueue(S)
    q.hold(held(4))
    _, ready = q.on_result(TrackedResult(boxes, FrameRef(6, 6 / 15, (W, H), scene=1, cut=True)))
    out, _, unconfirmed = q.pop_ready(now=6 / 15)
    assert ready and [h.ref.seq for h in out] == [4] and out[0].boxes is None and unconfirmed == 1
    q.hold(held(5))
    q.on_result(TrackedResult(boxes, FrameRef(6, 6 / 15, (W, H), scene=0)))
    out, _, unconfirmed = q.pop_ready(now=6 / 15)
    assert [h.ref.seq for h in out] == [5] and out[0].boxes is not None and unconfirmed == 0
