"""Shipping label / waybill renderers (class 2) and their carriers (cardboard, poly mailers).

Korean courier waybills (generic fake company names), UPS/FedEx/DHL-like 4x6" labels and postage labels.
All names, addresses, phone and tracking numbers are random fakes."""

from __future__ import annotations

import cv2
import numpy as np

from . import fake, fonts
from .draw import (
    Rng,
    Sprite,
    barcode_mask,
    blend_mask,
    datamatrix_mask,
    fast_blur,
    maxicode_mask,
    paper_texture,
    put_text,
    qr_mask,
    rounded_mask,
)

INK = (22, 22, 22)


def _paper(rng: Rng, w: int, h: int) -> np.ndarray:
    t = rng.uniform(228, 252)
    base = (t * rng.uniform(0.96, 1.0), t * rng.uniform(0.98, 1.0), t)
    return paper_texture(rng, w, h, base, grain=rng.uniform(1.5, 4))


def _grid(
    img: np.ndarray, rng: Rng, x0: float, y0: float, x1: float, y1: float, rows: int, col_frac: float, th: int
) -> list[tuple[float, float, float, float]]:
    """Table with a label column; returns value cells (x, y, w, h)."""
    cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), INK, th)
    rh = (y1 - y0) / rows
    cx = x0 + (x1 - x0) * col_frac
    cv2.line(img, (int(cx), int(y0)), (int(cx), int(y1)), INK, th)
    cells = []
    for r in range(rows):
        y = y0 + r * rh
        if r:
            cv2.line(img, (int(x0), int(y)), (int(x1), int(y)), INK, max(1, th - 1))
        cells.append((cx, y, x1 - cx, rh))
    return cells


def korean_waybill(rng: Rng, ppm: float) -> Sprite:
    landscape = rng.random() < 0.6
    w, h = (int(170 * ppm), int(110 * ppm)) if landscape else (int(105 * ppm), int(150 * ppm))
    img = _paper(rng, w, h)
    hb, hr = fonts.hangul_fonts()["bold"], fonts.hangul_fonts()["regular"]
    fb, fr = hb[int(rng.integers(len(hb)))], hr[int(rng.integers(len(hr)))]
    th = max(1, int(0.35 * ppm))
    accent = tuple(
        int(v)
        for v in rng.choice([[30, 30, 200], [160, 80, 20], [20, 120, 230], [30, 30, 30], [40, 140, 40]])
    )
    courier = fake.choice(rng, fake.KO_COURIER)
    if rng.random() < 0.4:  # coloured header band with the courier name in white
        cv2.rectangle(img, (0, 0), (int(w * rng.uniform(0.3, 0.48)), int(h * 0.085)), accent, -1)
        put_text(img, courier, fb, w * 0.03, h * 0.018, h * 0.05, (250, 250, 250), max_w=w * 0.35)
    else:
        put_text(img, courier, fb, w * 0.03, h * 0.03, h * 0.05, accent, max_w=w * 0.35)
    trk = f"{fake.digits(rng, 4)}-{fake.digits(rng, 4)}-{fake.digits(rng, 4)}"
    put_text(img, "운송장번호 " + trk, fr, w * 0.03, h * 0.1, h * 0.035, INK, max_w=w * 0.45)
    bw = int(w * rng.uniform(0.4, 0.5))
    bm = barcode_mask(rng, bw, int(h * 0.1))
    blend_mask(img, bm, int(w * 0.97 - bw), int(h * 0.03), INK)
    put_text(img, trk.replace("-", ""), fr, w * 0.97 - bw / 2, h * 0.14, h * 0.025, INK, anchor="c")
    # big sorting / routing code
    code = fake.choice(
        rng,
        [
            f"{fake.digits(rng, 1)}{fake.letters(rng, 1)}-{fake.digits(rng, 2)}-{fake.digits(rng, 1)}{fake.letters(rng, 1)}",
            f"{fake.choice(rng, fake.KO_REGIONS_PLATE)} {fake.digits(rng, 3)}",
            f"{fake.letters(rng, 1)}{fake.digits(rng, 2)} {fake.digits(rng, 3)}",
        ],
    )
    put_text(img, code, fb, w * 0.03, h * 0.19, h * 0.13, INK, max_w=w * 0.6)
    cells = _grid(
        img,
        rng,
        w * 0.03,
        h * 0.36,
        w * (0.75 if landscape else 0.97),
        h * 0.95,
        int(rng.integers(4, 7)),
        rng.uniform(0.14, 0.22),
        th,
    )
    labels = ["받는분", "주소", "보내는분", "품명", "수량", "운임", "비고"]
    values = [
        f"{fake.ko_name(rng)}  {fake.ko_phone(rng, masked=rng.random() < 0.5)}",
        fake.ko_address(rng),
        f"{fake.ko_name(rng)}  {fake.ko_phone(rng)}",
        fake.choice(rng, fake.KO_ITEMS) + " 외",
        f"{int(rng.integers(1, 5))} 박스",
        f"{fake.choice(rng, ['신용', '선불', '착불'])} {int(rng.integers(3, 9))},000원",
        "문 앞에 놓아주세요",
    ]
    for k, (cx, cy, cw, ch) in enumerate(cells):
        lx = w * 0.035
        put_text(img, labels[k % len(labels)], fb, lx, cy + ch * 0.3, ch * 0.35, INK, max_w=cx - lx - 2)
        put_text(
            img,
            values[k % len(values)],
            fr if k != 0 else fb,
            cx + w * 0.01,
            cy + ch * 0.28,
            ch * 0.42,
            INK,
            max_w=cw * 0.95,
        )
    if landscape:
        qs = int(min(w * 0.19, h * 0.3))
        blend_mask(img, qr_mask(rng, qs), int(w * 0.78), int(h * 0.4), INK)
        put_text(
            img,
            fake.choice(rng, ["집하", "배송", "터미널"]) + " " + fake.digits(rng, 4),
            fb,
            w * 0.78,
            h * 0.75,
            h * 0.05,
            INK,
            max_w=w * 0.2,
        )
        vb = barcode_mask(rng, int(h * 0.12), int(w * 0.15))
        blend_mask(img, vb, int(w * 0.8), int(h * 0.83), INK, int(w * 0.15), int(h * 0.12))
    return _finish(rng, img, "label_kr")


