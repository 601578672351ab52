"""Privacy by pixels: ``relay.offline`` output judged by the shared judges (../shared/tools).

    .venv/bin/python bench/privacy.py [--out /tmp/privacy] [--sets uc3m_eval openalpr_eval ...]
        [--offline-arg=--no-text-net ...]

For every still set (YOLO layout, materialised by ``python -m training.prepare_data`` under
data_cache/real/; ``backgrounds`` is the real background pool minus CONTAINS_TARGETS.txt) it runs
``python -m relay.offline SET/images --out OUT/SET`` and then ``coverage_judge.py SET OUT/SET``:
coverage per class (share of objects whose interior keeps no readable detail) and collateral (share
of textured blocks outside every object that lost their detail). For every shared clip it renders
the clip (its own ``render.py``), sanitizes the y4m with ``relay.offline --video-format y4m`` and
runs ``clip_judge.py``: the leak rate (leaked boxes / boxes). The same judges run on data held
back from the team; tune for generalization, not for these sets.

Prints one line per set and, last, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TOOLS = SHARED / "tools"
CLIPS = SHARED / "media" / "clips"
STILL_SETS = ("uc3m_eval", "openalpr_eval", "ups_eval", "backgrounds")
CLIP_SETS = ("parcel_labels", "id_cards")


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    raise ValueError(f"no JSON line in:\n{text[-2000:]}")


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def set_dir(name: str) -> Path:
    root = REPO / "data_cache"
    return root / "backgrounds" if name == "backgrounds" else root / "real" / name


def offline(inputs: list[Path], out: Path, extra: list[str]) -> float:
    """Sanitize ``inputs`` into ``out``; the mean ms per frame ``relay.offline`` reported."""
    stdout = run(
        [sys.executable, "-m", "relay.offline", *map(str, inputs), "--out", str(out), "--json", *extra]
    )
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    frames = sum(int(r.get("frames", 0)) for r in rows)
    ms = sum(float(r.get("ms_per_frame", 0.0)) * int(r.get("frames", 0)) for r in rows)
    return ms / max(frames, 1)


def judge_stills(name: str, out_root: Path, extra: list[str]) -> dict[str, Any]:
    src = set_dir(name)
    images = src / "images" if (src / "images").is_dir() else src
    out = out_root / name
    ms = offline([images], out, extra)
    verdict = last_json(run([sys.executable, str(TOOLS / "coverage_judge.py"), str(src), str(out)]))
    verdict["ms_per_frame"] = round(ms, 1)
    return verdict


def judge_clip(name: str, out_root: Path, extra: list[str]) -> dict[str, Any]:
    clip = CLIPS / name
    rendered = out_root / "clips_src"
    rendered.mkdir(parents=True, exist_ok=True)
    found = sorted(rendered.glob(f"{name}*.y4m"))
    if not found:
        run([sys.executable, str(clip / "render.py"), str(rendered)])
        found = sorted(rendered.glob(f"{name}*.y4m"))
    y4m = found[0]  # render.py names it <name>_<W>x<H>.y4m
    out = out_root / "clips"
    ms = offline([y4m], out, [*extra, "--video-format", "y4m"])
    verdict = last_json(run([sys.executable, str(TOOLS / "clip_judge.py"), str(clip), str(out / y4m.name)]))
    verdict["ms_per_frame"] = round(ms, 1)
    return verdict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/privacy"))
    ap.add_argument("--sets", nargs="+", default=[*STILL_SETS, *CLIP_SETS], choices=[*STILL_SETS, *CLIP_SETS])
    ap.add_argument(
        "--offline-arg",
        action="append",
        default=[],
        help="passed to relay.offline (repeatable; use --offline-arg=--x)",
    )
    args = ap.parse_args(argv)
    stills = [s for s in args.sets if s in STILL_SETS]
    if stills:
        run([sys.executable, "-m", "training.prepare_data", "--sets", *stills])
    results: dict[str, Any] = {}
    for name in args.sets:
        t0 = time.monotonic()
        judge = judge_stills if name in STILL_SETS else judge_clip
        results[name] = judge(name, args.out, args.offline_arg)
        print(
            f"{name}: {json.dumps(results[name])} ({time.monotonic() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    print(json.dumps({"offline_args": args.offline_arg, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
