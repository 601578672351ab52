"""YOLO-layout datasets.

``MixedDataset`` samples from several sources (folders or globs of folders with ``images/`` and
``labels/``) with per-source weights. An epoch is a fixed number of samples, not the length of any
folder; ``refresh()`` re-lists every source (call it at each epoch start) so synthetic images rendered
while training runs join in, and missing sources are skipped with a warning until they appear.
Sample ``i`` of epoch ``e`` is drawn from ``np.random.default_rng([seed, e, i])``, so an epoch is
reproducible (resume, worker processes) given the same listing.
"""

from __future__ import annotations

import glob
import logging
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from relay.boxes import letterbox
from training.augment import (
    AugHyp,
    fliplr,
    load_resized,
    mosaic4,
    photometric,
    random_perspective,
    xyxy_to_yolo,
    yolo_to_xyxy,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
EVAL_HOLDOUT_PERCENT = 15  # uc3m: zlib.crc32(stem) % 100 < 15 -> eval (same rule as prepare_data.py)


def is_eval_stem(stem: str) -> bool:
    return zlib.crc32(stem.encode()) % 100 < EVAL_HOLDOUT_PERCENT


def resolve(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


@dataclass
class SourceSpec:
    """One entry of a training config's ``sources`` list."""

    name: str
    path: str  # folder with images/ and labels/, or a glob of such folders (relative to the repo root)
    weight: float = 1.0
    holdout: str | None = None  # "train": drop crc-eval stems; "eval": keep only them; None: all
    min_age_s: float = 0.0  # ignore files younger than this (still being written)
    exclude: tuple[str, ...] = ()  # folders (matched by a glob) whose name contains any of these are skipped

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceSpec:
        return cls(
            name=str(d["name"]),
            path=str(d["path"]),
            weight=float(d.get("weight", 1.0)),
            holdout=d.get("holdout"),
            min_age_s=float(d.get("min_age_s", 0.0)),
            exclude=tuple(d.get("exclude", ())),
        )


def list_yolo_folder(
    folder: Path, holdout: str | None = None, min_age_s: float = 0.0, require_labels: bool = True
) -> list[tuple[str, str]]:
    """``(image, label)`` path pairs of one YOLO folder, sorted by name.

    With ``require_labels`` an image without a label file is skipped (a label not yet written is
    not a negative); an empty label file is a negative."""
    img_dir, lab_dir = folder / "images", folder / "labels"
    if not img_dir.is_dir():
        return []
    now = time.time()
    pairs: list[tuple[str, str]] = []
    with os.scandir(img_dir) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        stem, ext = os.path.splitext(e.name)
        if ext.lower() not in IMG_EXTS:
            continue
        if holdout == "train" and is_eval_stem(stem):
            continue
        if holdout == "eval" and not is_eval_stem(stem):
            continue
        lab = lab_dir / f"{stem}.txt"
        if require_labels and not lab.exists():
            continue
        if min_age_s > 0:
            try:
                if now - max(e.stat().st_mtime, lab.stat().st_mtime) < min_age_s:
                    continue
            except OSError:
                continue
        pairs.append((str(img_dir / e.name), str(lab)))
    return pairs


def list_source(spec: SourceSpec) -> list[tuple[str, str]]:
    p = resolve(spec.path)
    folders = sorted(Path(f) for f in glob.glob(str(p))) if any(c in spec.path for c in "*?[") else [p]
    pairs: list[tuple[str, str]] = []
    for f in folders:
        if any(x in f.name for x in spec.exclude):
            continue
        pairs.extend(list_yolo_folder(f, spec.holdout, spec.min_age_s))
    return pairs


def read_labels(path: str) -> np.ndarray:
    """YOLO label file -> (n, 5) float32 ``class cx cy w h``; missing or empty -> (0, 5)."""
    try:
        with open(path) as f:
            rows = [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        return np.zeros((0, 5), np.float32)
    rows = [r[:5] for r in rows if len(r) >= 5]
    if not rows:
        return np.zeros((0, 5), np.float32)
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


@dataclass
class Listing:
    names: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    files: list[list[tuple[str, str]]] = field(default_factory=list)


class MixedDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Augmented training samples: ``(uint8 RGB CHW image img_size², (n, 6) [0, cls, cx, cy, w, h])``."""

    def __init__(
        self, sources: Sequence[SourceSpec], img_size: int, epoch_size: int, hyp: AugHyp, seed: int = 0
    ) -> None:
        self.sources = list(sources)
        self.img_size = img_size
        self.epoch_size = epoch_size
        self.hyp = hyp
        self.seed = seed
        self.epoch = 0
        self.listing = Listing()

    def refresh(self) -> dict[str, int]:
        """Re-list every source; returns image counts per source name."""
        listing = Listing()
        counts: dict[str, int] = {}
        for s in self.sources:
            files = list_source(s)
            counts[s.name] = len(files)
            if not files:
                log.warning("training source %r (%s) has no images yet: skipped", s.name, s.path)
                continue
            listing.names.append(s.name)
            listing.weights.append(s.weight)
            listing.files.append(files)
        if not listing.files:
            raise RuntimeError("no training images in any source")
        self.listing = listing
        return counts

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.epoch_size

    def _pick(self, rng: np.random.Generator) -> tuple[str, str]:
        w = np.asarray(self.listing.weights, dtype=np.float64)
        k = int(rng.choice(len(w), p=w / w.sum()))
        files = self.listing.files[k]
        return files[int(rng.integers(len(files)))]

    def _load(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random image (long side = img_size) and its pixel xyxy labels; retries unreadable files."""
        for _ in range(10):
            img_path, lab_path = self._pick(rng)
            try:
                img = load_resized(img_path, self.img_size)
            except FileNotFoundError:
                log.debug("unreadable image %s, drawing another", img_path)
                continue
            h, w = img.shape[:2]
            return img, yolo_to_xyxy(read_labels(lab_path), w, h)
        raise RuntimeError("10 unreadable images in a row")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        s = self.img_size
        hyp = self.hyp
        if rng.random() < hyp.mosaic:
            parts = [self._load(rng) for _ in range(4)]
            img, labels = mosaic4([p[0] for p in parts], [p[1] for p in parts], s, rng)
        else:
            img, labels = self._load(rng)
        img, labels = random_perspective(img, labels, (s, s), hyp, rng)
        img = photometric(img, hyp, rng)
        if rng.random() < hyp.fliplr:
            img, labels = fliplr(img, labels)
        y = np.zeros((len(labels), 6), np.float32)
        if len(labels):
            y[:, 1:] = xyxy_to_yolo(labels, s, s)
        chw = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(chw), torch.from_numpy(y)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, labels = zip(*batch, strict=True)
    for i, lab in enumerate(labels):
        lab[:, 0] = i
    return torch.stack(imgs, 0), torch.cat(labels, 0)


class LetterboxDataset(Dataset[tuple[torch.Tensor, np.ndarray]]):
    """Evaluation samples: letterboxed RGB CHW uint8 image + (n, 5) ``class x1 y1 x2 y2`` labels
    in letterboxed pixels."""

    def __init__(self, pairs: list[tuple[str, str]], img_size: int) -> None:
        self.pairs = pairs
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, np.ndarray]:
        img_path, lab_path = self.pairs[i]
        img = cv2.imread(img_path, cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(img_path)
        h, w = img.shape[:2]
        lb, ratio, (px, py) = letterbox(img, self.img_size)
        lab = yolo_to_xyxy(read_labels(lab_path), w, h)
        lab[:, [1, 3]] = lab[:, [1, 3]] * ratio + px
        lab[:, [2, 4]] = lab[:, [2, 4]] * ratio + py
        chw = np.ascontiguousarray(lb[:, :, ::-1].transpose(2, 0, 1))
        return torch.from_numpy(chw), lab
