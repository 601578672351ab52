"""Licence plate renderers (class 0): Korean formats first, then EU, US and other styles.

Sizes follow the real plates in millimetres (1 mm ~ ``ppm`` px): Korean long 520x110, Korean
two-line 335x170, EU 520x110, US 305x152, Mercosur 400x130. Every number is random."""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from . import fake, fonts
from .draw import Rng, Sprite, blend_mask, emboss, fast_blur, put_text, rounded_mask, text_mask

BLACK = (25, 25, 25)


def _base(
    rng: Rng,
    w: int,
    h: int,
    color: tuple[float, float, float],
    radius_frac: float = 0.06,
    gradient: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    img = np.empty((h, w, 3), np.float32)
    img[:] = color
    if gradient is not None:
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        img = img * (1 - t) + np.asarray(gradient, np.float32) * t
    img += rng.standard_normal((h, w, 1), dtype=np.float32) * (2.0)
    alpha = rounded_mask(w, h, radius_frac * h)
    return np.clip(img, 0, 255).astype(np.uint8), alpha


def _draw_seq(
    img: np.ndarray,
    parts: list[tuple[str, str]],
    x0: float,
    x1: float,
    y: float,
    h: float,
    color: tuple[int, int, int],
    gap: float,
    rng: Rng,
    cjk_font: str | None = None,
) -> None:
    """Lay out text parts [(text, 'hangul'|'latin'|'cjk')] evenly between x0 and x1 with cap height h."""
    hfont = fonts.hangul_fonts()["bold"]
    lfont = fonts.latin_fonts()["cond"] + fonts.hangul_fonts()["bold"][:1]
    hf = hfont[int(rng.integers(len(hfont)))]
    lf = lfont[int(rng.integers(len(lfont)))]
    masks = []
    for text, script in parts:
        f = {"hangul": hf, "cjk": cjk_font or hf}.get(script, lf)
        m = text_mask(text, f, int(h * 1.3))
        masks.append(m)
    nat = [m.shape[1] * h / max(1, m.shape[0]) for m in masks]
    total_gap = gap * (len(parts) - 1)
    sx = (x1 - x0 - total_gap) / max(1.0, sum(nat))
    x = x0
    for m, nw in zip(masks, nat, strict=True):
        ww = nw * sx
        blend_mask(img, m, int(x), int(y), color, int(ww), int(h))
        x += ww + gap


def _screws(img: np.ndarray, rng: Rng, pts: list[tuple[float, float]], r: float) -> None:
    col = rng.uniform(120, 200)
    for x, y in pts:
        cv2.circle(img, (int(x), int(y)), max(1, int(r)), (col, col, col), -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(y)), max(1, int(r)), (col * 0.5,) * 3, max(1, int(r / 4)), cv2.LINE_AA)


