"""relay/scenecut.py on real footage: the shared clips (their still changes are hard cuts), cuts made by
joining real photos (also of similar brightness), and continuous camera-like footage of real photos
with motion, flicker, noise and an occluding hand, in which no cut may be reported.

The figures behind the thresholds: ``nice -n 5 .venv/bin/python bench/scenecut.py``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from relay.scenecut import THUMB_SIZE, SceneCutDetector, thumbnail
from tests.helpers.footage import (
    BACKGROUNDS_DIR,
    CLIP_NAMES,
    CLIPS_DIR,
    Camera,
    camera_clip,
    clip_segments,
    read_y4m,
    render_clip,
    still_frame,
    to_i420,
)

needs_shared = pytest.mark.skipif(
    not (CLIPS_DIR.is_dir() and BACKGROUNDS_DIR.is_dir()),
    reason=f"shared media not found at {CLIPS_DIR.parent} (../shared next to the repository)",
)

# real photos of different places (street, highway, lobby, parking lot, people, objects, textures)
PHOTOS = (
    "udacity_carnd/0001.jpg",
    "udacity_carnd/0007.jpg",
    "intel_sample_videos/0009.jpg",
    "intel_sample_videos/0016.jpg",
    "intel_sample_videos/0024.jpg",
    "intel_sample_videos/0033.jpg",
    "intel_sample_videos/0043.jpg",
    "skimage_data/0004.jpg",
    "skimage_data/0005.jpg",
    "sklearn_data/0001.jpg",
    "coco128/0003.jpg",
    "coco128/0050.jpg",
)


def photo(name: str) -> np.ndarray:
    img = cv2.imread(str(BACKGROUNDS_DIR / name), cv2.IMREAD_COLOR)
    assert img is not None, name
    return img


def cuts_in(thumbs: list[np.ndarray]) -> list[int]:
    det = SceneCutDetector()
    return [i for i, t in enumerate(thumbs) if det.update(t)]


@pytest.fixture(scope="module")
def clip_thumbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[np.ndarray]]:
    if not CLIPS_DIR.is_dir():
        pytest.skip(f"shared clips not found at {CLIPS_DIR}")
    out = tmp_path_factory.mktemp("clips")
    return {name: [thumbnail(f) for f in read_y4m(render_clip(name, Path(out)))] for name in CLIP_NAMES}


@needs_shared
@pytest.mark.parametrize("name", CLIP_NAMES)
def test_shared_clip_cuts_exactly_where_the_still_changes(
    clip_thumbs: dict[str, list[np.ndarray]], name: str
) -> None:
    thumbs = clip_thumbs[name]
    starts = [seg.start for seg in clip_segments(name)]
    assert len(starts) >= 3 and len(thumbs) == 150
    assert cuts_in(thumbs) == starts[1:], "a cut within one still's motion, or a still change missed"
    assert cuts_in([*thumbs, thumbs[0]]) == [*starts[1:], len(thumbs)], "the clip looping is a cut"


@needs_shared
def test_cuts_between_real_photos_are_detected_also_at_similar_brightness() -> None:
    frames = {p: list(camera_clip(photo(p), Camera(pan=(8.0, 2.0)), 4)) for p in PHOTOS}
    similar = 0
    for a, b in itertools.permutations(PHOTOS, 2):
        clip_a, clip_b = frames[a], frames[b]
        thumbs = [thumbnail(f) for f in (*clip_a, *clip_b)]
        assert cuts_in(thumbs) == [len(clip_a)], f"{a} -> {b}"
        similar += abs(float(thumbs[len(clip_a) - 1].mean()) - float(thumbs[len(clip_a)].mean())) < 6.0
    assert similar >= 8  # the pairs include cuts between scenes of nearly the same mean brightness


@needs_shared
@pytest.mark.parametrize(
    "camera",
    [
        Camera(pan=(12.0, 3.0), shake=1.5),
        Camera(pan=(32.0, 6.0), blur=True, shake=2.0),
        Camera(zoom=0.025, pan=(2.0, 1.0)),
        Camera(shake=6.0, rotate=5.0, pan=(4.0, 0.0)),
        Camera(flicker=0.2, pan=(4.0, 0.0), shake=1.0),
        Camera(noise=8.0, pan=(6.0, 2.0), shake=1.5),
        Camera(hand=30, pan=(3.0, 0.0), shake=2.0),
    ],
    ids=["pan", "fast-pan-blur", "zoom", "shake-rotate", "flicker", "noise-jpeg", "hand-2s"],
)
def test_continuous_camera_footage_has_no_cut(camera: Camera) -> None:
    for k, name in enumerate(PHOTOS[::2]):
        thumbs = [thumbnail(f) for f in camera_clip(photo(name), camera, 20 if camera.hand else 14, seed=k)]
        assert cuts_in(thumbs) == [], name


@needs_shared
def test_flicker_noise_and_exposure_on_a_still_scene_are_no_cut() -> None:
    base = still_frame(photo("intel_sample_videos/0016.jpg"))
    rng = np.random.default_rng(1)
    luma = base[: base.shape[0] * 2 // 3].astype(np.float32)
    frames = []
    for gain in (1.0, 0.6, 1.3, 0.8, 1.0, 1.5, 0.5):  # lights flicker, auto exposure jumps
        noisy = luma * gain + 10 * (1 - gain) + rng.normal(0.0, 6.0, luma.shape)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    assert cuts_in([thumbnail(f, yuv420=False) for f in frames]) == []


def test_black_frames_and_start_up() -> None:
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(0, 255, (360, 640), dtype=np.uint8), (0, 0), 4)
    black = np.full((360, 640), 16, np.uint8)
    det = SceneCutDetector()
    assert not det.update(thumbnail(scene, yuv420=False)), "the first frame is start-up, not a cut"
    assert not det.update(thumbnail(black, yuv420=False)), "nothing on a black frame to hide"
    assert not det.update(thumbnail(black, yuv420=False))
    assert det.update(thumbnail(scene, yuv420=False)), "a scene appearing out of black is a cut"
    det.reset()
    assert not det.update(thumbnail(black, yuv420=False))


def test_thumbnail_reads_the_luma_plane_of_any_size() -> None:
    rng = np.random.default_rng(0)
    for w, h in ((320, 240), (640, 480), (1280, 720), (1920, 1080)):
        bgr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        i420 = to_i420(bgr)
        t = thumbnail(i420)
        assert t.shape == (THUMB_SIZE[1], THUMB_SIZE[0]) and t.dtype == np.float32
        np.testing.assert_allclose(t, thumbnail(np.ascontiguousarray(i420[:h]), yuv420=False))
    with pytest.raises(ValueError):
        thumbnail(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError):
        SceneCutDetector(threshold=0.0)
