"""relay/mosaic.py: irreversible, grid-aligned block averaging."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.mosaic import (
    block_for_frame,
    pixelate,
    pixelate_all,
    pixelate_all_i420,
    pixelate_i420,
)
from tests.helpers.media import block_stds, label_scene

RNG = np.random.default_rng(1)


def noise(h: int, w: int, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def cell_stds(img: np.ndarray, block: int) -> np.ndarray:
    """Per-cell, per-channel std over the global grid, partial border cells included."""
    h, w = img.shape[:2]
    out = []
    for y in range(0, h, block):
        for x in range(0, w, block):
            out.append(img[y : y + block, x : x + block].reshape(-1, img.shape[2]).std(axis=0))
    return np.array(out)


def test_inside_flat_outside_untouched() -> None:
    img = noise(480, 640)
    orig = img.copy()
    out = pixelate(img, np.array([[37, 50, 200, 130, 0.9, 2]], np.float32), 16)
    assert out is img  # in place
    # grown to the grid: x 32..208, y 48..144
    inside = img[48:144, 32:208]
    assert cell_stds(inside, 16).max() == 0
    mask = np.ones(img.shape[:2], bool)
    mask[48:144, 32:208] = False
    assert (img[mask] == orig[mask]).all()
    # averages, not a copy of one pixel: each cell is the rounded mean of the original cell
    cell = orig[48:64, 32:48].reshape(-1, 3).astype(np.float64).mean(axis=0)
    assert np.abs(img[48, 32].astype(np.float64) - cell).max() <= 1.0


def test_grid_is_global_so_moving_boxes_average_the_same_pixels() -> None:
    img = noise(128, 128)
    a = pixelate(img.copy(), np.array([[17, 17, 60, 60]]), 16)
    b = pixelate(img.copy(), np.array([[20, 22, 63, 62]]), 16)
    # both snap to cells 16..64: identical output
    assert (a == b).all()


@pytest.mark.parametrize(
    "box",
    [
        [-40, -40, 30, 30],  # off the top-left
        [600, 440, 700, 520],  # off the bottom-right
        [0, 0, 640, 480],  # whole frame
        [630, 0, 640, 480],  # thin strip at the right border
    ],
)
def test_boxes_at_borders(box: list[float]) -> None:
    img = noise(480, 643)  # width not a multiple of the block: partial cells at the right
    pixelate(img, np.array([box], np.float32), 16)
    x1, y1 = max(0, int(box[0]) // 16 * 16), max(0, int(box[1]) // 16 * 16)
    x2, y2 = min(643, int(np.ceil(box[2] / 16)) * 16), min(480, int(np.ceil(box[3] / 16)) * 16)
    assert cell_stds(img[y1:y2, x1:x2], 16).max() == 0


def test_empty_and_degenerate_boxes_change_nothing() -> None:
    img = noise(64, 64)
    orig = img.copy()
    pixelate(img, np.zeros((0, 6), np.float32), 16)
    pixelate(img, np.zeros((0, 4), np.float32), 16)
    pixelate(img, np.array([[10, 10, 10, 40], [30, 30, 20, 40], [100, 100, 200, 200]], np.float32), 16)
    assert (img == orig).all()


def test_pixelate_all_every_cell_flat_including_partial_cells() -> None:
    img = noise(481, 643)
    pixelate_all(img, 16)
    assert cell_stds(img, 16).max() == 0


def test_real_label_is_unreadable() -> None:
    scene, box = label_scene()
    gray_before = scene[:, :, 1].copy()
    pixelate(scene, box, 16)
    region = (int(box[0, 0]), int(box[0, 1]), int(box[0, 2]), int(box[0, 3]))
    assert block_stds(gray_before, region).mean() > 10  # there was detail
    assert block_stds(scene[:, :, 1], region).max() == 0


def test_i420_matches_grid_and_leaves_rest() -> None:
    w, h = 640, 480
    buf = RNG.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
    orig = buf.copy()
    pixelate_i420(buf, w, h, np.array([[100, 100, 300, 200]]), 16)
    y = buf[:h]
    u = buf[h:].reshape(2, h // 2, w // 2)[0]
    assert block_stds(y, (96, 96, 304, 208)).max() == 0
    assert block_stds(u, (48, 48, 152, 104), 8).max() == 0
    assert (buf[:96] == orig[:96]).all()
    with pytest.raises(ValueError):
        pixelate_i420(buf, w, h, np.zeros((0, 4)), 15)


def test_i420_all() -> None:
    w, h = 1280, 720
    buf = RNG.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
    pixelate_all_i420(buf, w, h, 16)
    assert block_stds(buf[:h], (0, 0, w, h)).max() == 0


def test_block_for_frame() -> None:
    assert block_for_frame(16, 640, 480) == 16  # never finer than the base
    assert block_for_frame(16, 1280, 720) == 16
    assert block_for_frame(16, 1920, 1080) == 24
    assert block_for_frame(15, 640, 480) % 2 == 0


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    block=st.integers(1, 20),
    x1=st.floats(-50, 140),
    y1=st.floats(-50, 140),
    bw=st.floats(0, 120),
    bh=st.floats(0, 120),
)
def test_property_no_detail_left_inside_any_box(
    h: int, w: int, block: int, x1: float, y1: float, bw: float, bh: float
) -> None:
    img = noise(h, w)
    orig = img.copy()
    pixelate(img, np.array([[x1, y1, x1 + bw, y1 + bh]]), block)
    xa, xb = (
        max(0, int(np.floor(max(x1, 0) / block)) * block),
        min(w, int(np.ceil(min(x1 + bw, w) / block)) * block),
    )
    ya, yb = (
        max(0, int(np.floor(max(y1, 0) / block)) * block),
        min(h, int(np.ceil(min(y1 + bh, h) / block)) * block),
    )
    if x1 + bw > x1 and y1 + bh > y1 and xb > xa and yb > ya:  # a non-empty box (in float64)
        assert cell_stds(img[ya:yb, xa:xb], block).max() == 0
        mask = np.ones((h, w), bool)
        mask[ya:yb, xa:xb] = False
        assert (img[mask] == orig[mask]).all()
    else:
        assert (img == orig).all()


def test_a_thin_box_gets_one_colour_over_the_cells_it_touches() -> None:
    """A plate 8 px high straddling a grid line: mosaicked, its two rows of cells would still
    follow its outline; filled, the span it touches is one colour (the mean of those cells), and
    nothing outside the span changes. A box two cells thick or more is mosaicked as before."""
    img = noise(96, 128)
    orig = img.copy()
    pixelate(img, np.array([[21, 27, 70, 37]], np.float32), 16)  # 49 x 10: span x 16..80, y 16..48
    span = img[16:48, 16:80].reshape(-1, 3)
    assert (span == span[0]).all()
    mean = orig[16:48, 16:80].reshape(-1, 3).astype(np.float64).mean(axis=0)
    assert np.abs(span[0] - mean).max() <= 0.5
    mask = np.ones(img.shape[:2], bool)
    mask[16:48, 16:80] = False
    assert (img[mask] == orig[mask]).all()
    thick = noise(96, 128)
    pixelate(thick, np.array([[16, 16, 80, 48]], np.float32), 16)  # 32 px high: two whole cells
    assert cell_stds(thick[16:48, 16:80], 16).max() == 0 and thick[16:48, 16:80].std() > 0
    w, h = 128, 96
    buf = RNG.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
    pixelate_i420(buf, w, h, np.array([[21, 27, 70, 37]]), 16)
    u = buf[h:].reshape(2, h // 2, w // 2)[0]
    assert buf[16:48, 16:80].std() == 0 and u[8:24, 8:40].std() == 0
