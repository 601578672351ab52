"""End to end over real aiortc peers on loopback: publisher → relay (detect, mosaic, encode once) → viewers.

Stream A shows a real shipping label (``IMG_8747.jpg``, hand-labelled box) to three viewers and a
late joiner; stream B (a synthetic card) runs at the same time. A fake detector returns each scene's
known box (the trained model is exercised in test_relay_integration_model.py). Every decoded frame
of every viewer is checked: the object's 16 px cells are flat (std < 4); once detection is up, the
rest of the frame keeps its detail (> 3x the inside).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from av import VideoFrame

from relay.mosaic import block_for_frame, pixelate, pixelate_all
from relay.room import Room, RoomRegistry
from relay.settings import Settings
from tests.helpers.media import (
    ImageTrack,
    Publisher,
    ToneTrack,
    Viewer,
    bgr_to_frame,
    block_stds,
    box_region,
    frame_gray,
    label_scene,
    text_scene,
)

pytestmark = pytest.mark.timeout(120)

SCENE_A, BOX_A = label_scene(640, 480)
BOX_B_TUPLE = (96, 64, 288, 176)
SCENE_B = text_scene(480, 352, BOX_B_TUPLE, seed=3)
BOX_B = np.array([[*BOX_B_TUPLE, 0.95, 1]], np.float32)
INSIDE_MAX_STD = 4.0  # per 16 px cell
DEBLOCK_PX = 3  # VP8's loop filter changes up to 3 px each side of a macroblock edge


class SceneDetector:
    """Returns the known box of whichever scene it is shown (told apart by frame size)."""

    def __init__(self, boxes_by_shape: dict[tuple[int, int], np.ndarray]) -> None:
        self.boxes_by_shape = boxes_by_shape
        self.calls = 0

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.boxes_by_shape.get(img_bgr.shape[:2], np.zeros((0, 6), np.float32)).copy()


class FrameCheck:
    """Per decoded frame: the object is pixelated; count frames where the rest keeps its detail.

    Two tests of "pixelated":
    - every 16 px cell of the object has std < 4 (cells are flat), on every clean frame; measured
      on the cell without its 3 px border, which VP8's deblocking filter ramps towards the
      neighbouring cell at low bitrates (a raw label cell has std 25-75 on any part of it);
    - the frame does not carry the object's *own* detail: the correlation between the decoded
      frame's detail (decoded - mosaic) and the raw scene's detail (raw - mosaic) inside the box
      is < 0.5 (a raw frame scores ~1). After packet loss, until the next keyframe, a VP8 decoder
      applies deltas to the wrong reference and sprinkles artefacts over flat cells: such "lossy"
      frames get only this second test, which artefacts do not fail and a leak does.
    """

    def __init__(self, box: np.ndarray, width: int, height: int, scene: np.ndarray) -> None:
        self.region = box_region(box)
        self.size = (width, height)
        x1, y1, x2, y2 = self.region
        margin = Settings().carry_margin + 0.05
        bw, bh = x2 - x1, y2 - y1
        # outside: everything clear of the widest margin the relay may use, one cell further
        self.outside = [
            (0, 0, width, max(0, int(y1 - margin * bh) - 16)),
            (0, min(height, int(y2 + margin * bh) + 16), width, height),
            (min(width, int(x2 + margin * bw) + 16), 0, width, height),
        ]
        # the grid cells fully inside the box, and the raw and mosaicked luma there
        self.cells = (-(-x1 // 16) * 16, -(-y1 // 16) * 16, (x2 // 16) * 16, (y2 // 16) * 16)
        raw = frame_gray(bgr_to_frame(scene, 0)).astype(np.float32)
        mosaic = pixelate_all(raw.copy(), block_for_frame(Settings().mosaic_block, width, height))
        cx1, cy1, cx2, cy2 = self.cells
        self.mosaic = mosaic[cy1:cy2, cx1:cx2]
        self.detail = raw[cy1:cy2, cx1:cx2] - self.mosaic
        self.frames = 0
        self.lossy = 0
        self.detailed = 0  # frames whose outside has > 3x the inside's detail
        self.max_leak = 0.0

    def leak(self, gray: np.ndarray) -> float:
        """Correlation of the decoded detail with the raw object's detail (1 = the raw object)."""
        cx1, cy1, cx2, cy2 = self.cells
        resid = gray[cy1:cy2, cx1:cx2].astype(np.float32) - self.mosaic
        denom = float(np.sqrt((resid**2).sum() * (self.detail**2).sum()))
        return float((resid * self.detail).sum() / denom) if denom > 0 else 0.0

    def __call__(self, frame: VideoFrame, lossy: bool = False) -> None:
        assert (frame.width, frame.height) == self.size
        gray = frame_gray(frame)
        inside = block_stds(gray, self.region, inset=DEBLOCK_PX)
        self.frames += 1
        self.lossy += lossy
        leak = self.leak(gray)
        self.max_leak = max(self.max_leak, leak)
        worst = float(inside.max())
        if leak >= 0.5 or (not lossy and worst >= INSIDE_MAX_STD):
            path = (
                Path(tempfile.gettempdir())
                / f"mosaic-relay-bad-frame-{os.getpid()}-{id(self)}-{self.frames}.png"
            )
            cv2.imwrite(str(path), frame.to_ndarray(format="bgr24"))
            raise AssertionError(
                f"frame {self.frames} (pts {frame.pts}, key {frame.key_frame}, lossy {lossy}): the object "
                f"is not pixelated (cell std up to {worst:.1f}, detail correlation {leak:.2f}); saved to {path}"
            )
        outside = np.concatenate([block_stds(gray, r) for r in self.outside])
        if outside.size and outside.mean() > 3 * max(float(inside.mean()), 1.0):
            self.detailed += 1


