"""Real headless Chromium end to end: the project's publisher page with a fake camera fed from a
Y4M clip, the server, and the project's viewer page; the viewer's pixels are checked.

The clip (``/work/shared/media/clips/parcel_labels``, 640x480, 15 fps, one shipping label per frame
with a ground-truth box) is rendered at test time into a temporary folder. Frames are identified
on both ends by matching small thumbnails against the clip, which maps each frame to its box.

Two server detectors:

* ``gt`` — a test-only fake (``create_app``'s ``detector`` argument) that identifies the frame and
  returns the clip's ground-truth box: this tests pages + signaling + relay + mosaic end to end;
* ``real-weights`` — **the real YOLOv5 ONNX detector** from ``weights/detector.onnx`` (or the model
  at ``MOSAIC_E2E_WEIGHTS``) with the server's default thresholds and tracking: the shipped model
  scores this label around the 0.6 threshold, so it relies on a found label staying hidden
  (relay/tracker.py; with tracking off, ``track_conf`` 0.6 and ``track_hold_s`` 0, it fails) and on
  lookahead (relay/lookahead.py): the model confirms the label a frame or two after each loop of the
  clip brings it back, and those first frames go out hidden only because they wait for the detection
  of a later frame (with ``lookahead_s`` 0 it failed 3 runs of 3).

Pass rule (docs from ``/work/shared/notes/browser-e2e.md``): at least 60 frames decoded by the
viewer; in every snapshot the label region's 16 px cells (the mosaic's global grid) have a median
std < 4; in most snapshots the cells well outside the label have a median std > 3x the inside.
Set ``MOSAIC_SCREENSHOTS=DIR`` to keep screenshots of both pages.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from aiohttp import web

from relay.settings import DEFAULT_WEIGHTS, Settings
from signaling.app import create_app
from tests.helpers.media import use_loopback_ice

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ServeApp = Callable[[web.Application], Awaitable[str]]  # type of the conftest fixture

CLIP_DIR = Path("/work/shared/media/clips/parcel_labels")
CHROMIUM = shutil.which("chromium")
THUMB = (64, 48)
CELL = 16  # relay.mosaic.block_for_frame(16, w, h) for frames up to 720p
COMMON_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

if CHROMIUM is None:
    pytest.skip(
        "chromium is not installed (apt-get install chromium): browser tests skipped", allow_module_level=True
    )
if not CLIP_DIR.is_dir():
    pytest.skip(f"{CLIP_DIR} is absent: browser tests need ../shared", allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="pip install playwright (no `playwright install`)"
)


# --- the clip ----------------------------------------------------------------------------------


@dataclass
class Clip:
    y4m: Path
    width: int
    height: int
    boxes: list[np.ndarray]  # per frame: (N, 4) x1, y1, x2, y2 in clip pixels
    lumas: list[np.ndarray]  # per frame: the clip's own luma (what the camera sent)
    thumbs: np.ndarray  # (frames, th*tw) float32, zero-mean luma thumbnails

    def identify(self, gray: np.ndarray) -> int:
        """Index of the clip frame that ``gray`` (any size, luma) shows."""
        t = thumb(gray)
        return int(np.argmin(((self.thumbs - t) ** 2).sum(axis=1)))

    def boxes_for(self, index: int, shape: tuple[int, int], spread: int = 0) -> np.ndarray:
        """Boxes of frames ``index ± spread`` scaled to an image of ``shape`` (h, w)."""
        sx, sy = shape[1] / self.width, shape[0] / self.height
        n = len(self.boxes)
        got = [self.boxes[i] for i in range(index - spread, index + spread + 1) if 0 <= i < n]
        out = np.concatenate(got) if got else np.zeros((0, 4))
        return out * np.array([sx, sy, sx, sy])


def thumb(gray: np.ndarray) -> np.ndarray:
    t = cv2.resize(gray.astype(np.float32), THUMB, interpolation=cv2.INTER_AREA).ravel()
    return t - t.mean()


def read_y4m_luma(path: Path, width: int, height: int) -> Iterator[np.ndarray]:
    frame_bytes = width * height * 3 // 2
    with path.open("rb") as f:
        f.readline()  # stream header
        while f.readline().startswith(b"FRAME"):
            buf = f.read(frame_bytes)
            if len(buf) < frame_bytes:
                return
            yield np.frombuffer(buf, np.uint8, width * height).reshape(height, width)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    out = tmp_path_factory.mktemp("clip")
    subprocess.run(
        [sys.executable, str(CLIP_DIR / "render.py"), str(out)], check=True, capture_output=True, timeout=120
    )
    gt = json.loads((CLIP_DIR / "gt.json").read_text())
    (y4m,) = out.glob("*.y4m")
    w, h = gt["width"], gt["height"]
    lumas = [g.copy() for g in read_y4m_luma(y4m, w, h)]
    boxes = [np.array([b[1:5] for b in frame], np.float64).reshape(-1, 4) for frame in gt["frames"]]
    assert len(boxes) == len(lumas)
    return Clip(y4m, w, h, boxes, lumas, np.stack([thumb(g) for g in lumas]))


class GroundTruthDetector:
    """Test-only detector: identifies the clip frame and returns its ground-truth boxes."""

    name = "ground-truth (test fake)"

    def __init__(self, clip: Clip) -> None:
        self.clip = clip

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(img_bgr, cv2.COLOR_BGR2GRAY)
        boxes = self.clip.boxes_for(self.clip.identify(gray), gray.shape)
        out = np.zeros((len(boxes), 6), np.float32)
        out[:, :4], out[:, 4], out[:, 5] = boxes, 0.99, 2
        return out


def real_detector(settings: Settings) -> Any:
    """The real YOLOv5 ONNX detector: ``weights/detector.onnx``, or ``MOSAIC_E2E_WEIGHTS`` to try a
    candidate model end to end."""
    weights = Path(os.environ.get("MOSAIC_E2E_WEIGHTS") or DEFAULT_WEIGHTS)
    if not weights.is_file():
        pytest.skip(f"real-detector browser e2e: {weights} does not exist yet")
    from relay.detector import detector_from_settings

    return detector_from_settings(settings, weights)


# --- pixel checks ------------------------------------------------------------------------------


def cell_grid(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Std of every full 16 px cell of the global grid, and the cells' top-left x and y."""
    h, w = gray.shape
    rows, cols = h // CELL, w // CELL
    cells = gray[: rows * CELL, : cols * CELL].astype(np.float32).reshape(rows, CELL, cols, CELL)
    return cells.std(axis=(1, 3)), np.arange(cols)[None, :] * CELL, np.arange(rows)[:, None] * CELL


