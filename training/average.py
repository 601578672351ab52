"""Average the EMA weights of several checkpoints of one run (checkpoint averaging).

    .venv/bin/python -m training.average --weights runs/plates_v1/epoch46.pt ... epoch52.pt --out runs/plates_v1/avg.pt

The late epochs of a run wobble: with little real data for ID cards and labels, the score those classes
get moves from one epoch to the next far more than the plates' (weights/MODEL_CARD.md, stage 7). The
mean of the last epochs' EMA weights (BatchNorm statistics included) smooths that out. The output is
the last input checkpoint with its ``ema`` replaced by the mean: ``training.export`` takes it as any
checkpoint; resuming from it continues the last input's optimizer state with the averaged EMA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from training.train import load_checkpoint


def average(paths: list[Path]) -> dict:
    """The last checkpoint of ``paths`` with ``ema`` = the element-wise mean of every ``ema``."""
    if len(paths) < 2:
        raise ValueError("averaging needs at least two checkpoints")
    cks = [load_checkpoint(p) for p in paths]
    out = cks[-1]
    keys = list(out["ema"])
    for p, ck in zip(paths, cks, strict=True):
        if list(ck["ema"]) != keys or ck["model_config"] != out["model_config"]:
            raise ValueError(f"{p}: not the same model as {paths[-1]}")
    mean = {}
    for k in keys:
        ref = out["ema"][k]
        if ref.is_floating_point():
            mean[k] = (sum(ck["ema"][k].double() for ck in cks) / len(cks)).to(ref.dtype)
        else:  # counters (BatchNorm's num_batches_tracked): the last one's
            mean[k] = ref
    out["ema"] = mean
    out["averaged"] = [str(p) for p in paths]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--weights", type=Path, nargs="+", required=True, help="checkpoints of one run, oldest first"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    missing = [p for p in args.weights if not p.is_file()]
    if missing:
        ap.error(f"not found: {', '.join(map(str, missing))}")
    try:
        ck = average(args.weights)
    except ValueError as exc:
        ap.error(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, args.out)
    print(f"{args.out}: mean of {len(args.weights)} checkpoints' EMA weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
