"""ID card renderers (class 1): Korean resident registration card and driver's licence layouts, generic
ID cards, passport data pages, vertical badges, and published specimen scans as textures.

All names, numbers, addresses and faces are random fakes (faces are blurred silhouettes)."""

from __future__ import annotations

import functools
import logging

import cv2
import numpy as np

from . import SHARED, fake, fonts, plates
from .draw import (
    Rng,
    Sprite,
    barcode_mask,
    blend_mask,
    fake_face,
    guilloche,
    hologram,
    put_text,
    rounded_mask,
)

log = logging.getLogger(__name__)

SPECIMEN_DIR = SHARED / "media" / "id_specimens"
# Stills of the id_cards test clip: never used for synthesis (keeps that clip an honest evaluation).
CLIP_STILLS = {"100_id-rou", "0_id-esp", "53_id-d", "100_id-si", "33_id-usa"}
# Reserved by the kit for final evaluation (never present here; listed to fail loudly if they appear).
RESERVED = {
    "100_id-che",
    "100_id-mac",
    "77_card-cmw",
    "100_pass-uto",
    "25_pass-uto",
    "100_pass2-uto",
    "100_pass-cze",
    "100_pass-cze2",
    "100_pass-hrv",
    "100_pass-ltu",
    "24_pass-egy",
    "43_pass-fra",
    "79_pass-hun",
    "98_pass-nld",
}
# Crops (x0, y0, x1, y1) in source pixels for files that hold more than the document; None = whole file.
SPECIMEN_CROPS: dict[str, list[tuple[int, int, int, int] | None]] = {
    "100_pass-bdr.jpg": [None],
    "100_id-usa.jpg": [(0, 0, 208, 126), (212, 0, 568, 226)],
    "100_pass-chn.jpg": [None],
    "43_pass-twn.jpg": [None],
    "100_pass-fin.png": [None],
    "100_pass-isl.png": [None],
    "100_visa-usa.jpg": [None],
    "27_pass-gbr.jpg": [None],
    "79_pass-can.jpg": [(0, 0, 450, 318)],
    "100_pass-polx.jpg": [None],
    "100_visa-polx.jpg": [None],
    "62_pass-pol.png": [None],
}
# Not used: 0_pass-lva (photo of an open booklet with annotations), 100_pass-lux (page in perspective on
# black), 62_pass-aus (phone screenshot with UI): they would need a perspective crop by hand.

INK = (30, 30, 30)
HANJA = "金李朴崔鄭姜趙尹張林韓吳徐申權黃安宋柳洪民俊智賢宇道河恩有珍秀英在成東藝周延雅美善"


def _card_base(rng: Rng, w: int, h: int, tint: tuple[float, float, float]) -> np.ndarray:
    img = np.empty((h, w, 3), np.float32)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    c2 = np.asarray(tint, np.float32) * rng.uniform(0.92, 1.0)
    img[:] = np.asarray(tint, np.float32) * (1 - t) + c2 * t
    img += rng.standard_normal((h, w, 1), dtype=np.float32) * (1.5)
    out = np.clip(img, 0, 255).astype(np.uint8)
    guilloche(out, rng, tuple(int(v) for v in rng.uniform(120, 220, 3)), strength=rng.uniform(0.15, 0.4))
    return out


def _watermark_circle(img: np.ndarray, rng: Rng, cx: float, cy: float, r: float) -> None:
    over = np.zeros(img.shape[:2], np.uint8)
    for k in range(int(rng.integers(3, 8))):
        cv2.circle(over, (int(cx), int(cy)), max(1, int(r * (1 - k * 0.12))), 255, 1, cv2.LINE_AA)
    blend_mask(img, over, 0, 0, tuple(int(v) for v in rng.uniform(100, 200, 3)), opacity=0.35)


