"""Side detectors (the text/barcode net) on their own thread (relay/sidecar.py): the YOLO step never
waits for them, their late regions join the tracker and the waiting frames, and they fail closed:
a failing, stalled or not-yet-run side detector means whole frames, never its regions missing."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
from av import VideoFrame

from relay.core import SanitizeCore
from relay.detection import DetectionFailed, DetectionResult, DetectorSet, DetectorSpec
from relay.metrics import PipelineMetrics
from relay.model import ClassId
from relay.pipeline import Pipeline, run_offline
from relay.policy import FrameRef, Verdict
from relay.settings import Settings
from relay.tracker import TrackStage
from tests.helpers.media import (
    FakeDetector,
    ImageTrack,
    RaisingDetector,
    SinkTrack,
    StallingDetector,
    bgr_to_frame,
    block_stds,
    frame_gray,
    text_scene,
)

pytestmark = pytest.mark.timeout(60)

S = Settings()
SIZE = (640, 480)
BOX = (192, 144, 400, 304)  # the card: the YOLO model's
NET_BOX = (448, 32, 608, 128)  # text on the checkerboard: only the net finds it
BOXES = np.array([[*BOX, 0.9, ClassId.ID_CARD]], np.float32)
NET = np.array([[*NET_BOX, 0.9, ClassId.TEXT]], np.float32)


def ref(seq: int, scene: int = 0) -> FrameRef:
    return FrameRef(seq, seq / 30, SIZE, scene)


def detail_in(frame: VideoFrame, box: tuple[int, int, int, int]) -> float:
    return float(block_stds(frame_gray(frame), box).max())


def ok(boxes: np.ndarray) -> DetectionResult:
    return DetectionResult(boxes, ("x",), {"x": 0.01})


# --- stages ----------------------------------------------------------------------------------------


def test_detector_set_lanes_keep_side_detectors_out_of_the_step() -> None:
    yolo, net = FakeDetector(BOXES), FakeDetector(NET)
    dset = DetectorSet([DetectorSpec("yolo", yolo), DetectorSpec("net", net, stride=4, own_thread=True)])
    img = np.zeros((48, 64, 3), np.uint8)
    assert dset.run(img, 0, lane="step").ran == ("yolo",)
    assert dset.run(img, 1, lane="side").ran == ("net",)  # the side lane's caller keeps its stride
    assert dset.run(img, 0).ran == ("yolo", "net") and dset.run(img, 1).ran == ("yolo",)  # offline
    assert dset.run(img, 0, frozenset({"net"}), lane="side").ran == ()


def test_late_regions_join_the_tracks_stamped_with_their_frame() -> None:
    st = TrackStage(S.conf_threshold, S.detector_floor, S.track_hold_s)
    st.accept(BOXES, ref(1))
    st.accept(BOXES, ref(4))
    added = st.add(NET, ref(2))  # the net ran on frame 2 and finished after frame 4's step
    assert len(added) == 1 and st.result is not None and st.result.frame.seq == 4
    assert len(st.result.boxes) == 2  # the newest result has them at once
    r, _, held = st.accept(BOXES, ref(13))  # 11 frames (0.37 s) after frame 2: still held
    assert r is not None and len(r.boxes) == 2 and held == 1
    r, _, _ = st.accept(BOXES, ref(15))  # 13 frames (0.43 s) after frame 2: track_hold_s is over
    assert r is not None and len(r.boxes) == 1
    assert not len(st.add(NET, ref(1))), "regions already older than track_hold_s are not news"


def test_late_regions_of_another_scene_are_dropped_and_a_new_scene_s_are_kept() -> None:
    st = TrackStage(S.conf_threshold, S.detector_floor, S.track_hold_s)
    st.accept(BOXES, ref(5, scene=1))
    assert not len(st.add(NET, ref(3, scene=0))), "the previous scene's regions"
    assert len(st.add(NET, ref(9, scene=2)))  # a newer scene: the tracks start afresh with it
    assert st.accept(BOXES, ref(7, scene=1)) == (None, 0, 0), "a step of the older scene is not news"
    r, _, _ = st.accept(BOXES, ref(10, scene=2))
    assert r is not None and len(r.boxes) == 2  # the net's track is carried into the step


def admit(core: SanitizeCore, seq: int, side: frozenset[str] = frozenset({"net"}), scene: int = 0) -> Verdict:
    buf = np.zeros((SIZE[1] * 3 // 2, SIZE[0]), np.uint8)
    core.admit(buf, ref(seq, scene), mosaic=True, pts=None, time_base=None, side=side)
    verdict: Verdict = core.held._held[-1].verdict  # type: ignore[attr-defined]
    return verdict


def test_frames_are_whole_until_the_side_detector_has_a_fresh_good_run() -> None:
    core = SanitizeCore(dataclasses.replace(S, lookahead_s=0.0), PipelineMetrics())
    core.on_detection(ok(BOXES), ref(1))
    assert admit(core, 2) is Verdict.FULL, "the net has not run yet"
    assert admit(core, 2, side=frozenset()) is Verdict.CARRIED  # a stream that switched it off
    core.on_side(ok(NET), ref(1), ("net",))
    assert admit(core, 3) is Verdict.CARRIED
    boxes = core.held._held[-1].boxes  # type: ignore[attr-defined]
    assert boxes is not None and ClassId.TEXT in set(boxes[:, 5])
    core.on_detection(ok(BOXES), ref(12))
    assert admit(core, 13) is Verdict.CARRIED  # the net's run is 0.4 s old: still fresh
    core.on_detection(ok(BOXES), ref(14))
    assert admit(core, 14) is Verdict.FULL, "0.43 s old: stale, its regions are no longer held"
    core.on_side(ok(NET), ref(14), ("net",))
    assert admit(core, 15) is Verdict.CARRIED
    core.on_side(DetectionFailed("net raised"), ref(15), ("net",))
    core.on_detection(ok(BOXES), ref(16))
    assert admit(core, 16) is Verdict.FULL, "a failed run fails closed until the next good one"
    assert core.metrics.detector_failures == 1 and core.metrics.side_stale_full >= 2


def test_late_regions_reach_the_frames_still_waiting_for_lookahead() -> None:
    core = SanitizeCore(S, PipelineMetrics())
    core.on_detection(ok(BOXES), ref(1))
    core.on_side(ok(NET[:0]), ref(1), ("net",))  # a run that found nothing
    admit(core, 2)
    admit(core, 3)
    core.on_side(ok(NET), ref(3), ("net",))
    for h in core.held._held:  # type: ignore[attr-defined]
        assert h.boxes is not None and ClassId.TEXT in set(h.boxes[:, 5])


def test_a_frame_with_no_side_run_near_it_waits_for_the_next_one() -> None:
    """Lookahead for the net: a frame decided when the net's last run is too old (0.43 s) does not go
    out on a later frame's step alone; the next run near it (before or after it) frees it, with
    that run's regions."""
    core = SanitizeCore(S, PipelineMetrics())
    core.on_detection(ok(BOXES), ref(1))
    core.on_side(ok(NET[:0]), ref(1), ("net",))  # a run that found nothing, on frame 1
    core.on_detection(ok(BOXES), ref(14))
    assert admit(core, 14) is Verdict.EXACT and core.metrics.side_waits == 1
    core.on_detection(ok(BOXES), ref(15))  # a later frame's step: without the net it would go now
    assert core.held.next_release() == 14 / 30 + S.lookahead_s
    assert core.release(14 / 30 + 0.1) == []
    assert core.on_side(ok(NET), ref(16), ("net",)), "the run on frame 16 (0.07 s later) frees it"
    (out,) = core.release(14 / 30 + 0.1)
    assert out.boxes is not None and ClassId.TEXT in set(out.boxes[:, 5])
    assert core.metrics.side_stale_full == 0


