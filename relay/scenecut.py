"""Hard scene-cut detection on luma thumbnails. Pure: no clock, no I/O, no threads.

A hard cut (the camera switches, the clip loops, a new scene fills the frame) makes every box
carried from the previous frames meaningless, so the pipeline treats a detected cut like start-up.
This module only answers "does this frame start a new scene?"::

    detector = SceneCutDetector()
    for buf in frames:                      # planar yuv420p arrays, shape (H*3/2, W)
        if detector.update(thumbnail(buf)):
            ...                             # forget the old scene's boxes; hide the whole frame
    detector.reset()                        # on a size change or a new stream (the caller's job)

The score compares a frame's thumbnail with the previous one's:

- **layout**: 1 - the best normalised cross-correlation of the current thumbnail's centre within
  the previous thumbnail, over shifts of up to ``MARGIN`` thumbnail pixels (about 6% of the width
  and 11% of the height). Normalised correlation ignores gain and offset (lighting flicker, auto
  exposure); the shift search absorbs pans and shake. Same scene: near 0; another scene: 0.3-1.
- **detail**: the same on a band-pass (difference of Gaussians) copy, at the shift the layout
  found. It separates two scenes with a similar layout (a card on a dark table, then another).

``score = (1 - detail_weight) * layout + detail_weight * detail``; a cut is ``score >= threshold``.
A thumbnail without structure (a black frame, a lens cap) is not compared: going from one to a
textured frame counts as a cut, the other way round does not (nothing on a flat frame to hide).
The defaults come from ``bench/scenecut.py`` (numbers in docs/BENCHMARKS.md, "Scene cuts").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

THUMB_SIZE = (128, 72)  # (w, h): a 16:9 grid whatever the frame's aspect ratio
MARGIN = 8  # thumbnail pixels searched in each direction for the best alignment
FLAT_STD = 2.0  # grey levels: a thumbnail with less spread has no structure to compare

Thumb = npt.NDArray[np.float32]


def thumbnail(frame: npt.NDArray[np.uint8], *, yuv420: bool = True) -> Thumb:
    """A small float32 luma thumbnail (``THUMB_SIZE``) of one frame, in grey levels.

    ``frame`` is a planar yuv420p array of shape (H*3/2, W), of which only the first H rows
    (the luma plane) are read, or, with ``yuv420=False``, a single-channel (H, W) image.
    """
    if frame.ndim != 2:
        raise ValueError(f"expected a 2-D yuv420p or grey array, got shape {frame.shape}")
    rows = frame.shape[0] * 2 // 3 if yuv420 else frame.shape[0]
    luma = frame[:rows]
    step = max(1, min(luma.shape[1] // (THUMB_SIZE[0] * 4), rows // (THUMB_SIZE[1] * 4)))
    if step > 1:  # every step-th pixel first: area-averaging a whole 1080p plane costs ~4x more
        luma = luma[::step, ::step]
    return np.asarray(cv2.resize(luma, THUMB_SIZE, interpolation=cv2.INTER_AREA), dtype=np.float32)


def band_pass(thumb: Thumb) -> Thumb:
    """Difference of Gaussians (sigma 1 and 4 thumbnail pixels): detail without layout or noise."""
    fine = cv2.GaussianBlur(thumb, (0, 0), 1.0)
    coarse = cv2.GaussianBlur(thumb, (0, 0), 4.0)
    return np.asarray(fine - coarse, dtype=np.float32)


def _correlation(a: Thumb, b: Thumb) -> float:
    a0, b0 = a - a.mean(), b - b.mean()
    den = float(np.sqrt(float((a0 * a0).sum()) * float((b0 * b0).sum())))
    return float((a0 * b0).sum()) / den if den > 1e-9 else 0.0


@dataclass(frozen=True)
class CutScore:
    """How different a frame's thumbnail is from the previous one's (see the module docstring)."""

    layout: float  # 0 (same) .. 1 (unrelated)
    detail: float  # 0 (same) .. 1 (unrelated)
    flat_to_textured: bool = False

    def combined(self, detail_weight: float) -> float:
        if self.flat_to_textured:
            return 1.0
        return (1.0 - detail_weight) * self.layout + detail_weight * self.detail


def compare(
    prev: Thumb, cur: Thumb, prev_detail: Thumb | None = None, cur_detail: Thumb | None = None
) -> CutScore:
    """Score the change from thumbnail ``prev`` to ``cur`` (same shape); their band-pass copies
    may be passed in when already computed."""
    if prev.shape != cur.shape or min(cur.shape) <= 2 * MARGIN:
        raise ValueError(
            f"need two thumbnails of one shape larger than the margin, got {prev.shape}, {cur.shape}"
        )
    prev_flat, cur_flat = float(prev.std()) < FLAT_STD, float(cur.std()) < FLAT_STD
    if prev_flat or cur_flat:
        return CutScore(0.0, 0.0, flat_to_textured=prev_flat and not cur_flat)
    m = MARGIN
    centre = np.ascontiguousarray(cur[m:-m, m:-m])
    _, best, _, (dx, dy) = cv2.minMaxLoc(cv2.matchTemplate(prev, centre, cv2.TM_CCOEFF_NORMED))
    pd = band_pass(prev) if prev_detail is None else prev_detail
    cd = band_pass(cur) if cur_detail is None else cur_detail
    h, w = centre.shape
    detail = _correlation(cd[m:-m, m:-m], pd[dy : dy + h, dx : dx + w])
    return CutScore(layout=1.0 - max(float(best), 0.0), detail=1.0 - max(detail, 0.0))


class SceneCutDetector:
    """Says whether each frame starts a new scene, from its thumbnail and the previous frame's.

    ``threshold``: minimum combined score of a cut; ``detail_weight``: share of the detail
    measure in it. Not thread-safe: one detector per stream, fed in frame order.
    """

    def __init__(self, threshold: float = 0.27, detail_weight: float = 0.1) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if not 0.0 <= detail_weight <= 1.0:
            raise ValueError(f"detail_weight must be in [0, 1], got {detail_weight}")
        self.threshold = threshold
        self.detail_weight = detail_weight
        self.last_score: CutScore | None = None
        self._prev: tuple[Thumb, Thumb] | None = None

    def reset(self) -> None:
        """Forget the previous frame: the next :meth:`update` is a first frame."""
        self._prev = None
        self.last_score = None

    def is_cut(self, score: CutScore) -> bool:
        return score.combined(self.detail_weight) >= self.threshold

    def update(self, thumb: Thumb) -> bool:
        """True when the frame of ``thumb`` (from :func:`thumbnail`) starts a new scene.

        The first frame after construction or :meth:`reset` returns False: start-up, like a
        change of frame size, is the caller's to handle.
        """
        detail = band_pass(thumb)
        prev, self._prev = self._prev, (thumb, detail)
        if prev is None or prev[0].shape != thumb.shape:
            self.last_score = None
            return False
        self.last_score = compare(prev[0], thumb, prev[1], detail)
        return self.is_cut(self.last_score)


def scene_cut_hook(threshold: float) -> Callable[[npt.NDArray[np.uint8]], bool] | None:
    """One stream's hook for the pipeline (``relay.pipeline.SceneCutHook``): planar yuv420p frame in
    order → "this frame starts a new scene"; ``None`` when ``threshold`` is 0 (detection off).
    Runs on the pipeline's mosaic thread (numpy/cv2: never on the event loop)."""
    if threshold <= 0:
        return None
    detector = SceneCutDetector(threshold)

    def hook(buf: npt.NDArray[np.uint8]) -> bool:
        return detector.update(thumbnail(buf))

    return hook
