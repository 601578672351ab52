"""The stages alone: policy (pure), lookahead queue, tracking stage, detector set, frame source, metrics,
the offline driver, and the runner's scene-cut hook."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
from av import VideoFrame
from prometheus_client import generate_latest

from relay.detection import DetectionFailed, DetectorSet, DetectorSpec, validate_detections
from relay.frames import NewestFrameSource
from relay.lookahead import HeldFrame, LookaheadQueue
from relay.metrics import PipelineMetrics, RelayMetrics
from relay.model import ClassId
from relay.pipeline import Pipeline, run_offline
from relay.policy import FrameRef, TrackedResult, Verdict, add_boxes, decide, lookahead_boxes
from relay.settings import Settings
from relay.tracker import TrackStage
from tests.helpers.media import (
    FakeDetector,
    ImageTrack,
    ListTrack,
    RaisingDetector,
    SinkTrack,
    bgr_to_frame,
    block_stds,
    frame_gray,
    text_scene,
)

pytestmark = pytest.mark.timeout(60)

S = Settings()
SIZE = (640, 480)
BOX = (192, 144, 400, 304)
BOXES = np.array([[*BOX, 0.9, ClassId.ID_CARD]], np.float32)


def ref(seq: int, t: float | None = None, size: tuple[int, int] = SIZE, scene: int = 0) -> FrameRef:
    return FrameRef(seq, seq / 30 if t is None else t, size, scene)


def result(seq: int, boxes: np.ndarray = BOXES, **kw: object) -> TrackedResult:
    return TrackedResult(boxes, ref(seq, **kw))  # type: ignore[arg-type]


# --- policy ----------------------------------------------------------------------------------------


def test_policy_exact_carried_full_raw() -> None:
    d = decide(result(5), ref(5), S)
    assert d.verdict is Verdict.EXACT and d.boxes is not None
    w = BOX[2] - BOX[0]
    assert d.boxes[0, 0] == pytest.approx(BOX[0] - S.box_margin * w)
    c = decide(result(5), ref(8), S)
    assert c.verdict is Verdict.CARRIED and c.boxes is not None
    assert c.boxes[0, 0] == pytest.approx(BOX[0] - S.carry_margin * w)
    assert decide(None, ref(1), S).verdict is Verdict.FULL and decide(None, ref(1), S).boxes is None
    too_old = ref(100, t=5 / 30 + min(S.detector_timeout_s, S.carry_max_age_s) + 0.01)
    assert decide(result(5), too_old, S).verdict is Verdict.FULL
    assert decide(result(5), ref(6, size=(1280, 720)), S).verdict is Verdict.FULL  # size changed
    assert decide(result(5), ref(6, t=0.0), S).verdict is Verdict.FULL  # result from the future
    raw = decide(None, ref(1), S, mosaic=False)
    assert raw.verdict is Verdict.RAW and raw.boxes is not None and not len(raw.boxes)


def test_the_nets_regions_on_their_own_frame_get_no_margin() -> None:
    """Text and barcode regions come grown by their own geometry (relay/regions.py): on their own
    frame they are hidden as found; carried or added by lookahead, by ``carry_margin`` (motion)."""
    both = np.array(
        [[*BOX, 0.9, ClassId.ID_CARD], [*BOX, 0.8, ClassId.TEXT], [*BOX, 1.0, ClassId.BARCODE]], np.float32
    )
    w = BOX[2] - BOX[0]
    exact = decide(result(5, both), ref(5), S).boxes
    assert exact is not None
    assert exact[:, 0].tolist() == pytest.approx([BOX[0] - S.box_margin * w, BOX[0], BOX[0]])
    carried = decide(result(5, both), ref(8), S).boxes
    assert carried is not None
    assert carried[:, 0].tolist() == pytest.approx([BOX[0] - S.carry_margin * w] * 3)
    late = lookahead_boxes(result(9, both), ref(8), S)
    assert late[:, 0].tolist() == pytest.approx([BOX[0] - S.carry_margin * w] * 3)


def test_the_nets_regions_held_from_another_frame_keep_the_carry_margin() -> None:
    """Live the net runs on its own thread, so its regions reach a YOLO step's result as tracks found
    on another frame: on the step's own frame they get ``carry_margin`` (the print may have moved;
    with none, a card's back leaked live after a cut), the YOLO box ``box_margin``."""
    text = np.array([[480, 40, 560, 80, 0.9, ClassId.TEXT]], np.float32)
    st = TrackStage(S.conf_threshold, S.detector_floor, S.track_hold_s)
    st.accept(BOXES, ref(1))
    st.add(text, ref(1))
    r, _, _ = st.accept(BOXES, ref(3))
    assert r is not None and r.held == 1
    d = decide(r, ref(3), S)
    assert d.verdict is Verdict.EXACT and d.boxes is not None
    by_class = {int(b[5]): b for b in d.boxes}
    assert by_class[ClassId.ID_CARD][0] == pytest.approx(BOX[0] - S.box_margin * (BOX[2] - BOX[0]))
    assert by_class[ClassId.TEXT][0] == pytest.approx(480 - S.carry_margin * 80)
    found_here = decide(TrackedResult(text, ref(3)), ref(3), S).boxes  # found by the step itself
    assert found_here is not None and found_here[0, 0] == 480