def _seal(img: np.ndarray, rng: Rng, x: float, y: float, s: float) -> None:
    col = (40, 40, int(rng.uniform(170, 230)))
    cv2.rectangle(img, (int(x), int(y)), (int(x + s), int(y + s)), col, max(1, int(s / 12)), cv2.LINE_AA)
    hf = fonts.hangul_fonts()["serif"][0]
    put_text(
        img,
        fake.choice(rng, ["청장", "인", "장인", "서장"]),
        hf,
        x + s / 2,
        y + s * 0.25,
        s * 0.45,
        col,
        anchor="c",
        max_w=s * 0.8,
        opacity=0.9,
    )


def _signature(img: np.ndarray, rng: Rng, x: float, y: float, w: float, h: float) -> None:
    pts = []
    n = int(rng.integers(8, 20))
    for k in range(n):
        pts.append((x + w * k / n + rng.normal(0, w / 30), y + h / 2 + rng.normal(0, h / 3)))
    cv2.polylines(img, [np.array(pts, np.int32)], False, (120, 40, 20), max(1, int(h / 12)), cv2.LINE_AA)


def korean_resident(rng: Rng, ppm: float) -> Sprite:
    w, h = int(85.6 * ppm), int(54 * ppm)
    img = _card_base(rng, w, h, (rng.uniform(225, 245), rng.uniform(230, 245), rng.uniform(225, 240)))
    _watermark_circle(img, rng, w * 0.45, h * 0.55, h * 0.35)
    hf, hr = fonts.hangul_fonts()["bold"][0], fonts.hangul_fonts()["regular"][0]
    put_text(img, "주민등록증", hf, w * 0.06, h * 0.08, h * 0.09, INK, squeeze=rng.uniform(1.0, 1.3))
    name = fake.ko_name(rng)
    name_font = hf
    if rng.random() < 0.6:  # hanja reading of the (fake) name, as printed on real cards
        hj = "".join(fake.choice(rng, HANJA) for _ in range(len(name)))
        ok = [
            f
            for f in fonts.hangul_fonts()["bold"] + fonts.hangul_fonts()["regular"]
            if all(plates.has_glyph(str(f), c) for c in hj)
        ]
        if ok:
            name, name_font = f"{name} ({hj})", ok[0]
    put_text(img, name, name_font, w * 0.08, h * 0.26, h * 0.075, INK, max_w=w * 0.55)
    put_text(img, fake.ko_rrn(rng, masked=rng.random() < 0.3), hf, w * 0.08, h * 0.38, h * 0.07, INK)
    addr = fake.ko_address(rng)
    cut = len(addr) // 2
    put_text(img, addr[:cut], hr, w * 0.08, h * 0.52, h * 0.05, INK, max_w=w * 0.6)
    put_text(img, addr[cut:], hr, w * 0.08, h * 0.59, h * 0.05, INK, max_w=w * 0.6)
    put_text(img, fake.ko_date(rng), hr, w * 0.4, h * 0.76, h * 0.05, INK)
    issuer = f"{fake.choice(rng, fake.KO_SIDO)} {fake.choice(rng, fake.KO_GU)}청장"
    put_text(img, issuer, hf, w * 0.3, h * 0.85, h * 0.06, INK, max_w=w * 0.44)
    _seal(img, rng, w * 0.78, h * 0.78, h * 0.13)
    pw, ph = int(w * 0.26), int(h * 0.46)
    img[int(h * 0.2) : int(h * 0.2) + ph, int(w * 0.68) : int(w * 0.68) + pw] = fake_face(
        rng, pw, ph, grey=rng.random() < 0.3
    )
    hologram(img, rng, int(w * 0.6), int(h * 0.72), int(h * 0.08), 0.25)
    return _finish(rng, img, "id_kr_resident")


