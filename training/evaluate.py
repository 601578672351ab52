"""Evaluate a detector on a YOLO folder: per-class AP@0.5, AP@0.5:0.95 (COCO-style 101-point
interpolation), precision and recall at the serving threshold, ms per image, and a PR-curve PNG.

    .venv/bin/python training/evaluate.py --weights weights/detector.onnx --data data_cache/real/uc3m_eval
    .venv/bin/python training/evaluate.py --weights W --data DIR --json --recall-only --imgsz 416 --plot pr.png

``--weights`` may be an ``.onnx`` file or a training checkpoint / ``.pt`` (exported in memory).
With ``--json`` the last line printed is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: make the repo root importable (CLI only)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from relay.boxes import box_iou  # noqa: E402
from relay.model import MODEL_CLASS_NAMES as CLASS_NAMES  # noqa: E402

log = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def match_image(preds: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """Greedy COCO-style matching of one image.

    ``preds`` (N, 6) ``x1 y1 x2 y2 score class``; ``gts`` (M, 5) ``class x1 y1 x2 y2``.
    Returns (N, 10) bool: pred i is a true positive at IoU threshold t. Predictions are matched in
    descending score order to the unmatched ground truth of the same class with the highest IoU."""
    n = len(preds)
    tp = np.zeros((n, len(IOU_THRESHOLDS)), dtype=bool)
    if n == 0 or len(gts) == 0:
        return tp
    iou = box_iou(preds[:, :4], gts[:, 1:5])  # (N, M)
    iou[preds[:, 5][:, None] != gts[:, 0][None, :]] = 0.0
    order = np.argsort(-preds[:, 4], kind="stable")
    for t_i, t in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(gts), dtype=bool)
        for i in order:
            cand = np.where(~taken & (iou[i] >= t))[0]
            if cand.size:
                j = cand[np.argmax(iou[i, cand])]
                taken[j] = True
                tp[i, t_i] = True
    return tp


def judge(dets: np.ndarray, gts: np.ndarray, conf: float, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(found per ground truth, matched per detection at/above ``conf``), one-to-one, best IoU first."""
    keep = dets[dets[:, 4] >= conf] if len(dets) else dets
    found = np.zeros(len(gts), bool)
    matched = np.zeros(len(keep), bool)
    if len(keep) and len(gts):
        m = box_iou(keep[:, :4], gts[:, 1:5])
        m[keep[:, 5][:, None] != gts[:, 0][None, :]] = 0.0
        while m.size and m.max() >= iou:
            i, j = np.unravel_index(np.argmax(m), m.shape)
            found[j] = matched[i] = True
            m[i, :] = 0.0
            m[:, j] = 0.0
    return found, matched


def average_precision(tp: np.ndarray, scores: np.ndarray, n_gt: int) -> tuple[float, np.ndarray, np.ndarray]:
    """101-point interpolated AP of one class at one IoU threshold; also the raw (recall, precision) curve."""
    if n_gt == 0:
        return float("nan"), np.zeros(0), np.zeros(0)
    if len(tp) == 0:
        return 0.0, np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    tpc = np.cumsum(tp[order])
    fpc = np.cumsum(~tp[order])
    recall = tpc / n_gt
    precision = tpc / np.maximum(tpc + fpc, 1e-9)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    p_at = np.array([envelope[i] if i < len(envelope) else 0.0 for i in idx])
    return float(p_at.mean()), recall, precision


@dataclass
class ClassStats:
    scores: list[np.ndarray] = field(default_factory=list)
    tps: list[np.ndarray] = field(default_factory=list)
    n_gt: int = 0


