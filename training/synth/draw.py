"""Drawing primitives shared by the renderers: sprites, text masks, barcodes, QR-like codes,
guilloche, fake face blocks. Images are numpy BGR uint8; text is rasterised with Pillow."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from . import fonts

Rng = np.random.Generator


@dataclass
class Sprite:
    """A flat rendered thing: colour, coverage alpha and the labelled objects it contains.

    ``objects`` holds (class, mask) pairs in sprite pixels; a hard negative has none. ``glossy``
    enables specular highlights; ``kind`` is informative (manifest counts)."""

    bgr: np.ndarray
    alpha: np.ndarray
    objects: list[tuple[int, np.ndarray]] = field(default_factory=list)
    kind: str = ""
    glossy: bool = False

    @property
    def h(self) -> int:
        return int(self.bgr.shape[0])

    @property
    def w(self) -> int:
        return int(self.bgr.shape[1])


def fast_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas are done on a downscaled copy (much faster, same look)."""
    sigma = float(sigma)
    if sigma <= 3.0:
        return cv2.GaussianBlur(img, (0, 0), max(0.3, sigma))
    h, w = img.shape[:2]
    k = sigma / 2.0
    sw, sh = max(2, int(round(w / k))), max(2, int(round(h / k)))
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 2.0)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def rounded_mask(w: int, h: int, r: float) -> np.ndarray:
    """Filled rounded rectangle, 255 inside."""
    m = np.zeros((h, w), np.uint8)
    r = int(max(0, min(r, w / 2 - 1, h / 2 - 1)))
    if r <= 0:
        m[:] = 255
        return m
    cv2.rectangle(m, (r, 0), (w - 1 - r, h - 1), 255, -1)
    cv2.rectangle(m, (0, r), (w - 1, h - 1 - r), 255, -1)
    for cx, cy in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
        cv2.circle(m, (cx, cy), r, 255, -1, cv2.LINE_AA)
    return m


def text_mask(text: str, font_path: Path | str, size: int, stroke: int = 0) -> np.ndarray:
    """Tight uint8 coverage mask of ``text`` (255 = ink)."""
    f = fonts.font(str(font_path), size)
    x0, y0, x1, y1 = f.getbbox(text, stroke_width=stroke)
    w, h = max(1, int(x1 - x0)), max(1, int(y1 - y0))
    im = Image.new("L", (w + 2, h + 2), 0)
    ImageDraw.Draw(im).text((1 - x0, 1 - y0), text, font=f, fill=255, stroke_width=stroke, stroke_fill=255)
    return np.asarray(im)


def blend_mask(
    img: np.ndarray,
    mask: np.ndarray,
    x: int,
    y: int,
    color: tuple[int, ...] | np.ndarray,
    w: int | None = None,
    h: int | None = None,
    opacity: float = 1.0,
) -> None:
    """Alpha-blend a solid colour through ``mask`` (resized to w x h) into img at (x, y), in place."""
    if w is not None or h is not None:
        w = max(1, int(w if w is not None else mask.shape[1]))
        h = max(1, int(h if h is not None else mask.shape[0]))
        interp = cv2.INTER_AREA if w < mask.shape[1] else cv2.INTER_LINEAR
        mask = cv2.resize(mask, (w, h), interpolation=interp)
    H, W = img.shape[:2]
    mh, mw = mask.shape[:2]
    x, y = int(x), int(y)
    xa, ya, xb, yb = max(0, x), max(0, y), min(W, x + mw), min(H, y + mh)
    if xa >= xb or ya >= yb:
        return
    m = mask[ya - y : yb - y, xa - x : xb - x].astype(np.float32)[..., None] * (opacity / 255.0)
    roi = img[ya:yb, xa:xb].astype(np.float32)
    col = np.asarray(color, np.float32).reshape(1, 1, 3)
    img[ya:yb, xa:xb] = (roi * (1 - m) + col * m).astype(np.uint8)


def put_text(
    img: np.ndarray,
    text: str,
    font_path: Path | str,
    x: float,
    y: float,
    h: float,
    color: tuple[int, ...],
    max_w: float | None = None,
    squeeze: float = 1.0,
    anchor: str = "l",
    opacity: float = 1.0,
) -> tuple[int, int]:
    """Draw ``text`` with cap height ~h at (x, y top). anchor l/c/r. Returns drawn (w, h)."""
    if not text.strip():
        return 0, 0
    m = text_mask(text, font_path, max(6, int(h * 1.25)))
    scale = h / max(1, m.shape[0])
    tw = m.shape[1] * scale * squeeze
    if max_w is not None and tw > max_w:
        tw = max_w
    tw, th = max(1, int(round(tw))), max(1, int(round(h)))
    if anchor == "c":
        x -= tw / 2
    elif anchor == "r":
        x -= tw
    blend_mask(img, m, int(round(x)), int(round(y)), color, tw, th, opacity)
    return tw, th


