"""Pure geometry of the text/barcode safety net: text lines → blocks to hide, barcodes → labels.

No I/O, no models: :mod:`relay.textnet` finds the lines and the barcodes, these functions decide
which pixels they make private.

- **Lines** are ``(N, 6)`` float32 ``x1, y1, x2, y2, score, height`` in image pixels: the axis-aligned
  box of a detected text line and the line's height (short side of its rotated rectangle).
- **Blocks** are ``(M, 8)`` float32 ``x1, y1, x2, y2, score, n_lines, line_height, private``: lines
  closer than about one line height grouped together, then grown by half a line height; ``private``
  when a line is too small to read, was not read or reads digits, or a like-sized private block is near
  (the "numbers" policy; the digits come from :mod:`relay.textread`).
- **Barcodes** are ``(K, 4)`` float32 boxes; a barcode with print around it is evidence of a label, so
  it grows into a label-sized region (the sizes measured on real waybills, see ``BARCODE_GROW``); one
  without print around it is not hidden (:func:`label_confirmed`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from relay.model import ClassId

# A waybill is about as wide as its main 1D barcode (label/barcode width 0.96-1.00) and about as
# tall (1.0-1.1), the barcode near one end: 0.54-0.55 barcode widths of label beyond the barcode's
# far edge (measured on the 3 real ups_labels photos). So a barcode grows by these multiples of its
# length (the long side, across the bars) along it and across it, on every side.
BARCODE_GROW_ALONG = 0.15
BARCODE_GROW_ACROSS = 0.6
QR_GROW = 0.5  # a QR / 2D code: half its side on every side


@dataclass(frozen=True)
class RegionParams:
    """How lines become blocks (all lengths in line heights unless named ``_px``)."""

    min_line_px: float = 4.0  # lines lower than this carry nothing readable at this size
    max_line_frac: float = 0.2  # lines taller than this share of the short image side are not print
    min_aspect: float = 0.5  # line length / height below this is a dot, not a line of print
    blob_aspect: float = 1.5  # a line shorter than this many heights ...
    blob_frac: float = 0.08  # ... and taller than this share of the short image side is a blob,
    dot_px: float = 8.0  # ... and lower than this is a dot of texture (food, foliage, gravel)
    min_score: float = 0.6  # mean text probability inside the line
    join_gap: float = 1.0  # lines closer than this many line heights form one block
    grow: float = 0.5  # each block grows by this many (median) line heights on every side
    policy: str = "numbers"  # which blocks are hidden: one of POLICIES (bench/collateral.py)
    evidence_score: float = 0.05  # "evidence": a YOLO candidate of any class scoring this ...
    evidence_overlap: float = 0.3  # ... covering this share of the block (or the block of it)
    # a weak YOLO box (under the serving threshold: hidden only while a scene settles) needs text or
    # a barcode label covering this share of it (or it of them) ...
    confirm_overlap: float = 0.3
    confirm_px: float = 40.0  # ... unless it is lower than this at the net's input scale (too small to read)
    # "numbers": a block is hidden when one of its lines is lower than this (px of the image: too
    # small to read, so private until shown otherwise) ...
    read_px: float = 16.0
    min_digits: int = 1  # ... or reads this many digits (or could not be read: relay/textread.py);
    # a block closer than this many line heights to a private block, in print of a like size (line
    # heights within ``spread_ratio`` of each other), is on the same document (a card's title beside
    # its number, a label's name beside its tracking code): private too; a road sign's big letters
    # beside a small sticker are not
    spread_gap: float = 6.0
    spread_ratio: float = 2.0
    max_reads: int = 24  # lines read per image at most (the tallest first); the rest count as unread
    # a barcode is evidence of a label around it when this many lines of print (outside the bars)
    # lie in that label region; a "code" without print around is not hidden (fences, blinds, shutters
    # and cobbles fool OpenCV's barcode detector; a waybill's code always has print around it)
    label_lines: int = 2

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")


#: "numbers" (default): blocks with a line too small to read or reading digits, and text on a barcode's
#: label; "all" text; "selected": blocks shaped like a plate, card or label; "evidence": blocks the
#: YOLO model also sees something private in (a candidate of any class, far under the serving
#: threshold) or on a barcode's label
POLICIES = ("numbers", "all", "selected", "evidence")


def plausible_mask(lines: np.ndarray, shape: tuple[int, ...], p: RegionParams) -> np.ndarray:
    """Which lines can be print: not tiny, not a large blob, not a dot."""
    if len(lines) == 0:
        return np.zeros(0, bool)
    h = lines[:, 5]
    length = np.maximum(lines[:, 2] - lines[:, 0], lines[:, 3] - lines[:, 1])
    short = min(shape[0], shape[1])
    ok = (h >= p.min_line_px) & (h <= p.max_line_frac * short) & (lines[:, 4] >= p.min_score)
    ok &= length >= p.min_aspect * h
    ok &= (length >= p.blob_aspect * h) | ((h <= p.blob_frac * short) & (h >= p.dot_px))
    mask: np.ndarray = ok
    return mask


def plausible_lines(lines: np.ndarray, shape: tuple[int, ...], p: RegionParams) -> np.ndarray:
    """The lines that can be print (:func:`plausible_mask`)."""
    kept: np.ndarray = lines[plausible_mask(lines, shape, p)] if len(lines) else lines
    return kept


def lines_to_read(lines: np.ndarray, shape: tuple[int, ...], p: RegionParams) -> np.ndarray:
    """Which lines the "numbers" policy needs read (bool ``(N,)``): print at least ``read_px`` high
    whose block has no line lower than that (such a block is hidden unread)."""
    todo = np.zeros(len(lines), bool)
    if p.policy != "numbers" or len(lines) == 0:
        return todo
    idx = np.flatnonzero(plausible_mask(lines, shape, p))
    tall = lines[idx, 5] >= p.read_px
    for g in group_lines(lines[idx], p.join_gap):
        if tall[g].all():
            todo[idx[g]] = True
    return todo


def group_lines(lines: np.ndarray, join_gap: float, max_ratio: float = 0.0) -> list[np.ndarray]:
    """Indices of the lines in each group: two lines join when the gap between their boxes is below
    ``join_gap`` x the taller one's height, in both x and y, and (``max_ratio`` > 0) the taller is at
    most ``max_ratio`` x the lower one's height (transitively: connected components)."""
    n = len(lines)
    if n == 0:
        return []
    b, h = lines[:, :4], lines[:, 5]
    gap_x = np.maximum(b[:, None, 0] - b[None, :, 2], b[None, :, 0] - b[:, None, 2])
    gap_y = np.maximum(b[:, None, 1] - b[None, :, 3], b[None, :, 1] - b[:, None, 3])
    taller = np.maximum(h[:, None], h[None, :])
    near = (gap_x <= join_gap * taller) & (gap_y <= join_gap * taller)
    if max_ratio > 0:
        near &= taller <= max_ratio * np.maximum(np.minimum(h[:, None], h[None, :]), 1e-6)
    label = np.arange(n)
    while True:  # label propagation to a fixed point: each line takes the smallest label it touches
        new = np.where(near, label[None, :], n).min(axis=1)
        if np.array_equal(new, label):
            break
        label = new
    return [np.flatnonzero(label == k) for k in np.unique(label)]