def korean_driver(rng: Rng, ppm: float) -> Sprite:
    w, h = int(85.6 * ppm), int(54 * ppm)
    tint = (rng.uniform(215, 240), rng.uniform(225, 245), rng.uniform(225, 250))
    img = _card_base(rng, w, h, tint)
    hf, hr = fonts.hangul_fonts()["bold"][0], fonts.hangul_fonts()["regular"][0]
    lf = fonts.latin_fonts()["regular"][0]
    put_text(img, "자동차운전면허증", hf, w * 0.28, h * 0.06, h * 0.085, INK, max_w=w * 0.42)
    put_text(img, "Driver's License", lf, w * 0.85, h * 0.08, h * 0.045, INK, anchor="c", max_w=w * 0.24)
    pw, ph = int(w * 0.24), int(h * 0.45)
    img[int(h * 0.22) : int(h * 0.22) + ph, int(w * 0.04) : int(w * 0.04) + pw] = fake_face(rng, pw, ph)
    x = w * 0.32
    put_text(
        img, fake.choice(rng, ["1종보통", "2종보통", "1종대형", "2종소형"]), hf, x, h * 0.2, h * 0.06, INK
    )
    lic = f"{fake.digits(rng, 2)}-{fake.digits(rng, 2)}-{fake.digits(rng, 6)}-{fake.digits(rng, 2)}"
    put_text(img, lic, hf, x + w * 0.2, h * 0.2, h * 0.065, INK)
    put_text(img, fake.ko_name(rng), hf, x, h * 0.32, h * 0.07, INK)
    put_text(img, fake.ko_rrn(rng, masked=rng.random() < 0.5), hr, x, h * 0.43, h * 0.055, INK)
    addr = fake.ko_address(rng)
    cut = len(addr) // 2
    put_text(img, addr[:cut], hr, x, h * 0.53, h * 0.045, INK, max_w=w * 0.62)
    put_text(img, addr[cut:], hr, x, h * 0.6, h * 0.045, INK, max_w=w * 0.62)
    put_text(img, "적성검사기간", hr, x, h * 0.7, h * 0.045, (40, 40, 160))
    put_text(
        img,
        f"{fake.ko_date(rng)} ~ {fake.ko_date(rng)}",
        hr,
        x + w * 0.2,
        h * 0.7,
        h * 0.045,
        (40, 40, 160),
        max_w=w * 0.42,
    )
    put_text(img, fake.ko_date(rng), hr, x + w * 0.1, h * 0.8, h * 0.045, INK)
    put_text(
        img,
        f"{fake.choice(rng, ['서울', '부산', '경기남부', '대구', '인천', '충북'])}경찰청장",
        hf,
        x + w * 0.1,
        h * 0.88,
        h * 0.06,
        INK,
    )
    _seal(img, rng, w * 0.8, h * 0.8, h * 0.13)
    hologram(img, rng, int(w * 0.18), int(h * 0.8), int(h * 0.1), 0.3)
    return _finish(rng, img, "id_kr_driver")


def _mrz_line(rng: Rng, n: int) -> str:
    s = fake.letters(rng, int(rng.integers(3, 10))) + "<<" + fake.letters(rng, int(rng.integers(3, 8)))
    s += fake.digits(rng, int(rng.integers(3, 12)))
    return (s + "<" * n)[:n]