def test_a_frame_whose_side_run_never_comes_near_goes_out_whole() -> None:
    core = SanitizeCore(S, PipelineMetrics())
    core.on_detection(ok(BOXES), ref(1))
    core.on_side(ok(NET), ref(1), ("net",))
    for seq in (14, 15):
        core.on_detection(ok(BOXES), ref(seq))
        admit(core, seq)
    core.on_detection(ok(BOXES), ref(16))
    assert not core.on_side(ok(NET), ref(28), ("net",)), "0.43 s after frame 15: too far for both"
    assert core.release(15 / 30) == []
    out = core.release(15 / 30 + S.lookahead_s)  # their deadlines
    assert [h.ref.seq for h in out] == [14, 15] and all(h.boxes is None for h in out)
    assert core.metrics.side_stale_full == 2
    assert admit(core, 29) is Verdict.CARRIED, "frame 28's run counts for the frames after it"


def test_a_failed_side_run_sends_the_frames_waiting_for_it_out_whole_at_once() -> None:
    core = SanitizeCore(S, PipelineMetrics())
    core.on_detection(ok(BOXES), ref(1))
    core.on_side(ok(NET), ref(1), ("net",))
    core.on_detection(ok(BOXES), ref(14))
    assert admit(core, 14) is Verdict.EXACT  # the net's run is 0.43 s old: it waits
    core.on_detection(ok(BOXES), ref(15))
    assert not core.on_side(DetectionFailed("net raised"), ref(15), ("net",))
    assert core.held.next_release() == 0.0
    (out,) = core.release(14 / 30)
    assert out.boxes is None and core.metrics.detector_failures == 1


