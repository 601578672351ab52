"""Sanitize image and video files with exactly the live server's pipeline and defaults.

    .venv/bin/python -m relay.offline INPUT... --out DIR [--json] [--video-format mp4|webm|y4m]

INPUT: image files (jpg/png), video files (anything PyAV opens, y4m included) and folders of them.
Images are written as ``DIR/<stem>.png`` (lossless), videos as ``DIR/<stem>.<format>`` with every
input frame, in order, at the input size (mp4 = H.264 by libx264, webm = VP9, y4m = raw). The
stages, detectors, thresholds (the model's, from its ONNX metadata), tracker, lookahead, margins,
mosaic and fail-closed rules are the live server's (``Settings()``, relay/pipeline.py
``run_offline``), except that no frame is dropped or pixelated for being late: every frame is
detected. A progress bar goes to stderr; ``--json`` prints one JSON line per file (frames, boxes
hidden per class, whole-frame fallbacks, ms per frame). A file that cannot be read gets a clear
error and the others are still done; the exit status is 1 if any failed.

Videos are sanitized in the yuv420p space the live relay works in (odd frame sizes lose their last
row/column, as live). Images are decided the same way and pixelated on the original pixels, so
nothing outside the hidden boxes changes. Audio is not copied.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from av import VideoFrame
from tqdm import tqdm

from relay.detection import DetectorSet
from relay.model import class_name
from relay.mosaic import block_for_frame, pixelate, pixelate_all
from relay.pipeline import Detectors, OfflineFrame, run_offline
from relay.scenecut import scene_cut_hook
from relay.settings import Settings

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".y4m", ".ogv", ".mpg", ".mpeg", ".ts")
VIDEO_FORMATS = {
    "mp4": ("mp4", "libx264"),
    "webm": ("webm", "libvpx-vp9"),
    "y4m": ("yuv4mpegpipe", "rawvideo"),
}


class InputError(Exception):
    """An input that cannot be sanitized (unreadable, unknown format, empty folder)."""


@dataclass
class FileReport:
    input: str
    output: str | None = None
    kind: str = ""
    frames: int = 0
    boxes_hidden: dict[str, int] = field(default_factory=dict)  # per class, summed over frames
    frames_with_hidden: dict[str, int] = field(default_factory=dict)  # per class
    whole_frame_fallbacks: int = 0
    ms_per_frame: float = 0.0
    error: str | None = None

    def count(self, out: OfflineFrame) -> None:
        self.frames += 1
        if out.boxes is None:
            self.whole_frame_fallbacks += 1
            return
        names = [class_name(c) for c in out.boxes[:, 5]]
        for name in names:
            self.boxes_hidden[name] = self.boxes_hidden.get(name, 0) + 1
        for name in set(names):
            self.frames_with_hidden[name] = self.frames_with_hidden.get(name, 0) + 1


def expand_inputs(inputs: Sequence[Path]) -> list[tuple[Path, str | None]]:
    """(file, error) for every input: folders give their images and videos (sorted, recursive)."""
    out: list[tuple[Path, str | None]] = []
    for p in inputs:
        if p.is_dir():
            files = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES
            )
            out.extend((f, None) for f in files)
            if not files:
                out.append((p, f"folder {p} has no images ({', '.join(IMAGE_SUFFIXES)}) or videos"))
        elif p.is_file():
            out.append((p, None))
        else:
            out.append((p, f"{p} does not exist"))
    return out


def _image_frame(img: np.ndarray) -> VideoFrame:
    frame = VideoFrame.from_ndarray(img, format="bgr24")
    frame.pts, frame.time_base = 0, Fraction(1, 30)
    return frame


def sanitize_image(
    path: Path, out_dir: Path, detector: Detectors, settings: Settings, report: FileReport
) -> None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read {path} as an image")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise InputError(f"{path} is too small ({img.shape[1]}x{img.shape[0]})")
    (out,) = list(run_offline([_image_frame(img)], detector, settings))
    report.count(out)
    block = block_for_frame(settings.mosaic_block, img.shape[1], img.shape[0])
    result = pixelate_all(img, block) if out.boxes is None else pixelate(img, out.boxes, block)
    dest = out_dir / f"{path.stem}.png"
    if not cv2.imwrite(str(dest), result):
        raise InputError(f"cannot write {dest}")
    report.output, report.kind = str(dest), "image"


def _decoded(container: Any, bar: tqdm[Any]) -> Iterator[VideoFrame]:
    for frame in container.decode(video=0):
        bar.update(1)
        yield frame


def sanitize_video(
    path: Path, out_dir: Path, fmt: str, detector: Detectors, settings: Settings, report: FileReport
) -> None:
    try:
        src = av.open(str(path))
    except Exception as exc:
        raise InputError(f"cannot open {path} as an image or a video: {exc}") from exc
    with src:
        if not src.streams.video:
            raise InputError(f"{path} has no video stream")
        stream = src.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
        container_fmt, codec = VIDEO_FORMATS[fmt]
        dest = out_dir / f"{path.stem}.{fmt}"
        with av.open(str(dest), "w", format=container_fmt) as sink:
            ostream: Any = None
            total = stream.frames or None
            with tqdm(total=total, desc=path.name, unit="frame", file=sys.stderr, leave=False) as bar:
                for i, out in enumerate(
                    run_offline(
                        _decoded(src, bar),
                        detector,
                        settings,
                        fps=float(rate),
                        scene_cut=scene_cut_hook(settings.scene_cut_threshold),
                    )
                ):
                    if ostream is None:
                        ostream = sink.add_stream(codec, rate=rate)
                        ostream.width, ostream.height, ostream.pix_fmt = (
                            out.frame.width,
                            out.frame.height,
                            "yuv420p",
                        )
                    report.count(out)
                    out.frame.pts, out.frame.time_base = i, Fraction(1) / rate
                    for packet in ostream.encode(out.frame):
                        sink.mux(packet)
            if ostream is None:
                raise InputError(f"{path} has no decodable video frame")
            for packet in ostream.encode():
                sink.mux(packet)
    report.output, report.kind = str(dest), "video"


def sanitize_file(path: Path, out_dir: Path, fmt: str, detector: Detectors, settings: Settings) -> FileReport:
    report = FileReport(str(path))
    t0 = time.perf_counter()
    try:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            sanitize_image(path, out_dir, detector, settings, report)
        else:
            sanitize_video(path, out_dir, fmt, detector, settings, report)
    except InputError as exc:
        report.error = str(exc)
    except Exception as exc:  # a broken file must not stop the others
        report.error = f"{path}: {type(exc).__name__}: {exc}"
    report.ms_per_frame = round(1000 * (time.perf_counter() - t0) / max(1, report.frames), 1)
    return report


def load(settings: Settings) -> tuple[DetectorSet, Settings]:
    """The live server's detectors and settings (the model contract from its ONNX metadata)."""
    from relay.detector import detectors_from_settings
    from relay.model import apply_contract, read_contract

    settings = apply_contract(settings, read_contract(settings.weights))
    return detectors_from_settings(settings), settings


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m relay.offline",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Same pipeline and defaults as the live server (docs/ARCHITECTURE.md).",
    )
    ap.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image/video files or folders")
    ap.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    ap.add_argument("--json", action="store_true", help="one JSON line per file on stdout")
    ap.add_argument(
        "--video-format", choices=sorted(VIDEO_FORMATS), default="mp4", help="(default: mp4, H.264)"
    )
    ap.add_argument(
        "--no-text-net",
        dest="text_net",
        action="store_false",
        help="without the text/barcode safety net (as a streamer who switched it off)",
    )
    ap.add_argument("--weights", type=Path, help="another YOLO ONNX model (default: the shipped one)")
    ap.add_argument(
        "--text-net-model", help=f"the safety net's text model (default: {Settings.text_net_model})"
    )
    ap.add_argument("--text-net-size", type=int, help=f"its input size (default: {Settings.text_net_size})")
    args = ap.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        base = dataclasses.replace(Settings(), text_net=args.text_net)
        if args.weights is not None:
            base = dataclasses.replace(base, weights=args.weights)
        if args.text_net_model is not None:
            base = dataclasses.replace(base, text_net_model=args.text_net_model)
        if args.text_net_size is not None:
            base = dataclasses.replace(base, text_net_size=args.text_net_size)
        detector, settings = load(base)
    except Exception as exc:
        print(f"relay.offline: error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    items = expand_inputs(args.inputs)
    for path, problem in tqdm(items, desc="files", unit="file", file=sys.stderr, disable=len(items) < 2):
        report = FileReport(str(path), error=problem) if problem else None
        if report is None:
            report = sanitize_file(path, args.out, args.video_format, detector, settings)
        if report.error:
            failed += 1
            tqdm.write(f"relay.offline: error: {report.error}", file=sys.stderr)
        if args.json:
            print(json.dumps(report.__dict__), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