def test_policy_scene_cut_is_like_start_up() -> None:
    """A result of the previous scene is not used on a frame of the new one, however fresh; the new
    scene's first result decides it; lookahead never adds across the cut and never un-hides."""
    before = result(5)
    assert decide(before, ref(6, scene=1), S).verdict is Verdict.FULL
    assert decide(result(7, scene=1), ref(8, scene=1), S).verdict is Verdict.CARRIED
    assert not len(lookahead_boxes(result(7, scene=1), ref(6, scene=0), S))
    assert add_boxes(None, lookahead_boxes(result(7, scene=1), ref(6, scene=1), S)) is None
    # the cut frame itself goes out whole even when its own detection is in
    cut = FrameRef(6, 6 / 30, SIZE, scene=1, cut=True)
    assert decide(result(6, scene=1), cut, S).verdict is Verdict.FULL


def test_tracking_stage_restarts_on_a_scene_cut_and_drops_out_of_order_steps() -> None:
    st = TrackStage(S.conf_threshold, S.detector_floor, S.track_hold_s)
    r, _, _ = st.accept(BOXES, ref(1))
    assert r is not None and len(r.boxes) == 1
    weak = BOXES.copy()
    weak[:, 4] = 0.4
    r, continued, _ = st.accept(weak, ref(2))  # continues the track
    assert r is not None and len(r.boxes) == 1 and continued == 1
    r, continued, _ = st.accept(weak, ref(3, scene=1))  # new scene: no track to continue
    assert r is not None and len(r.boxes) == 0 and continued == 0
    assert st.accept(BOXES, ref(2))[0] is None  # older than the newest result
    st.fail()
    assert st.result is None


# --- lookahead -------------------------------------------------------------------------------------


def held(seq: int, boxes: np.ndarray | None, scene: int = 0) -> HeldFrame:
    r = ref(seq, scene=scene)
    verdict = Verdict.FULL if boxes is None else Verdict.CARRIED
    return HeldFrame(np.zeros((720, 640), np.uint8), r, 16, verdict, boxes, r.t_frame + S.lookahead_s)


def test_lookahead_adds_later_boxes_and_releases_in_order() -> None:
    q = LookaheadQueue(S)
    q.hold(held(1, np.zeros((0, 6), np.float32)))
    q.hold(held(2, None))
    q.hold(held(3, np.zeros((0, 6), np.float32)))
    assert q.pop_ready(now=2 / 30) == ([], 0, 0)
    added, ready = q.on_result(result(3))
    assert ready and added == 2  # frames 1 and 3 gain the box; 2 stays whole
    out, timeouts, _ = q.pop_ready(now=3 / 30)
    assert [h.ref.seq for h in out] == [1, 2] and timeouts == 0
    assert out[0].boxes is not None and len(out[0].boxes) == 1 and out[1].boxes is None
    assert q.next_release() == pytest.approx(3 / 30 + S.lookahead_s)
    out, timeouts, unconfirmed = q.pop_ready(now=1.0)  # deadline passed without a later detection
    # frame 3's own detection came back: it keeps its boxes
    assert [h.ref.seq for h in out] == [3] and timeouts == 1 and unconfirmed == 0
    assert out[0].boxes is not None and len(out[0].boxes) == 1


