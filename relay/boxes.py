"""Pure numpy box utilities: letterbox, NMS, scaling back and padding boxes.

Boxes are ``x1, y1, x2, y2`` in pixels. ``scale_boxes`` and ``expand_boxes`` accept arrays of shape
``(N, >=4)`` and only change the first four columns (so a ``(N, 6)`` detection array works too).
"""

from __future__ import annotations

import cv2
import numpy as np

LETTERBOX_FILL = 114  # YOLOv5's grey


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize ``img`` (HxWx3 uint8) to fit a ``size`` x ``size`` square keeping its aspect, pad with grey.

    Returns ``(padded, ratio, (pad_x, pad_y))``: a point ``p`` of the input maps to
    ``p * ratio + pad`` in the padded image. Downscaling uses INTER_AREA (keeps small objects
    legible), upscaling INTER_LINEAR.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    h, w = img.shape[:2]
    if h == 0 or w == 0 or size <= 0:
        raise ValueError(f"cannot letterbox an image of shape {img.shape} to {size}")
    ratio = min(size / h, size / w)
    new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
    if (new_w, new_h) != (w, h):
        interp = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, (new_w, new_h), interpolation=interp)
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    # bottom/right absorb any rounding so the output is exactly size x size
    bottom = size - new_h - top
    right = size - new_w - left
    fill = (LETTERBOX_FILL, LETTERBOX_FILL, LETTERBOX_FILL)
    out = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=fill)
    return out, ratio, (float(left), float(top))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``a`` (N, 4) and ``b`` (M, 4) -> (N, M)."""
    a = np.asarray(a, dtype=np.float32)[:, :4]
    b = np.asarray(b, dtype=np.float32)[:, :4]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    iou: np.ndarray = inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
    return iou


def nms(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    iou: float,
    classes: np.ndarray | None = None,
    max_out: int | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression. Returns kept indices, highest score first.

    With ``classes`` given, boxes of different classes never suppress each other (boxes are
    shifted by ``class * offset`` where ``offset`` exceeds every coordinate, as in YOLOv5).
    ``max_out`` stops after that many kept boxes.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    if classes is not None:
        offset = float(np.abs(boxes).max()) + 1.0
        boxes = boxes + np.asarray(classes, dtype=np.float32).reshape(-1, 1) * offset
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size or (max_out is not None and len(keep) >= max_out):
            break
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        ovr = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[ovr <= iou]
    return np.asarray(keep, dtype=np.int64)


def scale_boxes(
    boxes: np.ndarray, ratio: float, pad: tuple[float, float], orig_shape: tuple[int, ...]
) -> np.ndarray:
    """Map boxes from letterboxed coordinates back to the original image, clipped to it.

    ``orig_shape`` is ``(h, w, ...)`` of the original image. Returns a new float32 array."""
    out = np.array(boxes, dtype=np.float32, copy=True)
    if out.size == 0:
        return out.reshape(-1, out.shape[-1] if out.ndim == 2 else 4)
    h, w = orig_shape[0], orig_shape[1]
    out[:, [0, 2]] = (out[:, [0, 2]] - pad[0]) / ratio
    out[:, [1, 3]] = (out[:, [1, 3]] - pad[1]) / ratio
    out[:, 0] = np.clip(out[:, 0], 0, w)
    out[:, 2] = np.clip(out[:, 2], 0, w)
    out[:, 1] = np.clip(out[:, 1], 0, h)
    out[:, 3] = np.clip(out[:, 3], 0, h)
    return out


def expand_boxes(boxes: np.ndarray, margin: float | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Grow each box by ``margin`` x its width (left and right) and x its height (top and bottom),
    clipped to an image of ``shape`` ``(h, w, ...)``; ``margin`` is one for all or one per box
    ``(N,)``. Returns a new float32 array."""
    out = np.array(boxes, dtype=np.float32, copy=True)
    if out.size == 0:
        return out.reshape(-1, out.shape[-1] if out.ndim == 2 else 4)
    h, w = shape[0], shape[1]
    bw = out[:, 2] - out[:, 0]
    bh = out[:, 3] - out[:, 1]
    out[:, 0] = np.clip(out[:, 0] - margin * bw, 0, w)
    out[:, 2] = np.clip(out[:, 2] + margin * bw, 0, w)
    out[:, 1] = np.clip(out[:, 1] - margin * bh, 0, h)
    out[:, 3] = np.clip(out[:, 3] + margin * bh, 0, h)
    return out
