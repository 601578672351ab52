"""Hard negatives (no box): text-bearing rectangles that are NOT plates, ID cards or waybills.

Road / street-name signs, posters, book and magazine pages, screens with text, receipts, plain
paper, price tags and sticky notes."""

from __future__ import annotations

import cv2
import numpy as np

from . import fake, fonts
from .draw import Rng, Sprite, barcode_mask, blend_mask, paper_texture, put_text, rounded_mask

INK = (25, 25, 25)


def _words(rng: Rng, n: int, korean: bool) -> str:
    if korean:
        syl = fake.KO_GIVEN + fake.KO_SURNAMES
        return " ".join(
            "".join(fake.choice(rng, syl) for _ in range(int(rng.integers(1, 4)))) for _ in range(n)
        )
    return " ".join(fake.letters(rng, int(rng.integers(2, 8))).lower() for _ in range(n))


def road_sign(rng: Rng) -> Sprite:
    w = int(rng.uniform(200, 420))
    h = int(w * rng.uniform(0.25, 0.7))
    col = tuple(
        int(v)
        for v in rng.choice(
            [[60, 110, 20], [140, 60, 10], [250, 250, 250], [20, 170, 240], [40, 40, 180], [90, 60, 40]]
        )
    )
    img = np.empty((h, w, 3), np.uint8)
    img[:] = col
    ink = INK if np.mean(col) > 150 else (245, 245, 245)
    cv2.rectangle(img, (3, 3), (w - 4, h - 4), ink, max(1, h // 40))
    hf = fonts.hangul_fonts()["bold"][0]
    lines = int(rng.integers(1, 4))
    for k in range(lines):
        y = h * (0.12 + k * 0.8 / lines)
        txt = fake.choice(rng, fake.KO_REGIONS_PLATE + fake.KO_ROAD_A) + (fake.choice(rng, ["로", "길", ""]))
        if rng.random() < 0.5:
            txt += f" {int(rng.integers(1, 99))}km"
        if rng.random() < 0.4:
            txt = fake.choice(rng, fake.LATIN_CITIES)
        put_text(img, txt, hf, w * 0.5, y, h * 0.5 / lines, ink, anchor="c", max_w=w * 0.85)
    if rng.random() < 0.4:  # arrow
        cv2.arrowedLine(
            img,
            (int(w * 0.1), int(h * 0.5)),
            (int(w * 0.25), int(h * 0.5)),
            ink,
            max(2, h // 15),
            tipLength=0.4,
        )
    return Sprite(img, rounded_mask(w, h, h * 0.05), [], "neg_sign")


def street_name_sign(rng: Rng) -> Sprite:
    """Plate-shaped street / building number signs (plate look-alikes)."""
    w = int(rng.uniform(200, 400))
    h = int(w * rng.uniform(0.18, 0.35))
    col = tuple(int(v) for v in rng.choice([[120, 60, 10], [50, 110, 20], [250, 250, 250], [30, 30, 30]]))
    img = np.empty((h, w, 3), np.uint8)
    img[:] = col
    ink = INK if np.mean(col) > 150 else (240, 240, 240)
    hf = fonts.hangul_fonts()["bold"][0]
    txt = (
        fake.choice(rng, fake.KO_ROAD_A)
        + fake.choice(rng, ["로", "길", "대로"])
        + " "
        + str(int(rng.integers(1, 300)))
    )
    if rng.random() < 0.4:
        txt = fake.choice(rng, fake.LATIN_STREETS) + " " + fake.choice(rng, ["ST", "AVE", "RD"])
    put_text(img, txt, hf, w * 0.5, h * 0.2, h * 0.5, ink, anchor="c", max_w=w * 0.9)
    if rng.random() < 0.5:
        put_text(
            img,
            _words(rng, 2, False).upper(),
            fonts.latin_fonts()["regular"][0],
            w * 0.5,
            h * 0.75,
            h * 0.15,
            ink,
            anchor="c",
            max_w=w * 0.8,
        )
    return Sprite(img, rounded_mask(w, h, h * 0.1), [], "neg_street_sign")


def poster(rng: Rng) -> Sprite:
    w = int(rng.uniform(200, 400))
    h = int(w * rng.uniform(1.1, 1.6))
    img = np.empty((h, w, 3), np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img[:] = c0 * (1 - t) + c1 * t
    img = img.astype(np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        x0, y0 = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        cv2.circle(
            img, (x0, y0), int(rng.uniform(10, w / 2)), tuple(int(v) for v in rng.uniform(0, 255, 3)), -1
        )
    hf = fonts.hangul_fonts()["bold"][int(rng.integers(len(fonts.hangul_fonts()["bold"])))]
    korean = rng.random() < 0.5
    put_text(
        img,
        _words(rng, 2, korean).upper(),
        hf,
        w / 2,
        h * 0.08,
        h * 0.1,
        tuple(int(v) for v in rng.uniform(0, 255, 3)),
        anchor="c",
        max_w=w * 0.9,
    )
    for k in range(int(rng.integers(2, 6))):
        put_text(
            img,
            _words(rng, int(rng.integers(2, 5)), korean),
            hf,
            w / 2,
            h * (0.6 + k * 0.07),
            h * 0.035,
            (240, 240, 240) if rng.random() < 0.5 else INK,
            anchor="c",
            max_w=w * 0.9,
        )
    return Sprite(img, np.full((h, w), 255, np.uint8), [], "neg_poster")


def book_page(rng: Rng) -> Sprite:
    w = int(rng.uniform(220, 420))
    h = int(w * rng.uniform(1.3, 1.5))
    img = paper_texture(rng, w, h, tuple(rng.uniform(215, 245, 3)), 3)
    korean = rng.random() < 0.5
    f = fonts.hangul_fonts()["regular"][0] if korean else fonts.latin_fonts()["serif"][-1]
    cols = int(rng.integers(1, 3))
    lh = h * rng.uniform(0.018, 0.03)
    for c in range(cols):
        x0 = w * (0.08 + c * 0.86 / cols)
        y = h * 0.08
        if c == 0 and rng.random() < 0.5:
            put_text(
                img,
                _words(rng, 3, korean).title(),
                fonts.latin_fonts()["bold"][0] if not korean else f,
                x0,
                y,
                lh * 2,
                INK,
                max_w=w * 0.8,
            )
            y += lh * 3.5
        while y < h * 0.92:
            put_text(
                img,
                _words(rng, int(rng.integers(4, 12)), korean),
                f,
                x0,
                y,
                lh,
                INK,
                max_w=w * 0.84 / cols - 6,
            )
            y += lh * 1.6
    if rng.random() < 0.3:  # a picture block
        x0, y0 = int(w * 0.1), int(h * rng.uniform(0.2, 0.6))
        img[y0 : y0 + int(h * 0.2), x0 : x0 + int(w * 0.8)] = rng.uniform(40, 200, 3).astype(np.uint8)
    return Sprite(img, np.full((h, w), 255, np.uint8), [], "neg_page")


def screen(rng: Rng) -> Sprite:
    w = int(rng.uniform(240, 480))
    h = int(w * rng.uniform(0.55, 0.75))
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (15, 15, 15)
    b = int(w * 0.03)
    dark = rng.random() < 0.4
    img[b : h - b, b : w - b] = (40, 35, 30) if dark else (245, 245, 245)
    ink = (220, 220, 220) if dark else INK
    korean = rng.random() < 0.5
    f = fonts.hangul_fonts()["regular"][0]
    cv2.rectangle(img, (b, b), (w - b, b + int(h * 0.08)), tuple(int(v) for v in rng.uniform(60, 220, 3)), -1)
    y = b + h * 0.12
    while y < h - b - h * 0.05:
        put_text(
            img,
            _words(rng, int(rng.integers(2, 9)), korean),
            f,
            b + w * 0.04,
            y,
            h * 0.03,
            ink,
            max_w=w * 0.85,
        )
        y += h * 0.055
    return Sprite(img, rounded_mask(w, h, h * 0.03), [], "neg_screen", glossy=True)


def receipt(rng: Rng) -> Sprite:
    w = int(rng.uniform(120, 220))
    h = int(w * rng.uniform(1.8, 3.5))
    img = paper_texture(rng, w, h, (rng.uniform(235, 250),) * 3, 2)
    mono = fonts.latin_fonts()["mono"][0]
    hf = fonts.hangul_fonts()["regular"][0]
    y = h * 0.04
    put_text(
        img,
        fake.choice(rng, ["마트", "편의점", "카페", "MARKET", "STORE", "CAFE"]) + " " + fake.letters(rng, 3),
        hf,
        w / 2,
        y,
        w * 0.07,
        INK,
        anchor="c",
        max_w=w * 0.9,
    )
    y += w * 0.14
    while y < h * 0.85:
        item = _words(rng, 1, rng.random() < 0.5)
        put_text(img, item, hf, w * 0.06, y, w * 0.045, INK, max_w=w * 0.5)
        put_text(
            img,
            f"{int(rng.integers(1, 99))},{int(rng.integers(0, 9))}00",
            mono,
            w * 0.94,
            y,
            w * 0.045,
            INK,
            anchor="r",
        )
        y += w * 0.075
    put_text(img, "TOTAL", mono, w * 0.06, h * 0.88, w * 0.06, INK)
    if rng.random() < 0.3:
        blend_mask(img, barcode_mask(rng, int(w * 0.7), int(h * 0.04)), int(w * 0.15), int(h * 0.93), INK)
    return Sprite(img, np.full((h, w), 255, np.uint8), [], "neg_receipt")


def plain_paper(rng: Rng) -> Sprite:
    w = int(rng.uniform(150, 400))
    h = int(w * rng.choice([1.414, 0.707, 1.0, 0.6]))
    img = paper_texture(rng, w, h, tuple(rng.uniform(220, 252, 3)), 3)
    if rng.random() < 0.4:  # a few handwritten-ish strokes
        for _ in range(int(rng.integers(1, 6))):
            pts = np.cumsum(rng.normal(0, 6, (12, 2)), 0) + [rng.uniform(0, w), rng.uniform(0, h)]
            cv2.polylines(img, [pts.astype(np.int32)], False, (120, 60, 20), 1, cv2.LINE_AA)
    return Sprite(img, np.full((h, w), 255, np.uint8), [], "neg_paper")


def price_tag(rng: Rng) -> Sprite:
    w = int(rng.uniform(120, 240))
    h = int(w * rng.uniform(0.45, 0.7))
    col = tuple(int(v) for v in rng.choice([[250, 250, 250], [40, 220, 250], [60, 60, 220], [240, 240, 200]]))
    img = np.empty((h, w, 3), np.uint8)
    img[:] = col
    hf = fonts.hangul_fonts()["bold"][0]
    put_text(img, _words(rng, 2, rng.random() < 0.6), hf, w * 0.05, h * 0.08, h * 0.13, INK, max_w=w * 0.9)
    price = f"{int(rng.integers(1, 99))},{int(rng.integers(0, 10))}00"
    put_text(
        img,
        price + fake.choice(rng, ["원", ""]),
        hf,
        w * 0.95,
        h * 0.38,
        h * 0.38,
        (20, 20, 200),
        anchor="r",
        max_w=w * 0.8,
    )
    if rng.random() < 0.5:
        blend_mask(img, barcode_mask(rng, int(w * 0.35), int(h * 0.15)), int(w * 0.05), int(h * 0.8), INK)
    return Sprite(img, rounded_mask(w, h, h * 0.05), [], "neg_price_tag")


def sticky_note(rng: Rng) -> Sprite:
    s = int(rng.uniform(80, 180))
    col = tuple(
        float(v) for v in rng.choice([[120, 240, 250], [200, 160, 250], [150, 250, 180], [250, 200, 150]])
    )
    img = paper_texture(rng, s, s, col, 3)
    hf = fonts.hangul_fonts()["regular"][0]
    for k in range(int(rng.integers(1, 5))):
        put_text(
            img,
            _words(rng, int(rng.integers(1, 3)), rng.random() < 0.6),
            hf,
            s * 0.08,
            s * (0.1 + k * 0.2),
            s * 0.1,
            (140, 40, 20),
            max_w=s * 0.85,
        )
    return Sprite(img, np.full((s, s), 255, np.uint8), [], "neg_sticky")


def car_without_plate(rng: Rng) -> Sprite:
    """Car-rear-like patch whose plate recess is empty or holds a round badge: context without a plate."""
    from . import plates  # local import: plates imports nothing from here

    w, h = int(rng.uniform(300, 520)), int(rng.uniform(80, 140))
    dummy = Sprite(
        np.full((h, w, 3), 128, np.uint8),
        np.full((h, w), 255, np.uint8),
        [(0, np.full((h, w), 255, np.uint8))],
    )
    car = plates.car_context(rng, dummy)
    mask = car.objects[0][1] > 0
    ys, xs = np.where(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    img = car.bgr.copy()
    pad = int((y1 - y0) * 0.35)
    ry = max(0, y0 - (y1 - y0))
    around = img[ry : ry + 2, x0:x1].reshape(-1, 3).mean(0)
    img[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad] = around.astype(np.uint8)
    if rng.random() < 0.5:
        cv2.circle(
            img,
            ((x0 + x1) // 2, (y0 + y1) // 2),
            max(2, (y1 - y0) // 2),
            (200, 200, 200),
            max(1, h // 20),
            cv2.LINE_AA,
        )
    return Sprite(img, car.alpha, [], "neg_car_no_plate")


def product_pack(rng: Rng) -> Sprite:
    """Side of a retail package: brand text, colour blocks, a nutrition-like table and a small EAN barcode."""
    w = int(rng.uniform(200, 400))
    h = int(w * rng.uniform(0.6, 1.5))
    c0 = rng.uniform(0, 255, 3)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = c0.astype(np.uint8)
    cv2.rectangle(
        img, (0, int(h * rng.uniform(0.5, 0.8))), (w, h), tuple(int(v) for v in rng.uniform(0, 255, 3)), -1
    )
    hf = fonts.hangul_fonts()["bold"][int(rng.integers(len(fonts.hangul_fonts()["bold"])))]
    ink = (250, 250, 250) if c0.mean() < 128 else INK
    put_text(
        img,
        _words(rng, 1, rng.random() < 0.5).upper(),
        hf,
        w / 2,
        h * 0.08,
        h * 0.14,
        ink,
        anchor="c",
        max_w=w * 0.9,
    )
    put_text(
        img, _words(rng, 3, rng.random() < 0.5), hf, w / 2, h * 0.27, h * 0.05, ink, anchor="c", max_w=w * 0.9
    )
    if rng.random() < 0.6:  # nutrition-like table
        x0, y0, tw, th = int(w * 0.06), int(h * 0.4), int(w * 0.5), int(h * 0.3)
        cv2.rectangle(img, (x0, y0), (x0 + tw, y0 + th), (250, 250, 250), -1)
        cv2.rectangle(img, (x0, y0), (x0 + tw, y0 + th), INK, 1)
        for k in range(1, 6):
            yy = y0 + th * k // 6
            cv2.line(img, (x0, yy), (x0 + tw, yy), INK, 1)
            put_text(
                img,
                _words(rng, 1, False),
                fonts.latin_fonts()["regular"][0],
                x0 + 3,
                yy - th / 6 + 2,
                th / 12,
                INK,
                max_w=tw * 0.6,
            )
    bw, bh = int(w * rng.uniform(0.25, 0.35)), int(h * rng.uniform(0.1, 0.16))
    bx, by = int(w * rng.uniform(0.55, 0.95) - bw), int(h * rng.uniform(0.75, 0.95) - bh)
    cv2.rectangle(img, (bx - 4, by - 4), (bx + bw + 4, by + bh + int(bh * 0.35)), (250, 250, 250), -1)
    blend_mask(img, barcode_mask(rng, bw, bh, modules=95), bx, by, INK)
    put_text(
        img,
        fake.digits(rng, 13),
        fonts.latin_fonts()["regular"][0],
        bx + bw / 2,
        by + bh + 1,
        bh * 0.25,
        INK,
        anchor="c",
        max_w=bw,
    )
    return Sprite(img, np.full((h, w), 255, np.uint8), [], "neg_product_pack")


def random_negative(rng: Rng) -> Sprite:
    fns = [
        road_sign,
        street_name_sign,
        poster,
        book_page,
        screen,
        receipt,
        plain_paper,
        price_tag,
        sticky_note,
        car_without_plate,
        product_pack,
    ]
    p = np.array([1.2, 1.2, 1.0, 1.0, 1.0, 1.2, 0.8, 0.8, 0.8, 0.8, 1.0])
    return fns[int(rng.choice(len(fns), p=p / p.sum()))](rng)