def text_blocks(
    lines: np.ndarray, shape: tuple[int, ...], p: RegionParams, reads: np.ndarray | None = None
) -> np.ndarray:
    """Lines → grown blocks ``(M, 8)`` ``x1, y1, x2, y2, score, n_lines, line_height, private``,
    clipped to the image ``shape`` ``(h, w, ...)``. ``private`` (1/0): a line of the block is lower
    than ``read_px``, was not read, or reads ``min_digits`` digits (``reads``: digits per line of
    ``lines``, ``-1`` unread; none: nothing was read)."""
    keep = plausible_mask(lines, shape, p)
    lines = lines[keep] if len(lines) else lines
    digits = np.full(len(lines), -1) if reads is None else np.asarray(reads)[keep]
    groups = group_lines(lines, p.join_gap)
    out = np.zeros((len(groups), 8), np.float32)
    for i, idx in enumerate(groups):
        g = lines[idx]
        lh = float(np.median(g[:, 5]))
        pad = p.grow * lh
        d = digits[idx]
        private = (g[:, 5] < p.read_px).any() or (d < 0).any() or (d >= p.min_digits).any()
        out[i, :4] = (g[:, 0].min() - pad, g[:, 1].min() - pad, g[:, 2].max() + pad, g[:, 3].max() + pad)
        out[i, 4:] = (g[:, 4].max(), len(g), lh, float(private))
    if p.spread_gap > 0 and len(out) > 1:  # private spreads to the blocks near it (same document)
        as_lines = np.concatenate([out[:, :5], out[:, 6:7]], axis=1)  # a block's line height as height
        for idx in group_lines(as_lines, p.spread_gap, p.spread_ratio):
            out[idx, 7] = out[idx, 7].max()
    return clip_boxes(out, shape)