def generic_id(rng: Rng, ppm: float) -> Sprite:
    w, h = int(85.6 * ppm), int(54 * ppm)
    tint = tuple(rng.uniform(190, 250, 3))
    img = _card_base(rng, w, h, tint)
    lf = fonts.latin_fonts()
    band = tuple(int(v) for v in rng.uniform(30, 200, 3))
    back = rng.random() < 0.3
    if back:  # back side: barcode + MRZ (TD1)
        bm = barcode_mask(rng, int(w * 0.8), int(h * 0.22))
        blend_mask(img, bm, int(w * 0.1), int(h * 0.08), INK)
        mono = lf["mono"][0]
        for k in range(3):
            put_text(
                img, _mrz_line(rng, 30), mono, w * 0.05, h * (0.58 + k * 0.13), h * 0.08, INK, max_w=w * 0.9
            )
        return _finish(rng, img, "id_generic_back")
    if rng.random() < 0.7:
        cv2.rectangle(img, (0, 0), (w, int(h * 0.18)), band, -1)
    title = fake.choice(
        rng,
        [
            "IDENTITY CARD",
            "NATIONAL ID",
            "RESIDENCE PERMIT",
            "DRIVING LICENCE",
            "STUDENT ID",
            "EMPLOYEE ID",
            "DRIVER LICENSE",
            "ID CARD",
            "CARTE D'IDENTITE",
            "PERSONALAUSWEIS",
        ],
    )
    put_text(
        img,
        title,
        lf["bold"][0],
        w * 0.5,
        h * 0.04,
        h * 0.09,
        (245, 245, 245) if np.mean(band) < 130 else INK,
        anchor="c",
        max_w=w * 0.9,
    )
    left = rng.random() < 0.75
    pw, ph = int(w * 0.27), int(h * 0.52)
    px = int(w * 0.05) if left else int(w * 0.68)
    img[int(h * 0.25) : int(h * 0.25) + ph, px : px + pw] = fake_face(rng, pw, ph, grey=rng.random() < 0.5)
    x0 = w * 0.37 if left else w * 0.05
    first, last = fake.latin_name(rng)
    fields = [
        ("Surname", last),
        ("Given names", first),
        ("Date of birth", fake.latin_date(rng)),
        ("Document no.", fake.letters(rng, 2) + fake.digits(rng, 7)),
        ("Expiry", fake.latin_date(rng)),
    ]
    y = h * 0.24
    for lab, val in fields[: int(rng.integers(3, 6))]:
        put_text(img, lab, lf["regular"][0], x0, y, h * 0.035, (90, 90, 90), max_w=w * 0.55)
        put_text(img, val, lf["bold"][0], x0, y + h * 0.045, h * 0.055, INK, max_w=w * 0.55)
        y += h * 0.13
    _signature(img, rng, x0, h * 0.84, w * 0.25, h * 0.1)
    if rng.random() < 0.5:
        hologram(
            img, rng, int(w * rng.uniform(0.3, 0.9)), int(h * rng.uniform(0.3, 0.9)), int(h * 0.12), 0.25
        )
    if rng.random() < 0.3:  # chip
        cx, cy = int(w * 0.62), int(h * 0.38)
        cv2.rectangle(img, (cx, cy), (cx + int(w * 0.11), cy + int(h * 0.15)), (60, 170, 210), -1)
        cv2.rectangle(img, (cx, cy), (cx + int(w * 0.11), cy + int(h * 0.15)), (40, 120, 160), 1)
    return _finish(rng, img, "id_generic")


def passport_page(rng: Rng, ppm: float) -> Sprite:
    w, h = int(125 * ppm), int(88 * ppm)
    img = _card_base(rng, w, h, tuple(rng.uniform(200, 245, 3)))
    lf = fonts.latin_fonts()
    put_text(
        img,
        fake.choice(rng, ["PASSPORT", "PASSEPORT", "REISEPASS", "PASAPORTE", "여권 PASSPORT"]),
        fonts.hangul_fonts()["bold"][0],
        w * 0.5,
        h * 0.04,
        h * 0.06,
        INK,
        anchor="c",
    )
    pw, ph = int(w * 0.26), int(h * 0.45)
    img[int(h * 0.14) : int(h * 0.14) + ph, int(w * 0.04) : int(w * 0.04) + pw] = fake_face(rng, pw, ph)
    first, last = fake.latin_name(rng)
    y = h * 0.14
    for lab, val in [
        ("Type / Code", f"P  {fake.letters(rng, 3)}"),
        ("Surname", last),
        ("Given names", first),
        ("Nationality", fake.letters(rng, 3)),
        ("Date of birth", fake.latin_date(rng)),
        ("Date of expiry", fake.latin_date(rng)),
    ]:
        put_text(img, lab, lf["regular"][0], w * 0.34, y, h * 0.025, (90, 90, 90))
        put_text(img, val, lf["bold"][0], w * 0.34, y + h * 0.032, h * 0.04, INK, max_w=w * 0.5)
        y += h * 0.09
    mono = lf["mono"][0]
    put_text(img, "P<" + _mrz_line(rng, 42), mono, w * 0.04, h * 0.78, h * 0.055, INK, max_w=w * 0.92)
    put_text(img, _mrz_line(rng, 44), mono, w * 0.04, h * 0.88, h * 0.055, INK, max_w=w * 0.92)
    return _finish(rng, img, "id_passport", radius=0.02)


