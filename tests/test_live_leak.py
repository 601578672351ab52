"""Leak rate through the live server (issue #11 item 5), by ``bench/live_leak.py``'s core.

The shared ``parcel_labels`` clip (rebuilt by its ``render.py``) is published over WebRTC from an aiortc
peer, in real time at 15 fps, to the real app (``create_app``) serving the shipped YOLO model plus the
text/barcode safety net, exactly as ``run_server.py`` loads them; an aiortc viewer decodes every frame,
reads the send index stamped in the 16 px strip below the picture and judges the frame against its
source frame with ``../shared/tools/leakrate.py``.

The issue's live target is a leak rate <= 0.5 %. It does NOT hold yet: measured 1-3.4 % on this clip
through the live server (0.67 % through ``relay.offline``; docs/BENCHMARKS.md, "Leak rate through the
live server"); in a 4 s window of 60 frames 2-4 boxes leaked (up to 7 %). This test asserts what holds
with a margin, <= 15 %, so that a regression (a dead detector, a broken mosaic) fails it, and the
control: with the stream's mosaic switched off the same path sees > 50 % of the boxes leak.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.live_leak import CLIPS, Clip, load_detectors, measure, prepare_clip, serve
from relay.settings import DEFAULT_WEIGHTS

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason=f"no trained weights at {DEFAULT_WEIGHTS}"),
    pytest.mark.skipif(not (CLIPS / "parcel_labels").is_dir(), reason="no shared clips"),
]

LIVE_FLOOR = 0.15  # measured <= 0.073 in a 60-frame window (the target, 0.005, is not met: see above)
SECONDS = 4.0
FPS = 15.0


@pytest.fixture(scope="module")
def relay_detectors() -> tuple[Any, Any, list[Any]]:
    return load_detectors(text_net=True, height=480)


@pytest.fixture(scope="module")
def parcel_clip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clip]:
    yield prepare_clip("parcel_labels", Path(tmp_path_factory.mktemp("clip")))


async def test_live_leak_rate_on_the_parcel_clip(
    loopback_ice: None, relay_detectors: tuple[Any, Any, list[Any]], parcel_clip: Clip
) -> None:
    settings, detectors, _ = relay_detectors
    frames = round(SECONDS * FPS)
    async with serve(settings, detectors) as (url, app):
        live = await measure(url, parcel_clip, fps=FPS, max_frames=frames, app=app)
        control = await measure(url, parcel_clip, fps=FPS, max_frames=frames // 2, mosaic=False, app=app)
    print(live, control)
    assert not live["errors"] and not control["errors"], (live["errors"], control["errors"])
    # the run happened: frames went through the detectors and reached the viewer, readable
    assert live["pipeline"]["detections"] > 0, live["pipeline"]
    assert live["frames_received"] >= frames // 2, live
    assert live["unreadable"] <= frames // 10, live
    assert live["duplicates"] == 0, live
    assert live["boxes"] >= live["frames_received"], live  # one label in every frame of this clip
    # the judge sees raw frames as leaks: the control proves the path measures what a viewer sees
    assert control["frames_received"] >= frames // 4, control
    assert control["leak_rate"] > 0.5, control
    assert live["leak_rate"] <= LIVE_FLOOR, live
