"""How well the relay hides objects in video: the detector plus the relay's box policy, frame by frame.

    .venv/bin/python -m training.video_coverage --weights weights/detector.onnx
    .venv/bin/python -m training.video_coverage --weights weights/detector.onnx --sweep --json

Runs the detector on every frame of the test clips in ``../shared/media/clips`` (15 fps, per-frame
ground truth) and replays box policies on the detections:

- ``threshold``: hide what scores at least ``--conf`` on this frame (a baseline: the relay before tracking);
- ``tracked``: the relay's policy (``relay.pipeline.replay_boxes``, the offline driver's core: tracker,
  fail-closed rules) with lookahead off (a found object stays hidden while it still scores
  ``--track-conf``, and ``--hold-s`` seconds after the detector loses it);
- ``lookahead``: the relay's policy with its lookahead (a frame also gets the boxes of the next frame's
  detection, grown by ``carry_margin``): what the relay and ``relay.offline`` do.

Boxes grow by the relay's ``box_margin``. An object is **hidden** on a frame when the boxes cover at
least ``--cover`` of its ground-truth box (the mosaic's cells cover a little more than the boxes, so
this is conservative). Reported per clip and policy: the share of (object, frame) pairs hidden, the
share of frames on which some object is not hidden (a viewer needs one), the mean coverage, and the
mean share of the frame pixelated outside the ground truth (what the policy costs). ``--sweep`` adds
a grid of ``track_conf`` x ``hold_s``. Every frame is detected as soon as it arrives, as the relay does
at 15 fps with this detector.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relay.boxes import expand_boxes
from relay.detector import YoloOnnxDetector
from relay.pipeline import replay_boxes
from relay.settings import Settings
from training.prepare_data import SHARED, clip_frames

CLIPS = ("parcel_labels", "id_cards")
FPS = 15.0
DET_FLOOR = 0.1  # detections are kept down to this score once, every policy filters them


@dataclass
class Clip:
    name: str
    shape: tuple[int, int]  # (h, w)
    gt: list[np.ndarray]  # per frame (K, 4) x1 y1 x2 y2
    dets: list[np.ndarray]  # per frame (N, 6)


def detect_clip(detector: YoloOnnxDetector, clip_dir: Path) -> Clip:
    gt, dets, shape = [], [], (0, 0)
    for _, frame, boxes in clip_frames(clip_dir):
        shape = frame.shape[:2]
        gt.append(np.array([b[1:] for b in boxes], np.float32).reshape(-1, 4))
        dets.append(detector.detect(frame))
    return Clip(clip_dir.name, shape, gt, dets)


def coverage(gt: np.ndarray, boxes: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Share of each ground-truth box covered by the union of ``boxes``, and the share of the frame
    covered by ``boxes`` outside every ground-truth box."""
    h, w = shape
    mask = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in np.round(boxes[:, :4]).astype(int):
        mask[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)] = True
    inside = np.zeros((h, w), bool)
    cov = []
    for x1, y1, x2, y2 in np.round(gt).astype(int):
        region = mask[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)]
        cov.append(float(region.mean()) if region.size else 1.0)
        inside[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)] = True
    return np.array(cov), float((mask & ~inside).mean())


def replay(
    clip: Clip,
    conf: float,
    track_conf: float | None,
    hold_s: float,
    margin: float,
    cover: float,
    lookahead_margin: float | None = None,
) -> dict[str, float]:
    """One policy over one clip. ``track_conf=None``: the single threshold ``conf`` (a baseline, not
    the relay). Otherwise the relay's own policy (relay/pipeline.py ``replay_boxes``: tracker,
    fail-closed rules, margins; with ``lookahead_margin`` the relay's lookahead, which adds the next
    frame's boxes grown by it, else lookahead off)."""
    if track_conf is None:
        decided: list[np.ndarray | None] = [
            expand_boxes(d[d[:, 4] >= conf], margin, clip.shape) for d in clip.dets
        ]
    else:
        s = dataclasses.replace(
            Settings(),
            conf_threshold=conf,
            track_conf=track_conf,
            track_hold_s=hold_s,
            box_margin=margin,
            carry_margin=lookahead_margin if lookahead_margin is not None else Settings().carry_margin,
            lookahead_s=Settings().lookahead_s if lookahead_margin is not None else 0.0,
        )
        decided = replay_boxes(clip.dets, (clip.shape[1], clip.shape[0]), s, FPS)
    hidden, objects, raw_frames, covs, extra = 0, 0, 0, [], []
    h, w = clip.shape
    for i, gt in enumerate(clip.gt):
        boxes = decided[i]
        if boxes is None:  # the whole frame (fail closed)
            boxes = np.array([[0, 0, w, h, 1, 0]], np.float32)
        cov, ext = coverage(gt, boxes, clip.shape)
        ok = cov >= cover
        hidden += int(ok.sum())
        objects += len(cov)
        raw_frames += int(not ok.all())
        covs.extend(cov.tolist())
        extra.append(ext)
    return {
        "hidden": round(hidden / max(1, objects), 3),
        "frames_with_raw_object": round(raw_frames / max(1, len(clip.gt)), 3),
        "mean_coverage": round(float(np.mean(covs)) if covs else 1.0, 3),
        "extra_pixelated": round(float(np.mean(extra)), 4),
    }