def test_a_carried_frame_no_detection_looked_at_goes_out_whole() -> None:
    """The detector fell behind: frame 5 carries frame 4's boxes, but no detection of frame 5 or a
    later frame comes back before its deadline (or the queue overflows): it goes out whole. With
    lookahead off the carried boxes go out as they are (the operator's choice)."""
    q = LookaheadQueue(S)
    q.hold(held(5, BOXES.copy()))
    q.on_result(result(4))  # an older frame's result: adds boxes, confirms nothing
    out, timeouts, unconfirmed = q.pop_ready(now=5.0)
    assert [h.ref.seq for h in out] == [5] and timeouts == 1 and unconfirmed == 1 and out[0].boxes is None
    q = LookaheadQueue(S, max_held=1)
    q.hold(held(6, BOXES.copy()))
    q.hold(held(7, BOXES.copy()))
    out, _, unconfirmed = q.pop_ready(now=0.0)  # overflow
    assert [h.ref.seq for h in out] == [6] and unconfirmed == 1 and out[0].boxes is None
    off = dataclasses.replace(S, lookahead_s=0.0)
    q = LookaheadQueue(off)
    q.hold(held(8, BOXES.copy()))
    out, _, unconfirmed = q.pop_ready(now=5.0)
    assert unconfirmed == 0 and out[0].boxes is not None and len(out[0].boxes) == len(BOXES)


def test_lookahead_queue_is_bounded() -> None:
    q = LookaheadQueue(S, max_held=4)
    for i in range(6):
        q.hold(held(i + 1, None))
    out, _, _ = q.pop_ready(now=0.0)
    assert [h.ref.seq for h in out] == [1, 2] and len(q) == 4


# --- detection -------------------------------------------------------------------------------------


class Strided(FakeDetector):
    name = "text"


def test_detector_set_merges_and_runs_each_at_its_stride() -> None:
    yolo = FakeDetector(BOXES)
    text = Strided(np.array([[10, 10, 50, 30, 0.9, ClassId.TEXT]], np.float32))
    dset = DetectorSet([yolo, DetectorSpec("text", text, stride=3)])
    img = np.zeros((48, 64, 3), np.uint8)
    runs = [dset.run(img, step) for step in range(6)]
    assert [r.ran for r in runs] == [("FakeDetector", "text"), ("FakeDetector",), ("FakeDetector",)] * 2
    assert len(runs[0].boxes) == 2 and set(runs[0].boxes[:, 5]) == {ClassId.ID_CARD, ClassId.TEXT}
    assert yolo.calls == 6 and text.calls == 2


def test_any_detector_failing_fails_the_step() -> None:
    dset = DetectorSet([FakeDetector(BOXES), DetectorSpec("bad", RaisingDetector())])
    with pytest.raises(DetectionFailed, match="bad raised"):
        dset.run(np.zeros((48, 64, 3), np.uint8))
    for garbage in (np.array([[1.0, 2.0]]), [[0, 0, 1, 1, 0.9, 0]], np.array([[0, 0, np.nan, 1, 0.9, 0]])):
        with pytest.raises(DetectionFailed):
            validate_detections(garbage)
    assert validate_detections(np.array([[0, 0, 1, 1, 0.9]])).shape == (1, 6)


# --- frame source ----------------------------------------------------------------------------------


