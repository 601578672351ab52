"""Font discovery for the synthetic renderers.

Latin text uses DejaVu (Debian ``fonts-dejavu-core``) and, if present, Liberation
(``fonts-liberation``). Korean text needs a Hangul font: Debian ``fonts-nanum`` (preferred, small) or
``fonts-noto-cjk``. Without one, :func:`hangul_fonts` raises :class:`FontMissingError` with the
install line, so the engine fails loudly instead of drawing tofu boxes.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from PIL import ImageFont

FONT_DIRS = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts"]
INSTALL_HINT = "apt-get install -y --no-install-recommends fonts-nanum fonts-dejavu-core fonts-liberation"


class FontMissingError(RuntimeError):
    """A font family the engine needs is not installed."""


@functools.lru_cache(maxsize=1)
def _all_fonts() -> dict[str, Path]:
    extra = os.environ.get("MOSAIC_FONT_DIR")
    dirs = ([Path(extra)] if extra else []) + FONT_DIRS
    found: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*")):
            if p.suffix.lower() in (".ttf", ".otf", ".ttc"):
                found.setdefault(p.name, p)
    return found


def _pick(names: list[str]) -> list[Path]:
    fonts = _all_fonts()
    return [fonts[n] for n in names if n in fonts]


@functools.lru_cache(maxsize=1)
def hangul_fonts() -> dict[str, list[Path]]:
    """Hangul-capable fonts by style ("bold", "regular", "serif"). Raises if none is installed."""
    bold = _pick(
        [
            "NanumSquareB.ttf",
            "NanumGothicBold.ttf",
            "NanumBarunGothicBold.ttf",
            "NanumSquareRoundB.ttf",
            "NotoSansCJK-Bold.ttc",
            "NotoSansCJKkr-Bold.otf",
        ]
    )
    regular = _pick(
        [
            "NanumGothic.ttf",
            "NanumBarunGothic.ttf",
            "NanumSquareR.ttf",
            "NanumGothicCoding.ttf",
            "NotoSansCJK-Regular.ttc",
            "NotoSansCJKkr-Regular.otf",
        ]
    )
    serif = _pick(["NanumMyeongjo.ttf", "NanumMyeongjoBold.ttf", "NotoSerifCJK-Regular.ttc"])
    if not (bold or regular):
        raise FontMissingError(
            "No Hangul font found (looked for Nanum / Noto CJK under /usr/share/fonts). "
            f"Install one: {INSTALL_HINT}"
        )
    bold = bold or regular
    regular = regular or bold
    return {"bold": bold, "regular": regular, "serif": serif or regular}


@functools.lru_cache(maxsize=1)
def latin_fonts() -> dict[str, list[Path]]:
    """Latin fonts by style ("bold", "regular", "cond", "mono", "serif")."""
    f = {
        "bold": _pick(["DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf", "LiberationSansNarrow-Bold.ttf"]),
        "regular": _pick(["DejaVuSans.ttf", "LiberationSans-Regular.ttf"]),
        "cond": _pick(
            ["DejaVuSansCondensed-Bold.ttf", "LiberationSansNarrow-Bold.ttf", "DejaVuSansCondensed.ttf"]
        ),
        "mono": _pick(
            [
                "DejaVuSansMono-Bold.ttf",
                "LiberationMono-Bold.ttf",
                "DejaVuSansMono.ttf",
                "LiberationMono-Regular.ttf",
            ]
        ),
        "serif": _pick(
            [
                "DejaVuSerif-Bold.ttf",
                "LiberationSerif-Bold.ttf",
                "DejaVuSerif.ttf",
                "LiberationSerif-Regular.ttf",
            ]
        ),
    }
    if not f["bold"] and not f["regular"]:
        raise FontMissingError(f"No Latin TrueType font found. Install one: {INSTALL_HINT}")
    for k in f:
        if not f[k]:
            f[k] = f["bold"] or f["regular"]
    return f


@functools.lru_cache(maxsize=512)
def font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """A cached PIL font object."""
    return ImageFont.truetype(path, max(4, int(size)))


def check_fonts() -> None:
    """Raise FontMissingError early if a needed font is missing."""
    hangul_fonts()
    latin_fonts()
