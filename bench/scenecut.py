"""Scene-cut detector (relay/scenecut.py) on real footage: false positives, misses, cost per frame.

    nice -n 5 .venv/bin/python bench/scenecut.py                # all sets, ~1-2 min on 2 busy cores
    nice -n 5 .venv/bin/python bench/scenecut.py --photos 20    # fewer photos, faster

Sets (frame pairs: previous → current):
- ``clip_continuous``: consecutive frames of the shared clips (../shared/media/clips) within one
  still (hand-held-like wobble, zoom, pans): every pair is continuous, a detection is a false positive.
- ``clip_cuts``: the clips' still changes (the frame switches to another card or photo: hard cuts)
  and each clip's loop (last frame → first).
- ``camera_<profile>``: continuous footage filmed over real photos of ../shared/media/backgrounds
  with camera motion (pan, fast pan with motion blur, zoom, shake and rotation), lighting flicker
  with exposure steps, sensor noise + JPEG q30, or a hand-like occluder moving in from the right
  over 1 s or 2 s (15 or 30 frames) until it covers ~45% of the view.
- ``cuts_any``: hard cuts between two photos from different sources (the last frame of a camera
  clip of one → the first of another); ``cuts_similar``: the same with mean luma within 6 grey levels.
- ``jumps_same_video``: two frames of one source video >= 1.5 s apart (a clip that loops, a dropped
  stretch), same viewport. Ambiguous: a static camera (parking lot, lobby) barely changes and its
  boxes stay valid, so these are reported, not scored.

Prints one row per set (pairs, detections, percentiles of the combined score) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from relay.scenecut import CutScore, SceneCutDetector, compare, thumbnail  # noqa: E402
from tests.helpers.footage import (  # noqa: E402
    BACKGROUNDS_DIR,
    CLIP_NAMES,
    Camera,
    camera_clip,
    clip_segments,
    read_y4m,
    render_clip,
)

PROFILES = {
    "pan": Camera(pan=(12.0, 3.0), shake=1.5),
    "fast_pan_blur": Camera(pan=(32.0, 6.0), blur=True, shake=2.0),
    "zoom": Camera(zoom=0.025, pan=(2.0, 1.0)),
    "shake_rotate": Camera(shake=6.0, rotate=5.0, pan=(4.0, 0.0)),
    "flicker": Camera(flicker=0.2, pan=(4.0, 0.0), shake=1.0),
    "noise_jpeg": Camera(noise=8.0, pan=(6.0, 2.0), shake=1.5),
    "hand_1s": Camera(hand=15, pan=(3.0, 0.0), shake=2.0),
    "hand_2s": Camera(hand=30, pan=(3.0, 0.0), shake=2.0),
}
FRAMES = 24
SIZE = (640, 360)

Pair = tuple[np.ndarray, np.ndarray]


def clip_pairs(tmp: Path) -> tuple[list[Pair], list[Pair]]:
    continuous: list[Pair] = []
    cuts: list[Pair] = []
    for name in CLIP_NAMES:
        thumbs = [thumbnail(f) for f in read_y4m(render_clip(name, tmp))]
        segments = clip_segments(name)
        for seg in segments:
            continuous += [(thumbs[i - 1], thumbs[i]) for i in seg if i > seg.start]
            if seg.start:
                cuts.append((thumbs[seg.start - 1], thumbs[seg.start]))
        cuts.append((thumbs[-1], thumbs[0]))
    return continuous, cuts


def source_of(origin: str) -> str:
    """The camera set-up a background image comes from: its video, the ASL clips (one room, one
    camera), or a family of GIF previews filmed in one place (``head-pose-face-detection-*``)."""
    name = origin.split(":", 1)[-1]
    if name.startswith("asl_gestures/"):
        return "asl_gestures"
    if name.startswith("preview/"):
        return "-".join(name.removeprefix("preview/").split("-")[:2])
    return name


def load_photos(limit: int, seed: int) -> list[tuple[str, str, np.ndarray]]:
    """(file, source video, BGR image): every video frame of the pool plus ``limit`` other photos."""
    with (BACKGROUNDS_DIR / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    videos = [r for r in rows if r["detail"].startswith(("video frame", "GIF preview"))]
    stills = [r for r in rows if r not in videos]
    random.Random(seed).shuffle(stills)
    out = []
    for r in videos + stills[:limit]:
        img = cv2.imread(str(BACKGROUNDS_DIR / r["file"]), cv2.IMREAD_COLOR)
        if img is not None and img.ndim == 3:
            out.append((r["file"], source_of(r["origin"]), img))
    return out


def measure(pairs: list[Pair]) -> list[CutScore]:
    return [compare(a, b) for a, b in pairs]


def sequence_scores(thumbs: list[np.ndarray]) -> list[CutScore]:
    """Scores of consecutive frames, through the detector as the pipeline runs it."""
    det = SceneCutDetector()
    out = []
    for t in thumbs:
        det.update(t)
        if det.last_score is not None:
            out.append(det.last_score)
    return out


def summary(name: str, scores: list[CutScore], det: SceneCutDetector, cut: bool | None) -> dict[str, object]:
    """Print and return one set's row: detections and the combined score's percentiles."""
    combined = np.array([s.combined(det.detail_weight) for s in scores])
    hits = int(sum(det.is_cut(s) for s in scores))
    qs = [0, 1, 5, 50] if cut else [50, 99, 99.9, 100]
    pct = [round(float(v), 3) for v in np.percentile(combined, qs)] if len(scores) else []
    kind = {True: "misses", False: "false+", None: "(unscored)"}[cut]
    bad = len(scores) - hits if cut else hits if cut is False else "-"
    print(
        f"{name:22s} {len(scores):5d} pairs  detected {hits:4d}  {kind} {bad!s:>4}  "
        f"score p{'/p'.join(str(q) for q in qs)} {pct}"
    )
    return {"set": name, "pairs": len(scores), "detected": hits, "percentiles": qs, "score": pct}


def cost_us(repeats: int = 300) -> dict[str, float]:
    """CPU microseconds (process time, all threads: OpenCV may use two) per frame for
    ``thumbnail`` + ``update``. CPU rather than wall time: on a shared machine wall time mostly
    measures the wait for a core."""
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for w, h in ((640, 480), (1280, 720), (1920, 1080)):
        frames = [rng.integers(0, 255, (h * 3 // 2, w), dtype=np.uint8) for _ in range(2)]
        det = SceneCutDetector()
        t0 = time.process_time()
        for i in range(repeats):
            det.update(thumbnail(frames[i % 2]))
        out[f"{w}x{h}"] = round((time.process_time() - t0) / repeats * 1e6, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=40, help="still photos besides the video frames")
    ap.add_argument("--cut-pairs", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    det = SceneCutDetector()
    print(f"threshold {det.threshold}, detail weight {det.detail_weight}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        continuous, cuts = clip_pairs(Path(tmp))
    rows.append(summary("clip_continuous", measure(continuous), det, False))
    rows.append(summary("clip_cuts", measure(cuts), det, True))
    photos = load_photos(args.photos, args.seed)
    firsts, lasts = {}, {}
    by_profile: dict[str, list[CutScore]] = defaultdict(list)
    for k, (file, _, img) in enumerate(photos):
        for p, (profile, cam) in enumerate(PROFILES.items()):
            thumbs = [thumbnail(f) for f in camera_clip(img, cam, FRAMES, SIZE, seed=k * 31 + p)]
            by_profile[profile] += sequence_scores(thumbs)
            if profile == "pan":
                firsts[file], lasts[file] = thumbs[0], thumbs[-1]
    for profile, scores in by_profile.items():
        rows.append(summary(f"camera_{profile}", scores, det, False))
    rng = random.Random(args.seed)
    src = {f: s for f, s, _ in photos}
    other = [(a, b) for a in firsts for b in firsts if src[a] != src[b]]
    similar = [(a, b) for a, b in other if abs(float(lasts[a].mean()) - float(firsts[b].mean())) < 6.0]
    for name, pairs in (("cuts_any", other), ("cuts_similar", similar)):
        chosen = rng.sample(pairs, min(args.cut_pairs, len(pairs)))
        rows.append(summary(name, measure([(lasts[a], firsts[b]) for a, b in chosen]), det, True))
    same = [(a, b) for a in firsts for b in firsts if a != b and src[a] == src[b]]
    rows.append(summary("jumps_same_video", measure([(firsts[a], firsts[b]) for a, b in same]), det, None))
    rows.append({"cost_us_per_frame": cost_us()})
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
