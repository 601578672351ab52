"""Privacy across a scene cut while the detector falls behind (issue #11 item 4, issue #12 canary).

The publisher (a real aiortc peer, over socket.io against the real app) shows scene A (a real
shipping label on the left), then cuts to scene B (the same picture mirrored: the label is now on
the right). The detector answers for whichever scene it is shown, but slowly (0.3 s, several frames
behind). Viewers check every frame they decode: a frame that shows A must have A's label pixelated,
one that shows B must have B's. Without the scene-cut rule (and without lookahead, which would also
hold B's first frames back) the relay carries A's boxes onto B's first frames and B's label goes out
raw: the control shows that this test sees that leak.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import cv2
import numpy as np
import pytest
from av import VideoFrame

from tests.helpers.media import ImageTrack, frame_gray, label_scene
from tests.test_canary import PUB, VIEW, ServeApp, SioConnect, call, metrics_of, start_relay, until, watch
from tests.test_relay_integration import FrameCheck

pytestmark = pytest.mark.timeout(150)

W, H = 640, 480
SCENE_A, BOX_A = label_scene(W, H)
SCENE_B = np.ascontiguousarray(SCENE_A[:, ::-1])
BOX_B = BOX_A.copy()
BOX_B[:, 0], BOX_B[:, 2] = W - BOX_A[:, 2], W - BOX_A[:, 0]


def _small(gray: np.ndarray) -> np.ndarray:
    return cv2.resize(gray.astype(np.float32), (32, 24), interpolation=cv2.INTER_AREA)


SMALL_A = _small(cv2.cvtColor(SCENE_A, cv2.COLOR_BGR2GRAY))
SMALL_B = _small(cv2.cvtColor(SCENE_B, cv2.COLOR_BGR2GRAY))


def shows_b(gray: np.ndarray) -> bool:
    """Which scene a (possibly pixelated) frame shows: pixelation keeps the coarse picture."""
    small = _small(gray)
    return float(np.abs(small - SMALL_B).mean()) < float(np.abs(small - SMALL_A).mean())


class SlowSceneDetector:
    """Finds the label of whichever scene it is shown, ``delay_s`` after it was asked."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay_s)
        return (BOX_B if shows_b(cv2.cvtColor(img_bgr, cv2.COLOR_BGR2GRAY)) else BOX_A).copy()


class SceneCheck:
    """Every decoded frame: the label of the scene it shows is pixelated (FrameCheck of that scene)."""

    def __init__(self) -> None:
        self.a = FrameCheck(BOX_A, W, H, SCENE_A)
        self.b = FrameCheck(BOX_B, W, H, SCENE_B)
        self.b_frames = 0

    def __call__(self, frame: VideoFrame, lossy: bool = False) -> None:
        if shows_b(frame_gray(frame)):
            self.b_frames += 1
            self.b(frame, lossy)
        else:
            self.a(frame, lossy)


@pytest.mark.parametrize(
    ("lookahead_s", "scene_cut_threshold", "leaks"),
    [(0.0, 0.27, False), (0.25, 0.27, False), (0.0, 0.0, True)],
    ids=["cut-rule", "cut-rule+lookahead", "control-no-rule"],
)
async def test_no_raw_object_of_the_new_scene_while_the_detector_lags(
    lookahead_s: float,
    scene_cut_threshold: float,
    leaks: bool,
    loopback_ice: None,
    serve_app: ServeApp,
    sio_connect: SioConnect,
    peers: list[Any],
) -> None:
    from tests.helpers.media import Publisher

    detector = SlowSceneDetector()
    url, app = await start_relay(
        serve_app, detector, lookahead_s=lookahead_s, scene_cut_threshold=scene_cut_threshold
    )
    pub_sock, view_sock = await sio_connect(url, PUB), await sio_connect(url, VIEW)
    created = await call(pub_sock, "create_stream", {"title": "cut", "category": "test"}, PUB)
    assert created["ok"], created
    stream_id, key = created["stream_id"], created["publish_key"]
    track = ImageTrack(SCENE_A, fps=15)
    publisher = Publisher(track)
    peers.append(publisher)

    async def answer(sdp: str, type_: str) -> dict[str, Any]:
        payload = {"stream_id": stream_id, "publish_key": key, "sdp": sdp, "type": type_}
        ack = await call(pub_sock, "publish", payload, PUB)
        assert ack["ok"], ack
        return ack

    await publisher.connect(answer)
    check = SceneCheck()
    viewer, _ = await watch(view_sock, stream_id, peers, check=check)
    m = metrics_of(app, stream_id)
    await viewer.wait_frames(15, timeout=40)
    assert m.detections > 0
    detector.delay_s = 0.3  # the detector falls several frames behind
    await asyncio.sleep(1.0)
    track.set_image(SCENE_B)  # the cut
    await until(lambda: check.b_frames >= 30 or bool(viewer.errors), 40, "30 frames of the new scene")
    if leaks:
        assert viewer.errors, "the control saw no leak: this test would not see one either"
        assert "not pixelated" in str(viewer.errors[0])
        return
    assert not viewer.errors, viewer.errors[0]
    assert m.scene_cuts >= 1, m.as_dict()
    assert check.a.frames >= 10 and check.b.frames >= 30
    assert m.raw_frames == 0