@dataclass
class Accumulator:
    """Collect per-image predictions and ground truth, then compute per-class metrics."""

    nc: int = len(CLASS_NAMES)
    stats: dict[int, ClassStats] = field(default_factory=dict)
    n_images: int = 0

    def add(self, preds: np.ndarray, gts: np.ndarray) -> None:
        preds = np.asarray(preds, dtype=np.float32).reshape(-1, 6)
        gts = np.asarray(gts, dtype=np.float32).reshape(-1, 5)
        tp = match_image(preds, gts)
        self.n_images += 1
        for c in range(self.nc):
            st = self.stats.setdefault(c, ClassStats())
            st.n_gt += int((gts[:, 0] == c).sum())
            m = preds[:, 5] == c
            st.scores.append(preds[m, 4])
            st.tps.append(tp[m])

    def compute(self, conf: float, recall_only: bool = False) -> dict[str, dict[str, float]]:
        """Metrics of every class that has ground truth."""
        out: dict[str, dict[str, float]] = {}
        for c, st in sorted(self.stats.items()):
            if st.n_gt == 0:
                continue
            scores = np.concatenate(st.scores) if st.scores else np.zeros(0)
            tp = np.concatenate(st.tps) if st.tps else np.zeros((0, 10), bool)
            sel = scores >= conf
            tp_at = int(tp[sel, 0].sum())
            n_det = int(sel.sum())
            rec = tp_at / st.n_gt
            name = CLASS_NAMES[c] if c < len(CLASS_NAMES) else str(c)
            if recall_only:
                out[name] = {"recall": rec, "n_gt": float(st.n_gt)}
                continue
            aps = [average_precision(tp[:, k], scores, st.n_gt)[0] for k in range(len(IOU_THRESHOLDS))]
            out[name] = {
                "ap50": aps[0],
                "ap50_95": float(np.mean(aps)),
                "precision": tp_at / n_det if n_det else 0.0,
                "recall": rec,
                "n_gt": float(st.n_gt),
            }
        return out

    def pr_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        curves = {}
        for c, st in sorted(self.stats.items()):
            if st.n_gt == 0:
                continue
            scores = np.concatenate(st.scores) if st.scores else np.zeros(0)
            tp = np.concatenate(st.tps) if st.tps else np.zeros((0, 10), bool)
            _, r, p = average_precision(tp[:, 0], scores, st.n_gt)
            curves[CLASS_NAMES[c] if c < len(CLASS_NAMES) else str(c)] = (r, p)
        return curves