def evaluate(
    clips: list[Clip],
    conf: float,
    track_conf: float,
    hold_s: float,
    margin: float,
    cover: float,
    sweep: bool,
    lookahead_margin: float,
) -> dict:
    res: dict = {"conf": conf, "track_conf": track_conf, "hold_s": hold_s, "cover": cover, "clips": {}}
    for c in clips:
        r = {
            "frames": len(c.gt),
            "objects": int(sum(len(g) for g in c.gt)),
            "threshold": replay(c, conf, None, 0.0, margin, cover),
            "tracked": replay(c, conf, track_conf, hold_s, margin, cover),
            "lookahead": replay(c, conf, track_conf, hold_s, margin, cover, lookahead_margin),
        }
        if sweep:
            r["sweep"] = [
                {"track_conf": tc, "hold_s": hs, **replay(c, conf, tc, hs, margin, cover)}
                for tc in (0.5, 0.4, 0.3, 0.2)
                for hs in (0.0, 0.2, 0.4, 0.8)
                if tc <= conf
            ]
        res["clips"][c.name] = r
    return res


def print_table(res: dict) -> None:
    print(
        f"conf {res['conf']}, track_conf {res['track_conf']}, hold {res['hold_s']} s, "
        f"hidden = at least {res['cover']:.0%} of the box covered"
    )
    print(f"{'clip':<15}{'policy':<22}{'hidden':>8}{'raw frames':>12}{'mean cov':>10}{'extra px':>10}")
    for name, r in res["clips"].items():
        rows = [("threshold", r["threshold"]), ("tracked", r["tracked"]), ("lookahead", r["lookahead"])]
        rows += [(f"tc {s['track_conf']} hold {s['hold_s']}", s) for s in r.get("sweep", [])]
        for label, m in rows:
            print(
                f"{name:<15}{label:<22}{m['hidden']:>8.3f}{m['frames_with_raw_object']:>12.3f}"
                f"{m['mean_coverage']:>10.3f}{m['extra_pixelated']:>10.4f}"
            )


def main(argv: list[str] | None = None) -> int:
    s = Settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=s.weights)
    ap.add_argument("--imgsz", type=int, default=s.input_size)
    ap.add_argument("--conf", type=float, default=s.conf_threshold)
    ap.add_argument("--track-conf", type=float, default=s.track_conf)
    ap.add_argument("--hold-s", type=float, default=s.track_hold_s)
    ap.add_argument("--cover", type=float, default=0.95, help="share of a box that must be covered")
    ap.add_argument("--clips", nargs="+", default=list(CLIPS))
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="also a grid of track_conf x hold_s")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = ap.parse_args(argv)
    if not 0.0 <= args.track_conf <= args.conf:
        ap.error("--track-conf must be in [0, --conf]")
    if not args.weights.is_file():
        ap.error(f"{args.weights} not found")
    det = YoloOnnxDetector(args.weights, args.imgsz, DET_FLOOR, s.iou_threshold, args.threads)
    clips = [detect_clip(det, args.shared / "media" / "clips" / name) for name in args.clips]
    res = evaluate(
        clips, args.conf, args.track_conf, args.hold_s, s.box_margin, args.cover, args.sweep, s.carry_margin
    )
    res["weights"] = str(args.weights)
    print_table(res)
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
