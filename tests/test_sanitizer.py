"""relay/pipeline.py (the live runner) with fake detectors: fail closed, carry boxes forward, newest frame wins.

Frames are taken where production takes them: the pipeline's ``sink`` (here a
:class:`tests.helpers.media.SinkTrack`; in a room, the encoder's ``submit``)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamTrack
from av import VideoFrame

from relay.pipeline import Detectors, Pipeline
from relay.settings import Settings
from tests.helpers.media import (
    FakeDetector,
    ImageTrack,
    ListTrack,
    RaisingDetector,
    SinkTrack,
    StallingDetector,
    bgr_to_frame,
    block_stds,
    frame_gray,
    text_scene,
)

pytestmark = pytest.mark.timeout(60)

W, H = 640, 480
BOX = (192, 144, 400, 304)
BOXES = np.array([[*BOX, 0.9, 1]], np.float32)
SETTINGS = Settings()
# the tracker's steady state: no settling after start-up (scene_settle_s, tested in tests/test_stages.py)
STEADY = dataclasses.replace(SETTINGS, scene_settle_s=0.0)


class Sanitizer:
    """A :class:`Pipeline` whose sink is a :class:`SinkTrack` (``recv()`` reads what it handed over)."""

    def __init__(self, source: MediaStreamTrack, detector: Detectors, settings: Settings, **kw: Any) -> None:
        self.pipeline = Pipeline(source, detector, settings, sink=self._sink, **kw)
        self.out: SinkTrack | None = None
        self.metrics = self.pipeline.metrics
        self.ended = self.pipeline.ended

    def _sink(self, frame: VideoFrame) -> None:
        assert self.out is not None
        self.out.sink(frame)

    def start(self) -> None:
        self.out = SinkTrack(self.pipeline.ended)
        self.pipeline.start()

    async def stop(self) -> None:
        await self.pipeline.stop()

    async def recv(self) -> VideoFrame:
        assert self.out is not None
        return await self.out.recv()

    @property
    def mosaic_enabled(self) -> bool:
        return self.pipeline.mosaic_enabled

    @mosaic_enabled.setter
    def mosaic_enabled(self, on: bool) -> None:
        self.pipeline.mosaic_enabled = on

    @property
    def task_count(self) -> int:
        return self.pipeline.task_count


def scene(w: int = W, h: int = H, box: tuple[int, int, int, int] = BOX) -> np.ndarray:
    return text_scene(w, h, box)


def classify(frame: VideoFrame, box: tuple[int, int, int, int] = BOX) -> str:
    """'full' (every cell flat), 'box' (box flat, far outside detailed) or 'raw' (box has detail)."""
    gray = frame_gray(frame)
    h, w = gray.shape
    inside = block_stds(gray, box)
    if inside.size and inside.max() > 2:
        return "raw"
    if block_stds(gray, (0, 0, w, h)).max() <= 1:
        return "full"
    # outside the widest margin the sanitizer may use (carry_margin), detail must survive
    bw = box[2] - box[0]
    m = SETTINGS.carry_margin + 0.05
    right = block_stds(gray, (min(w, int(box[2] + m * bw) + 16), 0, w, h))
    assert right.size and right.mean() > 20, "the rest of the frame is not expected to be pixelated"
    return "box"


async def collect(s: Sanitizer, n: int, within_s: float = 20.0) -> list[VideoFrame]:
    out: list[VideoFrame] = []

    async def run() -> None:
        while len(out) < n:
            out.append(await s.recv())

    await asyncio.wait_for(run(), within_s)
    return out


async def classify_all(frames: list[VideoFrame], box: tuple[int, int, int, int] = BOX) -> list[str]:
    return await asyncio.to_thread(lambda: [classify(f, box) for f in frames])


async def test_startup_is_fully_pixelated_then_boxes_only() -> None:
    det = FakeDetector(BOXES, delay_s=0.1)  # first result arrives after several frames
    s = Sanitizer(ImageTrack(scene()), det, SETTINGS)
    s.start()
    try:
        kinds = await classify_all(await collect(s, 30))
    finally:
        await s.stop()
    assert kinds[0] == "full"
    assert "raw" not in kinds
    # boxes once detection is up (a frame no detection confirmed in time may still go out whole)
    assert "box" in kinds[-10:], kinds
    assert s.metrics.full_pixelations >= 1
    assert s.metrics.frames_out >= 30


async def test_detector_raises_every_frame_fully_pixelated() -> None:
    det = RaisingDetector()
    s = Sanitizer(ImageTrack(scene()), det, SETTINGS)
    s.start()
    try:
        kinds = await classify_all(await collect(s, 20))
    finally:
        await s.stop()
    assert set(kinds) == {"full"}
    assert s.metrics.detector_failures >= 1
    assert det.calls >= 1


async def test_detector_garbage_output_is_a_failure() -> None:
    class Garbage:
        def detect(self, img: np.ndarray) -> np.ndarray:
            return np.array([[1.0, 2.0]])  # wrong shape

    s = Sanitizer(ImageTrack(scene()), Garbage(), SETTINGS)
    s.start()
    try:
        kinds = await classify_all(await collect(s, 10))
    finally:
        await s.stop()
    assert set(kinds) == {"full"}
    assert s.metrics.detector_failures >= 1


async def test_stall_goes_full_after_timeout_then_recovers() -> None:
    det = StallingDetector(BOXES)
    settings = dataclasses.replace(SETTINGS, detector_timeout_s=0.3)
    s = Sanitizer(ImageTrack(scene()), det, settings)
    s.start()
    try:
        await collect(s, 15)
        assert (await classify_all(await collect(s, 3)))[-1] == "box"
        det.stall()
        t_stall = time.monotonic()
        stalled = await collect(s, 30)  # 1 s at 30 fps
        kinds = await classify_all(stalled)
        assert "raw" not in kinds
        assert kinds[-10:] == ["full"] * 10  # well past the timeout: every frame fully pixelated
        first_full = kinds.index("full")
        assert first_full <= int((settings.detector_timeout_s + 0.2) * 30) + 2
        assert time.monotonic() - t_stall >= 0.9
        det.resume()
        kinds = await classify_all(await collect(s, 20))
        assert "raw" not in kinds
        assert kinds[-1] == "box"
    finally:
        det.resume()
        await s.stop()


async def test_slow_detector_boxes_carried_on_every_frame_between() -> None:
    # ~12 detections/s for 30 fps: slower than the frames, fast enough that a detection of a later
    # frame comes back within lookahead_s (else the frame goes out whole: policy.release_boxes)
    det = FakeDetector(BOXES, delay_s=0.08)
    s = Sanitizer(ImageTrack(scene()), det, SETTINGS)
    s.start()
    try:
        frames = await collect(s, 60)
    finally:
        await s.stop()
    kinds = await classify_all(frames)
    assert "raw" not in kinds
    after_first = kinds[kinds.index("box") :]
    assert after_first.count("full") == 0, kinds  # never dropped back to full or raw between detections
    assert s.metrics.carried_frames >= 30
    assert s.metrics.detections < s.metrics.frames_out / 2
    # frames in between are not dropped (a few may be, when this shared box preempts the threads)
    assert s.metrics.dropped_stale <= max(3, s.metrics.frames_in // 10)


async def test_detector_runs_off_the_event_loop_in_one_thread() -> None:
    threads: set[str] = set()

    class Spy(FakeDetector):
        def detect(self, img: np.ndarray) -> np.ndarray:
            threads.add(threading.current_thread().name)
            return super().detect(img)

    det = Spy(BOXES)
    s = Sanitizer(ImageTrack(scene()), det, SETTINGS, name="spy")
    s.start()
    try:
        await collect(s, 10)
    finally:
        await s.stop()
    assert threads and threading.main_thread().name not in threads
    assert len(threads) == 1
    assert det.shapes[0] == (H, W, 3)


async def test_resolution_change_mid_stream() -> None:
    det = FakeDetector(BOXES)
    track = ImageTrack(scene())
    s = Sanitizer(track, det, SETTINGS)
    s.start()
    try:
        await collect(s, 10)
        track.set_image(scene(1280, 720))
        frames = await collect(s, 20)
    finally:
        await s.stop()
    sizes = [(f.width, f.height) for f in frames]
    assert sizes[-1] == (1280, 720)
    kinds = await classify_all(frames)
    assert "raw" not in kinds
    first_big = sizes.index((1280, 720))
    # the first frame at the new size cannot use the old size's result: fully pixelated
    assert kinds[first_big] in ("full", "box")
    assert kinds[-1] == "box"
    assert det.shapes[-1] == (720, 1280, 3)


async def test_odd_size_and_other_pixel_formats_are_converted_once() -> None:
    det = FakeDetector(BOXES)
    track = ListTrack()
    img = scene(643, 481)
    for i in range(5):
        f = VideoFrame.from_ndarray(img, format="bgr24")
        f.pts, f.time_base = i * 3000, bgr_to_frame(img[:2, :2], 0).time_base
        track.put(f)
    track.put(None)
    s = Sanitizer(track, det, SETTINGS)
    s.start()
    got = []
    try:
        while True:
            got.append(await asyncio.wait_for(s.recv(), 5))
    except Exception:
        pass
    finally:
        await s.stop()
    assert got and all(f.format.name == "yuv420p" and (f.width, f.height) == (642, 480) for f in got)


async def test_mosaic_switch_off_is_raw_and_back_on_fails_closed() -> None:
    det = FakeDetector(BOXES, delay_s=0.1)
    s = Sanitizer(ImageTrack(scene()), det, SETTINGS)
    s.start()
    try:
        await collect(s, 10)
        s.mosaic_enabled = False
        kinds = await classify_all(await collect(s, 20))
        # frames already on their way (in processing or waiting for lookahead) keep their mosaic (or
        # go out whole: no detection of a later frame comes back once the detector stops running);
        # from the first raw one on, all are raw
        first_raw = kinds.index("raw")
        assert set(kinds[:first_raw]) <= {"box", "full"} and set(kinds[first_raw:]) == {"raw"}, kinds
        assert len(kinds) - first_raw >= 10, kinds
        s.mosaic_enabled = True
        kinds = await classify_all(await collect(s, 10))
        # a frame already rendered and handed over before the switch may still arrive raw (it was
        # released while the streamer had the mosaic off; frames still waiting go out whole:
        # policy.release_boxes); after the first mosaicked frame none is raw
        first_hidden = next(i for i, k in enumerate(kinds) if k != "raw")
        assert first_hidden <= 2 and "raw" not in kinds[first_hidden:], kinds
    finally:
        await s.stop()
    assert s.metrics.raw_frames >= 8


async def test_backlog_is_drained_newest_wins() -> None:
    det = FakeDetector(BOXES)
    track = ListTrack()
    img = scene()
    for i in range(60):
        track.put(bgr_to_frame(img, i * 3000))
    s = Sanitizer(track, det, SETTINGS)
    s.start()
    try:
        out = await collect(s, 1)
        while True:  # take whatever else comes out, until it stops
            try:
                out.append(await asyncio.wait_for(s.recv(), 1.0))
            except TimeoutError:
                break
    finally:
        await s.stop()
    m = s.metrics
    assert m.frames_in == 60
    assert m.dropped_stale >= 50  # the 60 queued frames were drained, not processed one by one
    assert out[-1].pts == 59 * 3000  # the newest frame got out
    assert m.frames_out <= 5


async def test_source_end_sets_ended_and_recv_raises() -> None:
    from aiortc.mediastreams import MediaStreamError

    track = ListTrack()
    track.put(bgr_to_frame(scene(), 0))
    track.put(None)
    s = Sanitizer(track, FakeDetector(BOXES), SETTINGS)
    s.start()
    try:
        await asyncio.wait_for(s.ended.wait(), 5)
        await s.recv()  # the last frame is still delivered
        with pytest.raises(MediaStreamError):
            await s.recv()
    finally:
        await s.stop()
    assert s.task_count == 0


async def test_a_frame_that_cannot_be_processed_is_dropped_not_forwarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import relay.frames as frames_module

    real = frames_module.frame_to_i420
    calls = {"n": 0}

    def flaky(frame: VideoFrame) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise ValueError("bad frame")
        return real(frame)

    monkeypatch.setattr(frames_module, "frame_to_i420", flaky)
    s = Sanitizer(ImageTrack(scene()), FakeDetector(BOXES), SETTINGS)
    s.start()
    try:
        kinds = await classify_all(await collect(s, 10))
    finally:
        await s.stop()
    assert "raw" not in kinds
    assert s.metrics.frame_errors >= 5


class ScriptedDetector(FakeDetector):
    """Returns BOX with the next score of ``scores`` on each call (no box for ``None``), then the last."""

    def __init__(self, scores: list[float | None], delay_s: float = 0.0) -> None:
        super().__init__(delay_s=delay_s)
        self.scores = scores

    def detect(self, img: np.ndarray) -> np.ndarray:
        score = self.scores[min(self.calls, len(self.scores) - 1)]
        super().detect(img)
        return np.zeros((0, 6), np.float32) if score is None else np.array([[*BOX, score, 2]], np.float32)


async def test_a_found_object_stays_hidden_when_its_score_dips_or_it_is_missed() -> None:
    """Found at 0.7 once, then scored 0.5 / 0.35 / missed on single frames: hidden on every frame
    (relay/tracker.py), never raw, never fully pixelated again."""
    scores: list[float | None] = [0.7] + [0.5, 0.35, None, 0.45] * 10
    det = ScriptedDetector(scores)
    s = Sanitizer(ImageTrack(scene()), det, SETTINGS)
    s.start()
    try:
        frames = await collect(s, 40)
    finally:
        await s.stop()
    kinds = await classify_all(frames)
    first = kinds.index("box")
    assert "raw" not in kinds and "full" not in kinds[first:], kinds
    assert s.metrics.tracked_boxes >= 5 and s.metrics.held_boxes >= 2, s.metrics
    assert det.calls >= 20


async def test_an_object_never_found_at_the_threshold_is_not_hidden() -> None:
    """Hysteresis only continues what was found: a box that always scores 0.5 stays raw (the
    threshold decides what is found; the tracker only adds to it)."""
    det = ScriptedDetector([0.5])
    s = Sanitizer(ImageTrack(scene()), det, STEADY)
    s.start()
    try:
        frames = await collect(s, 20)
    finally:
        await s.stop()
    kinds = await classify_all(frames)
    assert kinds[-1] == "raw" and "box" not in kinds, kinds
    assert s.metrics.detected_boxes == 0 and s.metrics.tracked_boxes == 0


async def test_tracks_do_not_survive_a_resolution_change() -> None:
    """Tracks are in the pixels of one frame size: after a change, a weak score hides nothing."""
    det = ScriptedDetector([0.9, 0.9, 0.9] + [0.4] * 200)
    track = ImageTrack(scene())
    s = Sanitizer(track, det, STEADY)
    s.start()
    try:
        first = await collect(s, 10)
        track.set_image(scene(1280, 720))
        later = await collect(s, 25)
    finally:
        await s.stop()
    assert "box" in await classify_all(first)
    big = [f for f in later if (f.width, f.height) == (1280, 720)]
    assert await classify_all(big[-3:]) == ["raw"] * 3


@pytest.mark.parametrize("lookahead_s", [SETTINGS.lookahead_s, 0.0])
async def test_lookahead_hides_an_object_on_the_frames_before_it_is_found(lookahead_s: float) -> None:
    """The object scores 0.5 on the first detection and 0.7 from the second on. A detection takes
    longer than a frame waits for it, so the frames after the first result are decided with it
    (nothing found). With lookahead they wait for the second result and go out hidden; without it
    (``lookahead_s`` 0, the control) they go out raw."""
    settings = dataclasses.replace(STEADY, lookahead_s=lookahead_s)
    det = ScriptedDetector([0.5, 0.7], delay_s=0.08)
    s = Sanitizer(ImageTrack(scene()), det, settings)
    s.start()
    try:
        kinds = await classify_all(await collect(s, 20))
    finally:
        await s.stop()
    assert "box" in kinds, kinds
    if lookahead_s:
        assert "raw" not in kinds, kinds
        assert kinds == sorted(kinds, key=("full", "box").index), kinds  # start-up, then hidden
        assert s.metrics.lookahead_boxes > 0 and s.metrics.lookahead_timeouts == 0, s.metrics
    else:
        assert "raw" in kinds, kinds
        assert s.metrics.lookahead_boxes == 0


async def test_lookahead_gives_up_after_its_time_when_the_detector_hangs() -> None:
    """A frame waits at most ``lookahead_s`` for a later detection: with a hung detector, frames keep
    going out (fully pixelated once the last result is too old), none is held back for good."""
    gate = threading.Event()

    class Hanging(FakeDetector):
        def detect(self, img: np.ndarray) -> np.ndarray:
            if self.calls >= 1:
                gate.wait(10)
            return super().detect(img)

    s = Sanitizer(ImageTrack(scene()), Hanging(BOXES), SETTINGS)
    s.start()
    try:
        await collect(s, 5)
        t0 = time.monotonic()
        kinds = await classify_all(await collect(s, 15))
        took = time.monotonic() - t0
    finally:
        gate.set()
        await s.stop()
    assert took < 3.0, took
    assert "raw" not in kinds and kinds[-1] == "full", kinds
    assert s.metrics.lookahead_timeouts >= 5, s.metrics


async def test_lookahead_bursts_reach_the_encoder_whole_and_keep_the_capture_pace() -> None:
    """Lookahead releases frames in bursts (every frame older than a new detection at once); the room's
    encoder takes them all (it queues a few) and stamps each with its arrival time, so the encoded
    stream keeps the input's frame rate and spacing."""
    from relay.fanout import RoomEncoder

    enc = RoomEncoder(SETTINGS)
    enc.start()
    s = Pipeline(ImageTrack(scene()), FakeDetector(BOXES, delay_s=0.05), SETTINGS, sink=enc.submit)
    viewer = enc.add_viewer()
    s.start()
    try:
        await asyncio.sleep(0.5)
        frames_in, encoded = s.metrics.frames_in, enc.metrics.frames
        packets = [await asyncio.wait_for(viewer.recv(), 5) for _ in range(40)]
        await asyncio.sleep(1.0)
        new_in, new_out = s.metrics.frames_in - frames_in, enc.metrics.frames - encoded
    finally:
        await s.stop()
        await enc.stop()
    assert s.metrics.lookahead_boxes > 0  # frames did wait for later detections
    assert new_out >= 0.9 * new_in - 10, (new_in, new_out)
    assert enc.metrics.dropped_frames == 0  # (no output queue any more: the encoder is the sink)
    gaps = np.diff([int(p.pts) for p in packets if p.pts is not None]) / 90000.0
    assert np.median(gaps) > 0.02 and np.percentile(gaps, 10) > 0.01, gaps  # 30 fps: 0.033 s apart
