"""YOLOv5 (v6/v7 layout) written out in plain torch: Conv-BN-SiLU, C3, SPPF, PANet neck, Detect.

No pickled model objects: a model is rebuilt from a small config dict
(``ModelConfig.to_dict()``) and loaded from a ``state_dict``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from training.text_backbone import TextBackboneYolo

# Default YOLOv5 anchors (pixels), one row per stride 8 / 16 / 32.
DEFAULT_ANCHORS: tuple[tuple[float, ...], ...] = (
    (10, 13, 16, 30, 33, 23),
    (30, 61, 62, 45, 59, 119),
    (116, 90, 156, 198, 373, 326),
)
STRIDES: tuple[int, ...] = (8, 16, 32)
SIZES: dict[str, tuple[float, float]] = {  # depth multiple, width multiple
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
}


@dataclass
class ModelConfig:
    size: str = "n"  # width/depth of YOLOv5 (of the neck and head only with a text backbone)
    nc: int = 3
    anchors: list[list[float]] = field(default_factory=lambda: [list(a) for a in DEFAULT_ANCHORS])
    # "yolov5" (this module's backbone, trained from scratch) or a text-pretrained backbone from
    # training/text_backbone.py ARCHS, e.g. "textbb_v6tiny"
    arch: str = "yolov5"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(
            size=str(d.get("size", "n")),
            nc=int(d.get("nc", 3)),
            anchors=[list(map(float, a)) for a in d.get("anchors", DEFAULT_ANCHORS)],
            arch=str(d.get("arch", "yolov5")),
        )


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def autopad(k: int, p: int | None = None) -> int:
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d → BatchNorm2d → SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 1.0) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast (three chained 5x5 max-pools)."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Detect(nn.Module):
    """YOLOv5 head. Training: list of raw maps (bs, na, ny, nx, 5+nc).
    Eval: decoded (bs, A, 5+nc) — cx, cy, w, h in input pixels, sigmoid obj and class probs."""

    stride: torch.Tensor  # (nl,)
    anchors: torch.Tensor  # (nl, na, 2) in grid units of each level

    def __init__(
        self, nc: int, anchors: list[list[float]], ch: tuple[int, ...], strides: tuple[int, ...] = STRIDES
    ) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float32))
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        # anchors in grid units of their level (what the loss uses)
        self.register_buffer("anchors", a / self.stride.view(-1, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        out: list[torch.Tensor] = []
        z: list[torch.Tensor] = []
        for i in range(self.nl):
            x = self.m[i](xs[i])  # (bs, na*no, ny, nx)
            bs, _, ny, nx = x.shape
            # (bs, na*no, ny, nx) -> (bs, na, ny, nx, no)
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if self.training:
                out.append(x)
                continue
            grid, anchor_grid = self._make_grid(nx, ny, i, x.dtype, x.device)
            y = x.sigmoid()
            xy, wh, conf = y.split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 - 0.5 + grid) * self.stride[i]
            wh = (wh * 2) ** 2 * anchor_grid
            z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return out if self.training else torch.cat(z, 1)

    def _make_grid(
        self, nx: int, ny: int, i: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        yv, xv = torch.meshgrid(
            torch.arange(ny, device=device, dtype=dtype),
            torch.arange(nx, device=device, dtype=dtype),
            indexing="ij",
        )
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)  # (1, 1, ny, nx, 2)
        anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2)
        return grid, anchor_grid

    @torch.no_grad()
    def initialize_biases(self, nc: int) -> None:
        """YOLOv5's _initialize_biases: obj prior ~8 objects per 640 image, class prior 0.6/nc."""
        for mi, s in zip(self.m, self.stride.tolist(), strict=True):
            assert isinstance(mi, nn.Conv2d) and mi.bias is not None
            b = mi.bias.view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5 : 5 + nc] += math.log(0.6 / (nc - 0.99))


class YoloV5(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ModelConfig()
        if self.cfg.size not in SIZES:
            raise ValueError(f"unknown model size {self.cfg.size!r}, expected one of {sorted(SIZES)}")
        gd, gw = SIZES[self.cfg.size]

        def c(ch: int) -> int:
            return make_divisible(ch * gw, 8)

        def n(k: int) -> int:
            return max(round(k * gd), 1)

        # backbone
        self.b0 = Conv(3, c(64), 6, 2, 2)  # P1/2
        self.b1 = Conv(c(64), c(128), 3, 2)  # P2/4
        self.b2 = C3(c(128), c(128), n(3))
        self.b3 = Conv(c(128), c(256), 3, 2)  # P3/8
        self.b4 = C3(c(256), c(256), n(6))
        self.b5 = Conv(c(256), c(512), 3, 2)  # P4/16
        self.b6 = C3(c(512), c(512), n(9))
        self.b7 = Conv(c(512), c(1024), 3, 2)  # P5/32
        self.b8 = C3(c(1024), c(1024), n(3))
        self.b9 = SPPF(c(1024), c(1024), 5)
        # PANet neck
        self.h10 = Conv(c(1024), c(512), 1, 1)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.h13 = C3(c(512) * 2, c(512), n(3), shortcut=False)
        self.h14 = Conv(c(512), c(256), 1, 1)
        self.h17 = C3(c(256) * 2, c(256), n(3), shortcut=False)  # P3 out
        self.h18 = Conv(c(256), c(256), 3, 2)
        self.h20 = C3(c(256) * 2, c(512), n(3), shortcut=False)  # P4 out
        self.h21 = Conv(c(512), c(512), 3, 2)
        self.h23 = C3(c(512) * 2, c(1024), n(3), shortcut=False)  # P5 out
        self.detect = Detect(self.cfg.nc, self.cfg.anchors, (c(256), c(512), c(1024)))
        self._init_weights()
        self.detect.initialize_biases(self.cfg.nc)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-3
                m.momentum = 0.03
            elif isinstance(m, nn.SiLU):
                m.inplace = True

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.b2(self.b1(self.b0(x)))
        p3 = self.b4(self.b3(x))  # stride 8
        p4 = self.b6(self.b5(p3))  # stride 16
        x = self.b9(self.b8(self.b7(p4)))  # stride 32
        x10 = self.h10(x)
        x = self.h13(torch.cat((self.up(x10), p4), 1))
        x14 = self.h14(x)
        o3 = self.h17(torch.cat((self.up(x14), p3), 1))
        o4 = self.h20(torch.cat((self.h18(o3), x14), 1))
        o5 = self.h23(torch.cat((self.h21(o4), x10), 1))
        return self.detect([o3, o4, o5])


def build_model(cfg: ModelConfig | dict[str, Any] | None = None) -> YoloV5 | TextBackboneYolo:
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    if cfg is not None and cfg.arch != "yolov5":
        from training.text_backbone import TextBackboneYolo

        return TextBackboneYolo(cfg)
    return YoloV5(cfg)


def load_model(state_dict: dict[str, torch.Tensor], cfg: dict[str, Any]) -> YoloV5 | TextBackboneYolo:
    """Rebuild a model from its config dict and load (possibly fp16) weights as fp32."""
    model = build_model(cfg)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    return model
