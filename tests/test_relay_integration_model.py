"""The end-to-end relay test again, through the real ``YoloOnnxDetector`` and ``weights/detector.onnx``.

Skipped only when the weights file is absent. The scene is the hand-labelled shipping label of
``IMG_8747.jpg``: the model must find it on the still, and every frame every viewer decodes must
show it pixelated.
"""

from __future__ import annotations

import asyncio
import dataclasses
from functools import partial

import numpy as np
import pytest

from relay.boxes import box_iou
from relay.room import RoomRegistry, live_peer_connection_count
from relay.settings import DEFAULT_WEIGHTS, Settings
from tests.helpers.media import ImageTrack, Publisher, Viewer, label_scene, use_loopback_ice
from tests.test_relay_integration import FrameCheck

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason=f"no trained weights at {DEFAULT_WEIGHTS}"),
]


async def test_real_detector_pixelates_the_label_for_every_viewer() -> None:
    from relay.detector import YoloOnnxDetector

    settings = Settings()
    detector = YoloOnnxDetector(
        settings.weights,
        settings.input_size,
        settings.conf_threshold,
        settings.iou_threshold,
        settings.detector_threads,
    )
    scene, label = label_scene(640, 480)
    found = await asyncio.to_thread(detector.detect, scene)
    found = found[found[:, 4] >= settings.conf_threshold]
    ious = box_iou(label[:, :4], found[:, :4]) if len(found) else np.zeros((1, 0))
    assert ious.size and ious.max() >= 0.5, (
        f"the model does not find the label on the still: {found.tolist()}"
    )

    with use_loopback_ice():
        reg = RoomRegistry(dataclasses.replace(settings, max_viewers_per_stream=4), detector)
        clients: list[Viewer | Publisher] = []
        try:
            room, key = reg.create("model", "test")
            pub = Publisher(ImageTrack(scene))
            clients.append(pub)
            await pub.connect(partial(room.publish, key))
            checks = [FrameCheck(label, 640, 480, scene) for _ in range(2)]
            for i, c in enumerate(checks):
                v = Viewer(check=c)
                clients.append(v)
                await v.connect(partial(room.add_viewer, f"v{i}"))
            viewers = [c for c in clients if isinstance(c, Viewer)]
            await asyncio.gather(*(v.wait_frames(60, timeout=60) for v in viewers))
            for v, c in zip(viewers, checks, strict=True):
                assert not v.errors, v.errors[0]
                assert c.detailed >= 10, "the rest of the scene was visible at least some of the time"
            assert room.sanitizer is not None
            m = room.sanitizer.metrics
            assert m.detections > 0 and m.detector_failures == 0
        finally:
            for client in clients:
                await client.close()
            await reg.close_all()
    assert live_peer_connection_count() == 0
