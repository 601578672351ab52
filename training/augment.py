"""Image augmentations for detector training. Labels are ``(n, 5)`` float32 rows
``class, x1, y1, x2, y2`` in pixels of the image they go with; every function keeps them in step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

FILL = 114  # letterbox / border grey, as in YOLOv5


@dataclass
class AugHyp:
    mosaic: float = 1.0  # probability of a 4-image mosaic
    degrees: float = 3.0
    translate: float = 0.1
    scale: float = 0.5  # zoom in [1 - scale, 1 + scale]
    shear: float = 2.0
    perspective: float = 0.0002
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    blur: float = 0.1  # probability of a gaussian blur
    motion_blur: float = 0.1
    jpeg: float = 0.3  # probability of a JPEG re-compression (quality 30-90)
    noise: float = 0.15  # probability of gaussian noise (sigma 2-10)
    min_box_px: float = 2.0  # boxes narrower/shorter than this after augmentation are dropped
    min_area_kept: float = 0.2  # boxes with less than this share of their area left in the image are dropped


def load_resized(path: str, size: int) -> np.ndarray:
    """Read an image (BGR) and resize so its long side is ``size``."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    h, w = img.shape[:2]
    r = size / max(h, w)
    if r != 1:
        interp = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, (max(1, round(w * r)), max(1, round(h * r))), interpolation=interp)
    return img


def yolo_to_xyxy(lab: np.ndarray, w: int, h: int, padw: float = 0, padh: float = 0) -> np.ndarray:
    """YOLO rows ``class cx cy w h`` (normalised) -> ``class x1 y1 x2 y2`` pixels (+ offset)."""
    out = lab.copy()
    out[:, 1] = w * (lab[:, 1] - lab[:, 3] / 2) + padw
    out[:, 2] = h * (lab[:, 2] - lab[:, 4] / 2) + padh
    out[:, 3] = w * (lab[:, 1] + lab[:, 3] / 2) + padw
    out[:, 4] = h * (lab[:, 2] + lab[:, 4] / 2) + padh
    return out


def xyxy_to_yolo(lab: np.ndarray, w: int, h: int) -> np.ndarray:
    out = lab.copy()
    out[:, 1] = (lab[:, 1] + lab[:, 3]) / 2 / w
    out[:, 2] = (lab[:, 2] + lab[:, 4]) / 2 / h
    out[:, 3] = (lab[:, 3] - lab[:, 1]) / w
    out[:, 4] = (lab[:, 4] - lab[:, 2]) / h
    return out


