"""Scene composition: backgrounds, perspective placement, occlusion, lighting and camera effects.

``render_sample(rng, pool)`` returns the final BGR image, its boxes and some metadata. A box is the
axis-aligned box of the visible part (inside the frame and not covered by anything composited later)
of the whole object after all transforms; objects with less than ``MIN_VISIBLE`` of their area visible
are dropped (no box)."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import SHARED, ids, negatives, plates, waybills
from .draw import Rng, Sprite, fast_blur, paper_texture

log = logging.getLogger(__name__)

MIN_VISIBLE = 0.4
# Road / parking scenes in the background pool (file names as in data_cache/backgrounds or the shared pool).
ROAD_KEYS = (
    "udacity_carnd",
    "intel_sample_videos__0009",
    "intel_sample_videos__0010",
    "intel_sample_videos__0011",
    "intel_sample_videos__0012",
    "intel_sample_videos__0013",
    "intel_sample_videos__0014",
    "intel_sample_videos__0041",
    "intel_sample_videos__0042",
    "intel_sample_videos/0009",
    "intel_sample_videos/0010",
    "intel_sample_videos/0011",
    "intel_sample_videos/0012",
    "intel_sample_videos/0013",
    "intel_sample_videos/0014",
    "intel_sample_videos/0041",
    "intel_sample_videos/0042",
)
BG_DIR = SHARED / "media" / "backgrounds"
SKIN = [(150, 180, 225), (130, 165, 215), (105, 140, 195), (80, 110, 160), (55, 80, 120), (40, 60, 95)]


# ------------------------------------------------------------------ background pool
def background_sources(bg_dir: Path = BG_DIR) -> tuple[list[Path], list[str]]:
    """(usable files, excluded relative paths): the pool minus every file in CONTAINS_TARGETS.txt."""
    excluded: list[str] = []
    ct = bg_dir / "CONTAINS_TARGETS.txt"
    if ct.exists():
        for line in ct.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                excluded.append(line.split("\t")[0].strip())
    files: list[Path] = []
    man = bg_dir / "manifest.csv"
    if man.exists():
        with man.open() as f:
            for row in csv.DictReader(f):
                if row["file"] not in excluded and (bg_dir / row["file"]).exists():
                    files.append(bg_dir / row["file"])
    else:
        files = [p for p in sorted(bg_dir.rglob("*.jpg")) if str(p.relative_to(bg_dir)) not in excluded]
    return files, excluded


class BackgroundPool:
    """Lazily loaded, cached background images."""

    def __init__(self, files: list[Path], road_files: list[Path] | None = None):
        self.files = list(files)
        self._cache: dict[int, np.ndarray] = {}
        self._road: list[int] | None = None
        self.road_files = list(road_files or [])
        self._road_cache: dict[int, np.ndarray] = {}

    def random_road(self, rng: Rng) -> np.ndarray | None:
        """A road / parking background: a pool image showing roads, or a derived one (plates inpainted)."""
        road = self.road_indices()
        n = len(road) + len(self.road_files)
        if n == 0:
            return None
        k = int(rng.integers(n))
        if k < len(road):
            return self.get(road[k])
        k -= len(road)
        if k not in self._road_cache:
            if len(self._road_cache) > 400:
                self._road_cache.clear()
            img = cv2.imread(str(self.road_files[k]), cv2.IMREAD_COLOR)
            self._road_cache[k] = img if img is not None else np.full((240, 320, 3), 100, np.uint8)
        return self._road_cache[k]

    def __len__(self) -> int:
        return len(self.files)

    def road_indices(self) -> list[int]:
        """Backgrounds showing roads or parking lots (dash-cam frames, parking-lot video, street GIFs)."""
        if self._road is None:
            self._road = [i for i, f in enumerate(self.files) if any(k in str(f) for k in ROAD_KEYS)]
        return self._road

    def get(self, i: int) -> np.ndarray:
        if i not in self._cache:
            img = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
            if img is None:
                img = np.full((480, 640, 3), 128, np.uint8)
            self._cache[i] = img
        return self._cache[i]

    @classmethod
    def default(cls, root: Path | None = None) -> BackgroundPool:
        """Prefer the prepared data_cache/backgrounds (symlinks), else the shared pool directly."""
        road: list[Path] = []
        if root is not None:
            rd = root / "data_cache" / "backgrounds_road"
            road = sorted(rd.glob("*.jpg")) if rd.is_dir() else []
            d = root / "data_cache" / "backgrounds"
            files = sorted(p for p in d.rglob("*.jpg")) if d.is_dir() else []
            if files:
                return cls(files, road)
        files, _ = background_sources()
        if not files:
            log.warning("no real backgrounds found under %s: procedural backgrounds only", BG_DIR)
        return cls(files, road)


def procedural_background(rng: Rng, w: int, h: int) -> np.ndarray:
    kind = int(rng.integers(5))
    if kind == 0:  # wood desk
        base = np.array([rng.uniform(40, 110), rng.uniform(80, 150), rng.uniform(120, 200)], np.float32)
        y = np.arange(h, dtype=np.float32)[:, None]
        x = np.arange(w, dtype=np.float32)[None, :]
        grain = np.sin((y + 8 * np.sin(x / rng.uniform(30, 90))) / rng.uniform(2, 6)) * 0.06
        img = base * (1 + grain[..., None])
        img = img + rng.normal(0, 4, (h, w, 1))
    elif kind == 1:  # cardboard / warehouse
        img = waybills.cardboard(rng, w, h).astype(np.float32)
    elif kind == 2:  # asphalt / concrete
        g = rng.uniform(60, 160)
        img = paper_texture(rng, w, h, (g, g, g * rng.uniform(0.95, 1.05)), grain=rng.uniform(8, 20)).astype(
            np.float32
        )
    elif kind == 3:  # fabric / table cloth / solid
        img = paper_texture(rng, w, h, tuple(rng.uniform(20, 240, 3)), grain=rng.uniform(2, 10)).astype(
            np.float32
        )
    else:  # gradient wall
        c0, c1 = rng.uniform(30, 240, 3), rng.uniform(30, 240, 3)
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        img = c0 * (1 - t) + c1 * t + np.zeros((h, w, 3), np.float32)
        img += rng.normal(0, 3, (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def pick_background(
    rng: Rng, pool: BackgroundPool, w: int, h: int, prefer_road: bool = False, info: dict | None = None
) -> np.ndarray:
    """A random crop of a real background (80 %) or a procedural one; road / parking scenes if asked.
    ``info["upscale"]`` receives how much the crop was enlarged (objects get the same softness later)."""
    road = pool.random_road(rng) if prefer_road else None
    if road is not None:
        src = road
    elif len(pool) == 0 or rng.random() < 0.2:
        return procedural_background(rng, w, h)
    else:
        src = pool.get(int(rng.integers(len(pool))))
    sh, sw = src.shape[:2]
    # random crop with the output aspect ratio, 45-100 % of the source
    frac = rng.uniform(0.45, 1.0)
    cw = min(sw, int(round(min(sw, sh * w / h) * frac)))
    ch = min(sh, max(1, int(round(cw * h / w))))
    x0 = int(rng.integers(0, sw - cw + 1))
    y0 = int(rng.integers(0, sh - ch + 1))
    crop = src[y0 : y0 + ch, x0 : x0 + cw]
    out = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if cw > w else cv2.INTER_LINEAR)
    if info is not None:
        info["upscale"] = w / max(1, cw)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.15:  # shallow depth of field: objects in front of a blurred scene
        out = fast_blur(out, rng.uniform(2.0, 8.0))
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------ geometry
def homography(
    rng: Rng, w: int, h: int, scale: float, cx: float, cy: float, max_tilt: float, max_roll: float
) -> np.ndarray:
    """Sprite (w x h) -> canvas: scale, 3D tilt (yaw/pitch), roll, perspective, translation."""
    yaw = math.radians(rng.uniform(-max_tilt, max_tilt))
    pitch = math.radians(rng.uniform(-max_tilt, max_tilt) * 0.8)
    roll = math.radians(float(np.clip(rng.normal(0, max_roll / 2.5), -max_roll, max_roll)))
    ry = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    rz = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    pts = np.array([[-w / 2, -h / 2, 0], [w / 2, -h / 2, 0], [w / 2, h / 2, 0], [-w / 2, h / 2, 0]]) * scale
    p = pts @ (rz @ rx @ ry).T
    f = max(w, h) * scale * rng.uniform(1.2, 4.0)
    z = p[:, 2] + f
    proj = p[:, :2] * (f / np.maximum(z, f * 0.2))[:, None] + [cx, cy]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    return cv2.getPerspectiveTransform(src, proj.astype(np.float32))


@dataclass
class Placed:
    cls: int
    full_area: float
    vis: np.ndarray  # bool canvas mask of the visible part


@dataclass
class Canvas:
    img: np.ndarray
    objs: list[Placed] = field(default_factory=list)

    @property
    def h(self) -> int:
        return int(self.img.shape[0])

    @property
    def w(self) -> int:
        return int(self.img.shape[1])

    def occlude(self, cover: np.ndarray) -> None:
        """cover: bool canvas mask of something opaque drawn on top."""
        for o in self.objs:
            o.vis &= ~cover


def _lighting(rng: Rng, sp: Sprite) -> np.ndarray:
    """Gradient, shadow band and specular highlight on the sprite colour (float32 result)."""
    img = sp.bgr.astype(np.float32)
    h, w = img.shape[:2]
    if rng.random() < 0.7:
        a, b = rng.uniform(0.55, 1.15), rng.uniform(0.75, 1.25)
        ang = rng.uniform(0, 2 * math.pi)
        xx, yy = np.meshgrid(np.linspace(-1, 1, w, dtype=np.float32), np.linspace(-1, 1, h, dtype=np.float32))
        t = (xx * math.cos(ang) + yy * math.sin(ang)) * 0.5 + 0.5
        img *= (a * (1 - t) + b * t)[..., None]
    if rng.random() < 0.25:  # soft shadow polygon (hand / object / edge shadow)
        m: np.ndarray = np.zeros((h, w), np.uint8)
        pts = np.array([[rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h] for _ in range(4)], np.int32)
        cv2.fillConvexPoly(m, cv2.convexHull(pts), 255)
        m = fast_blur(m, max(1.0, min(w, h) * rng.uniform(0.02, 0.1))).astype(np.float32) / 255
        img *= (1 - m * rng.uniform(0.25, 0.6))[..., None]
    if sp.glossy and rng.random() < 0.35:  # specular glare
        m = np.zeros((h, w), np.float32)
        cv2.ellipse(
            m,
            (int(rng.uniform(0, w)), int(rng.uniform(0, h))),
            (int(w * rng.uniform(0.1, 0.4)), int(h * rng.uniform(0.05, 0.3))),
            rng.uniform(0, 180),
            0,
            360,
            1.0,
            -1,
        )
        m = fast_blur(m, max(1.0, min(w, h) * 0.08))
        img += (m * rng.uniform(60, 180))[..., None]
    return img


def composite(rng: Rng, cv: Canvas, sp: Sprite, H: np.ndarray, shadow: bool = False) -> None:
    """Warp a sprite with homography H onto the canvas; update occlusion and add its objects."""
    W, Hh = cv.w, cv.h
    # anti-alias strong down-scaling: pre-shrink the sprite
    sx = math.sqrt(abs(np.linalg.det(H[:2, :2]))) / max(1e-6, abs(H[2, 2]))
    color = _lighting(rng, sp)
    alpha = sp.alpha
    masks = [m for _, m in sp.objects]
    if sx < 0.6:
        f = max(sx * 1.6, 2.0 / min(sp.w, sp.h))
        nw, nh = max(2, int(round(sp.w * f))), max(2, int(round(sp.h * f)))
        fx, fy = nw / sp.w, nh / sp.h
        color = cv2.resize(color, (nw, nh), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, (nw, nh), interpolation=cv2.INTER_AREA)
        masks = [cv2.resize(m, (nw, nh), interpolation=cv2.INTER_AREA) for m in masks]
        H = H @ np.diag([1 / fx, 1 / fy, 1.0])
    sh, sw = alpha.shape[:2]
    corners = cv2.perspectiveTransform(np.array([[[0, 0], [sw, 0], [sw, sh], [0, sh]]], np.float32), H)[0]
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    # extended region (can leave the frame) so the whole object's area is known
    ex0, ey0 = max(x0, -W), max(y0, -Hh)
    ex1, ey1 = min(x1, 2 * W), min(y1, 2 * Hh)
    if ex1 <= ex0 or ey1 <= ey0:
        return
    T = np.array([[1, 0, -ex0], [0, 1, -ey0], [0, 0, 1]], np.float64) @ H
    size = (int(ex1 - ex0), int(ey1 - ey0))
    # in-frame part of the extended region
    fx0, fy0, fx1, fy1 = max(0, ex0), max(0, ey0), min(W, ex1), min(Hh, ey1)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    sl = (slice(fy0 - ey0, fy1 - ey0), slice(fx0 - ex0, fx1 - ex0))
    wa = cv2.warpPerspective(alpha, T, size, flags=cv2.INTER_LINEAR, borderValue=0)
    wc = cv2.warpPerspective(color, T, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = wa[sl].astype(np.float32)[..., None] / 255.0
    roi = cv.img[fy0:fy1, fx0:fx1].astype(np.float32)
    if shadow and rng.random() < 0.6:  # drop shadow on the background
        dx, dy = int(rng.normal(0, 0.03) * size[0]), int(abs(rng.normal(0.03, 0.02)) * size[1])
        sa = fast_blur(wa, max(1.0, 0.02 * min(size))).astype(np.float32) / 255
        sa = np.roll(np.roll(sa, dy, 0), dx, 1)[sl][..., None]
        roi *= 1 - sa * rng.uniform(0.2, 0.5)
    fg = wc[sl]
    if rng.random() < 0.5:  # pull the object's exposure towards the scene's (no glowing paste-ons)
        sel = a[..., 0] > 0.5
        if sel.any():
            ratio = (float(roi[sel].mean()) + 10) / (float(fg[sel].mean()) + 10)
            fg = fg * float(np.clip(ratio ** rng.uniform(0.2, 0.6), 0.45, 1.3))
    cv.img[fy0:fy1, fx0:fx1] = np.clip(roi * (1 - a) + fg * a, 0, 255).astype(np.uint8)
    cover = np.zeros((Hh, W), bool)
    cover[fy0:fy1, fx0:fx1] = wa[sl] > 127
    cv.occlude(cover)
    for (cls, _), m in zip(sp.objects, masks, strict=True):
        wm = cv2.warpPerspective(m, T, size, flags=cv2.INTER_LINEAR, borderValue=0) > 127
        full = float(wm.sum())
        if full <= 0:
            continue
        vis = np.zeros((Hh, W), bool)
        vis[fy0:fy1, fx0:fx1] = wm[sl]
        cv.objs.append(Placed(cls, full, vis))


def _capsule(
    layer: np.ndarray,
    mask: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    th: int,
    skin: np.ndarray,
    rng: Rng,
    nail: bool,
) -> None:
    """A finger from p1 (base) to p0 (tip): cylinder shading (dark rim, light ridge), optional nail."""
    a, b = tuple(int(v) for v in p0), tuple(int(v) for v in p1)
    steps = 5
    for k in range(steps):
        t = k / (steps - 1)
        w = max(1, int(round(th * (1 - 0.75 * t))))
        col = (skin * (0.84 + 0.2 * t)).tolist()
        cv2.line(layer, a, b, col, w, cv2.LINE_AA)
        cv2.circle(layer, a, max(1, w // 2), col, -1, cv2.LINE_AA)
    cv2.line(mask, a, b, 255, th, cv2.LINE_AA)
    cv2.circle(mask, a, max(1, th // 2), 255, -1, cv2.LINE_AA)
    if nail and th >= 6:
        d = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-6)
        c = p0 + d * th * 0.35
        ang = math.degrees(math.atan2(d[1], d[0]))
        cv2.ellipse(
            layer,
            (int(c[0]), int(c[1])),
            (max(1, int(th * 0.32)), max(1, int(th * 0.26))),
            ang,
            0,
            360,
            np.clip(skin * np.array([1.05, 1.05, 1.15]) + 25, 0, 255).tolist(),
            -1,
            cv2.LINE_AA,
        )


def draw_fingers(rng: Rng, cv: Canvas, H: np.ndarray, sw: int, sh: int) -> None:
    """A hand holding a card: a palm outside one edge and one to three fingers over the card."""
    skin = np.array(SKIN[int(rng.integers(len(SKIN)))], np.float32) * rng.uniform(0.85, 1.1)
    layer = np.zeros((cv.h, cv.w, 3), np.float32)
    over = np.zeros((cv.h, cv.w), np.uint8)

    def to_canvas(pts: list[tuple[float, float]]) -> np.ndarray:
        return cv2.perspectiveTransform(np.array([pts], np.float32), H)[0]

    edges = rng.choice(4, size=int(rng.integers(1, 3)), replace=False)
    for e in edges:
        t = rng.uniform(0.15, 0.85)
        pt_in = {0: (t * sw, 0), 1: (sw, t * sh), 2: (t * sw, sh), 3: (0, t * sh)}[int(e)]
        inward = np.array({0: (0, 1), 1: (-1, 0), 2: (0, -1), 3: (1, 0)}[int(e)], np.float64)
        along = np.array([inward[1], -inward[0]])
        m = min(sw, sh)
        width = rng.uniform(0.2, 0.3) * m
        n_f = int(rng.choice([1, 1, 2, 3]))
        for k in range(n_f):
            length = rng.uniform(0.1, 0.28) * m
            base = np.array(pt_in) + along * (k - (n_f - 1) / 2) * width * 1.05
            tip = base + inward * length
            root = base - inward * m * rng.uniform(0.35, 0.7)
            q = to_canvas([tuple(tip), tuple(root), tuple(base + along * width)])
            base_c = to_canvas([tuple(base)])[0]
            th = max(2, int(np.linalg.norm(q[2] - base_c)))
            _capsule(layer, over, q[0], q[1], th, skin, rng, nail=k == 0 and rng.random() < 0.6)
        if rng.random() < 0.5:  # palm outside the card
            c = np.array(pt_in) - inward * m * rng.uniform(0.55, 0.8)
            qc = to_canvas(
                [tuple(c), tuple(c + inward * m * 0.35), tuple(c + along * m * rng.uniform(0.35, 0.6))]
            )
            ax0 = int(np.linalg.norm(qc[2] - qc[0]))
            ax1 = int(np.linalg.norm(qc[1] - qc[0]))
            ang = math.degrees(math.atan2(qc[2][1] - qc[0][1], qc[2][0] - qc[0][0]))
            cv2.ellipse(
                layer,
                (int(qc[0][0]), int(qc[0][1])),
                (max(2, ax0), max(2, ax1)),
                ang,
                0,
                360,
                (skin * 0.85).tolist(),
                -1,
                cv2.LINE_AA,
            )
            cv2.ellipse(
                over,
                (int(qc[0][0]), int(qc[0][1])),
                (max(2, ax0), max(2, ax1)),
                ang,
                0,
                360,
                255,
                -1,
                cv2.LINE_AA,
            )
    if not over.any():
        return
    a: np.ndarray = over.astype(np.float32)[..., None] / 255
    layer = cv2.GaussianBlur(layer, (0, 0), 1.0) + rng.standard_normal((cv.h, cv.w, 1), dtype=np.float32) * 3
    a = cv2.GaussianBlur(a, (0, 0), 0.7)[..., None]
    cv.img[:] = np.clip(cv.img * (1 - a) + layer * a, 0, 255).astype(np.uint8)
    cv.occlude(over > 127)


def _hand_params(rng: Rng, sw: int, sh: int) -> dict:
    e = int(rng.choice([1, 2, 3, 2, 1, 3, 0]))  # mostly held at the sides / bottom
    t = rng.uniform(0.25, 0.75)
    pt = {0: (t * sw, 0.0), 1: (float(sw), t * sh), 2: (t * sw, float(sh)), 3: (0.0, t * sh)}[e]
    inward = np.array({0: (0, 1), 1: (-1, 0), 2: (0, -1), 3: (1, 0)}[e], np.float64)
    m = float(min(sw, sh))
    fw = rng.uniform(0.2, 0.28) * m
    return {
        "pt": np.array(pt),
        "in": inward,
        "along": np.array([inward[1], -inward[0]]) * rng.choice([-1, 1]),
        "fw": fw,
        "skin": np.array(SKIN[int(rng.integers(len(SKIN)))], np.float32) * rng.uniform(0.85, 1.1),
        "thumb_len": rng.uniform(0.12, 0.35) * m,
        "palm_d": rng.uniform(0.9, 1.4) * fw,
    }


def _capsule_poly(p0: np.ndarray, p1: np.ndarray, r: float, n: int = 8) -> np.ndarray:
    d = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-9)
    nrm = np.array([-d[1], d[0]])
    pts = []
    base = math.atan2(nrm[1], nrm[0])
    for k in range(n + 1):  # round cap at p1
        a = base - math.pi * k / n
        pts.append(p1 + r * np.array([math.cos(a), math.sin(a)]))
    for k in range(n + 1):  # round cap at p0
        a = base + math.pi - math.pi * k / n
        pts.append(p0 + r * np.array([math.cos(a), math.sin(a)]))
    return np.array(pts)


def _paint_skin(rng: Rng, cv: Canvas, polys: list[np.ndarray], H: np.ndarray, skin: np.ndarray) -> None:
    """Fill sprite-space polygons (mapped through H) with shaded skin; occludes what is below."""
    mask = np.zeros((cv.h, cv.w), np.uint8)
    for poly in polys:
        q = cv2.perspectiveTransform(poly.reshape(1, -1, 2).astype(np.float32), H)[0]
        cv2.fillPoly(mask, [np.round(q).astype(np.int32)], 255, cv2.LINE_AA)
    if not mask.any():
        return
    ys, xs = np.where(mask > 0)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    sub = mask[y0:y1, x0:x1].astype(np.float32) / 255
    size = max(2.0, 0.08 * min(y1 - y0, x1 - x0))
    rim = fast_blur(sub, size)  # 1 inside, falls off at the silhouette: rounded look
    col = skin[None, None, :] * (0.72 + 0.33 * rim[..., None])
    col = col + rng.standard_normal((y1 - y0, x1 - x0, 1), dtype=np.float32) * 2.5
    a = fast_blur(sub, 0.7)[..., None]
    roi = cv.img[y0:y1, x0:x1].astype(np.float32)
    cv.img[y0:y1, x0:x1] = np.clip(roi * (1 - a) + col * a, 0, 255).astype(np.uint8)
    cover = np.zeros((cv.h, cv.w), bool)
    cover[y0:y1, x0:x1] = sub > 0.5
    cv.occlude(cover)


def draw_hand_back(rng: Rng, cv: Canvas, H: np.ndarray, hp: dict) -> None:
    """Palm and fingers behind the card (drawn before the card; only what sticks out stays visible)."""
    fw, pt, inw, al = hp["fw"], hp["pt"], hp["in"], hp["along"]
    c = pt - inw * hp["palm_d"]
    ang = np.linspace(0, 2 * math.pi, 28, endpoint=False)
    palm = np.stack([c + al * 2.1 * fw * math.cos(a) + inw * 1.5 * fw * math.sin(a) for a in ang])
    polys = [palm]
    for k in range(4):  # fingers behind the card, spread along the edge
        b = c + al * (k - 1.5) * fw * 0.95 + inw * fw
        polys.append(_capsule_poly(b, b + inw * fw * rng.uniform(1.5, 2.6), fw * 0.45))
    _paint_skin(rng, cv, polys, H, hp["skin"] * 0.92)


def draw_thumb(rng: Rng, cv: Canvas, H: np.ndarray, hp: dict) -> None:
    """The thumb in front of the card, from the palm across the edge."""
    fw, pt, inw, al = hp["fw"], hp["pt"], hp["in"], hp["along"]
    root = pt - inw * hp["palm_d"] + al * 1.6 * fw
    tip = pt + inw * hp["thumb_len"] + al * rng.uniform(-0.3, 0.6) * fw
    _paint_skin(rng, cv, [_capsule_poly(root, tip, fw * 0.52)], H, hp["skin"])


def random_blob(rng: Rng, cv: Canvas, near: tuple[float, float], size: float) -> None:
    """An opaque irregular object (cup, phone, leaf, hand-ish) partly covering something."""
    n = int(rng.integers(5, 10))
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = size * rng.uniform(0.5, 1.0, n)
    cx = near[0] + rng.normal(0, size * 0.5)
    cy = near[1] + rng.normal(0, size * 0.5)
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
    m = np.zeros((cv.h, cv.w), np.uint8)
    cv2.fillPoly(m, [pts], 255, cv2.LINE_AA)
    col = np.array(
        SKIN[int(rng.integers(len(SKIN)))] if rng.random() < 0.5 else rng.uniform(0, 255, 3), np.float32
    )
    a = m.astype(np.float32)[..., None] / 255
    tex = col * (1 + rng.standard_normal((cv.h, cv.w, 1), dtype=np.float32) * 0.05)
    cv.img[:] = np.clip(cv.img * (1 - a) + tex * a, 0, 255).astype(np.uint8)
    cv.occlude(m > 127)


# ------------------------------------------------------------------ camera effects
def camera_effects(rng: Rng, img: np.ndarray) -> np.ndarray:
    out: np.ndarray = img.astype(np.float32)
    if rng.random() < 0.5:  # colour cast / white balance
        out *= rng.uniform(0.82, 1.18, 3)
    if rng.random() < 0.6:  # exposure / contrast
        out = (out - 128) * rng.uniform(0.65, 1.3) + 128 + rng.uniform(-35, 30)
    if rng.random() < 0.3:  # gamma
        out = 255 * (np.clip(out, 0, 255) / 255) ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.25:  # vignette
        h, w = out.shape[:2]
        xx, yy = np.meshgrid(np.linspace(-1, 1, w, dtype=np.float32), np.linspace(-1, 1, h, dtype=np.float32))
        out *= (1 - rng.uniform(0.15, 0.5) * (xx**2 + yy**2) / 2)[..., None]
    out = np.clip(out, 0, 255).astype(np.uint8)
    r = rng.random()
    if r < 0.2:  # motion blur
        k = int(rng.integers(3, 14))
        ker: np.ndarray = np.zeros((k, k), np.float32)
        ker[k // 2, :] = 1
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
        ker = cv2.warpAffine(ker, rot, (k, k))
        out = cv2.filter2D(out, -1, ker / max(ker.sum(), 1e-6))
    elif r < 0.5:
        out = fast_blur(out, rng.uniform(0.4, 1.8))
    if rng.random() < 0.2:  # phone-style sharpening halos
        blur = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.8, 2.0))
        amount = rng.uniform(0.3, 1.0)
        out = cv2.addWeighted(out, 1 + amount, blur, -amount, 0)
    if rng.random() < 0.15:  # low resolution camera
        h, w = out.shape[:2]
        f = rng.uniform(0.35, 0.75)
        small = cv2.resize(out, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.45:  # sensor noise
        sigma = rng.uniform(2, 12)
        noise = rng.standard_normal(out.shape[:2] + (1,), dtype=np.float32) * (sigma * rng.uniform(0.6, 1.0))
        noise = noise + rng.standard_normal(out.shape, dtype=np.float32) * (sigma * 0.3)
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.05:
        g = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
        out = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    return out


# ------------------------------------------------------------------ one sample
CLASS_P = np.array([0.4, 0.3, 0.3])
SIZE_RANGE = {0: (12.0, 0.75), 1: (22.0, 0.95), 2: (24.0, 1.0)}  # (min px, max fraction of long side)


def _object_sprite(rng: Rng, cls: int, context: bool = True) -> tuple[Sprite, bool]:
    """A sprite for class cls, maybe in context. Returns (sprite, is_handheld_card)."""
    if cls == 0:
        p = plates.random_plate(rng)
        return (plates.car_context(rng, p) if context and rng.random() < 0.5 else p), False
    if cls == 1:
        return ids.random_id(rng, context), context and rng.random() < 0.35
    lab = waybills.random_label(rng)
    return (waybills.on_carrier(rng, lab) if context and rng.random() < 0.75 else lab), False


CLOSEUP = 0.3  # default share of ID cards and labels rendered as close-ups (0.3-0.9 of the long side)


def _target_width(rng: Rng, cls: int, long_side: int, closeup: float = CLOSEUP) -> float:
    lo, hi_frac = SIZE_RANGE[cls]
    hi = max(lo * 1.5, hi_frac * long_side)
    if cls in (1, 2) and rng.random() < closeup:  # close-ups: a card or parcel held up to the camera
        return float(rng.uniform(0.3, 0.9) * long_side)
    if cls == 0 and rng.random() < 0.6:  # plates are mostly small in real photos
        hi = min(hi, 160.0)
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _obj_bbox(H0: np.ndarray, sp: Sprite) -> np.ndarray:
    m = sp.objects[0][1]
    ys, xs = np.where(m > 0)
    pts = np.array(
        [[[xs.min(), ys.min()], [xs.max(), ys.min()], [xs.max(), ys.max()], [xs.min(), ys.max()]]], np.float32
    )
    c = cv2.perspectiveTransform(pts, H0)[0]
    return np.array([*c.min(0), *c.max(0)], np.float64)


def _overlap(b: np.ndarray, others: list[np.ndarray]) -> float:
    area = max(1e-6, (b[2] - b[0]) * (b[3] - b[1]))
    tot = 0.0
    for o in others:
        iw = min(b[2], o[2]) - max(b[0], o[0])
        ih = min(b[3], o[3]) - max(b[1], o[1])
        if iw > 0 and ih > 0:
            tot += iw * ih
    return tot / area


def _place_center(
    rng: Rng,
    H0: np.ndarray,
    sp: Sprite,
    W: int,
    H: int,
    positive: bool,
    placed: list[np.ndarray] | None = None,
) -> tuple[float, float]:
    """Translation for a sprite projected around (0, 0): a labelled object usually stays inside the frame
    (75 %; otherwise anywhere: cut by the border, or dropped if < 40 % visible), and of a few candidate
    spots the one overlapping the already placed objects least is taken."""
    if not positive:  # hard negatives: anywhere, but preferably not on top of the labelled objects
        best_n, best_nov = (0.0, 0.0), float("inf")
        corners = cv2.perspectiveTransform(
            np.array([[[0, 0], [sp.w, 0], [sp.w, sp.h], [0, sp.h]]], np.float32), H0
        )[0]
        nb = np.array([*corners.min(0), *corners.max(0)], np.float64)
        for _ in range(3 if placed else 1):
            cx, cy = float(rng.uniform(0.02, 0.98) * W), float(rng.uniform(0.02, 0.98) * H)
            # overlap measured relative to the labelled objects' area
            ov = sum(_overlap(p, [nb + [cx, cy, cx, cy]]) for p in (placed or []))
            if ov < best_nov:
                best_n, best_nov = (cx, cy), ov
            if ov == 0:
                break
        return best_n
    b = _obj_bbox(H0, sp)
    inside = rng.random() < 0.85
    best, best_ov = (0.0, 0.0), float("inf")
    for _ in range(4 if placed else 1):
        if inside:
            lo_x, hi_x = -b[0], W - b[2]
            lo_y, hi_y = -b[1], H - b[3]
            cx = rng.uniform(min(lo_x, hi_x), max(lo_x, hi_x))
            cy = rng.uniform(min(lo_y, hi_y), max(lo_y, hi_y))
        else:
            cx, cy = rng.uniform(0.02, 0.98) * W, rng.uniform(0.02, 0.98) * H
        ov = _overlap(b + [cx, cy, cx, cy], placed or [])
        if ov < best_ov:
            best, best_ov = (float(cx), float(cy)), ov
        if ov == 0:
            break
    if placed is not None:
        placed.append(b + [best[0], best[1], best[0], best[1]])
    return best


def render_sample(
    rng: Rng,
    pool: BackgroundPool,
    long_side: int | None = None,
    negatives_only: bool = False,
    background: np.ndarray | None = None,
    plan: list[tuple[str, int]] | None = None,
    effects: bool = True,
    context: bool = True,
    class_p: np.ndarray | None = None,
    closeup: float = CLOSEUP,
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]], dict]:
    """Render one image. Returns (BGR image, [(cls, x1, y1, x2, y2) pixels], info).

    ``plan`` fixes the content ([("pos", cls) | ("neg", -1)], drawn in order); ``effects=False`` skips
    the camera effects and ``context=False`` the cars / carriers / hands / occluders (used by tests)."""
    if long_side is None:
        long_side = 640 if rng.random() < 0.55 else int(rng.uniform(320, 960))
    aspect = float(rng.choice([4 / 3, 16 / 9, 3 / 2, 1.0, 3 / 4, 9 / 16]))
    if aspect >= 1:
        W, H = long_side, max(64, int(round(long_side / aspect)))
    else:
        W, H = max(64, int(round(long_side * aspect))), long_side
    kinds: list[str] = []
    # what goes in
    r = rng.random()
    if negatives_only:
        n_pos = 0
    elif r < 0.1:
        n_pos = 0
    elif r < 0.6:
        n_pos = 1
    elif r < 0.85:
        n_pos = 2
    else:
        n_pos = int(rng.integers(3, 6))
    n_neg = int(rng.integers(1, 4)) if (negatives_only or n_pos == 0 or rng.random() < 0.3) else 0
    items: list[tuple[str, int]] = [("neg", -1)] * n_neg
    cp = CLASS_P if class_p is None else np.asarray(class_p, np.float64) / np.sum(class_p)
    same = rng.random() < 0.5
    first = int(rng.choice(3, p=cp))
    for _ in range(n_pos):
        items.append(("pos", first if same else int(rng.choice(3, p=cp))))
    order = list(rng.permutation(len(items)))
    if plan is not None:
        items, order = list(plan), list(range(len(plan)))
    bg_info: dict = {}
    plates_only = (
        bool(items) and all(c == 0 for w_, c in items if w_ == "pos") and any(w_ == "pos" for w_, _ in items)
    )
    if background is not None:
        bg = background.copy()
    else:
        bg = pick_background(rng, pool, W, H, prefer_road=plates_only and rng.random() < 0.4, info=bg_info)
    H, W = bg.shape[:2]
    cv = Canvas(bg)
    placed: list[np.ndarray] = []
    for idx in order:
        what, cls = items[int(idx)]
        if what == "neg":
            sp = negatives.random_negative(rng)
            width = long_side * rng.uniform(0.08, 0.6)
            scale = width / sp.w
            handheld = False
        else:
            sp, handheld = _object_sprite(rng, cls, context)
            mask = sp.objects[0][1]
            xs = np.where(mask.max(0) > 0)[0]
            obj_w = float(xs[-1] - xs[0] + 1) if xs.size else float(sp.w)
            scale = _target_width(rng, cls, long_side, closeup) / obj_w
        kinds.append(sp.kind)
        max_tilt = 55.0 if cls in (1, 2) else 45.0
        max_roll = 60.0 if cls in (1, 2) and rng.random() < 0.3 else 18.0
        H0 = homography(rng, sp.w, sp.h, scale, 0.0, 0.0, max_tilt, max_roll)
        cx, cy = _place_center(rng, H0, sp, W, H, what == "pos", placed)
        Hm = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]], np.float64) @ H0
        hp = _hand_params(rng, sp.w, sp.h) if handheld else None
        if hp is not None and rng.random() < 0.8:
            draw_hand_back(rng, cv, Hm, hp)
        composite(rng, cv, sp, Hm, shadow=context and (cls in (1, 2) or what == "neg"))
        if hp is not None:
            if rng.random() < 0.8:
                draw_thumb(rng, cv, Hm, hp)
            else:
                draw_fingers(rng, cv, Hm, sp.w, sp.h)
        elif what == "pos" and context and rng.random() < 0.12:
            c = cv2.perspectiveTransform(
                np.array([[[sp.w * rng.uniform(0, 1), sp.h * rng.uniform(0, 1)]]], np.float32), Hm
            )[0][0]
            random_blob(rng, cv, (float(c[0]), float(c[1])), scale * min(sp.w, sp.h) * rng.uniform(0.15, 0.4))
    if effects and context and rng.random() < 0.07:  # night: dark scene, retro-reflective plates stay bright
        dark = rng.uniform(0.2, 0.45)
        lit = np.full(cv.img.shape[:2], dark, np.float32)
        for o in cv.objs:
            if o.cls == 0:
                lit[o.vis] = min(1.0, dark * rng.uniform(2.0, 4.0))
        lit = fast_blur(lit, 1.0)
        night = cv.img.astype(np.float32) * lit[..., None] * np.array([1.1, 1.0, 0.9], np.float32)
        cv.img = np.clip(night, 0, 255).astype(np.uint8)
    up = float(bg_info.get("upscale", 1.0))
    if effects and up > 1.4 and rng.random() < 0.85:
        # the background was enlarged: give the sharp synthetic objects the same softness (no shortcut)
        h0, w0 = cv.img.shape[:2]
        f = 1.0 / min(up, 3.0) * rng.uniform(0.9, 1.3)
        small = cv2.resize(cv.img, (max(8, int(w0 * f)), max(8, int(h0 * f))), interpolation=cv2.INTER_AREA)
        cv.img = cv2.resize(small, (w0, h0), interpolation=cv2.INTER_LINEAR)
    img = camera_effects(rng, cv.img) if effects else cv.img
    boxes: list[tuple[int, float, float, float, float]] = []
    dropped = 0
    big_dropped = 0
    for o in cv.objs:
        va = float(o.vis.sum())
        if va / o.full_area < MIN_VISIBLE or va < 4:
            dropped += 1
            # a clearly visible chunk without a box would teach the detector to ignore such objects
            big_dropped += va >= max(900.0, 0.01 * W * H)
            continue
        ys, xs = np.where(o.vis)
        x1, x2, y1, y2 = float(xs.min()), float(xs.max() + 1), float(ys.min()), float(ys.max() + 1)
        if x2 - x1 < 2 or y2 - y1 < 2:
            dropped += 1
            continue
        boxes.append((o.cls, x1, y1, x2, y2))
    return img, boxes, {"kinds": kinds, "dropped": dropped, "n_neg": n_neg, "big_dropped": big_dropped}


# ------------------------------------------------------------------ plates swapped into real photos
def plate_for_box(rng: Rng, bw: float, bh: float) -> Sprite:
    """A plate sprite whose format suits a box of aspect bw/bh (long vs two-line / square plates)."""
    ppm = float(rng.uniform(0.6, 1.0))
    ar = bw / max(1e-6, bh)
    if ar > 3.2:
        r = rng.random()
        if r < 0.75:
            v = str(rng.choice(["white7", "white8", "white8", "ev", "yellow_long", "white_region"]))
            sp = plates.korean_long(rng, ppm, v)
        else:
            sp = plates.european(rng, ppm)
    elif ar > 2.3:
        sp = plates.other_style(rng, ppm) if rng.random() < 0.4 else plates.european(rng, ppm)
    else:
        r = rng.random()
        if r < 0.6:
            sp = plates.korean_two_line(rng, ppm, str(rng.choice(["green", "yellow", "white"])))
        else:
            sp = plates.us_style(rng, ppm)
    return plates.age_plate(rng, sp)


def render_on_labelled(
    rng: Rng,
    img: np.ndarray,
    boxes: list[tuple[int, float, float, float, float]],
    p_replace: float = 0.8,
    min_w: float = 10.0,
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]], dict]:
    """Paint synthetic (mostly Korean) plates over the labelled plates of a real photo.

    Each plate box of at least ``min_w`` px is, with probability p_replace, covered by a random plate
    stretched to the box grown by ~6 % (so the original plate is hidden); the new box is that plate's.
    Other boxes are kept as they are."""
    cv = Canvas(img.copy())
    H_, W_ = img.shape[:2]
    kinds = []
    keep: list[tuple[int, float, float, float, float]] = []
    for c, x1, y1, x2, y2 in boxes:
        bw, bh = x2 - x1, y2 - y1
        if c != 0 or bw < min_w or rng.random() > p_replace:
            keep.append((c, x1, y1, x2, y2))
            continue
        sp = plate_for_box(rng, bw, bh)
        # match the scene: brightness and colour cast of the original plate region
        ix1, iy1, ix2, iy2 = int(max(0, x1)), int(max(0, y1)), int(min(W_, x2)), int(min(H_, y2))
        if ix2 > ix1 and iy2 > iy1:
            reg = img[iy1:iy2, ix1:ix2].reshape(-1, 3).astype(np.float32).mean(0)
            pm = sp.bgr.reshape(-1, 3).astype(np.float32).mean(0)
            lum = float(np.clip(reg.mean() / max(1.0, pm.mean()) * rng.uniform(0.9, 1.15), 0.35, 1.2))
            cast = np.clip(reg / max(1.0, reg.mean()), 0.75, 1.3)
            sp.bgr = np.clip(sp.bgr.astype(np.float32) * lum * cast, 0, 255).astype(np.uint8)
        g = rng.uniform(0.04, 0.08)
        qx1, qy1, qx2, qy2 = x1 - bw * g, y1 - bh * g * 1.5, x2 + bw * g, y2 + bh * g * 1.5
        # slight shear keeps the axis-aligned box but varies the plate's apparent rotation
        sk = rng.uniform(-0.15, 0.15) * (qy2 - qy1)
        dst = np.array(
            [
                [qx1, qy1 + max(0, sk)],
                [qx2, qy1 + max(0, -sk)],
                [qx2, qy2 - max(0, sk)],
                [qx1, qy2 - max(0, -sk)],
            ],
            np.float32,
        )
        src = np.array([[0, 0], [sp.w, 0], [sp.w, sp.h], [0, sp.h]], np.float32)
        Hm = cv2.getPerspectiveTransform(src, dst)
        composite(rng, cv, sp, Hm)
        kinds.append(sp.kind + "@real")
    out_boxes: list[tuple[int, float, float, float, float]] = []
    for o in cv.objs:
        va = float(o.vis.sum())
        if va / o.full_area < MIN_VISIBLE or va < 4:
            continue
        ys, xs = np.where(o.vis)
        out_boxes.append((o.cls, float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
    out = cv.img
    # the replaced plates are too clean against a 320 px photo: match its softness
    if rng.random() < 0.7:
        out = fast_blur(out, rng.uniform(0.4, 0.9))
    if rng.random() < 0.5:
        out = camera_effects(rng, out)
    for c, x1, y1, x2, y2 in keep:
        out_boxes.append((c, max(0.0, x1), max(0.0, y1), min(float(W_), x2), min(float(H_), y2)))
    return out, out_boxes, {"kinds": kinds, "dropped": 0, "n_neg": 0}
