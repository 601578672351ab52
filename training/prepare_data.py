"""Materialise the real data as YOLO folders under data_cache/ (symlinks, not copies).

    python -m training.prepare_data [--root data_cache] [--sets uc3m_train uc3m_eval ...]

Sets (``<root>/real/<set>/{images,labels}``):

- ``uc3m_train`` / ``uc3m_eval``: ../shared/data/uc3m_lp_train split by
  ``zlib.crc32(stem.encode()) % 100 < 15`` -> eval (the eval names are also written to
  training/splits/uc3m_eval.txt, which is committed).
- ``openalpr_eval``: all 444 openalpr_recall photos (AGPL, recall-only: evaluation only, never training).
- ``ups_eval``: the 3 ups_labels photos (they are also the stills of the parcel clip: evaluation only).
- ``parcel_clip_eval`` / ``id_clip_eval``: every 5th frame of the test clips, rendered from their stills
  with the clip's own per-frame affines, and YOLO labels from gt.json.

And ``<root>/backgrounds/``: the real background pool minus every file in CONTAINS_TARGETS.txt,
with SOURCES.txt listing which source images are used and which were excluded; and
``<root>/backgrounds_road/``: the uc3m_train photos with their plates inpainted away (road / parking
backgrounds for synthetic plates).

Idempotent: existing correct symlinks and rendered frames are kept; running again is fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from training.yolo_format import yolo_lines

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOSAIC_SHARED", str(REPO.parent / "shared")))
SPLITS_DIR = REPO / "training" / "splits"
EVAL_PERCENT = 15
CLIP_EVERY = 5
CLIP_BORDER_BGR = (40, 40, 40)  # as the clips' render.py
SETS = [
    "uc3m_train",
    "uc3m_eval",
    "openalpr_eval",
    "ups_eval",
    "parcel_clip_eval",
    "id_clip_eval",
    "backgrounds",
    "road_backgrounds",
]


def is_uc3m_eval(stem: str) -> bool:
    """The split rule shared with the training code: ~15 % of UC3M stems go to evaluation."""
    return zlib.crc32(stem.encode()) % 100 < EVAL_PERCENT


def _link(src: Path, dst: Path) -> None:
    src = src.resolve()
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() and os.readlink(dst) == str(src):
            return
        dst.unlink()
    dst.symlink_to(src)


def _link_set(src_set: Path, out: Path, stems: list[str]) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    want = set()
    by_stem = {p.stem: p for p in (src_set / "images").iterdir()}
    for stem in stems:
        img = by_stem.get(stem)
        if img is None:
            continue
        _link(img, out / "images" / img.name)
        want.add(img.name)
        lab = src_set / "labels" / (stem + ".txt")
        if lab.exists():
            _link(lab, out / "labels" / lab.name)
            want.add(lab.name)
    # remove stale links (e.g. after a rule change)
    for sub in ("images", "labels"):
        for p in (out / sub).iterdir():
            if p.name not in want:
                p.unlink()


def _stems(set_dir: Path) -> list[str]:
    return sorted(
        p.stem for p in (set_dir / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )


def uc3m_split(shared: Path = SHARED) -> tuple[list[str], list[str]]:
    stems = _stems(shared / "data" / "uc3m_lp_train")
    ev = [s for s in stems if is_uc3m_eval(s)]
    tr = [s for s in stems if not is_uc3m_eval(s)]
    return tr, ev


def write_split_file(eval_stems: list[str], splits_dir: Path = SPLITS_DIR) -> Path:
    splits_dir.mkdir(parents=True, exist_ok=True)
    p = splits_dir / "uc3m_eval.txt"
    text = "\n".join(eval_stems) + "\n"
    if not p.exists() or p.read_text() != text:
        p.write_text(text)
    return p


def clip_frames(
    clip_dir: Path, every: int = 1
) -> Iterator[tuple[int, np.ndarray, list[tuple[int, float, float, float, float]]]]:
    """Every ``every``-th frame of a test clip in ``../shared/media/clips`` as ``(index, BGR frame,
    ground-truth boxes)``, rendered from the stills with the clip's affines like its render.py; boxes
    are ``(class, x1, y1, x2, y2)`` in frame pixels, clipped to the frame."""
    meta = json.loads((clip_dir / "frames.json").read_text())
    gt = json.loads((clip_dir / "gt.json").read_text())
    w, h = int(meta["width"]), int(meta["height"])
    cache: dict[str, np.ndarray] = {}
    for i in range(0, len(meta["frames"]), every):
        fr = meta["frames"][i]
        src = fr["src"]
        if src not in cache:
            img = cv2.imread(str(clip_dir / src), cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(clip_dir / src)
            cache = {src: img}
        m = np.array(fr["affine_src_to_frame"], np.float64)
        frame = cv2.warpAffine(
            cache[src],
            m,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=CLIP_BORDER_BGR,
        )
        boxes = [
            (int(c), max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
            for c, x1, y1, x2, y2 in gt["frames"][i]
        ]
        yield i, frame, boxes


def render_clip(clip_dir: Path, out: Path, every: int = CLIP_EVERY) -> int:
    """Render every ``every``-th frame of a clip with its affines; YOLO labels from gt.json."""
    meta = json.loads((clip_dir / "frames.json").read_text())
    w, h = int(meta["width"]), int(meta["height"])
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    stamp = out / ".source.json"
    key = {
        "frames": zlib.crc32((clip_dir / "frames.json").read_bytes()),
        "gt": zlib.crc32((clip_dir / "gt.json").read_bytes()),
        "every": every,
    }
    n_expected = len(range(0, len(meta["frames"]), every))
    if (
        stamp.exists()
        and json.loads(stamp.read_text()) == key
        and len(list((out / "images").glob("*.jpg"))) == n_expected
    ):
        return n_expected
    name = clip_dir.name
    n = 0
    for i, frame, boxes in clip_frames(clip_dir, every):
        stem = f"{name}_{i:04d}"
        lines = yolo_lines(boxes, w, h)
        (out / "labels" / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        cv2.imwrite(str(out / "images" / f"{stem}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        n += 1
    stamp.write_text(json.dumps(key))
    return n


def background_files(shared: Path = SHARED) -> tuple[list[str], list[str]]:
    """(used, excluded) background paths relative to media/backgrounds."""
    bg = shared / "media" / "backgrounds"
    excluded: list[str] = []
    ct = bg / "CONTAINS_TARGETS.txt"
    for line in ct.read_text().splitlines() if ct.exists() else []:
        if line.strip() and not line.startswith("#"):
            excluded.append(line.split("\t")[0].strip())
    used = sorted(str(p.relative_to(bg)) for p in bg.rglob("*.jpg") if str(p.relative_to(bg)) not in excluded)
    return used, excluded


def prepare_backgrounds(out: Path, shared: Path = SHARED) -> int:
    bg = shared / "media" / "backgrounds"
    used, excluded = background_files(shared)
    out.mkdir(parents=True, exist_ok=True)
    want = set()
    for rel in used:
        dst_name = rel.replace("/", "__")
        _link(bg / rel, out / dst_name)
        want.add(dst_name)
    for p in out.iterdir():
        if p.suffix == ".jpg" and p.name not in want:
            p.unlink()
    (out / "SOURCES.txt").write_text(
        "# Real background pool for synthesis: ../shared/media/backgrounds (licences per image in its manifest.csv)\n"
        f"# used: {len(used)} images; excluded (CONTAINS_TARGETS.txt): {len(excluded)}\n"
        + "".join(f"used\t{r}\n" for r in used)
        + "".join(f"excluded\t{r}\n" for r in excluded)
    )
    return len(used)


def prepare_road_backgrounds(out: Path, shared: Path = SHARED, limit: int | None = None) -> int:
    """Street / parking backgrounds without plates: the uc3m TRAIN photos with every labelled plate
    inpainted away (box grown by 15 %). Only the train split is used, never uc3m_eval."""
    src = shared / "data" / "uc3m_lp_train"
    tr, _ = uc3m_split(shared)
    out.mkdir(parents=True, exist_ok=True)
    by_stem = {p.stem: p for p in (src / "images").iterdir()}
    n = 0
    for stem in tr[:limit] if limit else tr:
        dst = out / f"uc3m_{stem}.jpg"
        n += 1
        if dst.exists():
            continue
        img = cv2.imread(str(by_stem[stem]), cv2.IMREAD_COLOR)
        if img is None:
            continue
        h, w = img.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        lab = src / "labels" / f"{stem}.txt"
        for line in lab.read_text().splitlines() if lab.exists() else []:
            p = line.split()
            if len(p) != 5:
                continue
            cx, cy, bw, bh = (float(v) for v in p[1:])
            bw, bh = bw * 1.15 + 2 / w, bh * 1.3 + 2 / h
            x1, y1 = int(max(0, (cx - bw / 2) * w)), int(max(0, (cy - bh / 2) * h))
            x2, y2 = int(min(w, (cx + bw / 2) * w + 1)), int(min(h, (cy + bh / 2) * h + 1))
            mask[y1:y2, x1:x2] = 255
        if mask.any():
            img = cv2.inpaint(img, mask, 3, cv2.INPAINT_TELEA)
        tmp = dst.with_name(dst.name + ".tmp")
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if ok:
            tmp.write_bytes(buf.tobytes())
            os.replace(tmp, dst)
    (out / "SOURCES.txt").write_text(
        "# uc3m_lp_train TRAIN split (ODbL 1.0, see ../shared/data/uc3m_lp_train/README.md) with the labelled plates\n"
        "# inpainted away; used only as road / parking backgrounds for synthetic plates.\n"
    )
    return n


def prepare(
    root: Path, sets: list[str] | None = None, shared: Path = SHARED, splits_dir: Path | None = SPLITS_DIR
) -> dict[str, Path]:
    """Build the requested sets (default: all) under ``root``; returns {set name: folder}."""
    root = Path(root)
    sets = list(SETS if sets is None else sets)
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise ValueError(f"unknown sets {unknown}; known: {SETS}")
    data = shared / "data"
    out: dict[str, Path] = {}
    if "uc3m_train" in sets or "uc3m_eval" in sets:
        tr, ev = uc3m_split(shared)
        if splits_dir is not None:
            write_split_file(ev, splits_dir)
        for name, stems in (("uc3m_train", tr), ("uc3m_eval", ev)):
            if name in sets:
                d = root / "real" / name
                _link_set(data / "uc3m_lp_train", d, stems)
                out[name] = d
    if "openalpr_eval" in sets:
        d = root / "real" / "openalpr_eval"
        _link_set(data / "openalpr_recall", d, _stems(data / "openalpr_recall"))
        out["openalpr_eval"] = d
    if "ups_eval" in sets:
        d = root / "real" / "ups_eval"
        _link_set(data / "ups_labels", d, _stems(data / "ups_labels"))
        out["ups_eval"] = d
    for name, clip in (("parcel_clip_eval", "parcel_labels"), ("id_clip_eval", "id_cards")):
        if name in sets:
            d = root / "real" / name
            render_clip(shared / "media" / "clips" / clip, d)
            out[name] = d
    if "backgrounds" in sets:
        d = root / "backgrounds"
        prepare_backgrounds(d, shared)
        out["backgrounds"] = d
    if "road_backgrounds" in sets:
        d = root / "backgrounds_road"
        prepare_road_backgrounds(d, shared)
        out["road_backgrounds"] = d
    for k, v in out.items():
        n = len(list((v / "images").glob("*"))) if (v / "images").is_dir() else len(list(v.glob("*.jpg")))
        log.info("%-17s %5d images  %s", k, n, v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=REPO / "data_cache")
    ap.add_argument("--sets", nargs="*", default=None, choices=SETS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not SHARED.is_dir():
        log.error("shared data not found at %s (set MOSAIC_SHARED)", SHARED)
        return 1
    prepare(args.root, args.sets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