def _taegeuk(img: np.ndarray, cx: float, cy: float, r: float) -> None:
    """Small red/blue circular emblem (plate hologram / EV mark)."""
    c = (int(cx), int(cy))
    r = max(2, int(r))
    cv2.ellipse(img, c, (r, r), 0, 180, 360, (50, 40, 200), -1, cv2.LINE_AA)
    cv2.ellipse(img, c, (r, r), 0, 0, 180, (160, 70, 20), -1, cv2.LINE_AA)
    cv2.circle(img, (int(cx - r / 2), int(cy)), max(1, r // 2), (50, 40, 200), -1, cv2.LINE_AA)
    cv2.circle(img, (int(cx + r / 2), int(cy)), max(1, r // 2), (160, 70, 20), -1, cv2.LINE_AA)


def korean_long(rng: Rng, ppm: float, variant: str) -> Sprite:
    """520x110 single-line plate: 'white7', 'white8', 'ev', 'yellow_long', 'white_region'."""
    w, h = int(520 * ppm), int(110 * ppm)
    if variant == "ev":
        img, alpha = _base(rng, w, h, (215, 160, 70), 0.08, gradient=(235, 200, 130))
        color = BLACK
        text = fake.ko_plate_text(rng, "new8" if rng.random() < 0.8 else "new7")
    elif variant == "yellow_long":
        img, alpha = _base(rng, w, h, (35, 190, 235), 0.08)
        color = BLACK
        text = fake.ko_plate_text(rng, "commercial")
    else:
        tone = rng.uniform(225, 250)
        img, alpha = _base(rng, w, h, (tone, tone, tone * rng.uniform(0.97, 1.0)), 0.08)
        color = BLACK
        text = fake.ko_plate_text(rng, "new8" if variant == "white8" else "new7")
    left = 0.07 * w
    if variant in ("white8", "ev") or (variant == "white7" and rng.random() < 0.4):
        # left strip: small emblem + "KOR" (hologram area of post-2019 plates)
        strip = 0.085 * w
        _taegeuk(img, left * 0.55 + strip * 0.25, h * 0.32, h * 0.13)
        lf = fonts.latin_fonts()["bold"][0]
        put_text(img, "KOR", lf, left * 0.55 + strip * 0.25, h * 0.6, h * 0.14, (90, 90, 90), anchor="c")
        if variant == "ev":
            put_text(img, "EV", lf, left * 0.55 + strip * 0.25, h * 0.78, h * 0.12, (130, 60, 20), anchor="c")
        left += strip * 0.75
    if variant == "white_region":
        region = fake.choice(rng, fake.KO_REGIONS_PLATE)
        text = region + fake.ko_plate_text(rng, "new7")
    # split into digit / hangul runs
    parts: list[tuple[str, str]] = []
    for ch in text:
        script = "hangul" if "\uac00" <= ch <= "\ud7a3" else "latin"
        if parts and parts[-1][1] == script:
            parts[-1] = (parts[-1][0] + ch, script)
        else:
            parts.append((ch, script))
    cap = h * rng.uniform(0.66, 0.78)
    _draw_seq(img, parts, left, w - 0.05 * w, (h - cap) / 2, cap, color, 0.025 * w, rng)
    if rng.random() < 0.3:
        _screws(img, rng, [(w * 0.2, h * 0.5), (w * 0.8, h * 0.5)], h * 0.045)
    return Sprite(img, alpha, [(0, alpha.copy())], "plate_kr_" + variant)


def korean_two_line(rng: Rng, ppm: float, variant: str) -> Sprite:
    """335x170 two-line plate: 'green' legacy, 'yellow' commercial, 'white' regional."""
    w, h = int(335 * ppm), int(170 * ppm)
    if variant == "green":
        img, alpha = _base(rng, w, h, (70 + rng.uniform(-15, 15), 120 + rng.uniform(-20, 20), 40), 0.07)
        color = (235, 240, 240)
        kind = "new7"
    elif variant == "yellow":
        img, alpha = _base(rng, w, h, (30, 185 + rng.uniform(-20, 15), 230), 0.07)
        color = BLACK
        kind = "commercial"
    else:
        t = rng.uniform(225, 250)
        img, alpha = _base(rng, w, h, (t, t, t), 0.07)
        color = BLACK
        kind = "new7"
    region = fake.choice(rng, fake.KO_REGIONS_PLATE)
    num = fake.ko_plate_text(rng, kind)  # e.g. 12가3456
    d2, hg, d4 = num[:-5], num[-5], num[-4:]
    # border line on legacy plates
    if rng.random() < 0.6:
        cv2.rectangle(
            img,
            (int(0.03 * w), int(0.04 * h)),
            (int(0.97 * w), int(0.96 * h)),
            color,
            max(1, int(0.012 * h)),
            cv2.LINE_AA,
        )
    top_h = h * 0.26
    _draw_seq(
        img, [(region, "hangul"), (d2, "latin")], w * 0.22, w * 0.78, h * 0.09, top_h, color, w * 0.04, rng
    )
    bot_h = h * 0.48
    _draw_seq(img, [(hg, "hangul"), (d4, "latin")], w * 0.07, w * 0.93, h * 0.42, bot_h, color, w * 0.05, rng)
    _screws(img, rng, [(w * 0.12, h * 0.22), (w * 0.88, h * 0.22)], h * 0.035)
    return Sprite(img, alpha, [(0, alpha.copy())], "plate_kr2_" + variant)


def _eu_stars(img: np.ndarray, cx: float, cy: float, r: float) -> None:
    for k in range(12):
        a = 2 * math.pi * k / 12
        cv2.circle(
            img,
            (int(cx + r * math.cos(a)), int(cy + r * math.sin(a))),
            max(1, int(r * 0.14)),
            (0, 210, 250),
            -1,
            cv2.LINE_AA,
        )


def european(rng: Rng, ppm: float) -> Sprite:
    country = fake.choice(rng, fake.EU_COUNTRIES + ["GB", "NL", "D", "F", "I", "E"])
    short = rng.random() < 0.12
    w, h = (int(340 * ppm), int(200 * ppm)) if short else (int(rng.uniform(460, 520) * ppm), int(110 * ppm))
    yellow = country in ("NL", "GB") and rng.random() < 0.6 or (country == "L" and rng.random() < 0.8)
    base = (30, 200, 245) if yellow else (rng.uniform(235, 252),) * 3
    img, alpha = _base(rng, w, h, base, 0.05)
    cv2.rectangle(img, (1, 1), (w - 2, h - 2), BLACK, max(1, int(0.02 * h)), cv2.LINE_AA)
    sw = int((0.085 if not short else 0.12) * w)
    sh = h if not short else int(h * 0.5)
    cv2.rectangle(img, (2, 2), (sw, sh - 2), (150, 60, 0), -1)
    _eu_stars(img, sw / 2, sh * 0.36, sw * 0.3)
    put_text(
        img,
        country,
        fonts.latin_fonts()["bold"][0],
        sw / 2,
        sh * 0.66,
        sh * 0.2,
        (245, 245, 245),
        anchor="c",
        max_w=sw * 0.9,
    )
    text = fake.eu_plate_text(rng, country)
    lf = fonts.latin_fonts()["cond"]
    f = lf[int(rng.integers(len(lf)))]
    if short:
        words = text.split(" ")
        a, b = " ".join(words[: max(1, len(words) // 2)]), " ".join(words[max(1, len(words) // 2) :])
        put_text(img, a, f, (sw + w) / 2, h * 0.1, h * 0.36, BLACK, max_w=w - sw - 0.1 * w, anchor="c")
        put_text(
            img, b or fake.digits(rng, 3), f, w / 2, h * 0.55, h * 0.36, BLACK, max_w=w * 0.85, anchor="c"
        )
    else:
        cap = h * rng.uniform(0.6, 0.72)
        put_text(
            img,
            text,
            f,
            (sw + w) / 2,
            (h - cap) / 2,
            cap,
            BLACK,
            max_w=w - sw - 0.08 * w,
            anchor="c",
            squeeze=rng.uniform(0.8, 1.0),
        )
    if country == "D" and not short and rng.random() < 0.7:
        cx = sw + 0.22 * (w - sw)
        for dy, col in ((0.33, (60, 60, 200)), (0.67, (200, 200, 200))):
            cv2.circle(img, (int(cx), int(h * dy)), int(h * 0.12), col, -1, cv2.LINE_AA)
    return Sprite(img, alpha, [(0, alpha.copy())], "plate_eu")


def us_style(rng: Rng, ppm: float) -> Sprite:
    w, h = int(305 * ppm), int(152 * ppm)
    pal = [
        ((245, 245, 245), (250, 235, 220)),
        ((250, 240, 225), (200, 150, 90)),
        ((150, 225, 245), (240, 250, 255)),
        ((200, 235, 250), (40, 180, 230)),
        ((230, 240, 230), (170, 210, 170)),
        ((235, 235, 235), (120, 80, 40)),
        ((30, 30, 30), (60, 60, 60)),
        ((200, 225, 240), (245, 245, 245)),
    ]
    c0, c1 = pal[int(rng.integers(len(pal)))]
    img = np.empty((h, w, 3), np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img[:] = np.asarray(c0, np.float32) * (1 - t) + np.asarray(c1, np.float32) * t
    # soft "scenic" band (mountains / waves)
    if rng.random() < 0.5:
        xs = np.arange(w)
        ys = (
            h * rng.uniform(0.55, 0.8) + h * 0.1 * np.sin(xs / w * rng.uniform(3, 9) + rng.uniform(0, 6))
        ).astype(int)
        band = np.zeros((h, w), np.uint8)
        for x, y in zip(xs, ys, strict=True):
            band[y:, x] = 255
        blend_mask(img, band, 0, 0, rng.uniform(60, 220, 3), opacity=rng.uniform(0.2, 0.5))
    img = np.clip(img, 0, 255).astype(np.uint8)
    dark_bg = float(np.mean(c0)) < 90
    ink = (
        (240, 240, 240)
        if dark_bg
        else tuple(
            int(v)
            for v in rng.choice([[110, 30, 20], [30, 30, 160], [25, 25, 25], [40, 90, 30], [120, 40, 100]])
        )
    )
    lf = fonts.latin_fonts()
    put_text(
        img,
        fake.choice(rng, fake.US_STATE_NAMES),
        lf["serif"][int(rng.integers(len(lf["serif"])))],
        w / 2,
        h * 0.07,
        h * 0.14,
        tuple(int(v) for v in rng.uniform(0, 200, 3)) if not dark_bg else (230, 230, 230),
        anchor="c",
        max_w=w * 0.7,
    )
    ink_mask = np.zeros((h, w), np.uint8)
    text = fake.us_plate_text(rng)
    m = text_mask(text, lf["cond"][int(rng.integers(len(lf["cond"])))], int(h * 0.6))
    cap = h * rng.uniform(0.42, 0.52)
    mw = min(w * 0.86, m.shape[1] * cap / m.shape[0] * rng.uniform(0.85, 1.0))
    ink_mask_r = cv2.resize(m, (int(mw), int(cap)), interpolation=cv2.INTER_AREA)
    x0, y0 = int((w - mw) / 2), int(h * 0.27)
    ink_mask[y0 : y0 + ink_mask_r.shape[0], x0 : x0 + ink_mask_r.shape[1]] = ink_mask_r
    blend_mask(img, ink_mask, 0, 0, ink)
    if rng.random() < 0.6:
        img = emboss(img, ink_mask, rng.uniform(0.5, 1.5))
    put_text(
        img,
        fake.choice(rng, fake.US_SLOGANS),
        lf["bold"][0],
        w / 2,
        h * 0.83,
        h * 0.09,
        ink if not dark_bg else (200, 200, 200),
        anchor="c",
        max_w=w * 0.7,
    )
    if rng.random() < 0.6:  # registration sticker
        sx = int(w * (0.04 if rng.random() < 0.5 else 0.8))
        cv2.rectangle(
            img,
            (sx, int(h * 0.06)),
            (sx + int(w * 0.15), int(h * 0.22)),
            tuple(int(v) for v in rng.uniform(0, 255, 3)),
            -1,
        )
    _screws(img, rng, [(w * 0.2, h * 0.12), (w * 0.8, h * 0.12)], h * 0.03)
    alpha = rounded_mask(w, h, 0.08 * h)
    return Sprite(img, alpha, [(0, alpha.copy())], "plate_us")


CN_PROVINCES = "京津冀晋蒙辽吉黑苏浙皖闽赣鲁豫鄂湘粤桂琼川贵云藏陕甘青宁新渝沪"
JP_REGIONS = [
    "品川",
    "横浜",
    "大阪",
    "京都",
    "神戸",
    "札幌",
    "福岡",
    "名古屋",
    "千葉",
    "長野",
    "広島",
    "仙台",
]
JP_KANA = "あいうえかきくけこさすせそたちつてとなにぬねのはひふほまみむめもやゆよらりるれろわ"


@functools.lru_cache(maxsize=256)
def has_glyph(font_path: str, ch: str) -> bool:
    """True if the font draws ``ch`` (not its .notdef box)."""
    f = fonts.font(font_path, 32)
    a, b = f.getmask(ch), f.getmask("\uffff")
    if a.size[0] == 0 or a.size[1] == 0 or not any(bytes(a)):
        return False
    return not (a.size == b.size and bytes(a) == bytes(b))


def _cjk_plate(rng: Rng, ppm: float) -> Sprite | None:
    hf = str(fonts.hangul_fonts()["bold"][-1])
    cands = [
        f
        for f in fonts.hangul_fonts()["bold"] + fonts.hangul_fonts()["regular"]
        if has_glyph(str(f), "京") and has_glyph(str(f), "あ")
    ]
    if not cands:
        return None
    hf = str(cands[0])
    fonts.latin_fonts()["cond"][0]
    if rng.random() < 0.5:  # mainland-China-like blue plate, 440x140
        prov = [c for c in CN_PROVINCES if has_glyph(hf, c)]
        w, h = int(440 * ppm), int(140 * ppm)
        green = rng.random() < 0.2
        img, alpha = _base(
            rng,
            w,
            h,
            (90, 200, 120) if green else (170, 75, 15),
            0.06,
            gradient=(240, 250, 245) if green else None,
        )
        ink = BLACK if green else (245, 245, 245)
        cv2.rectangle(
            img, (int(w * 0.02), int(h * 0.06)), (int(w * 0.98), int(h * 0.94)), ink, max(1, int(h * 0.02))
        )
        text = f"{fake.letters(rng, 1)}·{fake.letters(rng, 1) if rng.random() < 0.5 else ''}{fake.digits(rng, 5 if green else 4)}"
        _draw_seq(
            img,
            [(fake.choice(rng, prov), "cjk"), (text, "latin")],
            w * 0.06,
            w * 0.94,
            h * 0.18,
            h * 0.64,
            ink,
            w * 0.03,
            rng,
            cjk_font=hf,
        )
        return Sprite(img, alpha, [(0, alpha.copy())], "plate_cn")
    w, h = int(330 * ppm), int(165 * ppm)  # Japanese-like
    yellow = rng.random() < 0.25
    img, alpha = _base(rng, w, h, (40, 200, 240) if yellow else (238, 242, 238), 0.05)
    ink = BLACK if yellow else (50, 95, 20)
    cv2.rectangle(img, (2, 2), (w - 3, h - 3), ink, max(1, int(h * 0.015)))
    region = fake.choice(rng, [r for r in JP_REGIONS if all(has_glyph(hf, c) for c in r)] or ["XX"])
    _draw_seq(
        img,
        [(region, "cjk"), (fake.digits(rng, 3), "latin")],
        w * 0.25,
        w * 0.75,
        h * 0.08,
        h * 0.24,
        ink,
        w * 0.03,
        rng,
        cjk_font=hf,
    )
    kana = fake.choice(rng, [k for k in JP_KANA if has_glyph(hf, k)])
    _draw_seq(img, [(kana, "cjk")], w * 0.05, w * 0.17, h * 0.55, h * 0.22, ink, 0, rng, cjk_font=hf)
    _draw_seq(
        img,
        [(f"{fake.digits(rng, 2)}-{fake.digits(rng, 2)}", "latin")],
        w * 0.2,
        w * 0.95,
        h * 0.4,
        h * 0.5,
        ink,
        0,
        rng,
    )
    return Sprite(img, alpha, [(0, alpha.copy())], "plate_jp")


def other_style(rng: Rng, ppm: float) -> Sprite:
    if rng.random() < 0.35:
        sp = _cjk_plate(rng, ppm)
        if sp is not None:
            return sp
    style = int(rng.integers(4))
    lf = fonts.latin_fonts()
    if style == 0:  # Mercosur
        w, h = int(400 * ppm), int(130 * ppm)
        img, alpha = _base(rng, w, h, (245, 245, 245), 0.06)
        cv2.rectangle(img, (0, 0), (w, int(h * 0.22)), (140, 50, 0), -1)
        put_text(
            img,
            fake.choice(rng, ["BRASIL", "ARGENTINA", "URUGUAY", "PARAGUAY"]),
            lf["bold"][0],
            w / 2,
            h * 0.04,
            h * 0.13,
            (250, 250, 250),
            anchor="c",
        )
        cv2.rectangle(img, (1, 1), (w - 2, h - 2), BLACK, max(1, int(h * 0.02)))
        put_text(
            img,
            fake.other_plate_text(rng),
            lf["cond"][0],
            w / 2,
            h * 0.34,
            h * 0.52,
            BLACK,
            anchor="c",
            max_w=w * 0.9,
        )
    elif style == 1:  # Japanese-like two line, green on white or black on yellow
        w, h = int(330 * ppm), int(165 * ppm)
        yellow = rng.random() < 0.3
        img, alpha = _base(rng, w, h, (40, 200, 240) if yellow else (240, 245, 240), 0.05)
        ink = BLACK if yellow else (60, 100, 20)
        cv2.rectangle(img, (2, 2), (w - 3, h - 3), ink, max(1, int(h * 0.015)))
        put_text(
            img,
            f"{fake.letters(rng, 2)} {fake.digits(rng, 3)}",
            lf["bold"][0],
            w / 2,
            h * 0.1,
            h * 0.2,
            ink,
            anchor="c",
        )
        put_text(
            img,
            f"{fake.digits(rng, 2)}-{fake.digits(rng, 2)}",
            lf["cond"][0],
            w * 0.55,
            h * 0.4,
            h * 0.48,
            ink,
            anchor="c",
            max_w=w * 0.75,
        )
    elif style == 2:  # dark plate with white text (Asia / older Europe)
        w, h = int(rng.uniform(440, 520) * ppm), int(rng.uniform(110, 140) * ppm)
        img, alpha = _base(rng, w, h, tuple(rng.choice([[30, 30, 30], [140, 60, 10], [30, 90, 30]])), 0.06)
        cv2.rectangle(img, (3, 3), (w - 4, h - 4), (230, 230, 230), max(1, int(h * 0.02)))
        put_text(
            img,
            fake.other_plate_text(rng),
            lf["cond"][0],
            w / 2,
            h * 0.2,
            h * 0.6,
            (235, 235, 235),
            anchor="c",
            max_w=w * 0.9,
        )
    else:  # square motorcycle-like
        w, h = int(rng.uniform(180, 260) * ppm), int(rng.uniform(150, 200) * ppm)
        img, alpha = _base(rng, w, h, tuple(rng.choice([[240, 240, 240], [30, 200, 240]])), 0.08)
        cv2.rectangle(img, (2, 2), (w - 3, h - 3), BLACK, max(1, int(h * 0.02)))
        put_text(
            img,
            fake.letters(rng, int(rng.integers(2, 4))),
            lf["cond"][0],
            w / 2,
            h * 0.1,
            h * 0.36,
            BLACK,
            anchor="c",
            max_w=w * 0.85,
        )
        put_text(
            img,
            fake.digits(rng, int(rng.integers(3, 5))),
            lf["cond"][0],
            w / 2,
            h * 0.52,
            h * 0.38,
            BLACK,
            anchor="c",
            max_w=w * 0.85,
        )
    return Sprite(img, alpha, [(0, alpha.copy())], "plate_other")


def age_plate(rng: Rng, sp: Sprite) -> Sprite:
    """Dirt, fading, scratches on a plate, in place."""
    img = sp.bgr.astype(np.float32)
    h, w = img.shape[:2]
    if rng.random() < 0.6:
        lo = cv2.resize(rng.random((4, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        dirt = np.clip(lo - rng.uniform(0.3, 0.7), 0, 1)[..., None] * rng.uniform(0.2, 0.6)
        img = img * (1 - dirt) + np.array([40, 60, 80], np.float32) * dirt
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(1, 6))):
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            cv2.line(
                img,
                (int(x0), int(y0)),
                (int(x0 + rng.normal(0, w / 6)), int(y0 + rng.normal(0, h / 6))),
                (200, 200, 200),
                1,
                cv2.LINE_AA,
            )
    if rng.random() < 0.3:  # fading
        img = img * 0.8 + img.mean() * 0.2
    sp.bgr = np.clip(img, 0, 255).astype(np.uint8)
    return sp


def random_plate(rng: Rng) -> Sprite:
    """One random plate sprite, Korean-weighted."""
    ppm = float(rng.uniform(0.6, 1.1))
    r = rng.random()
    if r < 0.22:
        sp = korean_long(rng, ppm, "white7")
    elif r < 0.40:
        sp = korean_long(rng, ppm, "white8")
    elif r < 0.47:
        sp = korean_long(rng, ppm, "ev")
    elif r < 0.51:
        sp = korean_long(rng, ppm, "yellow_long")
    elif r < 0.54:
        sp = korean_long(rng, ppm, "white_region")
    elif r < 0.58:
        sp = korean_two_line(rng, ppm, "green")
    elif r < 0.63:
        sp = korean_two_line(rng, ppm, "yellow")
    elif r < 0.65:
        sp = korean_two_line(rng, ppm, "white")
    elif r < 0.81:
        sp = european(rng, ppm)
    elif r < 0.93:
        sp = us_style(rng, ppm)
    else:
        sp = other_style(rng, ppm)
    return age_plate(rng, sp)


def car_context(rng: Rng, plate: Sprite) -> Sprite:
    """Put a plate on a car-rear/front-like patch (glass, paint, lights, recess, bumper) with feathered edges."""
    pw, ph = plate.w, plate.h
    W = int(pw * rng.uniform(1.8, 3.6))
    H = int(W * rng.uniform(0.45, 0.85))
    H = max(H, int(ph * 2.5))
    paint = np.array(
        rng.choice(
            [
                [235, 235, 235],
                [190, 190, 195],
                [40, 40, 40],
                [20, 20, 25],
                [40, 40, 170],
                [140, 70, 20],
                [90, 90, 95],
                [60, 100, 60],
                [200, 210, 215],
                [30, 60, 120],
                [150, 150, 150],
                [80, 30, 20],
            ]
        ),
        np.float32,
    ) * rng.uniform(0.8, 1.1)
    img = np.empty((H, W, 3), np.float32)
    img[:] = paint
    t = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    img *= 1.1 - 0.35 * (t - rng.uniform(0.2, 0.6)) ** 2 * rng.uniform(1, 4)  # curved panel shading
    px = int(np.clip((W - pw) // 2 + rng.normal(0, W * 0.04), 2, W - pw - 2))
    py = int(np.clip(H * rng.uniform(0.45, 0.68), 2, H - ph - 2))
    if rng.random() < 0.75:  # rear / front glass
        gy = int(H * rng.uniform(0.12, 0.3))
        gx = int(W * rng.uniform(0.05, 0.15))
        glass = np.array([rng.uniform(30, 70), rng.uniform(30, 60), rng.uniform(20, 50)], np.float32)
        pts = np.array(
            [[gx, 0], [W - gx, 0], [W - gx - int(W * 0.04), gy], [gx + int(W * 0.04), gy]], np.int32
        )
        cv2.fillConvexPoly(img, pts, glass.tolist(), cv2.LINE_AA)
        cv2.line(
            img,
            (gx + int(W * 0.1), int(gy * 0.3)),
            (W - gx - int(W * 0.3), int(gy * 0.3)),
            (glass * 1.8).tolist(),
            max(1, gy // 6),
            cv2.LINE_AA,
        )
    if rng.random() < 0.85:  # lights either side
        lw, lh = int(W * rng.uniform(0.12, 0.22)), int(ph * rng.uniform(0.6, 1.3))
        ly = int(np.clip(py - ph * rng.uniform(0.6, 2.0), 0, H - lh))
        col = rng.choice([[30, 30, 190], [40, 50, 150], [210, 215, 220], [30, 120, 230]]).tolist()
        for lx in (int(W * rng.uniform(0.0, 0.05)), int(W * rng.uniform(0.95, 1.0)) - lw):
            cv2.rectangle(img, (lx, ly), (lx + lw, ly + lh), col, -1)
            cv2.rectangle(img, (lx, ly), (lx + lw, ly + lh), (paint * 0.4).tolist(), max(1, lh // 10))
    by = int(np.clip(py + ph * rng.uniform(1.15, 1.6), 0, H - 1))
    bumper = paint * rng.uniform(0.3, 0.9) if rng.random() < 0.6 else np.array([30, 30, 32], np.float32)
    cv2.rectangle(img, (0, by), (W, H), bumper.tolist(), -1)
    cv2.line(img, (0, by), (W, by), (paint * 1.2).tolist(), max(1, ph // 12), cv2.LINE_AA)
    m = int(ph * rng.uniform(0.1, 0.25))
    cv2.rectangle(img, (px - m, py - m), (px + pw + m, py + ph + m), (paint * 0.35).tolist(), -1)
    if plate.kind.startswith("plate_us") and rng.random() < 0.6 and py + ph + int(ph * 0.2) < H:
        # dealer frame: thick bottom bar with text, covers nothing of the plate itself
        fc = rng.choice([[20, 20, 20], [200, 200, 200], [40, 40, 40], [30, 60, 140]]).tolist()
        fb = int(ph * rng.uniform(0.12, 0.2))
        cv2.rectangle(img, (px - fb // 2, py - fb // 2), (px + pw + fb // 2, py + ph + fb), fc, -1)
        ink = (235, 235, 235) if np.mean(fc) < 128 else (20, 20, 20)
        put_text(
            img,
            f"{fake.choice(rng, fake.LATIN_CITIES)} {fake.choice(rng, ['AUTO', 'MOTORS', 'CARS'])}",
            fonts.latin_fonts()["bold"][0],
            px + pw / 2,
            py + ph + fb * 0.1,
            fb * 0.7,
            ink,
            anchor="c",
            max_w=pw * 0.8,
        )
    elif rng.random() < 0.5:  # plate frame
        fc = rng.choice([[20, 20, 20], [180, 180, 180], [120, 120, 120]]).tolist()
        cv2.rectangle(img, (px - m // 2, py - m // 2), (px + pw + m // 2, py + ph + m // 2), fc, -1)
    img[int(H * 0.93) :] *= 0.4  # shadow under the car
    img = np.clip(img + rng.normal(0, 3, (H, W, 1)), 0, 255).astype(np.uint8)
    pa = plate.alpha.astype(np.float32)[..., None] / 255
    roi = img[py : py + ph, px : px + pw].astype(np.float32)
    img[py : py + ph, px : px + pw] = (roi * (1 - pa) + plate.bgr.astype(np.float32) * pa).astype(np.uint8)
    alpha = np.zeros((H, W), np.uint8)
    cv2.rectangle(alpha, (0, 0), (W, H), 255, -1)
    feather = max(3, int(min(W, H) * 0.12))
    alpha = fast_blur(
        cv2.erode(alpha, np.ones((3, 3), np.uint8), iterations=max(1, feather // 2)), feather / 2
    )
    mask = np.zeros((H, W), np.uint8)
    mask[py : py + ph, px : px + pw] = plate.objects[0][1]
    alpha = np.maximum(alpha, mask)
    return Sprite(img, alpha, [(0, mask)], plate.kind + "+car", glossy=True)