def plot_pr(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, title: str = "") -> None:
    """PR curves at IoU 0.5 drawn with cv2 (no matplotlib)."""
    w, h, m = 640, 480, 50
    img = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = m, m // 2, w - m // 2, h - m
    for k in range(11):
        gx = int(x0 + (x1 - x0) * k / 10)
        gy = int(y1 - (y1 - y0) * k / 10)
        cv2.line(img, (gx, y0), (gx, y1), (225, 225, 225), 1)
        cv2.line(img, (x0, gy), (x1, gy), (225, 225, 225), 1)
        cv2.putText(img, f"{k / 10:.1f}", (gx - 10, y1 + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        cv2.putText(img, f"{k / 10:.1f}", (x0 - 30, gy + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    cv2.putText(img, "recall", ((x0 + x1) // 2 - 20, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.putText(img, "precision", (4, y0 - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    colours = [(40, 40, 220), (40, 160, 40), (200, 120, 20)]
    for k, (name, (r, p)) in enumerate(curves.items()):
        col = colours[k % len(colours)]
        if len(r):
            pts = np.stack((x0 + r * (x1 - x0), y1 - p * (y1 - y0)), 1).astype(np.int32)
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, col, 2)
        cv2.putText(img, name, (x1 - 170, y0 + 20 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, col, 1)
    if title:
        cv2.putText(img, title, (x0 + 5, y0 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    if not cv2.imwrite(str(out), img):
        raise OSError(f"could not write {out}")


def load_gt(label_path: Path, w: int, h: int) -> np.ndarray:
    """YOLO label file -> (M, 5) ``class x1 y1 x2 y2`` pixels."""
    from training.augment import yolo_to_xyxy
    from training.dataset import read_labels

    return yolo_to_xyxy(read_labels(str(label_path)), w, h)


def evaluate_folder(
    weights: Path,
    data: Path,
    imgsz: int,
    conf: float,
    iou: float = 0.45,
    threads: int = 2,
    recall_only: bool = False,
    limit: int | None = None,
) -> tuple[dict[str, dict[str, float]], float, Accumulator]:
    """Run ``YoloOnnxDetector`` over every image of ``data``; returns (metrics, ms/image, accumulator).

    ``ms_per_image`` is measured with the serving threshold ``conf`` (a second, serving-configured
    detector times the first 50 images); metrics use a 0.001 threshold so AP covers the whole curve."""
    from relay.detector import YoloOnnxDetector
    from training.dataset import list_yolo_folder

    pairs = list_yolo_folder(data, require_labels=False)
    if limit:
        pairs = pairs[:limit]
    if not pairs:
        raise FileNotFoundError(f"no images in {data / 'images'}")
    low = YoloOnnxDetector(weights, imgsz, 0.001 if not recall_only else conf, iou, threads)
    acc = Accumulator()
    for img_path, lab_path in pairs:
        img = cv2.imread(img_path, cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(img_path)
        acc.add(low.detect(img), load_gt(Path(lab_path), img.shape[1], img.shape[0]))
    serving = YoloOnnxDetector(weights, imgsz, conf, iou, threads)
    times = []
    for img_path, _ in pairs[:50]:
        img = cv2.imread(img_path, cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(img_path)
        t = time.perf_counter()
        serving.detect(img)
        times.append(time.perf_counter() - t)
    return acc.compute(conf, recall_only), 1000 * float(np.median(times)), acc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--weights", type=Path, required=True, help=".onnx, or a .pt checkpoint (exported in memory)"
    )
    ap.add_argument("--data", type=Path, required=True, help="YOLO folder with images/ and labels/")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--conf", type=float, default=0.6, help="serving threshold for precision/recall")
    ap.add_argument("--iou", type=float, default=0.45, help="NMS IoU")
    ap.add_argument("--recall-only", action="store_true", help="recall-only set: report recall only")
    ap.add_argument("--imgsz", type=int, default=416)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--plot", type=Path, default=None, help="write the PR curve (IoU 0.5) to this PNG")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    weights = args.weights
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if weights.suffix != ".onnx":
        from training.export import export_checkpoint

        tmp = tempfile.TemporaryDirectory()
        onnx_path = Path(tmp.name) / "model.onnx"
        export_checkpoint(weights, onnx_path, args.imgsz)
        weights = onnx_path
    try:
        metrics, ms, acc = evaluate_folder(
            weights, args.data, args.imgsz, args.conf, args.iou, args.threads, args.recall_only, args.limit
        )
    finally:
        if tmp is not None:
            tmp.cleanup()

    print(f"{args.data}  ({acc.n_images} images, imgsz {args.imgsz}, conf {args.conf})")
    if args.recall_only:
        print(f"{'class':<16}{'n_gt':>6}{'recall':>9}")
        for name, m in metrics.items():
            print(f"{name:<16}{int(m['n_gt']):>6}{m['recall']:>9.3f}")
    else:
        print(f"{'class':<16}{'n_gt':>6}{'AP50':>8}{'AP50-95':>9}{'P':>8}{'R':>8}")
        for name, m in metrics.items():
            print(
                f"{name:<16}{int(m['n_gt']):>6}{m['ap50']:>8.3f}{m['ap50_95']:>9.3f}"
                f"{m['precision']:>8.3f}{m['recall']:>8.3f}"
            )
    print(f"ms per image (serving threshold, median of {min(50, acc.n_images)}): {ms:.1f}")
    if args.plot:
        plot_pr(acc.pr_curves(), args.plot, f"{args.data.name} imgsz {args.imgsz}")
        print(f"PR curve: {args.plot}")
    if args.json:
        per_class = {
            k: {kk: round(vv, 4) for kk, vv in v.items() if kk != "n_gt"} for k, v in metrics.items()
        }
        print(json.dumps({"per_class": per_class, "ms_per_image": round(ms, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
