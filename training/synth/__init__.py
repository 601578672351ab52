"""Synthetic data engine for the mosaic-relay detector.

Renders fake licence plates (class 0), ID cards (class 1) and shipping labels / waybills (class 2)
plus unlabelled hard negatives, and composites them onto real background photos with geometric and
photometric augmentation. Every rendered text, number, name and face is random and fake.

Entry point: ``python -m training.synth.generate --out DIR --n N --seed S``.
"""

from __future__ import annotations

import os
from pathlib import Path

from relay.model import MODEL_CLASS_NAMES as CLASS_NAMES  # noqa: F401  (re-exported: the one list is relay/model.py)

GENERATOR_VERSION = "0.11.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MOSAIC_SHARED", str(REPO_ROOT.parent / "shared")))