def test_before_the_nets_first_run_in_a_scene_frames_are_whole_not_waiting() -> None:
    """At start-up and after a cut a frame does not wait for the scene's first net run: one run's
    regions alone left the back of a green card partly raw live (ID clip, frames just after a cut);
    the frames after it add the next runs' regions, or wait for them."""
    core = SanitizeCore(S, PipelineMetrics())
    core.on_detection(ok(BOXES), ref(1))
    assert admit(core, 1) is Verdict.FULL and core.metrics.side_waits == 0, "start-up"
    core.on_side(ok(NET), ref(1), ("net",))
    assert admit(core, 2) is Verdict.CARRIED
    core.on_detection(ok(BOXES), ref(21, scene=1))  # a cut at frame 20: scene 1
    assert admit(core, 21, scene=1) is Verdict.FULL and core.metrics.side_waits == 0, "after the cut"
    core.on_side(ok(NET), ref(21, scene=1), ("net",))
    core.on_detection(ok(BOXES), ref(34, scene=1))
    assert admit(core, 34, scene=1) is Verdict.EXACT and core.metrics.side_waits == 1  # 0.43 s: waits


def test_the_sidecar_runs_at_least_every_half_of_the_side_window() -> None:
    """At 8 fps a stride of 4 frames is 0.5 s: the frames after a run could not use it (0.4 s). The
    sidecar starts one once 0.2 s have passed since the last, so that a run that takes up to 0.2 s
    still lands in time for them."""
    import threading

    from relay.policy import side_max_age
    from relay.sidecar import Sidecar

    done = threading.Event()
    dset = DetectorSet([DetectorSpec("net", FakeDetector(NET), stride=4, own_thread=True)])
    car = Sidecar(dset, lambda r, o, n: done.set(), max_interval_s=side_max_age(S) / 2)
    started = []
    try:
        for seq in range(1, 12):
            done.clear()
            if car.maybe_start(
                np.zeros((72, 64), np.uint8), FrameRef(seq, seq * 0.125, SIZE, 0), frozenset()
            ):
                started.append(seq)
                assert done.wait(5)
    finally:
        car.stop()
    assert started == [1, 3, 5, 7, 9, 11], started  # every 2 frames (0.25 s), not every 4


def test_offline_runs_a_side_detector_in_the_step_at_its_stride() -> None:
    img = text_scene(*SIZE, BOX)
    net = FakeDetector(NET)
    dset = DetectorSet(
        [DetectorSpec("yolo", FakeDetector(BOXES)), DetectorSpec("net", net, 3, own_thread=True)]
    )
    out = list(run_offline([bgr_to_frame(img, i * 3000) for i in range(9)], dset, S))
    assert net.calls == 3 and len(out) == 9
    assert all(o.boxes is None or ClassId.TEXT in set(o.boxes[:, 5]) for o in out)


# --- the live runner -------------------------------------------------------------------------------


async def run_live(
    net: FakeDetector | RaisingDetector, n: int, **kw: object
) -> tuple[Pipeline, list[VideoFrame]]:
    out = SinkTrack()
    track = ImageTrack(text_scene(*SIZE, BOX))
    dset = DetectorSet(
        [
            DetectorSpec("yolo", FakeDetector(BOXES, delay_s=0.005)),
            DetectorSpec("net", net, own_thread=True, **kw),
        ]  # type: ignore[arg-type]
    )
    p = Pipeline(track, dset, S, sink=out.sink)
    out.end_with(p.ended)
    p.start()
    try:
        frames = [await asyncio.wait_for(out.recv(), 10) for _ in range(n)]
    finally:
        await p.stop()
    return p, frames