def latin_label(rng: Rng, ppm: float) -> Sprite:
    """4x6 inch UPS/FedEx-like thermal label."""
    w, h = int(102 * ppm), int(152 * ppm)
    img = _paper(rng, w, h)
    lf = fonts.latin_fonts()
    b, r = (
        lf["bold"][int(rng.integers(len(lf["bold"])))],
        lf["regular"][int(rng.integers(len(lf["regular"])))],
    )
    th = max(1, int(0.5 * ppm))
    first, last = fake.latin_name(rng)
    y = h * 0.02
    for line in [
        f"{first} {last}",
        fake.digits(rng, 3) + "-" + fake.digits(rng, 3) + "-" + fake.digits(rng, 4),
    ] + fake.latin_address(rng):
        put_text(img, line, r, w * 0.03, y, h * 0.018, INK, max_w=w * 0.55)
        y += h * 0.025
    put_text(img, f"{int(rng.integers(1, 70))} LBS", b, w * 0.97, h * 0.02, h * 0.025, INK, anchor="r")
    put_text(
        img,
        f"{int(rng.integers(1, 3))} OF {int(rng.integers(1, 4))}",
        b,
        w * 0.97,
        h * 0.05,
        h * 0.025,
        INK,
        anchor="r",
    )
    y = h * 0.14
    put_text(img, "SHIP TO:", b, w * 0.03, y, h * 0.02, INK)
    f2, l2 = fake.latin_name(rng)
    for line in [
        f"{f2} {l2}",
        fake.digits(rng, 3) + "-" + fake.digits(rng, 3) + "-" + fake.digits(rng, 4),
    ] + fake.latin_address(rng):
        y += h * 0.032
        put_text(img, line, b, w * 0.12, y, h * 0.026, INK, max_w=w * 0.8)
    y = h * 0.33
    cv2.line(img, (0, int(y)), (w, int(y)), INK, th * 2)
    ms = int(w * 0.3)
    blend_mask(
        img,
        maxicode_mask(rng, ms) if rng.random() < 0.6 else qr_mask(rng, ms),
        int(w * 0.03),
        int(y + h * 0.01),
        INK,
    )
    route = f"{fake.choice(rng, fake.US_STATES)} {fake.digits(rng, 3)} {fake.digits(rng, 1)}-{fake.digits(rng, 2)}"
    put_text(img, route, b, w * 0.38, y + h * 0.03, h * 0.06, INK, max_w=w * 0.6)
    pb = barcode_mask(rng, int(w * 0.5), int(h * 0.07))
    blend_mask(img, pb, int(w * 0.42), int(y + h * 0.12), INK)
    y = h * 0.55
    cv2.rectangle(img, (0, int(y)), (w, int(y + h * 0.012)), INK, -1)
    put_text(
        img,
        fake.choice(rng, fake.CARRIERS_LATIN) + " " + fake.choice(rng, fake.SERVICES),
        b,
        w * 0.03,
        y + h * 0.025,
        h * 0.04,
        INK,
        max_w=w * 0.75,
    )
    cv2.rectangle(img, (int(w * 0.82), int(y + h * 0.018)), (int(w * 0.97), int(y + h * 0.08)), INK, -1)
    put_text(
        img, str(int(rng.integers(1, 4))), b, w * 0.895, y + h * 0.027, h * 0.045, (240, 240, 240), anchor="c"
    )
    put_text(
        img,
        "TRACKING #: " + fake.tracking_number(rng),
        b,
        w * 0.03,
        y + h * 0.085,
        h * 0.022,
        INK,
        max_w=w * 0.9,
    )
    cv2.line(img, (0, int(y + h * 0.12)), (w, int(y + h * 0.12)), INK, th)
    bw = int(w * 0.86)
    blend_mask(img, barcode_mask(rng, bw, int(h * 0.15)), int(w * 0.07), int(y + h * 0.14), INK)
    cv2.line(img, (0, int(y + h * 0.31)), (w, int(y + h * 0.31)), INK, th * 2)
    put_text(img, "BILLING: P/P", b, w * 0.03, y + h * 0.33, h * 0.02, INK)
    put_text(
        img,
        fake.choice(rng, ["REF 1: ", "INV: ", "PO: "]) + fake.digits(rng, 8),
        r,
        w * 0.03,
        y + h * 0.36,
        h * 0.018,
        INK,
    )
    if rng.random() < 0.5:  # coloured carrier header like DHL/FedEx
        hc = tuple(int(v) for v in rng.choice([[0, 200, 255], [130, 30, 80], [20, 20, 200], [60, 40, 20]]))
        cv2.rectangle(img, (0, 0), (w, int(h * 0.012)), hc, -1)
    return _finish(rng, img, "label_latin")


