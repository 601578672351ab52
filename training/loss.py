"""YOLOv5 loss: anchor-ratio target assignment with neighbouring cells, CIoU box loss,
BCE objectness against the (detached) IoU, BCE classification."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from training.model import YoloV5

if TYPE_CHECKING:
    from training.text_backbone import TextBackboneYolo


@dataclass
class LossHyp:
    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5
    anchor_t: float = 4.0
    label_smoothing: float = 0.0
    # objectness target of a matched anchor: (1 - gr) + gr * IoU (YOLOv5's ``model.gr``, 1.0 there).
    # Below 1, a found object's confidence no longer tops out at its box IoU: small plates, whose
    # IoU is inherently lower, can clear the fixed serving threshold (0.6) instead of scoring 0.3-0.5.
    gr: float = 1.0

    def scaled(self, nc: int, nl: int, imgsz: int) -> LossHyp:
        """YOLOv5's gain scaling to number of classes, detection layers and image size."""
        return LossHyp(
            box=self.box * 3 / nl,
            obj=self.obj * (imgsz / 640) ** 2 * 3 / nl,
            cls=self.cls * nc / 80 * 3 / nl,
            anchor_t=self.anchor_t,
            label_smoothing=self.label_smoothing,
            gr=self.gr,
        )


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """CIoU of paired boxes given as (cx, cy, w, h), shape (n, 4) each -> (n,)."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * (
        torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)  # enclosing box
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


class YoloLoss:
    """``loss(preds, targets) -> (total * bs, detached [box, obj, cls])``.

    ``targets``: (nt, 6) rows ``image_index, class, cx, cy, w, h`` normalised to [0, 1].
    """

    balance = (4.0, 1.0, 0.4)
    g = 0.5  # neighbouring-cell offset

    def __init__(self, model: YoloV5 | TextBackboneYolo, hyp: LossHyp) -> None:
        det = model.detect
        self.hyp = hyp
        self.na, self.nc, self.nl = det.na, det.nc, det.nl
        self.anchors = det.anchors  # (nl, na, 2) grid units
        self.bce_cls = nn.BCEWithLogitsLoss()
        self.bce_obj = nn.BCEWithLogitsLoss()
        self.cp, self.cn = 1.0 - 0.5 * hyp.label_smoothing, 0.5 * hyp.label_smoothing

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = targets.device
        lcls = torch.zeros(1, device=device)
        lbox = torch.zeros(1, device=device)
        lobj = torch.zeros(1, device=device)
        tcls, tbox, indices, anch = self.build_targets(preds, targets)

        for i, pi in enumerate(preds):  # pi: (bs, na, ny, nx, 5+nc)
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anch[i]
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox[i])  # (n,)
                lbox += (1.0 - iou).mean()
                tobj[b, a, gj, gi] = ((1.0 - self.hyp.gr) + self.hyp.gr * iou.detach().clamp(0)).type(
                    tobj.dtype
                )
                if self.nc > 1:
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=device), tcls[i]] = self.cp
                    lcls += self.bce_cls(pcls, t)
            lobj += self.bce_obj(pi[..., 4], tobj) * self.balance[i]

        lbox *= self.hyp.box
        lobj *= self.hyp.obj
        lcls *= self.hyp.cls
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(
        self, preds: list[torch.Tensor], targets: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
        na, nt = self.na, targets.shape[0]
        device = targets.device
        tcls: list[torch.Tensor] = []
        tbox: list[torch.Tensor] = []
        indices: list[tuple[torch.Tensor, ...]] = []
        anch: list[torch.Tensor] = []
        gain = torch.ones(7, device=device)
        ai = torch.arange(na, device=device).float().view(na, 1).repeat(1, nt)  # (na, nt)
        tg = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7): img, cls, xywh, anchor
        off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device).float() * self.g

        for i in range(self.nl):
            anchors = self.anchors[i]
            shape = preds[i].shape  # (bs, na, ny, nx, no)
            gain[2:6] = torch.tensor(shape, device=device)[[3, 2, 3, 2]].float()
            t = tg * gain  # to grid units
            if nt:
                r = t[..., 4:6] / anchors[:, None]  # wh ratio to each anchor
                j = torch.max(r, 1 / r).max(2)[0] < self.hyp.anchor_t
                t = t[j]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                j, k = ((gxy % 1 < self.g) & (gxy > 1)).T
                lft, m = ((gxi % 1 < self.g) & (gxi > 1)).T
                sel = torch.stack((torch.ones_like(j), j, k, lft, m))
                t = t.repeat((5, 1, 1))[sel]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[sel]
            else:
                t = tg[0]
                offsets = torch.zeros((t.shape[0], 2), device=device)
            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a = a.long().view(-1)
            b, c = bc.long().T
            gij = (gxy - offsets).long()
            gi = gij[:, 0].clamp(0, shape[3] - 1)
            gj = gij[:, 1].clamp(0, shape[2] - 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch
