"""A picture of a detector's failures on a labelled set: the worst images, boxes drawn.

    .venv/bin/python -m training.failures --weights weights/detector.onnx \\
        --data data_cache/real/uc3m_eval data_cache/real/ups_eval --out weights/failures.jpg

For every image: ground truth in green (thick when found at the serving threshold, thin when
missed), detections at or above the threshold in red (false positives) or yellow (matched), with
their scores; detections between ``--show-below`` and the threshold in dashed grey, to show what
the threshold cut. Images are ranked by misses + false positives and the worst ``--n`` of each set
are tiled, each tile captioned with its set, file and counts.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from training.evaluate import judge

log = logging.getLogger(__name__)

GREEN, RED, YELLOW, GREY = (0, 200, 0), (0, 0, 255), (0, 220, 255), (160, 160, 160)


def _dashed(img: np.ndarray, box: np.ndarray, color: tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = (int(v) for v in box[:4])
    for x in range(x1, x2, 8):
        cv2.line(img, (x, y1), (min(x + 4, x2), y1), color, 1)
        cv2.line(img, (x, y2), (min(x + 4, x2), y2), color, 1)
    for y in range(y1, y2, 8):
        cv2.line(img, (x1, y), (x1, min(y + 4, y2)), color, 1)
        cv2.line(img, (x2, y), (x2, min(y + 4, y2)), color, 1)


def draw(img: np.ndarray, dets: np.ndarray, gts: np.ndarray, conf: float, show_below: float) -> np.ndarray:
    out = img.copy()
    found, matched = judge(dets, gts, conf)
    t = max(1, round(max(img.shape[:2]) / 400))
    for g, ok in zip(gts, found, strict=True):
        cv2.rectangle(out, (int(g[1]), int(g[2])), (int(g[3]), int(g[4])), GREEN, 2 * t if ok else t)
    keep = dets[dets[:, 4] >= conf] if len(dets) else dets
    for d, ok in zip(keep, matched, strict=True):
        cv2.rectangle(out, (int(d[0]), int(d[1])), (int(d[2]), int(d[3])), YELLOW if ok else RED, t)
        cv2.putText(
            out, f"{d[4]:.2f}", (int(d[0]), max(10, int(d[1]) - 3)), 0, 0.4 * t, YELLOW if ok else RED, t
        )
    for d in dets[(dets[:, 4] < conf) & (dets[:, 4] >= show_below)] if len(dets) else []:
        _dashed(out, d, GREY)
        cv2.putText(out, f"{d[4]:.2f}", (int(d[0]), int(d[3]) + 12 * t), 0, 0.4 * t, GREY, t)
    return out


def failure_sheet(
    weights: Path,
    sets: list[Path],
    out: Path,
    n: int = 4,
    conf: float = 0.6,
    imgsz: int = 416,
    show_below: float = 0.25,
    tile: tuple[int, int] = (400, 300),
) -> list[dict[str, object]]:
    """Write the sheet; returns one record per tile (set, file, missed, false positives)."""
    from relay.detector import YoloOnnxDetector
    from training.dataset import list_yolo_folder
    from training.evaluate import load_gt

    det = YoloOnnxDetector(weights, imgsz, min(show_below, conf), 0.45, 2)
    tiles, records = [], []
    for data in sets:
        scored = []
        for img_path, lab_path in list_yolo_folder(data, require_labels=False):
            img = cv2.imread(img_path, cv2.IMREAD_COLOR)
            if img is None:
                continue
            gts = load_gt(Path(lab_path), img.shape[1], img.shape[0])
            dets = det.detect(img)
            found, matched = judge(dets, gts, conf)
            bad = int((~found).sum() + (~matched).sum())
            if bad:
                scored.append((bad, img_path, img, dets, gts, int((~found).sum()), int((~matched).sum())))
        scored.sort(key=lambda r: (-r[0], r[1]))
        for _, img_path, img, dets, gts, missed, fps in scored[:n]:
            pic = draw(img, dets, gts, conf, show_below)
            s = min(tile[0] / pic.shape[1], (tile[1] - 18) / pic.shape[0])
            pic = cv2.resize(pic, (max(1, round(pic.shape[1] * s)), max(1, round(pic.shape[0] * s))))
            canvas = np.full((tile[1], tile[0], 3), 40, np.uint8)
            canvas[18 : 18 + pic.shape[0], : pic.shape[1]] = pic
            caption = f"{data.name}/{Path(img_path).name[:28]}  missed {missed}  FP {fps}"
            cv2.putText(canvas, caption, (3, 13), 0, 0.4, (255, 255, 255), 1)
            tiles.append(canvas)
            records.append(
                {"set": data.name, "file": Path(img_path).name, "missed": missed, "false_positives": fps}
            )
    if not tiles:
        raise ValueError("no failures to show")
    cols = min(4, len(tiles))
    rows = [tiles[i : i + cols] for i in range(0, len(tiles), cols)]
    rows[-1] += [np.full_like(tiles[0], 40)] * (cols - len(rows[-1]))
    sheet = np.vstack([np.hstack(r) for r in rows])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet, [cv2.IMWRITE_JPEG_QUALITY, 82])
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--data", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=4, help="worst images per set")
    ap.add_argument("--conf", type=float, default=0.6)
    ap.add_argument("--imgsz", type=int, default=416)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for r in failure_sheet(args.weights, args.data, args.out, args.n, args.conf, args.imgsz):
        print(r)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