def badge(rng: Rng, ppm: float) -> Sprite:
    w, h = int(54 * ppm), int(85.6 * ppm)
    img = _card_base(rng, w, h, tuple(rng.uniform(215, 250, 3)))
    band = tuple(int(v) for v in rng.uniform(20, 200, 3))
    cv2.rectangle(img, (0, 0), (w, int(h * 0.2)), band, -1)
    cv2.rectangle(img, (int(w * 0.38), int(h * 0.04)), (int(w * 0.62), int(h * 0.08)), (235, 235, 235), -1)
    lf = fonts.latin_fonts()
    pw, ph = int(w * 0.55), int(h * 0.38)
    img[int(h * 0.24) : int(h * 0.24) + ph, int((w - pw) / 2) : int((w - pw) / 2) + pw] = fake_face(
        rng, pw, ph
    )
    if rng.random() < 0.5:
        name = fake.ko_name(rng)
        f = fonts.hangul_fonts()["bold"][0]
    else:
        name = " ".join(fake.latin_name(rng))
        f = lf["bold"][0]
    put_text(img, name, f, w / 2, h * 0.66, h * 0.06, INK, anchor="c", max_w=w * 0.9)
    put_text(
        img,
        fake.choice(rng, ["STAFF", "VISITOR", "ENGINEER", "MANAGER", "STUDENT", "사원증", "직원"]),
        fonts.hangul_fonts()["regular"][0],
        w / 2,
        h * 0.76,
        h * 0.045,
        band,
        anchor="c",
        max_w=w * 0.9,
    )
    bm = barcode_mask(rng, int(w * 0.7), int(h * 0.08))
    blend_mask(img, bm, int(w * 0.15), int(h * 0.86), INK)
    return _finish(rng, img, "id_badge")


def _finish(rng: Rng, img: np.ndarray, kind: str, radius: float = 0.06) -> Sprite:
    h, w = img.shape[:2]
    alpha = rounded_mask(w, h, radius * min(w, h) * rng.uniform(0.7, 1.3))
    if rng.random() < 0.6:  # visible card edge (thickness / lamination)
        k = max(1, int(min(w, h) * rng.uniform(0.004, 0.012)))
        rim = (alpha > 0) & (cv2.erode(alpha, np.ones((2 * k + 1, 2 * k + 1), np.uint8)) == 0)
        tone = rng.uniform(0.55, 1.25)
        img = img.copy()
        img[rim] = np.clip(img[rim].astype(np.float32) * tone + (20 if tone > 1 else 0), 0, 255).astype(
            np.uint8
        )
    return Sprite(img, alpha, [(1, alpha.copy())], kind, glossy=True)


