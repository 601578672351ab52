"""Real footage for the scene-cut tests and benchmark: the shared clips and camera-like motion over real photos.

- :func:`render_clip` renders a shared clip (``../shared/media/clips/<name>/render.py``) to Y4M and
  :func:`read_y4m` yields its frames as planar yuv420p arrays, the relay's frame format;
  :func:`clip_segments` says which frame ranges come from one still (each boundary is a hard cut).
- :func:`camera_clip` films a real photo with a hand-held-like camera (pan, zoom, rotation, shake)
  and optional lighting flicker, sensor noise plus JPEG compression, or a hand-like occluder
  moving in from the side: continuous footage in which a scene-cut detector must stay silent.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[3] / "shared"
CLIPS_DIR = SHARED / "media" / "clips"
BACKGROUNDS_DIR = SHARED / "media" / "backgrounds"
CLIP_NAMES = ("id_cards", "parcel_labels")


def render_clip(name: str, out_dir: Path) -> Path:
    """Render the shared clip ``name`` into ``out_dir``; returns the Y4M path."""
    subprocess.run(
        [sys.executable, str(CLIPS_DIR / name / "render.py"), str(out_dir)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (y4m,) = out_dir.glob(f"{name}*.y4m")
    return y4m


def read_y4m(path: Path) -> Iterator[np.ndarray]:
    """Frames of a 4:2:0 Y4M file as planar yuv420p arrays of shape (H*3/2, W)."""
    with path.open("rb") as f:
        header = f.readline().split()
        width = int(next(t[1:] for t in header if t.startswith(b"W")))
        height = int(next(t[1:] for t in header if t.startswith(b"H")))
        size = width * height * 3 // 2
        while f.readline().startswith(b"FRAME"):
            buf = f.read(size)
            if len(buf) < size:
                return
            yield np.frombuffer(buf, np.uint8).reshape(height * 3 // 2, width)


def clip_segments(name: str) -> list[range]:
    """Frame ranges of clip ``name`` that each film one still; the first frame of each but the
    first follows a hard cut (the still changes from one frame to the next)."""
    frames = json.loads((CLIPS_DIR / name / "frames.json").read_text())["frames"]
    starts = [0] + [i for i in range(1, len(frames)) if frames[i]["src"] != frames[i - 1]["src"]]
    return [range(a, b) for a, b in zip(starts, [*starts[1:], len(frames)], strict=True)]


def to_i420(bgr: np.ndarray) -> np.ndarray:
    """A BGR image (even size) as a planar yuv420p array."""
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420))


@dataclass(frozen=True)
class Camera:
    """How :func:`camera_clip` moves over the photo, per frame, in output pixels / degrees / ratios."""

    pan: tuple[float, float] = (0.0, 0.0)  # px per frame (x, y), bounces at the photo's edges
    zoom: float = 0.0  # relative scale change per frame, bounces between 1x and 1.6x
    rotate: float = 0.0  # amplitude of a slow rotation wobble, degrees
    shake: float = 0.0  # hand-held jitter amplitude, px
    flicker: float = 0.0  # gain varies by up to this ratio from frame to frame (plus exposure steps)
    noise: float = 0.0  # Gaussian sensor noise sigma, grey levels (then JPEG q30)
    hand: int = 0  # a skin-coloured hand-like occluder moves in over this many frames (0: none)
    blur: bool = False  # motion blur along the pan


def _hand_mask(size: tuple[int, int], t: float) -> np.ndarray:
    """Soft mask (0..1) of a palm with fingers entering from the right at progress ``t`` in 0..1."""
    w, h = size
    mask = np.zeros((h, w), np.float32)
    cx = int(w * (1.25 - 0.75 * t))
    cy = int(h * 0.65)
    cv2.ellipse(mask, (cx, cy), (int(w * 0.22), int(h * 0.38)), -20, 0, 360, 1.0, -1)
    for k in range(4):
        fx = cx - int(w * 0.16) + k * int(w * 0.07)
        cv2.ellipse(mask, (fx, cy - int(h * 0.42)), (int(w * 0.03), int(h * 0.2)), -10, 0, 360, 1.0, -1)
    cv2.rectangle(mask, (cx, cy), (w + w, h), 1.0, -1)  # the arm
    return cv2.GaussianBlur(mask, (0, 0), 3.0)


def camera_clip(
    photo: np.ndarray, camera: Camera, frames: int, size: tuple[int, int] = (640, 360), seed: int = 0
) -> Iterator[np.ndarray]:
    """``frames`` yuv420p frames of ``size`` (w, h) filming ``photo`` (BGR) with ``camera``."""
    rng = np.random.default_rng(seed)
    w, h = size
    ph, pw = photo.shape[:2]
    base = max(w / (pw * 0.7), h / (ph * 0.7))  # the view covers 70% of the photo at zoom 1
    x, y, zoom = pw / 2, ph / 2, 1.0
    vx, vy, vz = camera.pan[0], camera.pan[1], camera.zoom
    gain = 1.0
    for i in range(frames):
        s = base * zoom
        half_w, half_h = w / s / 2, h / s / 2
        x, y = x + vx / s, y + vy / s
        if not half_w <= x <= pw - half_w:
            vx, x = -vx, min(max(x, half_w), pw - half_w)
        if not half_h <= y <= ph - half_h:
            vy, y = -vy, min(max(y, half_h), ph - half_h)
        zoom *= 1 + vz
        if not 1.0 <= zoom <= 1.6:
            vz, zoom = -vz, min(max(zoom, 1.0), 1.6)
        angle = camera.rotate * math.sin(i / 9.0)
        jx, jy = rng.normal(0, camera.shake, 2) if camera.shake else (0.0, 0.0)
        m = cv2.getRotationMatrix2D((x, y), angle, s)
        m[:, 2] += (w / 2 + jx - x, h / 2 + jy - y)
        img = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if camera.blur and (vx or vy):
            length = max(3, int(abs(vx) + abs(vy)))
            kernel = np.zeros((length, length), np.float32)
            cv2.line(kernel, (0, length // 2), (length - 1, length // 2), 1.0, 1)
            if abs(vy) > abs(vx):
                kernel = kernel.T
            img = cv2.filter2D(img, -1, kernel / kernel.sum())
        out = img.astype(np.float32)
        if camera.hand:
            t = min(1.0, i / camera.hand)
            alpha = _hand_mask(size, t)[..., None]
            shade = np.linspace(0.8, 1.1, w, dtype=np.float32)[None, :, None]
            skin = np.array([120, 150, 205], np.float32) * shade
            out = out * (1 - alpha) + skin * alpha
        if camera.flicker:
            gain = 1 + rng.uniform(-camera.flicker, camera.flicker)
            if i % 20 == 10:  # an auto-exposure step
                gain *= 1 + 1.5 * camera.flicker
            out = out * gain
        if camera.noise:
            out = out + np.asarray(rng.normal(0.0, camera.noise, size=out.shape), dtype=np.float32)
        img = np.clip(out, 0, 255).astype(np.uint8)
        if camera.noise:
            ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 30])
            decoded = cv2.imdecode(jpg, cv2.IMREAD_COLOR) if ok else None
            if decoded is None:
                raise RuntimeError("JPEG round trip failed")
            img = decoded
        yield to_i420(img)


def still_frame(photo: np.ndarray, size: tuple[int, int] = (640, 360)) -> np.ndarray:
    """``photo`` (BGR) cropped to the aspect of ``size`` and resized, as a yuv420p frame."""
    w, h = size
    ph, pw = photo.shape[:2]
    s = max(w / pw, h / ph)
    img = cv2.resize(photo, (max(w, round(pw * s)), max(h, round(ph * s))), interpolation=cv2.INTER_AREA)
    y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return to_i420(np.ascontiguousarray(img[y0 : y0 + h, x0 : x0 + w]))