def mosaic4(
    imgs: list[np.ndarray], labels: list[np.ndarray], s: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Place 4 images (long side <= s) around a random centre of a 2s x 2s canvas.

    ``labels[i]`` are pixel xyxy rows of ``imgs[i]``; returns canvas + shifted labels
    (not yet clipped: random_perspective clips and filters)."""
    yc, xc = (int(rng.uniform(0.5 * s, 1.5 * s)) for _ in range(2))
    canvas = np.full((s * 2, s * 2, 3), FILL, dtype=np.uint8)
    out: list[np.ndarray] = []
    for i, (img, lab) in enumerate(zip(imgs, labels, strict=True)):
        h, w = img.shape[:2]
        if i == 0:  # top left
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        if len(lab):
            lab = lab.copy()
            lab[:, [1, 3]] += x1a - x1b
            lab[:, [2, 4]] += y1a - y1b
            out.append(lab)
    all_labels = np.concatenate(out, 0) if out else np.zeros((0, 5), np.float32)
    return canvas, all_labels


def box_candidates(
    after_unclipped: np.ndarray, after: np.ndarray, min_px: float, min_area_kept: float, max_ar: float = 40.0
) -> np.ndarray:
    """Keep boxes that are still big enough, mostly inside the image and not degenerate.

    The area share compares the clipped box with the transformed unclipped box, so a zoom-out
    does not count as a loss; only the part cut off by the image border does."""
    w, h = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    wu = after_unclipped[:, 2] - after_unclipped[:, 0]
    hu = after_unclipped[:, 3] - after_unclipped[:, 1]
    ar = np.maximum(w / (h + 1e-9), h / (w + 1e-9))
    share = (w * h) / (wu * hu + 1e-9)
    return (w > min_px) & (h > min_px) & (share > min_area_kept) & (ar < max_ar)


def random_perspective(
    img: np.ndarray, labels: np.ndarray, out_size: tuple[int, int], hyp: AugHyp, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation/scale/shear/translation/perspective into an ``out_size`` (w, h) image.

    The transform is centred on the input image, so a 2s mosaic is cropped to its centre s x s."""
    h_in, w_in = img.shape[:2]
    ow, oh = out_size
    C = np.eye(3)
    C[0, 2], C[1, 2] = -w_in / 2, -h_in / 2
    P = np.eye(3)
    P[2, 0] = rng.uniform(-hyp.perspective, hyp.perspective)
    P[2, 1] = rng.uniform(-hyp.perspective, hyp.perspective)
    R = np.eye(3)
    a = rng.uniform(-hyp.degrees, hyp.degrees)
    sc = rng.uniform(1 - hyp.scale, 1 + hyp.scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=sc)
    S = np.eye(3)
    S[0, 1] = math.tan(rng.uniform(-hyp.shear, hyp.shear) * math.pi / 180)
    S[1, 0] = math.tan(rng.uniform(-hyp.shear, hyp.shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - hyp.translate, 0.5 + hyp.translate) * ow
    T[1, 2] = rng.uniform(0.5 - hyp.translate, 0.5 + hyp.translate) * oh
    M = T @ S @ R @ P @ C
    if P[2, 0] or P[2, 1]:
        out = cv2.warpPerspective(img, M, dsize=(ow, oh), borderValue=(FILL, FILL, FILL))
    else:
        out = cv2.warpAffine(img, M[:2], dsize=(ow, oh), borderValue=(FILL, FILL, FILL))

    n = len(labels)
    if not n:
        return out, labels
    xy = np.ones((n * 4, 3))
    xy[:, :2] = labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # 4 corners
    xy = xy @ M.T
    xy = (xy[:, :2] / xy[:, 2:3]).reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
    clipped = new.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, ow)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, oh)
    keep = box_candidates(new, clipped, hyp.min_box_px, hyp.min_area_kept)
    res = np.concatenate((labels[keep, :1], clipped[keep]), 1).astype(np.float32)
    return out, res


def augment_hsv(img: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator) -> None:
    """HSV colour jitter in place (lookup tables, like YOLOv5)."""
    if not (hgain or sgain or vgain):
        return
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    im_hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(im_hsv, cv2.COLOR_HSV2BGR, dst=img)


def fliplr(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = img.shape[1]
    img = np.ascontiguousarray(img[:, ::-1])
    if len(labels):
        labels = labels.copy()
        x1 = w - labels[:, 3]
        labels[:, 3] = w - labels[:, 1]
        labels[:, 1] = x1
    return img, labels


def gaussian_blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.choice([3, 5]))
    return cv2.GaussianBlur(img, (k, k), 0)


def motion_blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(3, 10))
    line = np.zeros((k, k), np.float32)
    line[k // 2, :] = 1.0 / k
    rot = cv2.getRotationMatrix2D(((k - 1) / 2, (k - 1) / 2), float(rng.uniform(0, 180)), 1.0)
    kernel = cv2.warpAffine(line, rot, (k, k))
    kernel = (kernel / max(float(kernel.sum()), 1e-6)).astype(np.float32)
    return cv2.filter2D(img, -1, kernel)


def jpeg_recompress(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    q = int(rng.integers(30, 91))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        return img
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return dec if dec is not None else img


def gaussian_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = float(rng.uniform(2, 10))
    noise = rng.normal(0, sigma, img.shape).astype(np.float32)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def photometric(img: np.ndarray, hyp: AugHyp, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter, blur/motion blur, noise and JPEG artefacts (in that order, each by chance)."""
    augment_hsv(img, hyp.hsv_h, hyp.hsv_s, hyp.hsv_v, rng)
    u = rng.random()
    if u < hyp.blur:
        img = gaussian_blur(img, rng)
    elif u < hyp.blur + hyp.motion_blur:
        img = motion_blur(img, rng)
    if rng.random() < hyp.noise:
        img = gaussian_noise(img, rng)
    if rng.random() < hyp.jpeg:
        img = jpeg_recompress(img, rng)
    return img
