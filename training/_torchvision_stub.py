"""A stand-in for ``torchvision``, enough for ``import onnx2torch`` (training only).

onnx2torch imports ``torchvision`` at module level for its NonMaxSuppression and RoiAlign converters. The
torchvision wheel pins its own torch and cannot be installed beside our CPU torch, and the PP-OCR detection
graphs we convert (training/text_backbone.py) use neither op. ``install()`` registers this stand-in in
``sys.modules`` when the real package is not importable; its ops raise if a converted graph ever calls them.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any, NoReturn


def _missing(name: str) -> Any:
    def op(*args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            f"torchvision.ops.{name} is not available (training/_torchvision_stub.py stands in for "
            "torchvision): the converted graph uses an op this project does not support"
        )

    op.__name__ = name
    return op


def install() -> None:
    """Make ``import torchvision`` / ``from torchvision.ops import roi_align`` work without torchvision."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    tv = types.ModuleType("torchvision")
    tv.__doc__ = "stand-in: training/_torchvision_stub.py"
    ops = types.ModuleType("torchvision.ops")
    for name in ("nms", "box_convert", "roi_align"):
        setattr(ops, name, _missing(name))
    tv.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.ops"] = ops