def postage_label(rng: Rng, ppm: float) -> Sprite:
    w, h = int(102 * ppm), int(rng.uniform(100, 152) * ppm)
    img = _paper(rng, w, h)
    lf = fonts.latin_fonts()
    b = lf["bold"][0]
    cv2.rectangle(img, (int(w * 0.03), int(h * 0.03)), (int(w * 0.25), int(h * 0.18)), INK, -1)
    put_text(
        img,
        fake.choice(rng, ["P", "E", "G", "F"]),
        b,
        w * 0.14,
        h * 0.05,
        h * 0.1,
        (245, 245, 245),
        anchor="c",
    )
    put_text(
        img,
        fake.choice(rng, ["PRIORITY MAIL", "FIRST-CLASS PKG", "GROUND ADVANTAGE", "PARCEL SELECT"]),
        b,
        w * 0.3,
        h * 0.06,
        h * 0.05,
        INK,
        max_w=w * 0.65,
    )
    cv2.line(img, (0, int(h * 0.22)), (w, int(h * 0.22)), INK, max(1, int(ppm)))
    y = h * 0.26
    for line in [" ".join(fake.latin_name(rng))] + fake.latin_address(rng):
        put_text(img, line, b, w * 0.08, y, h * 0.035, INK, max_w=w * 0.85)
        y += h * 0.05
    blend_mask(img, datamatrix_mask(rng, int(w * 0.2)), int(w * 0.75), int(h * 0.25), INK)
    put_text(img, "TRACKING #", b, w * 0.5, h * 0.56, h * 0.03, INK, anchor="c")
    blend_mask(img, barcode_mask(rng, int(w * 0.84), int(h * 0.16)), int(w * 0.08), int(h * 0.62), INK)
    put_text(
        img,
        fake.digits(rng, 4)
        + " "
        + fake.digits(rng, 4)
        + " "
        + fake.digits(rng, 4)
        + " "
        + fake.digits(rng, 4),
        lf["regular"][0],
        w * 0.5,
        h * 0.8,
        h * 0.03,
        INK,
        anchor="c",
    )
    return _finish(rng, img, "label_postage")


