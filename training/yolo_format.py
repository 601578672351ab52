"""YOLO label lines: ``class cx cy w h``, normalised to the image, one object per line."""

from __future__ import annotations

from collections.abc import Iterable


def yolo_lines(boxes: Iterable[tuple[float, float, float, float, float]], w: int, h: int) -> list[str]:
    """``(class, x1, y1, x2, y2)`` pixel boxes → label lines, each box clipped to the ``w`` x ``h`` image."""
    out = []
    for c, x1, y1, x2, y2 in boxes:
        x1, x2 = max(0.0, x1), min(float(w), x2)
        y1, y2 = max(0.0, y1), min(float(h), y2)
        out.append(
            f"{int(c)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
        )
    return out
