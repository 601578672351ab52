"""Render a synthetic YOLO dataset.

    python -m training.synth.generate --out data_cache/synth/v1 --n 2000 --seed 1 [--workers 1]

Writes OUT/images/*.jpg, OUT/labels/*.txt (``class cx cy w h`` normalised) and OUT/manifest.json.
Image i depends only on (seed, i), so the output is the same for any number of workers. The label file
is written before its image (atomically renamed), so a training run that lists the folder while we
render never sees an image without its label.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from ..yolo_format import yolo_lines
from . import CLASS_NAMES, GENERATOR_VERSION, fonts
from .scene import CLOSEUP, BackgroundPool, render_on_labelled, render_sample

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]

_POOL: BackgroundPool | None = None
MAX_RETRIES = 3
# Real TRAINING photos whose plates get swapped for synthetic ones (never an eval split).
REAL_PLATE_DIR = ROOT / "data_cache" / "real" / "uc3m_train"
_REAL: list[Path] | None = None


def _pool() -> BackgroundPool:
    global _POOL
    if _POOL is None:
        _POOL = BackgroundPool.default(ROOT)
    return _POOL


def _real_files() -> list[Path]:
    global _REAL
    if _REAL is None:
        d = REAL_PLATE_DIR / "images"
        _REAL = sorted(d.glob("*.jpg")) if d.is_dir() else []
        if not _REAL:
            log.warning("%s missing (run training.prepare_data): no plate swaps into real photos", d)
    return _REAL


def _read_yolo(path: Path, w: int, h: int) -> list[tuple[int, float, float, float, float]]:
    boxes = []
    if path.exists():
        for line in path.read_text().split("\n"):
            p = line.split()
            if len(p) == 5:
                c, cx, cy, bw, bh = int(p[0]), *map(float, p[1:])
                boxes.append((c, (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h))
    return boxes


def render_real_swap(rng: np.random.Generator) -> tuple[np.ndarray, list, dict] | None:
    files = _real_files()
    if not files:
        return None
    f = files[int(rng.integers(len(files)))]
    img = cv2.imread(str(f), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    boxes = _read_yolo(REAL_PLATE_DIR / "labels" / (f.stem + ".txt"), w, h)
    if rng.random() < 0.35:  # resolution variety: upscale the 320 px photos
        s = rng.uniform(1.5, 2.5)
        img = cv2.resize(img, (int(w * s), int(h * s)), interpolation=cv2.INTER_LINEAR)
        boxes = [(c, x1 * s, y1 * s, x2 * s, y2 * s) for c, x1, y1, x2, y2 in boxes]
    out, boxes, info = render_on_labelled(rng, img, boxes)
    info["source"] = f.name
    return out, boxes, info


def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 0x5EED])


def render_index(
    seed: int,
    index: int,
    pool: BackgroundPool | None = None,
    negatives_fraction: float = 0.0,
    real_fraction: float = 0.0,
    class_p: tuple[float, float, float] | None = None,
    closeup: float = CLOSEUP,
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]], dict, int]:
    """Render image ``index`` of a set: (BGR image, pixel boxes, info, JPEG quality)."""
    rng = sample_rng(seed, index)
    neg_only = rng.random() < negatives_fraction
    real = rng.random() < real_fraction
    res = render_real_swap(rng) if real and not neg_only else None
    attempt = 0
    while res is None:
        res = render_sample(
            rng,
            pool if pool is not None else _pool(),
            negatives_only=neg_only,
            class_p=None if class_p is None else np.asarray(class_p),
            closeup=closeup,
        )
        if res[2].get("big_dropped", 0) and attempt < MAX_RETRIES:
            # an object is clearly visible but under the 40 % rule: render this index again
            attempt += 1
            rng = np.random.default_rng([int(seed), int(index), attempt, 0x5EED])
            res = None
    img, boxes, info = res
    info["retries"] = attempt
    quality = int(rng.integers(35, 96))
    return img, boxes, info, quality


def _work(args: tuple) -> tuple[int, list[int], list[str], int]:
    out, seed, index, prefix, negf, realf, class_p, closeup = args
    img, boxes, info, q = render_index(
        seed, index, negatives_fraction=negf, real_fraction=realf, class_p=class_p, closeup=closeup
    )
    name = f"{prefix}{index:06d}"
    h, w = img.shape[:2]
    lab = Path(out) / "labels" / f"{name}.txt"
    tmp = lab.with_suffix(".tmp")
    lines = yolo_lines(boxes, w, h)
    tmp.write_text("\n".join(lines) + ("\n" if lines else ""))
    os.replace(tmp, lab)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise RuntimeError(f"JPEG encode failed for {name}")
    imp = Path(out) / "images" / f"{name}.jpg"
    tmpi = imp.with_name(imp.name + ".tmp")
    tmpi.write_bytes(buf.tobytes())
    os.replace(tmpi, imp)
    return index, [b[0] for b in boxes], info["kinds"], info["dropped"]


def generate(
    out: Path,
    n: int,
    seed: int,
    workers: int = 1,
    start: int = 0,
    prefix: str | None = None,
    negatives_fraction: float = 0.0,
    real_fraction: float = 0.0,
    class_p: tuple[float, float, float] | None = None,
    closeup: float = CLOSEUP,
) -> dict:
    fonts.check_fonts()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    prefix = prefix if prefix is not None else f"{out.name}_s{seed}_"
    jobs = [
        (str(out), seed, i, prefix, negatives_fraction, real_fraction, class_p, closeup)
        for i in range(start, start + n)
    ]
    t0 = time.time()
    cls_counts: Counter[int] = Counter()
    kind_counts: Counter[str] = Counter()
    empty = dropped = 0
    done = 0
    if workers <= 1:
        results: Iterable[tuple[int, list[int], list[str], int]] = map(_work, jobs)
        ctx = None
    else:
        ctx = mp.get_context("fork").Pool(workers)
        results = ctx.imap_unordered(_work, jobs, chunksize=4)

    def write_manifest(complete: bool) -> dict:
        dt = time.time() - t0
        manifest = {
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "start": start,
            "n_images": done,
            "n_requested": n,
            "complete": complete,
            "prefix": prefix,
            "negatives_fraction": negatives_fraction,
            "real_plate_swap_fraction": real_fraction,
            "class_weights": list(class_p) if class_p is not None else [0.4, 0.3, 0.3],
            "closeup_fraction": closeup,
            "real_plate_swap_source": str(REAL_PLATE_DIR.relative_to(ROOT)) if real_fraction > 0 else None,
            "classes": list(CLASS_NAMES),
            "boxes_per_class": {CLASS_NAMES[c]: cls_counts.get(c, 0) for c in range(len(CLASS_NAMES))},
            "images_without_boxes": empty,
            "objects_dropped_low_visibility": dropped,
            "sprite_kinds": dict(sorted(kind_counts.items())),
            "seconds": round(dt, 1),
            "images_per_second": round(done / max(dt, 1e-6), 2),
            "workers": workers,
        }
        mpath = out / "manifest.json"
        runs = []
        if mpath.exists():
            try:
                old = json.loads(mpath.read_text())
                runs = old.get("runs", [old])
            except (ValueError, OSError):
                runs = []
        runs = [r for r in runs if not (r.get("seed") == seed and r.get("start") == start)] + [manifest]
        total: Counter[str] = Counter()
        for r in runs:
            total.update(r.get("boxes_per_class", {}))
        summary = {
            **manifest,
            "runs": runs,
            "total_images": sum(r["n_images"] for r in runs),
            "total_boxes_per_class": dict(total),
        }
        tmp = mpath.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
        os.replace(tmp, mpath)
        return manifest

    try:
        for _, classes, kinds, drop in results:
            cls_counts.update(classes)
            kind_counts.update(kinds)
            empty += not classes
            dropped += drop
            done += 1
            if done % 200 == 0:
                log.info("%d/%d images, %.2f img/s", done, n, done / (time.time() - t0))
            if done % 500 == 0 and done < n:
                write_manifest(complete=False)
    finally:
        if ctx is not None:
            ctx.close()
            ctx.join()
    manifest = write_manifest(complete=True)
    dt = time.time() - t0
    log.info("wrote %d images to %s in %.1fs (%.2f img/s)", n, out, dt, n / max(dt, 1e-6))
    return manifest


def recount(out: Path) -> dict:
    """Recount a set from its files (e.g. after a render was stopped early) and update manifest.json.
    Labels without an image (a render stopped between the two writes) are removed."""
    out = Path(out)
    imgs = {p.stem for p in (out / "images").glob("*.jpg")}
    counts: Counter[int] = Counter()
    empty = 0
    for lab in (out / "labels").glob("*.txt"):
        if lab.stem not in imgs:
            lab.unlink()
            continue
        cls = [int(line.split()[0]) for line in lab.read_text().splitlines() if line.strip()]
        counts.update(cls)
        empty += not cls
    mpath = out / "manifest.json"
    m = json.loads(mpath.read_text()) if mpath.exists() else {}
    m.update(
        {
            "n_images": len(imgs),
            "total_images": len(imgs),
            "images_without_boxes": empty,
            "boxes_per_class": {CLASS_NAMES[c]: counts.get(c, 0) for c in range(len(CLASS_NAMES))},
            "recounted_from_files": True,
        }
    )
    m["total_boxes_per_class"] = m["boxes_per_class"]
    mpath.write_text(json.dumps(m, indent=1, ensure_ascii=False))
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render a synthetic YOLO dataset (plates, ID cards, labels).")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument(
        "--recount",
        action="store_true",
        help="only recount an existing set that was stopped early (not while it renders) and update its manifest",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--start", type=int, default=0, help="first image index (to extend a set)")
    ap.add_argument(
        "--negatives-fraction", type=float, default=0.0, help="extra share of images with hard negatives only"
    )
    ap.add_argument(
        "--real-fraction",
        type=float,
        default=0.0,
        help="share of images that are uc3m_train photos with their plates swapped for synthetic ones",
    )
    ap.add_argument(
        "--class-weights",
        type=str,
        default=None,
        help="relative weights of plate,id_card,label among synthetic objects (default 0.4,0.3,0.3)",
    )
    ap.add_argument(
        "--closeup",
        type=float,
        default=CLOSEUP,
        help=f"share of ID cards and labels rendered as close-ups, 0.3-0.9 of the long side (default {CLOSEUP})",
    )
    args = ap.parse_args(argv)
    if not 0.0 <= args.closeup <= 1.0:
        ap.error("--closeup must be in [0, 1]")
    class_p = tuple(float(v) for v in args.class_weights.split(",")) if args.class_weights else None
    if class_p is not None and len(class_p) != 3:
        ap.error("--class-weights needs three numbers")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.recount:
        m = recount(args.out)
        log.info("%s: %d images, boxes %s", args.out, m["n_images"], m["boxes_per_class"])
        return 0
    if args.n <= 0:
        ap.error("--n must be positive")
    m = generate(
        args.out,
        args.n,
        args.seed,
        args.workers,
        args.start,
        negatives_fraction=args.negatives_fraction,
        real_fraction=args.real_fraction,
        class_p=class_p,
        closeup=args.closeup,
    )
    log.info("boxes per class: %s", m["boxes_per_class"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