def covered(x0: np.ndarray, y0: np.ndarray, boxes: np.ndarray, *, fully: bool) -> np.ndarray:
    """Cells lying fully inside (``fully``) or touching any of ``boxes``."""
    mask = np.zeros((y0.shape[0], x0.shape[1]), bool)
    for x1, y1, x2, y2 in boxes:
        if fully:
            mask |= (x0 >= x1) & (x0 + CELL <= x2) & (y0 >= y1) & (y0 + CELL <= y2)
        else:
            mask |= (x0 < x2) & (x0 + CELL > x1) & (y0 < y2) & (y0 + CELL > y1)
    return mask


def grow(boxes: np.ndarray, frac: float, pad: float) -> np.ndarray:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    d = np.stack([-(w * frac + pad), -(h * frac + pad), w * frac + pad, h * frac + pad], axis=1)
    return boxes + d


@dataclass
class Verdict:
    index: int
    inside: float  # median std of the label's cells as received (pixelated: ~0)
    outside: float | None  # median received/sent std ratio of textured cells far from the label
    inside_cells: int
    outside_cells: int


TEXTURED = 6.0  # a cell whose std in the clip frame is above this has detail a mosaic would remove


def judge(clip: Clip, gray: np.ndarray, settings: Settings) -> Verdict:
    """Compare the received frame with the clip frame it shows, cell by cell.

    Inside the label: textured cells must arrive flat (std < 4). Far from the label (outside
    every box of the neighbouring frames grown like a carried box): textured cells must keep
    their detail (received std / sent std well above what a mosaic leaves).
    """
    index = clip.identify(gray)
    sent = cv2.resize(clip.lumas[index], (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_AREA)
    got_std, x0, y0 = cell_grid(gray)
    sent_std, _, _ = cell_grid(sent)
    textured = sent_std > TEXTURED
    inside = covered(x0, y0, grow(clip.boxes_for(index, gray.shape), 0.0, -4.0), fully=True) & textured
    keep_out = grow(clip.boxes_for(index, gray.shape, spread=3), settings.carry_margin, CELL)
    outside = ~covered(x0, y0, keep_out, fully=False) & textured
    assert inside.sum() >= 20, f"frame {index}: too few textured cells inside the label"
    ratio = got_std[outside] / sent_std[outside]
    return Verdict(
        index,
        float(np.median(got_std[inside])),
        float(np.median(ratio)) if outside.sum() >= 8 else None,
        int(inside.sum()),
        int(outside.sum()),
    )


# --- browsers ----------------------------------------------------------------------------------


@pytest.fixture
async def playwright() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        yield p


async def launch(p: Any, extra: list[str]) -> Any:
    return await p.chromium.launch(executable_path=CHROMIUM, args=COMMON_FLAGS + extra, timeout=60_000)


SNAPSHOT_JS = """(video) => {
  const c = document.createElement("canvas");
  c.width = video.videoWidth; c.height = video.videoHeight;
  c.getContext("2d").drawImage(video, 0, 0);
  return c.toDataURL("image/png");
}"""


async def snapshot_gray(page: Any, selector: str) -> np.ndarray:
    url = await page.eval_on_selector(selector, SNAPSHOT_JS)
    png = base64.b64decode(url.split(",", 1)[1])
    gray = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert gray is not None and gray.size > 0, "the viewer's video could not be captured"
    return gray


async def decoded_frames(page: Any, selector: str) -> int:
    return int(await page.eval_on_selector(selector, "(v) => v.getVideoPlaybackQuality().totalVideoFrames"))


async def screenshot(page: Any, name: str) -> None:
    folder = os.environ.get("MOSAIC_SCREENSHOTS")
    if folder:  # playwright creates the folder
        await page.screenshot(path=os.path.join(folder, name), full_page=True)


@pytest.mark.parametrize(
    "detector_kind",
    [
        "gt",
        "real-weights",
    ],
)
async def test_browser_publisher_to_browser_viewer_is_pixelated(
    detector_kind: str, clip: Clip, serve_app: ServeApp, playwright: Any
) -> None:
    settings = Settings()
    detector = GroundTruthDetector(clip) if detector_kind == "gt" else real_detector(settings)
    with use_loopback_ice():
        url = await serve_app(create_app(settings, detector))
        pub_browser = await launch(
            playwright,
            [
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={clip.y4m}",
            ],
        )
        view_browser = await launch(playwright, ["--autoplay-policy=no-user-gesture-required"])
        try:
            await run_e2e(url, clip, settings, pub_browser, view_browser)
        finally:
            await pub_browser.close()
            await view_browser.close()


async def run_e2e(url: str, clip: Clip, settings: Settings, pub_browser: Any, view_browser: Any) -> None:
    pub_ctx = await pub_browser.new_context(viewport={"width": 1280, "height": 860})
    pub = await pub_ctx.new_page()
    requested: list[str] = []  # every URL either page loads: nothing may come from elsewhere (no CDN)
    pub.on("request", lambda r: requested.append(r.url))
    page_errors: list[str] = []  # uncaught exceptions in the pages' scripts
    pub.on("pageerror", lambda e: page_errors.append(f"publisher: {e}"))
    await pub.goto(url + "/publish")
    await pub.wait_for_selector("#start:not([disabled])", timeout=30_000)
    await pub.fill("#title", "Parcel labels (e2e)")
    await pub.fill("#category", "unboxing")
    await pub.click("#start")
    await pub.wait_for_selector("#share:not(.hidden)", timeout=30_000)
    stream_id = (await pub.text_content("#stream-id") or "").strip()
    assert stream_id

    view_ctx = await view_browser.new_context(viewport={"width": 1280, "height": 800})
    viewer = await view_ctx.new_page()
    viewer.on("request", lambda r: requested.append(r.url))
    viewer.on("pageerror", lambda e: page_errors.append(f"viewer: {e}"))
    await viewer.goto(url + "/")
    card = viewer.locator(f'li.stream-card[data-stream-id="{stream_id}"]')
    await card.wait_for(timeout=15_000)
    assert "Parcel labels (e2e)" in (await card.text_content() or "")
    await card.click()
    await viewer.wait_for_function(
        "() => document.querySelector('#remote').getVideoPlaybackQuality().totalVideoFrames >= 60",
        timeout=60_000,
    )
    await pub.wait_for_function(
        "() => document.querySelector('#sanitized').getVideoPlaybackQuality().totalVideoFrames >= 10",
        timeout=30_000,
    )
    await screenshot(pub, "publisher.png")
    await screenshot(viewer, "viewer.png")

    # snapshots until 5 of them show enough textured picture far from the label, at most 100 (about
    # 4 loops of the 10 s clip): only 24 of its 150 frames do (0-13, 23-25, 53-56, 103-105; elsewhere
    # the label fills the frame), so 40 snapshots (1.6 loops) missed them often enough to fail
    verdicts: list[Verdict] = []
    while len(verdicts) < 100 and sum(v.outside is not None for v in verdicts) < 5:
        gray = await snapshot_gray(viewer, "#remote")
        verdicts.append(judge(clip, gray, settings))
        await viewer.wait_for_timeout(300)
    assert await decoded_frames(viewer, "#remote") >= 60
    shown = [
        (v.index, round(v.inside, 2), v.outside and round(v.outside, 2), v.outside_cells) for v in verdicts
    ]
    # privacy: the label is pixelated in EVERY snapshot
    raw = [s for s, v in zip(shown, verdicts, strict=True) if v.inside >= 4.0]
    assert not raw, f"label not pixelated in {len(raw)} of {len(shown)} snapshots: {raw}"
    # and the rest of the picture is not (most snapshots; a fully pixelated frame is allowed, fail closed)
    judged = [v.outside for v in verdicts if v.outside is not None]
    assert len(judged) >= 4, shown
    clear = [ratio for ratio in judged if ratio > 0.6]
    assert len(clear) >= 0.6 * len(judged), shown
    print("snapshots (frame, inside std, outside ratio, outside cells):", shown)

    # glass-to-glass delay: which clip frame the camera preview shows vs what the viewer shows
    delays = []
    for _ in range(5):
        cam = clip.identify(await snapshot_gray(pub, "#local"))
        seen = clip.identify(await snapshot_gray(viewer, "#remote"))
        n = len(clip.boxes)
        delays.append(((cam - seen + n // 2) % n - n // 2) / 15.0)  # frames apart, wrapped, at 15 fps
        await viewer.wait_for_timeout(200)
    print("camera preview -> viewer delay (s):", [round(d, 2) for d in delays])
    assert float(np.median(delays)) < 1.5, delays

    # negative control: the streamer switches the mosaic off; the viewer is warned and the label
    # arrives with its detail (which also shows that the check above can tell the difference)
    pub.once("dialog", lambda dialog: dialog.accept())
    await pub.click("label:has(#mosaic)")  # (the page has a microphone switch too)
    await viewer.wait_for_selector("#mosaic-warning:not(.hidden)", timeout=10_000)
    await viewer.wait_for_selector(".stream-card .badge.danger", timeout=10_000)
    await viewer.wait_for_timeout(1500)
    await screenshot(viewer, "viewer-mosaic-off.png")
    await screenshot(pub, "publisher-mosaic-off.png")
    raw = [judge(clip, await snapshot_gray(viewer, "#remote"), settings) for _ in range(3)]
    assert all(v.inside > 8.0 for v in raw), [(v.index, v.inside) for v in raw]

    # the viewer sees the stream end when the publisher stops it
    await pub.click("#stop")
    await viewer.wait_for_selector("#overlay.ended:not(.hidden)", timeout=10_000)
    assert "ended" in (await viewer.text_content("#overlay-text") or "").lower()
    await screenshot(viewer, "viewer-ended.png")

    # the streamer goes live again, then closes the tab without stopping: the viewer is told
    # at once (socket.io disconnect), not after the ~30 s WebRTC consent timeout
    await pub.wait_for_selector("#start:not(.hidden):not([disabled])", timeout=10_000)
    await pub.click("#start")
    await pub.wait_for_selector("#share:not(.hidden)", timeout=30_000)
    second = (await pub.text_content("#stream-id") or "").strip()
    assert second and second != stream_id
    card = viewer.locator(f'li.stream-card[data-stream-id="{second}"]')
    await card.wait_for(timeout=15_000)
    await card.click()
    await viewer.wait_for_function(
        "() => document.querySelector('#remote').getVideoPlaybackQuality().totalVideoFrames >= 10",
        timeout=30_000,
    )
    foreign = [u for u in requested if not u.startswith((url + "/", "data:", "blob:"))]
    assert not foreign and any("/vendor/socket.io.min.js" in u for u in requested), foreign
    assert not page_errors, page_errors
    closed_at = time.monotonic()
    await pub_ctx.close()
    await viewer.wait_for_selector("#overlay.ended:not(.hidden)", timeout=10_000)
    assert time.monotonic() - closed_at < 3.0
    assert "connection dropped" in (await viewer.text_content("#overlay-text") or "")
    assert await viewer.locator("li.stream-card").count() == 0


class NoDetections:
    """A detector that finds nothing (the page test sends no video)."""

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        return np.zeros((0, 6), np.float32)


ANSWER_SDP = "\r\n".join(
    [
        "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0",
        "m=video 9 UDP/TLS/RTP/SAVPF 97 98 99", "a=rtpmap:97 VP8/90000", "a=rtpmap:98 rtx/90000",
        "a=fmtp:98 apt=97", "a=rtpmap:99 VP8/90000", "a=fmtp:99 max-fs=12288", "",
    ]
)  # fmt: skip


async def test_sdp_start_bitrate_munging(serve_app: ServeApp, playwright: Any) -> None:
    """static/common.js adds x-google-{start,min}-bitrate to every VP8 payload type, once."""
    url = await serve_app(create_app(Settings(), NoDetections()))
    browser = await launch(playwright, [])
    try:
        page = await browser.new_page()
        await page.goto(url + "/")
        out = await page.evaluate("(sdp) => Relay.withStartBitrate(Relay.withStartBitrate(sdp))", ANSWER_SDP)
    finally:
        await browser.close()
    lines = out.split("\r\n")
    extra = "x-google-start-bitrate=2000;x-google-min-bitrate=1000"
    assert f"a=fmtp:97 {extra}" in lines  # added after its rtpmap
    assert lines.index(f"a=fmtp:97 {extra}") == lines.index("a=rtpmap:97 VP8/90000") + 1
    assert f"a=fmtp:99 max-fs=12288;{extra}" in lines  # appended to the existing line
    assert "a=fmtp:98 apt=97" in lines  # rtx untouched
    assert out.count("x-google-start-bitrate") == 2
