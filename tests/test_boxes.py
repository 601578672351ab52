"""relay.boxes: letterbox, NMS, scaling back, padding (real numbers, edge cases)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.boxes import box_iou, expand_boxes, letterbox, nms, scale_boxes


def test_letterbox_landscape_1280x720_to_416() -> None:
    img = np.full((720, 1280, 3), 200, np.uint8)
    out, ratio, (px, py) = letterbox(img, 416)
    assert out.shape == (416, 416, 3) and out.dtype == np.uint8
    assert ratio == pytest.approx(416 / 1280)
    assert px == 0.0
    # 720 * 0.325 = 234 rows of image, 182 rows of padding split 91 / 91
    assert py == 91.0
    assert (out[:91] == 114).all() and (out[-91:] == 114).all()
    assert (out[91:325] == 200).all()


def test_letterbox_portrait_odd_size_is_exactly_square() -> None:
    img = np.zeros((479, 641, 3), np.uint8)
    out, ratio, (px, py) = letterbox(img, 320)
    assert out.shape == (320, 320, 3)
    assert ratio == pytest.approx(320 / 641)
    img = np.zeros((641, 127, 3), np.uint8)
    out, ratio, (px, py) = letterbox(img, 416)
    assert out.shape == (416, 416, 3)
    new_w = round(127 * ratio)
    assert px == float(round((416 - new_w) / 2 - 0.1))
    assert py == 0.0


def test_letterbox_upscales_small_image_and_maps_points() -> None:
    img = np.zeros((240, 320, 3), np.uint8)
    img[100:120, 50:90] = 255  # a white "plate"
    out, ratio, (px, py) = letterbox(img, 416)
    assert ratio == pytest.approx(1.3)
    ys, xs = np.where(out[..., 0] > 128)
    assert xs.min() == pytest.approx(50 * ratio + px, abs=1.5)
    assert ys.min() == pytest.approx(100 * ratio + py, abs=1.5)
    assert xs.max() == pytest.approx(90 * ratio + px, abs=1.5)


def test_letterbox_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        letterbox(np.zeros((10, 10), np.uint8), 320)
    with pytest.raises(ValueError):
        letterbox(np.zeros((0, 10, 3), np.uint8), 320)


def test_box_iou_values() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0, 1.0]], rtol=1e-6)


def test_nms_suppresses_overlaps_keeps_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.9, 0.95, 0.5, 0.3], np.float32)
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [1, 2]  # box 1 (0.95) suppresses 0 (IoU 0.68) and 3; box 2 is apart


def test_nms_threshold_is_strictly_greater() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU = 1/3
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.34).tolist() == [0, 1]
    assert nms(boxes, scores, 0.33).tolist() == [0]


def test_nms_per_class_offset() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    classes = np.array([0, 1, 0])
    assert nms(boxes, scores, 0.5, classes=classes).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]


def test_nms_max_out_stops_early() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.5, max_out=2).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 3]


def test_nms_empty_and_mismatch() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)
    with pytest.raises(ValueError):
        nms(np.zeros((2, 4), np.float32), np.zeros(3, np.float32), 0.5)


def test_scale_boxes_inverts_letterbox_and_clips() -> None:
    shape = (720, 1280, 3)
    _, ratio, pad = letterbox(np.zeros(shape, np.uint8), 416)
    orig = np.array([[100, 200, 300, 260, 0.9, 0], [1200, 700, 1300, 760, 0.8, 2]], np.float32)
    lb = orig.copy()
    lb[:, [0, 2]] = lb[:, [0, 2]] * ratio + pad[0]
    lb[:, [1, 3]] = lb[:, [1, 3]] * ratio + pad[1]
    back = scale_boxes(lb, ratio, pad, shape)
    assert back.dtype == np.float32 and back.shape == (2, 6)
    np.testing.assert_allclose(back[0], orig[0], atol=1e-3)
    # the second box crosses the bottom-right border: clipped to the image
    np.testing.assert_allclose(back[1, :4], [1200, 700, 1280, 720], atol=1e-3)
    np.testing.assert_allclose(back[:, 4:], orig[:, 4:])
    assert lb[0, 0] != back[0, 0]  # input untouched


def test_scale_boxes_negative_coordinates_in_padding() -> None:
    back = scale_boxes(np.array([[-5.0, 10.0, 20.0, 95.0]], np.float32), 0.5, (0.0, 50.0), (100, 200))
    np.testing.assert_allclose(back, [[0.0, 0.0, 40.0, 90.0]])


def test_scale_and_expand_empty() -> None:
    assert scale_boxes(np.zeros((0, 6), np.float32), 0.5, (0, 0), (10, 10)).shape == (0, 6)
    assert expand_boxes(np.zeros((0, 6), np.float32), 0.2, (10, 10)).shape == (0, 6)


def test_expand_boxes_margin_and_border() -> None:
    boxes = np.array([[100, 100, 200, 120, 0.7, 0], [0, 5, 50, 25, 0.6, 1]], np.float32)
    out = expand_boxes(boxes, 0.15, (480, 640, 3))
    np.testing.assert_allclose(out[0, :4], [85, 97, 215, 123])
    np.testing.assert_allclose(out[1, :4], [0, 2, 57.5, 28])  # left edge clipped at 0
    np.testing.assert_allclose(out[:, 4:], boxes[:, 4:])
    out = expand_boxes(np.array([[600, 470, 640, 480]], np.float32), 0.5, (480, 640))
    np.testing.assert_allclose(out, [[580, 465, 640, 480]])


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 1500),
    w=st.integers(1, 1500),
    size=st.sampled_from([320, 416, 640]),
    fx=st.floats(0, 1),
    fy=st.floats(0, 1),
)
def test_letterbox_round_trip_property(h: int, w: int, size: int, fx: float, fy: float) -> None:
    out, ratio, pad = letterbox(np.zeros((h, w, 3), np.uint8), size)
    assert out.shape == (size, size, 3)
    x, y = fx * w, fy * h
    box = np.array([[x, y, x, y]], np.float32) * ratio + np.array(
        [pad[0], pad[1], pad[0], pad[1]], np.float32
    )
    assert (box >= -1e-3).all() and (box <= size + 1e-3).all()
    back = scale_boxes(box, ratio, pad, (h, w))
    np.testing.assert_allclose(back[0, :2], [x, y], atol=1e-2 * max(1.0, 1 / ratio))
