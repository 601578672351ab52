"""``python -m relay.offline`` with the shipped model on real shared photos and on short videos made here,
judged by pixels: each labelled object's mosaic cells are flat, the rest of the picture is untouched."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from relay import offline
from relay.mosaic import block_for_frame
from relay.settings import DEFAULT_WEIGHTS, Settings
from tests.helpers.media import SHARED_DATA, label_scene

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason=f"no trained weights at {DEFAULT_WEIGHTS}"),
]

# real photos the shipped model finds (measured: every labelled cell flat on each of them)
PHOTOS = [
    SHARED_DATA / "ups_labels" / "images" / "IMG_8747.jpg",
    SHARED_DATA / "openalpr_recall" / "images" / "br_AYO9034.jpg",
    SHARED_DATA / "openalpr_recall" / "images" / "br_AZJ6991.jpg",
    SHARED_DATA / "openalpr_recall" / "images" / "br_HPM9362.jpg",
]


def gt_boxes(photo: Path, w: int, h: int) -> list[tuple[float, float, float, float]]:
    label = photo.parent.parent / "labels" / f"{photo.stem}.txt"
    out = []
    for line in label.read_text().splitlines():
        if line.strip():
            _, cx, cy, bw, bh = (float(v) for v in line.split()[:5])
            out.append(((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h))
    return out


def flat_share(img: np.ndarray, box: tuple[float, float, float, float], block: int) -> float:
    """Share of the mosaic-grid cells lying inside ``box`` whose pixels are all one colour."""
    h, w = img.shape[:2]
    x1, y1, x2, y2 = max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)
    xs = range(int(np.ceil(x1 / block)) * block, int(x2) - block + 1, block)
    ys = range(int(np.ceil(y1 / block)) * block, int(y2) - block + 1, block)
    cells = [
        float(img[y : y + block, x : x + block].reshape(-1, img.shape[-1]).std(0).max())
        for y in ys
        for x in xs
    ]
    assert cells, f"box {box} holds no whole cell of {block} px"
    return sum(c <= 1.0 for c in cells) / len(cells)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, object]]]:
    code = offline.main([*args, "--json"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    return code, lines


@pytest.mark.parametrize("net", [True, False], ids=["with-text-net", "yolo-alone"])
def test_real_photos_are_hidden_and_nothing_else_changes(
    net: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, reports = run(
        [*map(str, PHOTOS), "--out", str(tmp_path), *([] if net else ["--no-text-net"])], capsys
    )
    assert code == 0 and [r["error"] for r in reports] == [None] * len(PHOTOS)
    for photo, report in zip(PHOTOS, reports, strict=True):
        src = cv2.imread(str(photo))
        out = cv2.imread(str(tmp_path / f"{photo.stem}.png"))
        assert report["output"] == str(tmp_path / f"{photo.stem}.png") and out.shape == src.shape
        assert report["frames"] == 1 and report["whole_frame_fallbacks"] == 0
        block = block_for_frame(Settings().mosaic_block, src.shape[1], src.shape[0])
        for box in gt_boxes(photo, src.shape[1], src.shape[0]):
            assert flat_share(out, box, block) >= 0.95, (photo.name, box)
        # lossless, pixelated on the original pixels: most of the picture is bit-identical (the
        # safety net also hides the cardboard and print around a label: checked without it)
        assert net or (out == src).all(axis=2).mean() > 0.4, photo.name


def make_video(path: Path, frames: int = 24, fps: int = 15) -> list[np.ndarray]:
    """The real label photo panning right by 4 px a frame, as y4m (lossless) or mp4."""
    scene, _ = label_scene(720, 480)
    pics = [np.ascontiguousarray(scene[:, 4 * i : 4 * i + 640]) for i in range(frames)]
    fmt, codec = ("yuv4mpegpipe", "rawvideo") if path.suffix == ".y4m" else ("mp4", "libx264")
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = 640, 480, "yuv420p"
        for i, pic in enumerate(pics):
            f = av.VideoFrame.from_ndarray(pic, format="bgr24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return pics


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


@pytest.mark.parametrize(("src_suffix", "fmt"), [(".y4m", "y4m"), (".mp4", "mp4")])
def test_video_every_frame_in_order_at_input_size_label_hidden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], src_suffix: str, fmt: str
) -> None:
    src = tmp_path / f"clip{src_suffix}"
    make_video(src)
    code, (report,) = run([str(src), "--out", str(tmp_path / "out"), "--video-format", fmt], capsys)
    assert code == 0 and report["error"] is None and report["frames"] == 24
    out = decode(tmp_path / "out" / f"clip.{fmt}")
    assert len(out) == 24 and all(f.shape == (480, 640, 3) for f in out)
    _, label = label_scene(720, 480)
    block = block_for_frame(Settings().mosaic_block, 640, 480)
    for i, frame in enumerate(out):
        x1, y1, x2, y2 = label[0, :4] - np.array([4 * i, 0, 4 * i, 0])
        if fmt == "y4m":  # lossless: the label's cells are exactly flat
            assert flat_share(frame, (x1, y1, x2, y2), block) >= 0.95, i
        right = frame[:, 560:].astype(np.float32)  # the checkerboard keeps its detail
        assert right.std() > 40, i
    assert report["whole_frame_fallbacks"] == 0
    assert report["frames_with_hidden"]["shipping_label"] == 24  # type: ignore[index]


def test_bad_inputs_get_clear_errors_and_the_rest_is_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "broken.mp4").write_bytes(b"not a video either")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    inputs = ["broken.jpg", "broken.mp4", "notes.txt", "empty", "missing.png"]
    code, reports = run(
        [*(str(tmp_path / n) for n in inputs), str(PHOTOS[1]), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 1
    errors = [str(r["error"]) for r in reports]
    assert "cannot read" in errors[0] and "as an image" in errors[0]
    assert "cannot open" in errors[1] and "cannot open" in errors[2]
    assert "has no images" in errors[3] and "does not exist" in errors[4]
    assert reports[5]["error"] is None and (tmp_path / "o" / f"{PHOTOS[1].stem}.png").is_file()


def test_offline_uses_the_live_defaults() -> None:
    """The model contract of the shipped model is the live server's default: same settings."""
    _, settings = offline.load(Settings())
    assert settings == Settings()
