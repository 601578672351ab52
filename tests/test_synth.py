"""Tests of the synthetic data engine (training/synth): determinism, label validity, box geometry,
visibility rule and hard negatives. Procedural backgrounds only, so they run without ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
from training.synth import fonts  # noqa: E402

try:
    fonts.check_fonts()
except fonts.FontMissingError as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"synthetic engine needs fonts: {e}", allow_module_level=True)

from training.synth import generate, ids, plates, scene, waybills  # noqa: E402
from training.synth.draw import Sprite  # noqa: E402

EMPTY_POOL = scene.BackgroundPool([])
MAGENTA = (255, 0, 255)


def _flat(w: int = 640, h: int = 480) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = MAGENTA
    return img


def test_deterministic_for_a_seed() -> None:
    for i in (0, 7):
        a_img, a_boxes, _, a_q = generate.render_index(3, i, EMPTY_POOL)
        b_img, b_boxes, _, b_q = generate.render_index(3, i, EMPTY_POOL)
        assert a_q == b_q
        assert a_boxes == b_boxes
        assert np.array_equal(a_img, b_img)
    c_img, _, _, _ = generate.render_index(4, 0, EMPTY_POOL)
    assert not np.array_equal(c_img, generate.render_index(3, 0, EMPTY_POOL)[0])


def test_generate_writes_valid_yolo_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate, "_POOL", EMPTY_POOL)
    m = generate.generate(tmp_path / "ds", n=10, seed=11, workers=1)
    imgs = sorted((tmp_path / "ds" / "images").glob("*.jpg"))
    labs = sorted((tmp_path / "ds" / "labels").glob("*.txt"))
    assert len(imgs) == len(labs) == 10
    assert {p.stem for p in imgs} == {p.stem for p in labs}
    assert not list((tmp_path / "ds").rglob("*.tmp"))
    n_boxes = 0
    for lab in labs:
        for line in lab.read_text().splitlines():
            c, cx, cy, w, h = line.split()
            assert int(c) in (0, 1, 2)
            cx, cy, w, h = map(float, (cx, cy, w, h))
            assert 0 < w <= 1 and 0 < h <= 1
            assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6
            assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6
            n_boxes += 1
    man = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert man["seed"] == 11 and man["generator_version"]
    assert sum(man["boxes_per_class"].values()) == n_boxes == sum(m["boxes_per_class"].values())


@pytest.mark.parametrize("cls", [0, 1, 2])
def test_box_encloses_rendered_object(cls: int) -> None:
    """One object on a flat magenta background, no effects: label box == bbox of changed pixels."""
    checked = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        img, boxes, _ = scene.render_sample(
            rng,
            EMPTY_POOL,
            long_side=640,
            background=_flat(),
            plan=[("pos", cls)],
            effects=False,
            context=False,
        )
        diff = np.abs(img.astype(int) - np.array(MAGENTA)).max(2) > 40
        if not boxes:
            continue  # dropped: less than 40 % visible
        assert len(boxes) == 1
        c, x1, y1, x2, y2 = boxes[0]
        assert c == cls
        ys, xs = np.where(diff)
        assert xs.size
        tol = 2.0
        assert abs(xs.min() - x1) <= tol and abs(xs.max() + 1 - x2) <= tol, (
            seed,
            boxes[0],
            xs.min(),
            xs.max(),
        )
        assert abs(ys.min() - y1) <= tol and abs(ys.max() + 1 - y2) <= tol, (
            seed,
            boxes[0],
            ys.min(),
            ys.max(),
        )
        checked += 1
    assert checked >= 6


def _plain_sprite(cls: int, w: int = 200, h: int = 100) -> Sprite:
    img = np.full((h, w, 3), 200, np.uint8)
    a = np.full((h, w), 255, np.uint8)
    return Sprite(img, a, [(cls, a.copy())], "test")


def _place(cx: float, cy: float, occluder: tuple[int, int, int, int] | None = None) -> list:
    cv = scene.Canvas(_flat())
    sp = _plain_sprite(1)
    H = np.array([[1.0, 0, cx - sp.w / 2], [0, 1.0, cy - sp.h / 2], [0, 0, 1]])
    scene.composite(np.random.default_rng(0), cv, sp, H)
    if occluder is not None:
        cover = np.zeros((cv.h, cv.w), bool)
        x0, y0, x1, y1 = occluder
        cover[y0:y1, x0:x1] = True
        cv.occlude(cover)
    out = []
    for o in cv.objs:
        frac = o.vis.sum() / o.full_area
        out.append((round(float(frac), 2), o))
    return out


def test_visible_fraction_counts_the_part_outside_the_frame() -> None:
    # 200x100 sprite centred at x=-40: 60 of 200 columns inside the frame -> 30 % visible
    ((frac, _),) = _place(-40, 240)
    assert frac == pytest.approx(0.3, abs=0.02)
    ((frac, o),) = _place(320, 240)
    assert frac == pytest.approx(1.0, abs=0.01)
    ys, xs = np.where(o.vis)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (220, 420, 190, 290)


def test_low_visibility_objects_get_no_box() -> None:
    """render_sample drops objects under MIN_VISIBLE: check on many random images."""
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        img, boxes, info = scene.render_sample(rng, EMPTY_POOL, long_side=480)
        h, w = img.shape[:2]
        for c, x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert c in (0, 1, 2)
    # a fully covered object disappears
    ((frac, _),) = _place(320, 240, occluder=(0, 0, 640, 480))
    assert frac == 0.0


def test_hard_negative_only_images_have_no_boxes() -> None:
    for seed in range(8):
        rng = np.random.default_rng(seed)
        img, boxes, info = scene.render_sample(rng, EMPTY_POOL, long_side=480, negatives_only=True)
        assert boxes == []
        assert info["n_neg"] >= 1
        assert all(k.startswith("neg_") for k in info["kinds"])


def test_renderers_produce_labelled_sprites() -> None:
    rng = np.random.default_rng(5)
    for _ in range(6):
        for sp, cls in (
            (plates.random_plate(rng), 0),
            (ids.random_id(rng), 1),
            (waybills.random_label(rng), 2),
        ):
            assert sp.bgr.shape[:2] == sp.alpha.shape
            assert len(sp.objects) == 1 and sp.objects[0][0] == cls
            assert sp.objects[0][1].any()
    p = plates.korean_long(rng, 1.0, "white8")
    assert p.w / p.h == pytest.approx(520 / 110, rel=0.02)
    p2 = plates.korean_two_line(rng, 1.0, "green")
    assert p2.w / p2.h == pytest.approx(335 / 170, rel=0.02)
    card = ids.korean_resident(rng, 6.0)
    assert card.w / card.h == pytest.approx(85.6 / 54, rel=0.02)


def test_specimens_exclude_clip_stills_and_reserved() -> None:
    used = set(ids.SPECIMEN_CROPS)
    stems = {u.rsplit(".", 1)[0] for u in used}
    assert not stems & ids.CLIP_STILLS
    assert not stems & ids.RESERVED
    for stem, _ in ids.specimen_textures():
        assert stem not in ids.CLIP_STILLS


def test_plate_swap_into_labelled_photo_covers_the_old_plate() -> None:
    img = _flat(320, 240)
    box = (0, 100.0, 150.0, 160.0, 163.0)  # a 60x13 plate box
    other = (0, 10.0, 10.0, 14.0, 12.0)  # too small to swap: kept as is
    rng = np.random.default_rng(1)
    out, boxes, info = scene.render_on_labelled(rng, img, [box, other], p_replace=1.0)
    assert out.shape == img.shape
    assert len(boxes) == 2
    swapped = [b for b in boxes if b[1] != 10.0]
    assert len(swapped) == 1
    c, x1, y1, x2, y2 = swapped[0]
    assert c == 0
    # the new plate covers the old box (grown by a few %) and stays close to it
    assert x1 <= box[1] and y1 <= box[2] and x2 >= box[3] and y2 >= box[4]
    assert x2 - x1 <= 60 * 1.25 and y2 - y1 <= 13 * 1.6
    assert other in boxes


def test_cjk_plates_only_use_glyphs_the_font_has() -> None:
    rng = np.random.default_rng(2)
    for _ in range(6):
        sp = plates.other_style(rng, 0.8)
        assert sp.objects and sp.objects[0][0] == 0
    hf = str(fonts.hangul_fonts()["bold"][0])
    assert plates.has_glyph(hf, "가")
    assert not plates.has_glyph(hf, "\uffff")


def test_missing_hangul_font_fails_loudly_with_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fonts, "_all_fonts", lambda: {})
    fonts.hangul_fonts.cache_clear()
    try:
        with pytest.raises(fonts.FontMissingError, match="fonts-nanum"):
            fonts.hangul_fonts()
    finally:
        fonts.hangul_fonts.cache_clear()  # recomputed with the real font list after monkeypatch undoes


def test_closeup_share_makes_cards_and_labels_bigger() -> None:
    """--closeup: the share of ID cards / labels rendered at 0.3-0.9 of the long side."""

    def widths(closeup: float) -> list[float]:
        out = []
        for i in range(24):
            img, boxes, _, _ = generate.render_index(
                5, i, EMPTY_POOL, class_p=(0.0, 0.5, 0.5), closeup=closeup
            )
            out += [(x2 - x1) / max(img.shape[:2]) for c, x1, _, x2, _ in boxes if c in (1, 2)]
        return out

    never, always = widths(0.0), widths(1.0)
    assert len(never) >= 10 and len(always) >= 10
    assert np.median(always) > 0.3 > np.median(never), (np.median(always), np.median(never))
    # the default keeps the sets rendered before the option existed reproducible
    assert (
        generate.render_index(3, 7, EMPTY_POOL)[1] == generate.render_index(3, 7, EMPTY_POOL, closeup=0.3)[1]
    )