async def test_newest_frame_source_keeps_one_frame_and_counts_the_rest() -> None:
    track = ListTrack()
    img = text_scene(64, 48, (8, 8, 40, 30))
    for i in range(10):
        track.put(bgr_to_frame(img, i * 3000))
    track.put(None)
    m = PipelineMetrics()
    woke = asyncio.Event()
    src = NewestFrameSource(track, woke.set, m)
    src.start()
    await asyncio.wait_for(woke.wait(), 5)
    for _ in range(50):
        if src.ended:
            break
        await asyncio.sleep(0.01)
    item = src.take()
    assert src.ended and item is not None and item.seq == 10 and item.frame.pts == 9 * 3000
    assert m.frames_in == 10 and m.dropped_stale == 9 and src.take() is None
    await src.stop()


# --- metrics ---------------------------------------------------------------------------------------


def test_metrics_registry_per_server_and_a_stream_s_labels_go_with_it() -> None:
    a, b = RelayMetrics(), RelayMetrics()  # two servers in one process: no clash
    s = a.stream("abc")
    s.frame_in()
    s.frame_out(
        np.array([[0, 0, 1, 1, 0.9, ClassId.LICENSE_PLATE], [0, 0, 1, 1, 0.9, ClassId.TEXT]], np.float32)
    )
    s.frame_out(None)
    s.detected({"yolo": 0.012})
    s.encoded(0.004, 1200, 1)
    s.set_viewers(3)
    text = generate_latest(a.registry).decode()
    assert 'mosaic_relay_frames_in_total{stream="abc"} 1.0' in text
    assert 'mosaic_relay_objects_pixelated_total{class="text",stream="abc"} 1.0' in text
    assert 'mosaic_relay_frames_failed_closed_total{stream="abc"} 1.0' in text
    assert 'mosaic_relay_detect_seconds_count{detector="yolo"} 1.0' in text
    assert 'mosaic_relay_viewers{stream="abc"} 3.0' in text and "mosaic_relay_keyframes_total" in text
    assert 'stream="abc"' not in generate_latest(b.registry).decode()
    snap = s.snapshot()
    assert snap["objects_hidden"] == {"license_plate": 1, "text": 1} and snap["whole_frame_fallbacks"] == 1
    assert snap["viewers"] == 3 and snap["detect_ms"] == {"yolo": 12.0}
    s.close()
    assert 'stream="abc"' not in generate_latest(a.registry).decode()


# --- offline driver --------------------------------------------------------------------------------


def frames_of(img: np.ndarray, n: int) -> list[VideoFrame]:
    return [bgr_to_frame(img, i * 3000) for i in range(n)]


def detail_in(frame: VideoFrame, box: tuple[int, int, int, int] = BOX) -> float:
    return float(block_stds(frame_gray(frame), box).max())


def test_offline_every_frame_detected_in_order_none_dropped() -> None:
    img = text_scene(*SIZE, BOX)
    det = FakeDetector(BOXES)
    out = list(run_offline(frames_of(img, 12), det, S))
    assert [o.index for o in out] == list(range(12)) and det.calls == 12
    assert {o.verdict for o in out} == {"exact"}
    assert all(detail_in(o.frame) <= 2 for o in out)
    assert all(o.frame.pts == i * 3000 for i, o in enumerate(out))


def test_offline_detector_failure_fails_closed() -> None:
    img = text_scene(*SIZE, BOX)
    out = list(run_offline(frames_of(img, 4), RaisingDetector(), S))
    assert [o.verdict for o in out] == ["full"] * 4 and all(o.boxes is None for o in out)
    full = block_stds(frame_gray(out[0].frame), (0, 0, *SIZE))
    assert full.max() <= 1


def test_offline_lookahead_takes_the_next_frame_s_boxes() -> None:
    """Found only from frame 3 on: with lookahead, frame 2 is hidden too (it waited for frame 3's
    detection), without it frame 2 is raw. Same rule as live."""
    img = text_scene(*SIZE, BOX)

    class FromThird(FakeDetector):
        def detect(self, img_bgr: np.ndarray) -> np.ndarray:
            super().detect(img_bgr)
            return BOXES.copy() if self.calls >= 3 else np.zeros((0, 6), np.float32)

    on = list(run_offline(frames_of(img, 5), FromThird(), S))
    off = list(run_offline(frames_of(img, 5), FromThird(), dataclasses.replace(S, lookahead_s=0.0)))
    assert detail_in(on[1].frame) <= 2 and detail_in(on[0].frame) > 2
    assert detail_in(off[1].frame) > 2 and detail_in(off[2].frame) <= 2


