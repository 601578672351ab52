"""The end-to-end relay test again, through the real ``YoloOnnxDetector`` and ``weights/detector.onnx``.

Skipped only when the weights file is absent.

- ``test_relay_runs_on_the_shipped_model``: the relay's media path with the real model: it runs
  in the detector thread, never fails, frames reach every viewer, and whatever the model finds on
  the still at the serving threshold is pixelated in every decoded frame.
- ``test_shipped_model_pixelates_the_ups_label``: the hand-labelled shipping label of
  ``IMG_8747.jpg`` must be found on the still and be pixelated in every frame every viewer decodes.
  It was xfail until the epoch-38 model (which scores the label 0.63 on this still; epoch 22: 0.43),
  and now guards against a regression.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import pytest
from av import VideoFrame

from relay.boxes import box_iou
from relay.room import RoomRegistry
from relay.settings import DEFAULT_WEIGHTS, Settings
from tests.helpers.media import ImageTrack, Publisher, Viewer, label_scene, use_loopback_ice
from tests.test_relay_integration import FrameCheck

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason=f"no trained weights at {DEFAULT_WEIGHTS}"),
]


def make_detector(settings: Settings):  # type: ignore[no-untyped-def]
    from relay.detector import detector_from_settings

    return detector_from_settings(settings)


async def run_relay(
    detector: object, scene: np.ndarray, checks: Sequence[Callable[[VideoFrame, bool], None]]
) -> RoomRegistry:
    """Publish ``scene`` through a relay with ``detector``; one viewer per check; 60 frames each."""
    settings = Settings()
    reg = RoomRegistry(dataclasses.replace(settings, max_viewers_per_stream=4), detector)  # type: ignore[arg-type]
    clients: list[Viewer | Publisher] = []
    try:
        room, key = reg.create("model", "test")
        pub = Publisher(ImageTrack(scene))
        clients.append(pub)
        await pub.connect(partial(room.publish, key))
        viewers = []
        for i, c in enumerate(checks):
            v = Viewer(check=c)
            clients.append(v)
            viewers.append(v)
            await v.connect(partial(room.add_viewer, f"v{i}"))
        await asyncio.gather(*(v.wait_frames(60, timeout=60) for v in viewers))
        for v in viewers:
            assert not v.errors, v.errors[0]
        assert room.sanitizer is not None
        m = room.sanitizer.metrics
        assert m.detections > 0 and m.detector_failures == 0 and m.raw_frames == 0
        assert m.exact_frames + m.carried_frames > 0, "the relay used the model's results"
    finally:
        for client in clients:
            await client.close()
        await reg.close_all()
    assert reg.peer_connection_count == 0
    return reg


async def test_relay_runs_on_the_shipped_model() -> None:
    settings = Settings()
    detector = make_detector(settings)
    scene, _ = label_scene(640, 480)
    found = await asyncio.to_thread(detector.detect, scene)
    found = found[found[:, 4] >= settings.conf_threshold]
    checks: list[Callable[[VideoFrame, bool], None]] = [
        FrameCheck(found[i : i + 1], 640, 480, scene) for i in range(min(len(found), 3))
    ]
    if not checks:  # the model finds nothing on the still: only the plumbing is checked

        def nothing_to_check(frame: VideoFrame, lossy: bool) -> None:
            return None

        checks = [nothing_to_check]
    with use_loopback_ice():
        await run_relay(detector, scene, checks)


async def test_shipped_model_pixelates_the_ups_label() -> None:
    settings = Settings()
    detector = make_detector(settings)
    scene, label = label_scene(640, 480)
    found = await asyncio.to_thread(detector.detect, scene)
    found = found[found[:, 4] >= settings.conf_threshold]
    ious = box_iou(label[:, :4], found[:, :4]) if len(found) else np.zeros((1, 0))
    assert ious.size and ious.max() >= 0.5, (
        f"the shipped model does not find the UPS label on the still at conf {settings.conf_threshold} "
        f"(found {found.tolist()}): the relay would show it; see weights/MODEL_CARD.md"
    )
    with use_loopback_ice():
        await run_relay(
            detector, scene, [FrameCheck(label, 640, 480, scene), FrameCheck(label, 640, 480, scene)]
        )