def _wrinkle(rng: Rng, img: np.ndarray) -> np.ndarray:
    """Creases and uneven sticking: low-frequency shading plus light/dark crease line pairs."""
    h, w = img.shape[:2]
    out = img.astype(np.float32)
    lo = cv2.resize(rng.standard_normal((3, 3), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    out *= (1 + 0.06 * lo)[..., None]
    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        ang = rng.uniform(0, np.pi)
        L = rng.uniform(0.2, 0.8) * max(w, h)
        p0 = (int(x0 - np.cos(ang) * L / 2), int(y0 - np.sin(ang) * L / 2))
        p1 = (int(x0 + np.cos(ang) * L / 2), int(y0 + np.sin(ang) * L / 2))
        line = np.zeros((h, w), np.float32)
        cv2.line(line, p0, p1, 1.0, max(1, int(min(w, h) * 0.01)), cv2.LINE_AA)
        d = (int(np.sin(ang) * 2), int(-np.cos(ang) * 2))
        out *= (1 - 0.18 * line)[..., None]
        out *= (1 + 0.12 * np.roll(np.roll(line, d[1], 0), d[0], 1))[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _finish(rng: Rng, img: np.ndarray, kind: str) -> Sprite:
    if rng.random() < 0.3:  # faded thermal print
        img = np.clip(img.astype(np.float32) * 0.6 + 255 * 0.4 * rng.uniform(0.3, 0.9), 0, 255).astype(
            np.uint8
        )
    if rng.random() < 0.6:
        img = _wrinkle(rng, img)
    h, w = img.shape[:2]
    alpha = rounded_mask(w, h, min(w, h) * rng.uniform(0.0, 0.04))
    return Sprite(img, alpha, [(2, alpha.copy())], kind)


def random_label(rng: Rng) -> Sprite:
    ppm = float(rng.uniform(3.5, 5.5))
    r = rng.random()
    if r < 0.5:
        return korean_waybill(rng, ppm)
    if r < 0.85:
        return latin_label(rng, ppm)
    return postage_label(rng, ppm)


# ------------------------------------------------------------------ carriers
def cardboard(rng: Rng, w: int, h: int) -> np.ndarray:
    r = rng.uniform(150, 215)
    base = np.array([r * rng.uniform(0.45, 0.6), r * rng.uniform(0.68, 0.8), r], np.float32)
    if rng.random() < 0.15:
        base = np.array([rng.uniform(200, 235)] * 3, np.float32)  # white box
    img = paper_texture(rng, w, h, tuple(base), grain=rng.uniform(4, 9)).astype(np.float32)
    if rng.random() < 0.5:  # corrugation stripes
        period = rng.uniform(5, 12)
        s = 0.04 * np.sin(np.arange(w if rng.random() < 0.5 else h) * 2 * np.pi / period)
        img *= 1 + (s[None, :, None] if s.shape[0] == w else s[:, None, None])
    return np.clip(img, 0, 255).astype(np.uint8)


def mailer(rng: Rng, w: int, h: int) -> np.ndarray:
    col = np.array(
        rng.choice(
            [
                [200, 200, 200],
                [235, 235, 235],
                [120, 120, 120],
                [40, 40, 40],
                [180, 150, 230],
                [230, 200, 150],
                [150, 200, 240],
                [80, 80, 160],
            ]
        ),
        np.float32,
    )
    img = np.empty((h, w, 3), np.float32)
    img[:] = col
    g = int(rng.integers(3, 7))
    lo = cv2.resize(
        rng.standard_normal((g, max(2, int(g * w / max(h, 1)))), dtype=np.float32),
        (w, h),
        interpolation=cv2.INTER_CUBIC,
    )
    img *= (1 + 0.15 * lo)[..., None]
    spec = np.clip(lo - 0.8, 0, None)
    img += (spec * rng.uniform(40, 110))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def tape(img: np.ndarray, rng: Rng, horizontal: bool) -> None:
    h, w = img.shape[:2]
    tw = int((h if horizontal else w) * rng.uniform(0.08, 0.18))
    pos = int(rng.uniform(0.1, 0.9) * ((h if horizontal else w) - tw))
    col = np.array(rng.choice([[60, 130, 180], [200, 200, 200], [60, 100, 150]]), np.float32)
    op = rng.uniform(0.15, 0.5)
    if horizontal:
        roi = img[pos : pos + tw].astype(np.float32)
        img[pos : pos + tw] = np.clip(roi * (1 - op) + col * op + 15, 0, 255).astype(np.uint8)
    else:
        roi = img[:, pos : pos + tw].astype(np.float32)
        img[:, pos : pos + tw] = np.clip(roi * (1 - op) + col * op + 15, 0, 255).astype(np.uint8)


def on_carrier(rng: Rng, label: Sprite) -> Sprite:
    """Place the label on a cardboard face or a poly mailer. Returns the combined sprite."""
    lw, lh = label.w, label.h
    W, H = int(lw * rng.uniform(1.2, 2.6)), int(lh * rng.uniform(1.15, 2.2))
    is_box = rng.random() < 0.65
    img = cardboard(rng, W, H) if is_box else mailer(rng, W, H)
    if is_box and rng.random() < 0.6:
        tape(img, rng, rng.random() < 0.5)
    x = int(rng.uniform(0.05, 0.95) * (W - lw))
    y = int(rng.uniform(0.05, 0.95) * (H - lh))
    la = label.alpha.astype(np.float32)[..., None] / 255
    roi = img[y : y + lh, x : x + lw].astype(np.float32)
    lab = label.bgr.astype(np.float32)
    if not is_box:  # plastic wrinkles show through the label
        lab *= (
            cv2.resize(
                img[y : y + lh, x : x + lw].astype(np.float32).mean(2) / max(1.0, float(img.mean())), (lw, lh)
            )[..., None]
            * 0.3
            + 0.7
        )
    img[y : y + lh, x : x + lw] = np.clip(roi * (1 - la) + lab * la, 0, 255).astype(np.uint8)
    if is_box and rng.random() < 0.3:  # tape across the label
        sub = img[max(0, y - 5) : y + lh + 5, x : x + lw]
        tape(sub, rng, True)
    mask = np.zeros((H, W), np.uint8)
    mask[y : y + lh, x : x + lw] = label.alpha
    if is_box:
        alpha = np.full((H, W), 255, np.uint8)
        if rng.random() < 0.5:  # box edge shading
            g = np.linspace(1.0, rng.uniform(0.6, 0.9), W, dtype=np.float32)
            img = np.clip(
                img.astype(np.float32) * (g[None, :, None] if rng.random() < 0.5 else g[::-1][None, :, None]),
                0,
                255,
            ).astype(np.uint8)
    else:
        alpha = rounded_mask(W, H, min(W, H) * 0.05)
        alpha = fast_blur(alpha, 1.0)
        alpha = np.maximum(alpha, mask)
    return Sprite(img, alpha, [(2, mask)], label.kind + ("+box" if is_box else "+mailer"), glossy=not is_box)
