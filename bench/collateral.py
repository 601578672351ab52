"""Which text does the safety net hide? Replays cached detections on the real stills, judged by pixels.

    .venv/bin/python bench/collateral.py --cache /tmp/collateral [--policies all selected evidence]

For every still set of ``bench/privacy.py`` (uc3m_eval, openalpr_eval, ups_eval, backgrounds) it caches,
once per image, the YOLO model's raw candidates down to score 0.05 (one inference), the net's raw text
lines and the 1D barcode boxes; then, for each text policy, it sanitizes every image as ``relay.offline``
does on a still (YOLO boxes >= ``track_conf``, as a new scene settles, plus the net's regions, all grown
by ``box_margin``, serving mosaic) in memory and judges it with ``../shared/tools/coverage_judge.py``'s
own functions: coverage per set, collateral per set. This is a fast stand-in for the slow full
``bench/privacy.py`` (which runs relay.offline itself); confirm a choice with that.

Last line: one JSON object, per policy and set.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from relay.detector import YoloOnnxDetector  # noqa: E402
from relay.mosaic import block_for_frame, pixelate  # noqa: E402
from relay.pipeline import replay_boxes  # noqa: E402
from relay.regions import RegionParams, combine, lines_to_read, plausible_mask  # noqa: E402
from relay.settings import Settings  # noqa: E402
from relay.textnet import TextNet  # noqa: E402
from relay.textread import UNREAD, TextReader  # noqa: E402

SETS = ("uc3m_eval", "openalpr_eval", "ups_eval", "backgrounds")
FLOOR = 0.05
SMALL = float(
    __import__("os").environ.get("SMALL", "0")
)  # the YOLO candidates cached: every score down to this


def load_judge() -> Any:
    spec = importlib.util.spec_from_file_location(
        "coverage_judge", REPO.parent / "shared/tools/coverage_judge.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


J = load_judge()


def set_images(name: str) -> list[Path]:
    root = REPO / "data_cache"
    d = root / "backgrounds" if name == "backgrounds" else root / "real" / name / "images"
    return sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def labels_of(img: Path, w: int, h: int) -> list[tuple[int, float, float, float, float]]:
    out: list[tuple[int, float, float, float, float]] = J.read_labels(
        img.parent.parent / "labels" / f"{img.stem}.txt", w, h
    )
    return out


def build_cache(name: str, cache_dir: Path, yolo: YoloOnnxDetector, net: TextNet | None) -> dict[str, Any]:
    path = cache_dir / f"{name}.npz"
    cache: dict[str, Any] = {}
    if path.exists():
        cache = dict(np.load(path, allow_pickle=True)["cache"].item())
    todo = [p for p in set_images(name) if p.stem not in cache]
    if todo and net is None:
        raise SystemExit(f"{name}: {len(todo)} images not cached")
    t = time.perf_counter()
    for i, p in enumerate(todo):
        img = cv2.imread(str(p))
        assert img is not None and net is not None, p
        codes, is_2d = net.barcode_boxes(img, qr=False)
        cache[p.stem] = {"yolo": yolo.detect(img), "lines": net.lines(img), "codes": codes, "is_2d": is_2d}
        if i % 50 == 49:
            print(f"{name}: {i + 1}/{len(todo)} {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            np.savez(path, cache=np.array(cache, dtype=object))
    if todo:
        np.savez(path, cache=np.array(cache, dtype=object))
    unread = [p for p in set_images(name) if "reads" not in cache[p.stem]]
    if unread:  # digits of every line of print 8 px or taller (the "numbers" policy reads from read_px)
        reader = TextReader(threads=2)
        for p in unread:
            img = cv2.imread(str(p))
            assert img is not None, p
            lines = cache[p.stem]["lines"]
            todo = plausible_mask(lines, img.shape, RegionParams()) & (lines[:, 5] >= 8)
            cache[p.stem]["reads"] = reader.digits(img, lines, todo, len(lines))
        np.savez(path, cache=np.array(cache, dtype=object))
    return cache


class Judged:
    """One image's reference for the judge: its gray image, labels and textured 16x16 blocks."""

    def __init__(self, img: np.ndarray, labels: list[tuple[int, float, float, float, float]]) -> None:
        self.img = img
        self.labels = labels
        self.ref = J.gray(img)
        h, w = self.ref.shape
        keep = np.ones((h, w), bool)
        for _, x1, y1, x2, y2 in labels:
            gx, gy = max(8, (x2 - x1) / 4), max(8, (y2 - y1) / 4)
            keep[
                max(0, int(y1 - gy)) : int(np.ceil(y2 + gy)), max(0, int(x1 - gx)) : int(np.ceil(x2 + gx))
            ] = False
        self.blocks: list[tuple[int, int]] = []
        B = J.BLOCK
        for y in range(0, h - B + 1, B):
            for x in range(0, w - B + 1, B):
                if (
                    keep[y : y + B, x : x + B].all()
                    and J.highpass(self.ref[y : y + B, x : x + B]).std() >= J.TEXTURE_STD
                ):
                    self.blocks.append((y, x))

    def judge(self, got_bgr: np.ndarray) -> tuple[list[bool | None], int, int]:
        got = J.gray(got_bgr)
        cov = [J.judge_box(self.ref, got, tuple(b)) for _, *b in self.labels]
        changed = np.abs(got - self.ref) > 0
        B = J.BLOCK
        destroyed = 0
        for y, x in self.blocks:
            if changed[y : y + B, x : x + B].any():
                a = J.highpass(self.ref[y : y + B, x : x + B])
                destroyed += J.ncc(a, J.highpass(got[y : y + B, x : x + B])) <= J.NCC_LEAK
        return cov, len(self.blocks), destroyed