@functools.lru_cache(maxsize=1)
def specimen_textures() -> list[tuple[str, np.ndarray]]:
    """Cropped specimen scans allowed for synthesis (clip stills and reserved documents excluded)."""
    out: list[tuple[str, np.ndarray]] = []
    if not SPECIMEN_DIR.is_dir():
        log.warning("specimen dir %s missing: specimen textures disabled", SPECIMEN_DIR)
        return out
    for name, crops in SPECIMEN_CROPS.items():
        stem = name.rsplit(".", 1)[0]
        assert stem not in CLIP_STILLS and stem not in RESERVED, stem
        img = cv2.imread(str(SPECIMEN_DIR / name), cv2.IMREAD_COLOR)
        if img is None:
            log.warning("cannot read specimen %s", name)
            continue
        for c in crops:
            sub = img if c is None else img[c[1] : c[3], c[0] : c[2]]
            s = 520 / max(sub.shape[:2])
            if s < 1:
                sub = cv2.resize(sub, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            out.append((stem, np.ascontiguousarray(sub)))
    return out


def specimen(rng: Rng) -> Sprite | None:
    tex = specimen_textures()
    if not tex:
        return None
    stem, img = tex[int(rng.integers(len(tex)))]
    img = img.astype(np.float32)
    img = img * rng.uniform(0.85, 1.15, 3) + rng.uniform(-15, 15)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return _finish(rng, img, "id_specimen", radius=0.03)


def with_lanyard(rng: Rng, sp: Sprite) -> Sprite:
    """Hang a (badge) card on a lanyard: a clip and two straps going up; the box stays the card's."""
    h, w = sp.h, sp.w
    top = int(h * rng.uniform(0.5, 0.9))
    H, W = h + top, int(w * 1.3)
    ox = (W - w) // 2
    img = np.zeros((H, W, 3), np.uint8)
    alpha = np.zeros((H, W), np.uint8)
    col = tuple(int(v) for v in rng.uniform(20, 230, 3))
    sw = max(2, int(w * rng.uniform(0.08, 0.14)))
    cx = W // 2
    for sx in (int(W * rng.uniform(0.0, 0.25)), int(W * rng.uniform(0.75, 1.0))):
        cv2.line(img, (cx, top), (sx, 0), col, sw, cv2.LINE_AA)
        cv2.line(alpha, (cx, top), (sx, 0), 255, sw, cv2.LINE_AA)
    clip_h = max(3, int(top * 0.3))
    cv2.rectangle(img, (cx - sw, top - clip_h), (cx + sw, top + max(2, h // 20)), (170, 170, 175), -1)
    cv2.rectangle(alpha, (cx - sw, top - clip_h), (cx + sw, top + max(2, h // 20)), 255, -1)
    a = sp.alpha.astype(np.float32)[..., None] / 255
    roi = img[top : top + h, ox : ox + w].astype(np.float32)
    img[top : top + h, ox : ox + w] = (roi * (1 - a) + sp.bgr.astype(np.float32) * a).astype(np.uint8)
    alpha[top : top + h, ox : ox + w] = np.maximum(alpha[top : top + h, ox : ox + w], sp.alpha)
    cv2.rectangle(img, (cx - sw, top - clip_h), (cx + sw, top + max(2, h // 20)), (170, 170, 175), -1)
    mask = np.zeros((H, W), np.uint8)
    mask[top : top + h, ox : ox + w] = sp.objects[0][1]
    return Sprite(img, alpha, [(1, mask)], sp.kind + "+lanyard", glossy=True)


def random_id(rng: Rng, context: bool = True) -> Sprite:
    """A random ID document; ``context`` allows extras around it (a lanyard on badges)."""
    ppm = float(rng.uniform(5.0, 7.0))
    r = rng.random()
    if r < 0.28:
        return korean_resident(rng, ppm)
    if r < 0.50:
        return korean_driver(rng, ppm)
    if r < 0.72:
        return generic_id(rng, ppm)
    if r < 0.80:
        return passport_page(rng, ppm * 0.8)
    if r < 0.86:
        b = badge(rng, ppm)
        return with_lanyard(rng, b) if context and rng.random() < 0.6 else b
    sp = specimen(rng)
    return sp if sp is not None else generic_id(rng, ppm)