def barcode_mask(rng: Rng, w: int, h: int, modules: int | None = None) -> np.ndarray:
    """Code128-looking bars: random bar/space runs of 1-4 modules with quiet zones."""
    n = modules or int(rng.integers(60, 140))
    runs: list[int] = []
    total = 0
    while total < n:
        r = int(rng.choice([1, 1, 1, 2, 2, 3, 4]))
        runs.append(r)
        total += r
    row: np.ndarray = np.zeros(total, np.uint8)
    pos, bar = 0, True
    for r in runs:
        if bar:
            row[pos : pos + r] = 255
        pos += r
        bar = not bar
    row = cv2.resize(row[None, :], (max(1, w), 1), interpolation=cv2.INTER_NEAREST)
    return np.repeat(row, max(1, h), axis=0)


def qr_mask(rng: Rng, size: int, modules: int | None = None) -> np.ndarray:
    """QR-looking matrix: random modules plus three finder patterns."""
    n = modules or int(rng.choice([21, 25, 29, 33]))
    g = (rng.random((n, n)) < 0.5).astype(np.uint8) * 255
    for ox, oy in ((0, 0), (n - 7, 0), (0, n - 7)):
        g[oy : oy + 8 if oy == 0 else oy + 7, ox : ox + 8 if ox == 0 else ox + 7] = 0
        g[oy : oy + 7, ox : ox + 7] = 255
        g[oy + 1 : oy + 6, ox + 1 : ox + 6] = 0
        g[oy + 2 : oy + 5, ox + 2 : ox + 5] = 255
    g = np.pad(g, 1)
    return cv2.resize(g, (size, size), interpolation=cv2.INTER_NEAREST)


def datamatrix_mask(rng: Rng, size: int) -> np.ndarray:
    n = int(rng.choice([14, 18, 22, 26]))
    g = (rng.random((n, n)) < 0.5).astype(np.uint8) * 255
    g[:, 0] = 255
    g[-1, :] = 255
    g[0, ::2] = 255
    g[0, 1::2] = 0
    g[::2, -1] = 0
    g[1::2, -1] = 255
    return cv2.resize(g, (size, size), interpolation=cv2.INTER_NEAREST)


def maxicode_mask(rng: Rng, size: int) -> np.ndarray:
    """MaxiCode-looking blob: offset hexagon dot grid with a central bullseye."""
    m = np.zeros((size, size), np.uint8)
    n = 30
    step = size / (n + 1)
    r = max(1, int(step * 0.42))
    for j in range(n):
        for i in range(n):
            if rng.random() < 0.5:
                cx = int((i + 1 + (0.5 if j % 2 else 0)) * step * 0.97)
                cy = int((j + 1) * step)
                cv2.circle(m, (cx, cy), r, 255, -1)
    c = size // 2
    cv2.circle(m, (c, c), int(size * 0.2), 0, -1)
    for k, rr in enumerate((0.18, 0.13, 0.08, 0.035)):
        cv2.circle(m, (c, c), max(1, int(size * rr)), 255 if k % 2 == 0 else 0, -1, cv2.LINE_AA)
    return m


