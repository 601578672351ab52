"""Small plates in a 1280x720 frame: recall by plate width, at one or more detector input sizes.

    .venv/bin/python -m training.small_objects --weights weights/detector.onnx
    .venv/bin/python -m training.small_objects --weights weights/detector.pt --imgsz 416 640 960 --json

The UC3M evaluation photos are 320x240 with plates 9-66 px wide (median 23). Twelve of them side
by side (4 x 3) make one 1280x720 frame in which every plate keeps its own real pixels, at the
size a 720p camera would see a car 10-40 m away: no resampling, no synthetic plates. The frames
are built once from ``--src`` (default ``data_cache/real/uc3m_eval``, made by
``python -m training.prepare_data``) into ``--out``; every ground-truth plate is then bucketed by
its width in the 1280x720 frame and the recall at the serving threshold is reported per bucket,
with the median ms per frame of the whole ``detect()`` at each input size (the speed cost of a
larger input). The last line with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

FRAME_W, FRAME_H = 1280, 720
CELL_W, CELL_H = 320, 240  # 4 x 3 cells
BUCKETS = (0, 15, 20, 30, 45, 70, 10_000)  # plate width in px of the 1280x720 frame


def build_grid_set(src: Path, out: Path) -> int:
    """Compose the images of YOLO folder ``src`` 12 at a time into 1280x720 frames in ``out``.

    An image of another size is scaled to fit its 320x240 cell (aspect kept, grey padding) and its
    labels follow. Returns the number of frames written (an existing, complete ``out`` is reused)."""
    from training.augment import yolo_to_xyxy
    from training.dataset import list_yolo_folder, read_labels

    pairs = list_yolo_folder(src, require_labels=True)
    if not pairs:
        raise FileNotFoundError(f"no labelled images in {src}")
    per = (FRAME_W // CELL_W) * (FRAME_H // CELL_H)
    n_frames = len(pairs) // per
    done = out / "images"
    if done.is_dir() and len(list(done.glob("*.jpg"))) == n_frames:
        return n_frames
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for f in range(n_frames):
        frame = np.full((FRAME_H, FRAME_W, 3), 114, np.uint8)
        lines = []
        for k, (img_path, lab_path) in enumerate(pairs[f * per : (f + 1) * per]):
            img = cv2.imread(img_path, cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(img_path)
            h, w = img.shape[:2]
            s = min(CELL_W / w, CELL_H / h)
            if s != 1.0:
                img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
            ox, oy = (k % 4) * CELL_W, (k // 4) * CELL_H
            frame[oy : oy + img.shape[0], ox : ox + img.shape[1]] = img
            for c, x1, y1, x2, y2 in yolo_to_xyxy(read_labels(lab_path), w, h):
                bx1, by1, bx2, by2 = ox + x1 * s, oy + y1 * s, ox + x2 * s, oy + y2 * s
                lines.append(
                    f"{int(c)} {(bx1 + bx2) / 2 / FRAME_W:.6f} {(by1 + by2) / 2 / FRAME_H:.6f} "
                    f"{(bx2 - bx1) / FRAME_W:.6f} {(by2 - by1) / FRAME_H:.6f}"
                )
        name = f"grid_{f:03d}"
        cv2.imwrite(str(out / "images" / f"{name}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 97])
        (out / "labels" / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return n_frames


def recall_by_width(
    dets: list[np.ndarray], gts: list[np.ndarray], buckets: tuple[int, ...] = BUCKETS, iou: float = 0.5
) -> list[dict[str, float]]:
    """Per width bucket: ground truths, found (IoU >= ``iou`` with a detection of the same class,
    each detection used once, best IoU first) and recall. ``dets`` (N, 6) xyxy-score-class,
    ``gts`` (M, 5) class-xyxy, one of each per image."""
    from training.evaluate import judge

    widths, found = [], []
    for d, g in zip(dets, gts, strict=True):
        hit, _ = judge(d, g, conf=-1.0, iou=iou)  # the detections are already thresholded
        widths.extend((g[:, 3] - g[:, 1]).tolist())
        found.extend(hit.tolist())
    w, f = np.asarray(widths), np.asarray(found, dtype=bool)
    rows = []
    for lo, hi in zip(buckets[:-1], buckets[1:], strict=True):
        sel = (w >= lo) & (w < hi)
        n = int(sel.sum())
        rows.append(
            {
                "min_px": lo,
                "max_px": hi,
                "n_gt": n,
                "found": int(f[sel].sum()),
                "recall": round(float(f[sel].mean()), 4) if n else float("nan"),
            }
        )
    return rows


def evaluate_sizes(
    weights: Path, data: Path, sizes: list[int], conf: float, threads: int = 2
) -> dict[int, dict[str, object]]:
    """Recall by width and ms per frame for each detector input size in ``sizes``."""
    from relay.detector import YoloOnnxDetector
    from training.evaluate import load_gt

    images = sorted((data / "images").glob("*.jpg"))
    frames: list[np.ndarray] = []
    for p in images:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(p)
        frames.append(img)
    gts = [load_gt(data / "labels" / f"{p.stem}.txt", FRAME_W, FRAME_H) for p in images]
    results: dict[int, dict[str, object]] = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            onnx = weights
            if weights.suffix != ".onnx":
                from training.export import export_checkpoint

                onnx = Path(tmp) / "model.onnx"
                export_checkpoint(weights, onnx, size)
            det = YoloOnnxDetector(onnx, size, conf, 0.45, threads)
            dets, times = [], []
            for fr in frames:
                t = time.perf_counter()
                dets.append(det.detect(fr))
                times.append(time.perf_counter() - t)
        results[size] = {
            "ms_per_frame": round(1000 * float(np.median(times)), 1),
            "buckets": recall_by_width(dets, gts),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help=".onnx (its own size) or a .pt checkpoint")
    ap.add_argument("--src", type=Path, default=Path("data_cache/real/uc3m_eval"))
    ap.add_argument("--out", type=Path, default=Path("data_cache/real/uc3m_eval_grid720"))
    ap.add_argument("--imgsz", type=int, nargs="+", default=[416])
    ap.add_argument("--conf", type=float, default=0.6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.weights.suffix == ".onnx" and len(args.imgsz) > 1:
        ap.error("an .onnx file has one input size: pass a .pt checkpoint to compare sizes")
    n = build_grid_set(args.src, args.out)
    res = evaluate_sizes(args.weights, args.out, args.imgsz, args.conf, args.threads)
    print(f"{args.out} ({n} frames of 1280x720), conf {args.conf}")
    for size, r in res.items():
        print(f"input {size}: {r['ms_per_frame']} ms/frame")
        for b in r["buckets"]:  # type: ignore[attr-defined]
            print(f"  plates {b['min_px']:>3}-{b['max_px']:<5} px  n={b['n_gt']:<4} recall {b['recall']:.3f}")
    if args.json:
        print(
            json.dumps({"conf": args.conf, "frames": n, "by_input_size": {str(k): v for k, v in res.items()}})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
