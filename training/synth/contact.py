"""Contact sheet of a YOLO folder with boxes drawn, for eyeballing the synthetic data.

python -m training.synth.contact DATASET_DIR OUT.png [--n 24] [--cols 6] [--tile 240] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

COLORS = {0: (0, 0, 255), 1: (255, 0, 0), 2: (0, 200, 0)}
log = logging.getLogger(__name__)


def draw_boxes(img: np.ndarray, label_file: Path) -> np.ndarray:
    h, w = img.shape[:2]
    out = img.copy()
    if label_file.exists():
        for line in label_file.read_text().split("\n"):
            p = line.split()
            if len(p) != 5:
                continue
            c, cx, cy, bw, bh = int(p[0]), *map(float, p[1:])
            x1, y1 = int((cx - bw / 2) * w), int((cy - bh / 2) * h)
            x2, y2 = int((cx + bw / 2) * w), int((cy + bh / 2) * h)
            cv2.rectangle(out, (x1, y1), (x2, y2), COLORS.get(c, (0, 255, 255)), max(1, round(w / 200)))
    return out


def contact_sheet(
    ds: Path, n: int = 24, cols: int = 6, tile: int = 240, seed: int = 0, boxes: bool = True
) -> np.ndarray:
    imgs = sorted((ds / "images").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    pick = [imgs[i] for i in sorted(rng.choice(len(imgs), size=min(n, len(imgs)), replace=False))]
    rows = (len(pick) + cols - 1) // cols
    sheet = np.full((rows * tile, cols * tile, 3), 255, np.uint8)
    for k, p in enumerate(pick):
        img = cv2.imread(str(p))
        if img is None:
            raise FileNotFoundError(p)
        s = tile / max(img.shape[:2])
        img = cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        if boxes:  # drawn after resizing so thin boxes stay visible
            img = draw_boxes(img, ds / "labels" / (p.stem + ".txt"))
        r, c = divmod(k, cols)
        sheet[r * tile : r * tile + img.shape[0], c * tile : c * tile + img.shape[1]] = img
    return sheet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--cols", type=int, default=6)
    ap.add_argument("--tile", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-boxes", action="store_true")
    args = ap.parse_args(argv)
    sheet = contact_sheet(args.dataset, args.n, args.cols, args.tile, args.seed, not args.no_boxes)
    cv2.imwrite(str(args.out), sheet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