def test_offline_scene_cut_does_not_reuse_the_previous_scene() -> None:
    """After a cut the previous scene's tracks are not carried: a weak score (0.4) that continued a
    track before the cut hides nothing after it."""
    img = text_scene(*SIZE, BOX)
    scores = iter([0.9, 0.4, 0.4, 0.4, 0.4])

    class Scripted(FakeDetector):
        def detect(self, img_bgr: np.ndarray) -> np.ndarray:
            super().detect(img_bgr)
            return np.array([[*BOX, next(scores), ClassId.ID_CARD]], np.float32)

    items = [(f, i == 3) for i, f in enumerate(frames_of(img, 5))]
    out = list(run_offline(items, Scripted(), dataclasses.replace(S, lookahead_s=0.0, scene_settle_s=0.0)))
    # frame 3 is the cut: always whole; frame 4's weak score continues nothing of the new scene
    assert [detail_in(o.frame) <= 2 for o in out] == [True, True, True, True, False]
    assert out[3].boxes is None


def test_a_new_scene_hides_every_detection_down_to_track_conf_while_it_settles() -> None:
    """After start-up or a cut nothing found before can be continued, so for ``scene_settle_s`` a
    weak detection (0.4, under the 0.6 threshold) starts a track and is hidden; once the scene has
    settled, a new weak one is not (it must reach the threshold once)."""
    st = TrackStage(S.conf_threshold, S.detector_floor, S.track_hold_s, settle_s=1.0)
    weak = np.array([[*BOX, 0.4, ClassId.ID_CARD]], np.float32)
    other = np.array([[400, 10, 460, 60, 0.4, ClassId.LICENSE_PLATE]], np.float32)
    for i, t in enumerate((0.0, 0.3, 0.6, 0.9)):  # start-up: the weak one is hidden, and tracked
        r, _, _ = st.accept(weak, ref(i + 1, t=t))
        assert r is not None and len(r.boxes) == 1
    r, continued, _ = st.accept(np.concatenate([weak, other]), ref(5, t=1.2))
    # settled: the tracked one stays (a weak detection continuing its track), the new weak one not
    assert r is not None and len(r.boxes) == 1 and r.boxes[0, 5] == ClassId.ID_CARD and continued == 1
    r, _, _ = st.accept(other, ref(6, t=1.5, scene=1))  # a cut: settling again
    assert r is not None and len(r.boxes) == 1 and r.boxes[0, 5] == ClassId.LICENSE_PLATE


# --- the live runner's scene-cut hook --------------------------------------------------------------


async def test_runner_scene_cut_fails_closed_until_the_new_scene_is_detected() -> None:
    """Every 10th frame is a cut and the detector is slower than a frame: each cut frame, and those
    after it until a detection of the new scene, are pixelated whole; never raw."""
    cuts = {"n": 0}

    def every_10th(buf: np.ndarray) -> bool:
        cuts["n"] += 1
        return cuts["n"] % 10 == 0

    out = SinkTrack()
    track = ImageTrack(text_scene(*SIZE, BOX))
    p = Pipeline(track, FakeDetector(BOXES, delay_s=0.05), S, sink=out.sink, scene_cut=every_10th)
    out.end_with(p.ended)
    p.start()
    try:
        frames = [await asyncio.wait_for(out.recv(), 10) for _ in range(40)]
    finally:
        await p.stop()
    assert p.metrics.scene_cuts >= 3
    assert all(detail_in(f) <= 2 for f in frames)  # never raw
    # each cut frame at least: its detection cannot be in before it is decided (50 ms > 1/60 s)
    assert p.metrics.full_pixelations >= p.metrics.scene_cuts, p.metrics.as_dict()