async def test_a_slow_net_on_its_own_thread_never_delays_a_frame() -> None:
    """The net takes 150 ms (4-5 frame intervals): no frame's processing waits for it, the YOLO model
    runs on most frames, and once the net has run its region is hidden; the card never goes out raw."""
    p, frames = await run_live(FakeDetector(NET, delay_s=0.15), 45)
    m = p.metrics
    assert m.side_detections >= 2, m.as_dict()
    assert max(m.process_ms) < 100, f"a frame waited for the net: {max(m.process_ms):.0f} ms"
    assert m.detections >= m.side_detections * 3, m.as_dict()  # YOLO steps went on meanwhile
    assert all(detail_in(f, BOX) <= 2 for f in frames)
    later = frames[15:]
    assert sum(detail_in(f, NET_BOX) <= 2 for f in later) == len(later)  # whole, or with its region
    assert any(detail_in(f, (0, 320, 160, 480)) > 10 for f in later), "never a frame but whole ones"


async def test_a_failing_net_on_its_own_thread_fails_closed() -> None:
    net = RaisingDetector()
    p, frames = await run_live(net, 20)
    assert net.calls >= 1 and p.metrics.detector_failures >= 1 and p.metrics.detections >= 1
    assert all(detail_in(f, (0, 0, SIZE[0], SIZE[1])) <= 2 for f in frames), "a frame went out not whole"


async def test_a_stalled_net_on_its_own_thread_fails_closed() -> None:
    net = StallingDetector(NET)
    out = SinkTrack()
    dset = DetectorSet([DetectorSpec("yolo", FakeDetector(BOXES)), DetectorSpec("net", net, own_thread=True)])
    p = Pipeline(ImageTrack(text_scene(*SIZE, BOX)), dset, S, sink=out.sink)
    out.end_with(p.ended)
    p.start()
    try:
        for _ in range(15):
            await asyncio.wait_for(out.recv(), 10)
        net.release.clear()  # the net hangs from its next run on
        stalled_at = p.metrics.side_detections
        frames = [await asyncio.wait_for(out.recv(), 10) for _ in range(40)]
        net.release.set()
    finally:
        await p.stop()
    assert p.metrics.side_detections <= stalled_at + 1
    assert all(detail_in(f, NET_BOX) <= 2 for f in frames), "the net's region went out raw"
    assert all(detail_in(f, (0, 320, 160, 480)) <= 2 for f in frames[-10:]), "stale net: frames whole"


def test_the_served_net_runs_on_its_own_thread() -> None:
    from relay.detector import TEXT_NET, detectors_from_settings

    dset = detectors_from_settings(S)
    (net,) = dset.side
    assert net.name == TEXT_NET and net.stride == S.text_net_stride
    assert getattr(net.detector, "input_size", None) == S.text_net_size == 576
    assert [s.name for s in dset.due(0, lane="step")] == ["yolo"]


def test_a_niced_side_thread_is_nicer_and_the_caller_is_not() -> None:
    import os
    import threading

    from relay.sidecar import lower_priority

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []

    def side() -> None:
        lower_priority(3)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=side)
    t.start()
    t.join()
    assert seen == [min(19, before + 3)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_stopping_with_a_queued_run_returns_and_reports_nothing() -> None:
    """A stream that ends while its net run waits in a shared executor: ``stop`` cancels the run,
    whose done callback runs at once in the stopping thread (the room's close, on the event loop).
    It must not deadlock on the sidecar's own lock (it did: a live server froze on a stream's end)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from relay.sidecar import Sidecar

    release = threading.Event()
    results: list[object] = []
    pool = ThreadPoolExecutor(1)
    try:
        pool.submit(release.wait, 10)  # the shared executor is busy: the sidecar's run will queue
        dset = DetectorSet([DetectorSpec("net", FakeDetector(NET), own_thread=True)])
        car = Sidecar(dset, lambda r, o, n: results.append(o), executor=pool)
        assert car.maybe_start(np.zeros((72, 64), np.uint8), ref(1), frozenset())
        stopper = threading.Thread(target=car.stop, daemon=True)
        stopper.start()
        stopper.join(5)
        assert not stopper.is_alive(), "Sidecar.stop deadlocked on its own lock"
        release.set()
        assert results == [], "a cancelled run reported a result"
        assert not car.maybe_start(np.zeros((72, 64), np.uint8), ref(9), frozenset()), "stopped: no new run"
    finally:
        release.set()
        pool.shutdown(wait=True)