def barcode_regions(boxes: np.ndarray, is_2d: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Barcode boxes ``(K, 4)`` → the label they are evidence of, ``(K, 4)`` clipped to the image."""
    out = np.array(boxes, np.float32).reshape(-1, 4)
    if len(out) == 0:
        return out
    w = out[:, 2] - out[:, 0]
    h = out[:, 3] - out[:, 1]
    length = np.maximum(w, h)
    along = np.where(is_2d, QR_GROW, BARCODE_GROW_ALONG) * length
    across = np.where(is_2d, QR_GROW, BARCODE_GROW_ACROSS) * length
    vertical = h > w  # a barcode turned 90°: its label extends along x
    gx, gy = np.where(vertical, across, along), np.where(vertical, along, across)
    out[:, 0] -= gx
    out[:, 2] += gx
    out[:, 1] -= gy
    out[:, 3] += gy
    return clip_boxes(out, shape)


def label_confirmed(
    codes: np.ndarray, labels: np.ndarray, lines: np.ndarray, shape: tuple[int, ...], p: RegionParams
) -> np.ndarray:
    """Which barcodes ``codes`` ``(K, 4)`` have ``label_lines`` lines of print (outside the bars)
    in their label region ``labels`` ``(K, 4)``: bool ``(K,)``."""
    ok = np.zeros(len(codes), bool)
    print_lines = plausible_lines(lines, shape, p)
    if len(codes) == 0 or len(print_lines) == 0:
        return ok
    box = print_lines[:, :4]
    in_label = overlap_share(box, labels) > 0.5  # (lines, codes): the line lies in the label region
    in_bars = overlap_share(box, codes) >= 0.5  # the "line" is the bars (or the digits under them)
    confirmed: np.ndarray = (in_label & ~in_bars).sum(axis=0) >= p.label_lines
    return confirmed


def select_blocks(blocks: np.ndarray, labels: np.ndarray, policy: str, grow: float = 0.5) -> np.ndarray:
    """The blocks to hide. ``"all"``: every block. ``"numbers"``: blocks :func:`text_blocks` marked
    private (a line too small to read, unread or reading digits) or touching a barcode's label region.
    ``"selected"``: blocks that look like private print: several lines (a card, a label, a two-row
    plate), a single line shaped like a plate's, or any block touching a barcode's label region.
    ``grow``: how much :func:`text_blocks` grew the blocks."""
    if policy == "all" or len(blocks) == 0:
        return blocks
    if policy == "numbers":
        keep = blocks[:, 7] > 0
    else:
        n_lines = blocks[:, 5]
        lh = np.maximum(blocks[:, 6], 1e-3)
        # the block's own line (blocks were grown by ``grow`` line heights on every side)
        length = (blocks[:, 2] - blocks[:, 0]) - 2 * grow * lh
        plate_like = (n_lines == 1) & (length >= 2.0 * lh) & (length <= 9.0 * lh)
        keep = (n_lines >= 2) | plate_like
    if len(labels):
        inter_x = np.minimum(blocks[:, None, 2], labels[None, :, 2]) - np.maximum(
            blocks[:, None, 0], labels[None, :, 0]
        )
        inter_y = np.minimum(blocks[:, None, 3], labels[None, :, 3]) - np.maximum(
            blocks[:, None, 1], labels[None, :, 1]
        )
        keep |= ((inter_x > 0) & (inter_y > 0)).any(axis=1)
    selected: np.ndarray = blocks[keep]
    return selected


def overlap_share(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))``: the intersection of each pair over the smaller box's area."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    smaller = np.minimum(area_a[:, None], area_b[None, :])
    share: np.ndarray = inter / np.maximum(smaller, 1e-6)
    return share


def evidence_blocks(
    blocks: np.ndarray, labels: np.ndarray, candidates: np.ndarray, p: RegionParams
) -> np.ndarray:
    """The blocks with evidence of a private object: a YOLO candidate ``(C, >=5)`` scoring
    ``evidence_score`` or more whose overlap with the block is ``evidence_overlap`` of the smaller
    of the two, or a barcode's label region touching the block."""
    keep = np.zeros(len(blocks), bool)
    if len(blocks) == 0:
        return blocks
    cand = candidates[candidates[:, 4] >= p.evidence_score] if len(candidates) else candidates
    if len(cand):
        keep |= (overlap_share(blocks, cand) >= p.evidence_overlap).any(axis=1)
    if len(labels):
        keep |= (overlap_share(blocks, labels) > 0).any(axis=1)
    kept: np.ndarray = blocks[keep]
    return kept


def confirm_weak(
    dets: np.ndarray, regions: np.ndarray, conf: float, net_scale: float, p: RegionParams
) -> np.ndarray:
    """The YOLO detections ``dets`` ``(N, >=5)`` without the weak ones (score under ``conf``) that
    no text or barcode region of ``regions`` (every block, whatever the policy) confirms: a weak box
    is kept when a region covers ``confirm_overlap`` of the smaller of the two, or when it is lower
    than ``confirm_px`` at the net's input scale ``net_scale`` (net pixels per image pixel), where
    the net cannot read text and so its silence is no evidence."""
    if len(dets) == 0:
        return dets
    keep = dets[:, 4] >= conf
    keep |= (dets[:, 3] - dets[:, 1]) * net_scale < p.confirm_px
    if len(regions):
        keep |= (overlap_share(dets[:, :4], regions[:, :4]) >= p.confirm_overlap).any(axis=1)
    kept: np.ndarray = dets[keep]
    return kept


def clip_boxes(boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Clip the first four columns to an image of ``shape`` ``(h, w, ...)`` (in place; returned)."""
    np.clip(boxes[:, 0], 0, shape[1], out=boxes[:, 0])
    np.clip(boxes[:, 2], 0, shape[1], out=boxes[:, 2])
    np.clip(boxes[:, 1], 0, shape[0], out=boxes[:, 1])
    np.clip(boxes[:, 3], 0, shape[0], out=boxes[:, 3])
    return boxes


def net_regions(
    lines: np.ndarray,
    codes: np.ndarray,
    is_2d: np.ndarray,
    shape: tuple[int, ...],
    p: RegionParams,
    candidates: np.ndarray | None = None,
    reads: np.ndarray | None = None,
) -> np.ndarray:
    """Lines and barcode boxes → ``(N, 6)`` regions to hide of classes ``TEXT`` and ``BARCODE``.
    ``candidates``: the YOLO model's raw detections of the same image, ``(C, >=5)`` at any score
    (the "evidence" policy; none: no text block has evidence). ``reads``: digits per line, ``-1``
    unread (the "numbers" policy, :mod:`relay.textread`; none: no line was read)."""
    codes = np.array(codes, np.float32).reshape(-1, 4)
    labels = barcode_regions(codes, is_2d, shape)
    labels = labels[label_confirmed(codes, labels, lines, shape, p)]
    blocks = text_blocks(lines, shape, p, reads)
    if p.policy == "evidence":
        cand = np.zeros((0, 6), np.float32) if candidates is None else candidates
        blocks = evidence_blocks(blocks, labels, cand, p)
    else:
        blocks = select_blocks(blocks, labels, p.policy, p.grow)
    out = np.zeros((len(blocks) + len(labels), 6), np.float32)
    out[: len(blocks), :5] = blocks[:, :5]
    out[: len(blocks), 5] = ClassId.TEXT
    out[len(blocks) :, :4] = labels
    out[len(blocks) :, 4] = 1.0
    out[len(blocks) :, 5] = ClassId.BARCODE
    return out


def combine(
    dets: np.ndarray,
    lines: np.ndarray,
    codes: np.ndarray,
    is_2d: np.ndarray,
    shape: tuple[int, ...],
    p: RegionParams,
    *,
    conf: float,
    floor: float,
    net_scale: float,
    reads: np.ndarray | None = None,
) -> np.ndarray:
    """One image's YOLO candidates ``dets`` (any score) and the net's lines and barcodes → ``(N, 6)``
    boxes to hand to the tracker: the YOLO boxes scoring ``floor`` or more whose weak ones text
    confirms (:func:`confirm_weak`), and the net's regions under ``p.policy`` (:func:`net_regions`,
    the candidates as evidence, ``reads`` the digits read per line)."""
    dets = np.asarray(dets, np.float32).reshape(-1, 6)
    every = net_regions(lines, codes, is_2d, shape, replace(p, policy="all"))
    yolo = confirm_weak(dets[dets[:, 4] >= floor], every, conf, net_scale, p)
    return np.concatenate([yolo, net_regions(lines, codes, is_2d, shape, p, dets, reads)])