def guilloche(
    img: np.ndarray, rng: Rng, color: tuple[int, ...], strength: float = 0.35, n: int | None = None
) -> None:
    """Fine interlaced sinusoidal line pattern over the whole image, in place."""
    H, W = img.shape[:2]
    over = np.zeros((H, W), np.uint8)
    xs = np.linspace(0, W, max(16, W // 3))
    amp = rng.uniform(0.05, 0.2) * H
    for k in range(n or int(rng.integers(8, 24))):
        ph = rng.uniform(0, 2 * math.pi)
        f1 = rng.uniform(1, 5) * 2 * math.pi / W
        base = (k + 0.5) / 12 * H
        ys = base + amp * np.sin(xs * f1 + ph) + amp * 0.3 * np.sin(xs * f1 * 3.1 + ph * 2)
        pts = np.stack([xs, ys], 1).astype(np.int32)
        cv2.polylines(over, [pts], False, 255, 1, cv2.LINE_AA)
    blend_mask(img, over, 0, 0, color, opacity=strength)


def fake_face(rng: Rng, w: int, h: int, grey: bool = False) -> np.ndarray:
    """A photo block with a blurred head-and-shoulders silhouette: never a real face."""
    bg0 = rng.uniform(150, 240, 3)
    bg1 = bg0 * rng.uniform(0.75, 1.0)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img: np.ndarray = (bg0 * (1 - t) + bg1 * t).astype(np.float32) * np.ones((h, w, 3), np.float32)
    skin = np.array(
        rng.choice([[150, 180, 225], [120, 150, 200], [90, 120, 170], [60, 85, 125]]), np.float32
    ) * rng.uniform(0.85, 1.1)
    cloth = rng.uniform(20, 160, 3)
    hair = rng.uniform(10, 70) * np.ones(3)
    cx = w * rng.uniform(0.42, 0.58)
    cv2.ellipse(img, (int(cx), int(h * 1.02)), (int(w * 0.55), int(h * 0.32)), 0, 0, 360, cloth.tolist(), -1)
    cv2.rectangle(
        img, (int(cx - w * 0.1), int(h * 0.55)), (int(cx + w * 0.1), int(h * 0.75)), skin.tolist(), -1
    )
    hw, hh = int(w * rng.uniform(0.24, 0.3)), int(h * rng.uniform(0.25, 0.3))
    hy = int(h * 0.42)
    if rng.random() < 0.4:  # long hair behind the head
        cv2.ellipse(
            img, (int(cx), int(hy + hh * 0.25)), (int(hw * 1.3), int(hh * 1.2)), 0, 0, 360, hair.tolist(), -1
        )
    cv2.ellipse(img, (int(cx), hy), (hw, hh), 0, 0, 360, skin.tolist(), -1)
    cv2.ellipse(
        img,
        (int(cx), hy - int(hh * rng.uniform(0.25, 0.45))),
        (int(hw * 1.06), int(hh * rng.uniform(0.6, 0.8))),
        0,
        180,
        360,
        hair.tolist(),
        -1,
    )
    # eyes / mouth as soft dark smudges (no identity, just face-like statistics)
    for dx in (-0.38, 0.38):
        cv2.ellipse(
            img,
            (int(cx + dx * hw), int(hy - hh * 0.1)),
            (max(1, hw // 6), max(1, hh // 12)),
            0,
            0,
            360,
            (skin * 0.45).tolist(),
            -1,
        )
    cv2.ellipse(
        img,
        (int(cx), int(hy + hh * 0.5)),
        (max(1, hw // 3), max(1, hh // 14)),
        0,
        0,
        360,
        (skin * 0.6).tolist(),
        -1,
    )
    # side light: a horizontal shading ramp over the whole block, and hair falling on the sides
    if rng.random() < 0.7:
        ramp = np.linspace(rng.uniform(0.75, 1.0), rng.uniform(1.0, 1.15), w, dtype=np.float32)
        img *= ramp[None, :, None] if rng.random() < 0.5 else ramp[None, ::-1, None]
    img += rng.standard_normal((h, w, 1), dtype=np.float32) * 3
    img = cv2.GaussianBlur(img, (0, 0), max(0.6, w / 60))
    out: np.ndarray = np.clip(img, 0, 255).astype(np.uint8)
    if grey:
        g = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
        out = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    return out


def hologram(img: np.ndarray, rng: Rng, x: int, y: int, r: int, opacity: float = 0.25) -> None:
    """A rainbow-ish translucent disc."""
    size = 2 * r + 1
    hue = (
        (
            np.add.outer(np.arange(size), np.arange(size)) * (180.0 / size) * rng.uniform(0.5, 2.0)
            + rng.uniform(0, 180)
        )
        % 180
    ).astype(np.uint8)
    hsv = np.stack([hue, np.full_like(hue, 120), np.full_like(hue, 235)], -1)
    col = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR).astype(np.float32)
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, (r, r), r, 255, -1, cv2.LINE_AA)
    H, W = img.shape[:2]
    xa, ya, xb, yb = max(0, x - r), max(0, y - r), min(W, x - r + size), min(H, y - r + size)
    if xa >= xb or ya >= yb:
        return
    sub_m = (
        m[ya - (y - r) : yb - (y - r), xa - (x - r) : xb - (x - r)].astype(np.float32)[..., None]
        / 255
        * opacity
    )
    sub_c = col[ya - (y - r) : yb - (y - r), xa - (x - r) : xb - (x - r)]
    roi = img[ya:yb, xa:xb].astype(np.float32)
    img[ya:yb, xa:xb] = (roi * (1 - sub_m) + sub_c * sub_m).astype(np.uint8)


def paper_texture(rng: Rng, w: int, h: int, base: tuple[float, ...], grain: float = 4.0) -> np.ndarray:
    """Flat colour plus low-frequency blotches and fine grain."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    lo = cv2.resize(
        rng.normal(0, 1, (max(2, h // 40), max(2, w // 40))).astype(np.float32),
        (w, h),
        interpolation=cv2.INTER_CUBIC,
    )
    img += lo[..., None] * grain * 0.8
    img += rng.standard_normal((h, w, 1), dtype=np.float32) * (grain * 0.5)
    return np.clip(img, 0, 255).astype(np.uint8)


def emboss(img: np.ndarray, mask: np.ndarray, depth: float = 1.0) -> np.ndarray:
    """Raised-letter look: shade ink mask edges with a light from the top-left."""
    m = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.2)
    gx = cv2.Sobel(m, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(m, cv2.CV_32F, 0, 1, ksize=3)
    shade = -(gx + gy) * 40.0 * depth
    return np.clip(img.astype(np.float32) + shade[..., None], 0, 255).astype(np.uint8)
