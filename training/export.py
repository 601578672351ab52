"""Export the EMA weights of a training checkpoint to ONNX for ``relay.detector.YoloOnnxDetector``.

    .venv/bin/python -m training.export --weights runs/<name>/last.pt --out weights/detector.onnx --imgsz 416

The ONNX takes ``images: float32[1, 3, S, S]`` (RGB, 0-1) and returns ``output0: float32[1, A, 5+nc]``
(``cx, cy, w, h`` in input pixels, sigmoid objectness, sigmoid class probabilities; grid and anchors
decoded in the graph). Its metadata carries the model contract read by the relay
(relay/model.py): ``names`` (class names in output order), ``imgsz`` and ``conf_threshold`` (the serving
threshold, ``--conf-threshold``), plus ``stride``, ``model_config`` and the checkpoint's provenance. Next to it, ``detector.pt`` holds the EMA ``state_dict`` in fp16 plus the model
config (plain tensors and dicts: loads with ``torch.load(..., weights_only=True)``), for fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from relay.model import MODEL_CLASS_NAMES, ModelContract
from relay.settings import Settings
from training.model import ModelConfig, YoloV5, build_model, load_model
from training.text_backbone import TextBackboneYolo

log = logging.getLogger(__name__)

OPSET = 17


def load_any(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(EMA-or-model state_dict, model config, info) from last.pt / best.pt / detector.pt."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict):
        raise ValueError(f"{path}: not a checkpoint dict")
    sd = ck.get("ema") or ck.get("model")
    cfg = ck.get("model_config") or ck.get("config")
    if sd is None or cfg is None:
        raise ValueError(f"{path}: expected 'ema'/'model' and 'model_config'/'config' keys, got {sorted(ck)}")
    if "size" not in cfg:  # a training config: the model config is nested
        cfg = cfg.get("model", cfg)
    info = {k: ck[k] for k in ("epoch", "batch_i", "iteration", "fitness") if k in ck}
    return sd, cfg, info


def export_model(
    model: YoloV5 | TextBackboneYolo,
    out: Path,
    imgsz: int,
    metadata: dict[str, str] | None = None,
    conf_threshold: float | None = None,
) -> Path:
    """Write ``model`` (eval mode, decoded head) to ONNX at ``out``, with the model contract in its
    metadata (``conf_threshold`` defaults to the relay's ``Settings().conf_threshold``)."""
    import onnx

    model = model.float().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, imgsz, imgsz)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(out),
            input_names=["images"],
            output_names=["output0"],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    m = onnx.load(str(out))
    conf = Settings().conf_threshold if conf_threshold is None else conf_threshold
    contract = ModelContract(MODEL_CLASS_NAMES[: model.cfg.nc], imgsz, conf)
    meta = {
        **contract.metadata(),
        "stride": "32",
        "model_config": json.dumps(model.cfg.to_dict()),
    }
    meta.update(metadata or {})
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return out


def export_checkpoint(
    weights: Path, out: Path, imgsz: int, pt_out: Path | None = None, conf_threshold: float | None = None
) -> Path:
    """Export the EMA model of ``weights`` to ``out``; optionally write the fp16 ``detector.pt``."""
    sd, cfg, info = load_any(weights)
    model = load_model(sd, cfg)
    provenance = {"source": weights.name, **{k: str(v) for k, v in info.items()}}
    export_model(model, out, imgsz, provenance, conf_threshold)
    if pt_out is not None:
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
        torch.save(
            {
                "model": half,
                "config": model.cfg.to_dict(),
                "imgsz": imgsz,
                "names": list(MODEL_CLASS_NAMES),
                **info,
            },
            pt_out,
        )
    return out


def export_untrained_onnx(path: Path, imgsz: int = 320, size: str = "n", seed: int = 0) -> Path:
    """A randomly initialised model of the real architecture, exported like the shipped one.

    For tests of the inference path (shapes, decoding, scaling) without trained weights."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(size=size))
    return export_model(model, Path(path), imgsz, {"source": "untrained"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="runs/<name>/last.pt, best.pt or detector.pt")
    ap.add_argument("--out", type=Path, default=Path("weights/detector.onnx"))
    ap.add_argument("--imgsz", type=int, default=416)
    ap.add_argument(
        "--conf-threshold",
        type=float,
        default=Settings().conf_threshold,
        help="serving threshold written into the model contract (default: %(default)s)",
    )
    ap.add_argument("--no-pt", action="store_true", help="do not write detector.pt next to the ONNX")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.imgsz % 32:
        ap.error("--imgsz must be a multiple of 32")
    pt_out = None if args.no_pt else args.out.with_suffix(".pt")
    export_checkpoint(args.weights, args.out, args.imgsz, pt_out, args.conf_threshold)
    print(f"wrote {args.out}" + (f" and {pt_out}" if pt_out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