def sanitize(img: np.ndarray, dets: np.ndarray, s: Settings) -> np.ndarray:
    """What relay.offline hides on a still with these detections (its core: tracker, settling, margins)."""
    h, w = img.shape[:2]
    (boxes,) = replay_boxes([dets], (w, h), s, 30.0)
    block = block_for_frame(s.mosaic_block, w, h)
    if boxes is None:  # the whole frame
        boxes = np.array([[0, 0, w, h, 1, 0]], np.float32)
    return pixelate(img.copy(), boxes, block)


def boxes_for(
    entry: dict[str, Any], shape: tuple[int, ...], p: RegionParams | None, s: Settings
) -> np.ndarray:
    """What the served detectors hand the tracker on a still: YOLO alone (``p`` None), or YOLO refined
    by the net (``relay.regions.combine``; ``confirm_overlap`` 0: weak YOLO boxes are not checked)."""
    y = entry["yolo"]
    if p is None:
        return np.asarray(y[y[:, 4] >= s.detector_floor], np.float32)
    scale = 640 / max(shape[0], shape[1])  # the net's input scale (TextNet input_size 640)
    args = (entry["lines"], entry["codes"], entry["is_2d"], shape, p)
    conf = s.conf_threshold if p.confirm_overlap > 0 else 0.0  # conf 0: every YOLO box counts as strong
    reads = np.where(lines_to_read(entry["lines"], shape, p), entry["reads"], UNREAD)
    return combine(y, *args, conf=conf, floor=s.detector_floor, net_scale=scale, reads=reads)


def field_value(name: str, text: str) -> Any:
    """``text`` as the type of ``RegionParams.name`` (a bool is ``0``/``1``/``false``/``true``)."""
    kind = type(getattr(RegionParams(), name))
    if kind is bool:
        return text.lower() in ("1", "true", "yes")
    return kind(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["yolo", "all", "numbers"],
        help="yolo (alone) or POLICY[:FIELD=VALUE,...] (relay.regions.RegionParams; evidence = served)",
    )
    ap.add_argument("--dump", type=Path, default=None, help="write the sanitized PNGs of each variant here")
    ap.add_argument("--per-image", action="store_true", help="print the worst background images per variant")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    s = Settings()
    args.cache.mkdir(parents=True, exist_ok=True)
    yolo = YoloOnnxDetector(s.weights, s.input_size, FLOOR, s.iou_threshold, 2)
    net = TextNet(threads=2, qr=False)
    variants: dict[str, RegionParams | None] = {}
    for v in args.variants:
        if v == "yolo":
            variants[v] = None
            continue
        pol, _, kv = v.partition(":")
        fields = {k: field_value(k, val) for k, val in (x.split("=") for x in kv.split(",") if x)}
        variants[v] = RegionParams(policy=pol, **fields)
    result: dict[str, Any] = {}
    for name in args.sets:
        cache = build_cache(name, args.cache, yolo, net)
        res: dict[str, dict[str, Any]] = {
            v: {"boxes": 0, "covered": 0, "textured": 0, "destroyed": 0, "worst": []} for v in variants
        }
        for img_path in set_images(name):
            img = cv2.imread(str(img_path))
            assert img is not None
            jd = Judged(img, labels_of(img_path, img.shape[1], img.shape[0]))
            for v, p in variants.items():
                got = sanitize(img, boxes_for(cache[img_path.stem], img.shape, p, s), s)
                cov, tex, des = jd.judge(got)
                r = res[v]
                r["boxes"] += sum(c is not None for c in cov)
                r["covered"] += sum(bool(c) for c in cov)
                r["textured"] += tex
                r["destroyed"] += des
                if des:
                    r["worst"].append((des, img_path.stem))
                if args.dump:
                    d = args.dump / v.replace(":", "_").replace(",", "_") / name
                    d.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(d / f"{img_path.stem}.png"), got)
        out = {}
        for v, r in res.items():
            out[v] = {
                "coverage": round(r["covered"] / max(r["boxes"], 1), 4),
                "boxes": r["boxes"],
                "collateral": round(r["destroyed"] / max(r["textured"], 1), 4),
            }
            if args.per_image and name == "backgrounds":
                out[v]["worst"] = sorted(r["worst"], reverse=True)[:15]
        result[name] = out
        print(name, json.dumps(out), file=sys.stderr, flush=True)
    print(json.dumps({"variants": args.variants, "results": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