def test_frame_check_tells_a_raw_frame_from_a_mosaicked_one() -> None:
    with pytest.raises(AssertionError):  # the raw scene fails even the lossy test
        FrameCheck(BOX_A, 640, 480, SCENE_A)(bgr_to_frame(SCENE_A, 0), lossy=True)
    check = FrameCheck(BOX_A, 640, 480, SCENE_A)
    mosaicked = SCENE_A.copy()
    pixelate(mosaicked, BOX_A, 16)
    check(bgr_to_frame(mosaicked, 0))
    assert check.max_leak < 0.1 and check.detailed == 1


@pytest.fixture
async def registry(loopback_ice: None) -> AsyncIterator[RoomRegistry]:
    detector = SceneDetector({(480, 640): BOX_A, (352, 480): BOX_B})
    reg = RoomRegistry(dataclasses.replace(Settings(), max_viewers_per_stream=8), detector)
    events: list[tuple[str, str, float]] = []

    async def on_event(name: str, room: Room) -> None:
        events.append((name, room.stream_id, time.monotonic()))

    reg.on_event = on_event
    reg.events = events  # type: ignore[attr-defined]
    yield reg
    await reg.close_all()


async def start_stream(
    reg: RoomRegistry, scene: np.ndarray, audio: bool = False
) -> tuple[Room, str, Publisher]:
    room, key = reg.create("test", "test")
    pub = Publisher(ImageTrack(scene), ToneTrack() if audio else None)
    await pub.connect(lambda sdp, t: room.publish(key, sdp, t))
    return room, key, pub


async def join(room: Room, viewer_id: str, check: FrameCheck, audio: bool = False) -> Viewer:
    v = Viewer(check=check, audio=audio)
    await v.connect(lambda sdp, t: room.add_viewer(viewer_id, sdp, t))
    return v


async def wait_until(pred: object, within_s: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(step)
    return bool(pred())  # type: ignore[operator]


async def test_two_streams_three_viewers_late_joiner_leave_and_publisher_drop(registry: RoomRegistry) -> None:
    room_a, key_a, pub_a = await start_stream(registry, SCENE_A, audio=True)
    room_b, key_b, pub_b = await start_stream(registry, SCENE_B)
    clients: list[Viewer | Publisher] = [pub_a, pub_b]
    try:
        checks_a = [FrameCheck(BOX_A, 640, 480, SCENE_A) for _ in range(3)]
        viewers_a = [await join(room_a, f"a{i}", c, audio=(i == 0)) for i, c in enumerate(checks_a)]
        check_b = FrameCheck(BOX_B, 480, 352, SCENE_B)
        viewer_b = await join(room_b, "b0", check_b)
        clients += [*viewers_a, viewer_b]

        await asyncio.gather(*(v.wait_frames(75, timeout=30) for v in [*viewers_a, viewer_b]))
        for v, c in zip([*viewers_a, viewer_b], [*checks_a, check_b], strict=True):
            assert not v.errors, v.errors[0]
            assert c.frames >= 75
            assert c.lossy <= c.frames // 2, "most frames were checked cell by cell"
            assert c.detailed >= 50, f"only {c.detailed}/{c.frames} frames had the rest of the scene visible"
        assert viewers_a[0].audio_frames > 0, "the publisher's audio reached the viewer"
        assert room_a.encoder is not None and room_a.sanitizer is not None
        assert room_a.info.viewer_count == 3

        # a late joiner decodes promptly: a keyframe is forced on join (throttled to 0.5 s), so its
        # first frame follows the end of the ICE/DTLS handshake by well under a second
        check_late = FrameCheck(BOX_A, 640, 480, SCENE_A)
        t0 = time.monotonic()
        late = await join(room_a, "late", check_late)
        clients.append(late)
        await late.wait_frames(1, timeout=5)
        assert late.first_frame_at is not None and late.connected_at is not None
        assert late.first_frame_at - late.connected_at < 1.0
        assert late.first_frame_at - t0 < 3.0
        await late.wait_frames(15, timeout=10)
        assert not late.errors, late.errors[0]

        # a viewer leaving frees its peer connection on the relay
        pcs = registry.peer_connection_count
        await viewers_a[2].close()
        assert await wait_until(lambda: "a2" not in room_a.viewer_ids, 5), "relay noticed the viewer left"
        assert await wait_until(lambda: registry.peer_connection_count == pcs - 1, 3)
        await room_a.remove_viewer("late")
        assert registry.peer_connection_count == pcs - 2

        # the publisher drops: the stream ends for its viewers within 2 s; stream B is unaffected
        frames_b = viewer_b.count
        t_drop = time.monotonic()
        await pub_a.close()
        await asyncio.wait_for(room_a.closed.wait(), 2.0)
        ended = [e for e in registry.events if e[0] == "stream_ended"]  # type: ignore[attr-defined]
        assert [e[1] for e in ended] == [room_a.stream_id]
        assert ended[0][2] - t_drop < 2.0
        # the relay closed the stream's viewer connections (the viewers' pages hear it from the
        # signaling layer; over UDP the DTLS close alert itself may be lost)
        assert await wait_until(lambda: registry.peer_connection_count == 2, 3)  # stream B's two
        await viewer_b.wait_frames(frames_b + 30, timeout=10)
        assert not viewer_b.errors
        assert room_b.info.live and registry.list() == [room_b.info]
        m = room_a.sanitizer.metrics
        assert m.detector_failures == 0 and m.raw_frames == 0
    finally:
        for client in clients:
            await client.close()
    await registry.close_all()
    assert await wait_until(lambda: registry.peer_connection_count == 0, 3)
