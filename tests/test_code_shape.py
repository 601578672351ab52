"""The shape targets of the media path and the APIs (issue #10): in relay/ and signaling/, no class
over 200 lines, no function over 80, no module over 450. One owner per step stays readable only if
no step grows back into a god object."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("relay", "signaling")
MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 450, 200, 80


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).glob("*.py"))


def oversized(path: Path) -> list[str]:
    text = path.read_text()
    rel = path.relative_to(REPO)
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE:
        found.append(f"{rel}: module of {lines} lines (> {MAX_MODULE})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
            if size > limit:
                found.append(f"{rel}:{node.lineno} {node.name}: {size} lines (> {limit})")
    return found


def test_the_shape_check_sees_an_oversized_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION + 1))
    bad = REPO / "relay" / "_shape_probe.py"
    try:
        bad.write_text(f"def f() -> None:\n{body}\n")
        assert any("f:" in s and "> 80" in s for s in oversized(bad))
    finally:
        bad.unlink(missing_ok=True)


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_class_or_function_over_the_limits(path: Path) -> None:
    assert oversized(path) == []
