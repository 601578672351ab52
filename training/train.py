"""Train the YOLOv5 detector on CPU.

    .venv/bin/python -m training.train --config training/configs/<recipe>.json [--resume runs/<name>/last.pt]
        [--epochs N] [--name NAME] [--threads 2] [--workers 1]

Writes ``runs/<name>/last.pt`` every epoch and every ``ckpt_minutes`` mid-epoch (model, EMA,
optimizer, epoch/batch position, RNG, config, the epoch's file listing), ``runs/<name>/best.pt``
when the quick validation improves, and appends one JSON line per epoch to ``runs/<name>/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from relay.boxes import nms
from training.augment import AugHyp
from training.dataset import (
    REPO_ROOT,
    LetterboxDataset,
    MixedDataset,
    SourceSpec,
    collate,
    list_yolo_folder,
    resolve,
)
from training.evaluate import Accumulator
from training.loss import LossHyp, YoloLoss
from training.model import build_model

log = logging.getLogger("training.train")


@dataclass
class TrainConfig:
    name: str = "exp"
    model: dict[str, Any] = field(default_factory=lambda: {"size": "n", "nc": 3})
    sources: list[dict[str, Any]] = field(default_factory=list)
    # {"paths": [folder | {"path": folder, "holdout": "eval"}, ...], "every": 1, "imgsz": 416}
    val: dict[str, Any] = field(default_factory=dict)
    img_size: int = 416  # size the dataset renders; batches are resized to a random multi-scale size
    multiscale: list[int] = field(default_factory=lambda: [320, 352, 384, 416])
    epochs: int = 30
    epoch_size: int = 4000  # images per epoch
    batch: int = 16
    nominal_batch: int = 64  # gradient accumulation up to this
    optimizer: str = "SGD"  # or "AdamW"
    lr0: float = 0.01
    lrf: float = 0.01  # final lr = lr0 * lrf
    cos_lr: bool = True
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    # learning-rate multiplier of a pretrained backbone's parameters (``model.backbone``, the text
    # backbones of training/text_backbone.py); 1.0 = one lr for the whole model (YOLOv5, from scratch).
    # Those backbones have their BatchNorm folded into the convolutions, so nothing renormalises their
    # activations: at the full lr (and the 0.1 warm-up bias lr) SGD blows them up within ~40 steps
    # (run textbb_v1: x10^3-10^6 at strides 8-32 after 4 epochs, the pretrained features lost).
    # Below 1.0 its parameters get their own groups, warmed up from 0 like the weights.
    backbone_lr: float = 1.0
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    loss: dict[str, Any] = field(default_factory=dict)
    aug: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    workers: int = 1
    threads: int = 2
    ckpt_minutes: float = 10.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"comment"}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})


class ModelEMA:
    """Exponential moving average of weights and buffers, with YOLOv5's ramped decay."""

    def __init__(self, model: nn.Module, decay: float, tau: float, updates: int = 0) -> None:
        self.ema = deepcopy(model).eval()
        self.updates = updates
        self.decay_max, self.tau = decay, tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self) -> float:
        return self.decay_max * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay()
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def _param_groups(model: nn.Module, skip: set[int]) -> tuple[list[nn.Parameter], ...]:
    """BN weights (no decay), conv weights (decay), biases (no decay) of ``model`` minus ``skip`` ids."""
    g_bn: list[nn.Parameter] = []
    g_w: list[nn.Parameter] = []
    g_b: list[nn.Parameter] = []
    for m in model.modules():
        for pname, p in m.named_parameters(recurse=False):
            if id(p) in skip:
                continue
            if pname == "bias":
                g_b.append(p)
            elif isinstance(m, nn.BatchNorm2d):
                g_bn.append(p)
            else:
                g_w.append(p)
    return g_bn, g_w, g_b


def build_optimizer(model: nn.Module, cfg: TrainConfig, weight_decay: float) -> torch.optim.Optimizer:
    """Groups 0-2: biases, weights (decayed), BN weights. With ``cfg.backbone_lr`` != 1 and a
    ``model.backbone``, groups 3-5 hold the backbone's (same order), their lr scaled by ``lr_mult``."""
    backbone = getattr(model, "backbone", None)
    split = cfg.backbone_lr != 1.0 and isinstance(backbone, nn.Module)
    skip = {id(p) for p in backbone.parameters()} if split and backbone is not None else set()
    g_bn, g_w, g_b = _param_groups(model, skip)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "SGD":
        opt = torch.optim.SGD(g_b, lr=cfg.lr0, momentum=cfg.momentum, nesterov=True)
    elif cfg.optimizer == "AdamW":
        opt = torch.optim.AdamW(g_b, lr=cfg.lr0, betas=(cfg.momentum, 0.999), weight_decay=0.0)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
    opt.add_param_group({"params": g_w, "weight_decay": weight_decay})
    opt.add_param_group({"params": g_bn, "weight_decay": 0.0})
    if split and backbone is not None:
        b_bn, b_w, b_b = _param_groups(backbone, set())
        for params, decay in ((b_b, 0.0), (b_w, weight_decay), (b_bn, 0.0)):
            opt.add_param_group({"params": params, "weight_decay": decay, "lr_mult": cfg.backbone_lr})
    return opt


def lr_factor(cfg: TrainConfig, x: float) -> float:
    """LR multiplier at fractional epoch ``x`` (cosine or linear from 1 to lrf)."""
    t = min(max(x / cfg.epochs, 0.0), 1.0)
    if cfg.cos_lr:
        return ((1 - math.cos(t * math.pi)) / 2) * (cfg.lrf - 1) + 1
    return (1 - t) * (1.0 - cfg.lrf) + cfg.lrf


def set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, it: int, nw: int, x: float) -> None:
    f = lr_factor(cfg, x)
    for j, g in enumerate(opt.param_groups):
        target = cfg.lr0 * f * float(g.get("lr_mult", 1.0))
        if it < nw:  # warmup: the new layers' bias lr falls from warmup_bias_lr, others rise from 0
            start = cfg.warmup_bias_lr if j == 0 and cfg.optimizer == "SGD" else 0.0
            g["lr"] = float(np.interp(it, [0, nw], [start, target]))
            if "momentum" in g:
                g["momentum"] = float(np.interp(it, [0, nw], [cfg.warmup_momentum, cfg.momentum]))
        else:
            g["lr"] = target
            if "momentum" in g:
                g["momentum"] = cfg.momentum


def val_pairs(cfg: TrainConfig) -> list[tuple[str, str]]:
    """First existing validation folder of ``cfg.val['paths']``."""
    for p in cfg.val.get("paths", []):
        spec_path = resolve(p["path"]) if isinstance(p, dict) else resolve(p)
        holdout = p.get("holdout") if isinstance(p, dict) else None
        pairs = list_yolo_folder(spec_path, holdout=holdout)
        if pairs:
            return pairs
    return []


@torch.inference_mode()
def quick_val(
    model: nn.Module, pairs: list[tuple[str, str]], imgsz: int, conf: float = 0.6, batch: int = 16
) -> dict[str, float]:
    """AP50 and recall/precision at ``conf`` of the plate class on letterboxed val images (torch)."""
    model.eval()
    ds = LetterboxDataset(pairs, imgsz)
    acc = Accumulator()
    for s in range(0, len(ds), batch):
        items = [ds[i] for i in range(s, min(s + batch, len(ds)))]
        x = torch.stack([it[0] for it in items]).float() / 255
        out = model(x)
        assert isinstance(out, torch.Tensor)
        for k, (_, gt) in enumerate(items):
            acc.add(postprocess(out[k].numpy(), 0.01, 0.45), gt)
    res = acc.compute(conf)
    lp = res.get("license_plate", {})
    return {
        "val_ap50": lp.get("ap50", 0.0),
        "val_ap50_95": lp.get("ap50_95", 0.0),
        "val_recall": lp.get("recall", 0.0),
        "val_precision": lp.get("precision", 0.0),
    }


@torch.inference_mode()
def backbone_scale(model: nn.Module, pairs: list[tuple[str, str]], imgsz: int, n: int = 8) -> list[float]:
    """Std of a pretrained backbone's output maps (strides 8/16/32) on the first ``n`` val images: the
    pretrained PP-OCRv6-tiny gives ~1.5 / 1.0 / 0.6 on UC3M at 320-416 px; a growing value is the
    backbone blowing up (textbb_v1). Empty for a model without ``backbone``."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module) or not pairs:
        return []
    ds = LetterboxDataset(pairs[:n], imgsz)
    x = torch.stack([ds[i][0] for i in range(len(ds))]).float() / 255
    mean, std = cast(torch.Tensor, model.mean), cast(torch.Tensor, model.std)
    return [float(t.std()) for t in backbone((x.flip(1) - mean) / std)]


def postprocess(pred: np.ndarray, conf: float, iou: float, max_det: int = 300) -> np.ndarray:
    """(A, 5+nc) decoded head output -> (N, 6) x1 y1 x2 y2 score class (input pixels)."""
    cls = pred[:, 5:].argmax(1)
    score = pred[:, 4] * pred[np.arange(len(pred)), 5 + cls]
    m = score >= conf
    p, score, cls = pred[m], score[m], cls[m]
    if len(p) > 3000:
        top = np.argsort(-score)[:3000]
        p, score, cls = p[top], score[top], cls[top]
    xyxy = np.concatenate((p[:, :2] - p[:, 2:4] / 2, p[:, :2] + p[:, 2:4] / 2), 1)
    keep = nms(xyxy, score, iou, classes=cls, max_out=max_det)
    return np.concatenate((xyxy[keep], score[keep, None], cls[keep, None].astype(np.float32)), 1)


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    ema: ModelEMA,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    epoch: int,
    batch_i: int,
    it: int,
    best: float,
    listing: Any,
) -> None:
    ckpt = {
        "model": model.state_dict(),
        "ema": ema.ema.state_dict(),
        "ema_updates": ema.updates,
        "optimizer": opt.state_dict(),
        "epoch": epoch,  # epoch in progress
        "batch_i": batch_i,  # next batch to run in that epoch
        "iteration": it,
        "best_fitness": best,
        "config": asdict(cfg),
        "model_config": cast(Any, model).cfg.to_dict(),  # YoloV5 or TextBackboneYolo
        "listing": {"names": listing.names, "weights": listing.weights, "files": listing.files},
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "time": time.time(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write never leaves a broken last.pt


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def train(
    cfg: TrainConfig,
    resume: Path | None = None,
    runs_dir: Path | None = None,
    max_iterations: int | None = None,
    stop_after_epoch: int | None = None,
) -> Path:
    """Train (or continue) a run; returns its folder. ``max_iterations`` stops early after
    checkpointing at that iteration (at an optimizer-step boundary), as an interruption would;
    ``stop_after_epoch`` stops once that epoch is checkpointed (a staged recipe resumes from there)."""
    torch.set_num_threads(cfg.threads)
    cv2.setNumThreads(1)
    run_dir = (runs_dir or REPO_ROOT / "runs") / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    model = build_model(cfg.model)
    model.train()
    accumulate = max(round(cfg.nominal_batch / cfg.batch), 1)
    weight_decay = cfg.weight_decay * cfg.batch * accumulate / cfg.nominal_batch
    opt = build_optimizer(model, cfg, weight_decay)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau)
    max_size = max(cfg.multiscale) if cfg.multiscale else cfg.img_size
    loss_fn = YoloLoss(model, LossHyp(**cfg.loss).scaled(model.detect.nc, model.detect.nl, max_size))
    dataset = MixedDataset(
        [SourceSpec.from_dict(s) for s in cfg.sources],
        cfg.img_size,
        cfg.epoch_size,
        AugHyp(**cfg.aug),
        cfg.seed,
    )
    nb = math.ceil(cfg.epoch_size / cfg.batch)
    nw = max(round(cfg.warmup_epochs * nb), 100)

    start_epoch, start_batch, it, best = 0, 0, 0, -1.0
    restored_listing = None
    if resume is not None:
        ck = load_checkpoint(resume)
        model.load_state_dict(ck["model"])
        ema.ema.load_state_dict(ck["ema"])
        ema.updates = int(ck["ema_updates"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, start_batch, it = int(ck["epoch"]), int(ck["batch_i"]), int(ck["iteration"])
        best = float(ck.get("best_fitness", -1.0))
        torch.set_rng_state(ck["rng"]["torch"])
        np.random.set_state(ck["rng"]["numpy"])
        random.setstate(ck["rng"]["python"])
        if start_batch > 0:
            restored_listing = ck["listing"]
        log.info("resumed %s at epoch %d batch %d (iteration %d)", resume, start_epoch, start_batch, it)

    vpairs = val_pairs(cfg)
    val_every = int(cfg.val.get("every", 1))
    val_imgsz = int(cfg.val.get("imgsz", 416))
    metrics_path = run_dir / "metrics.jsonl"
    last_path = run_dir / "last.pt"
    last_ckpt_time = time.time()

    for epoch in range(start_epoch, cfg.epochs):
        dataset.set_epoch(epoch)
        if restored_listing is not None and epoch == start_epoch:
            dataset.listing.names = list(restored_listing["names"])
            dataset.listing.weights = list(restored_listing["weights"])
            dataset.listing.files = [list(map(tuple, f)) for f in restored_listing["files"]]
            counts = {n: len(f) for n, f in zip(dataset.listing.names, dataset.listing.files, strict=True)}
        else:
            counts = dataset.refresh()
        b0 = start_batch if epoch == start_epoch else 0
        log.info("epoch %d/%d: sources %s", epoch + 1, cfg.epochs, counts)
        batches = [
            list(range(i * cfg.batch, min((i + 1) * cfg.batch, cfg.epoch_size))) for i in range(b0, nb)
        ]
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=collate,
            num_workers=cfg.workers,
            persistent_workers=False,
            prefetch_factor=4 if cfg.workers else None,
        )
        model.train()
        mloss = torch.zeros(3)
        n_seen = 0
        t_epoch = time.time()
        pbar = tqdm(
            enumerate(loader, start=b0),
            total=nb,
            initial=b0,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            mininterval=10.0,
            ascii=True,
        )
        opt.zero_grad(set_to_none=True)
        for bi, (imgs, targets) in pbar:
            x = epoch + bi / nb
            set_lr(opt, cfg, it, nw, x)
            imgs = imgs.float() / 255
            if cfg.multiscale:
                size = int(np.random.default_rng([cfg.seed, epoch, bi, 7]).choice(cfg.multiscale))
                if size != imgs.shape[-1]:
                    imgs = nn.functional.interpolate(
                        imgs, size=(size, size), mode="bilinear", align_corners=False
                    )
            preds = model(imgs)
            assert isinstance(preds, list)
            loss, items = loss_fn(preds, targets)
            loss.backward()
            it += 1
            if it % accumulate == 0 or bi == nb - 1:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                ema.update(model)
            mloss = (mloss * n_seen + items) / (n_seen + 1)
            n_seen += 1
            pbar.set_postfix(
                box=f"{mloss[0]:.4f}",
                obj=f"{mloss[1]:.4f}",
                cls=f"{mloss[2]:.4f}",
                lr=f"{opt.param_groups[1]['lr']:.5f}",
                sz=imgs.shape[-1],
                nt=len(targets),
                refresh=False,
            )
            stop = max_iterations is not None and it >= max_iterations and it % accumulate == 0
            if (stop or time.time() - last_ckpt_time > cfg.ckpt_minutes * 60) and bi + 1 < nb:
                # mid-epoch: only at an optimizer-step boundary so no half-accumulated gradient is lost
                if it % accumulate == 0:
                    save_checkpoint(
                        last_path,
                        model=model,
                        ema=ema,
                        opt=opt,
                        cfg=cfg,
                        epoch=epoch,
                        batch_i=bi + 1,
                        it=it,
                        best=best,
                        listing=dataset.listing,
                    )
                    last_ckpt_time = time.time()
                    log.info("mid-epoch checkpoint at epoch %d batch %d", epoch + 1, bi + 1)
                    if stop:
                        pbar.close()
                        return run_dir
        pbar.close()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "iteration": it,
            "images": (epoch + 1) * cfg.epoch_size,
            "box": round(float(mloss[0]), 5),
            "obj": round(float(mloss[1]), 5),
            "cls": round(float(mloss[2]), 5),
            "lr": opt.param_groups[1]["lr"],
            "epoch_s": round(time.time() - t_epoch, 1),
            "sources": counts,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        fitness = None
        if vpairs and ((epoch + 1) % val_every == 0 or epoch + 1 == cfg.epochs):
            tv = time.time()
            vm = quick_val(ema.ema, vpairs, val_imgsz)
            record.update({k: round(v, 4) for k, v in vm.items()})
            scale = backbone_scale(ema.ema, vpairs, val_imgsz)
            if scale:
                record["backbone_std"] = [round(v, 3) for v in scale]
            record["val_s"] = round(time.time() - tv, 1)
            fitness = vm["val_ap50"]
        save_checkpoint(
            last_path,
            model=model,
            ema=ema,
            opt=opt,
            cfg=cfg,
            epoch=epoch + 1,
            batch_i=0,
            it=it,
            best=max(best, fitness if fitness is not None else best),
            listing=dataset.listing,
        )
        last_ckpt_time = time.time()
        if fitness is not None and fitness > best:
            best = fitness
            torch.save(
                {
                    "ema": ema.ema.state_dict(),
                    "model_config": model.cfg.to_dict(),
                    "epoch": epoch + 1,
                    "fitness": fitness,
                },
                run_dir / "best.pt",
            )
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("epoch %d done: %s", epoch + 1, record)
        if max_iterations is not None and it >= max_iterations:
            break
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return run_dir


def _assignment(
    ap: argparse.ArgumentParser, flag: str, item: str, keys: list[str], key: str = "KEY", value: str = "V"
) -> tuple[str, float]:
    """``KEY=V`` of a repeatable flag, with KEY one of ``keys`` and V a number >= 0 (else the CLI's error)."""
    form = f"{key}={value} with {key} one of {keys} and {value} >= 0"
    name, _, text = item.partition("=")
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if name not in keys or not number >= 0:
        ap.error(f"{flag} {item!r}: expected {form}")
    return name, number


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="recipe JSON (not needed with --resume)")
    ap.add_argument("--resume", type=Path, default=None, help="checkpoint to continue (its config is used)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--name", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--epoch-size", type=int, default=None)
    ap.add_argument(
        "--loss-gr",
        type=float,
        default=None,
        help="objectness target (1-gr) + gr*IoU (loss.gr; 1.0 = YOLOv5)",
    )
    ap.add_argument("--stop-after-epoch", type=int, default=None, help="stop once this epoch is saved")
    ap.add_argument(
        "--source-weight",
        action="append",
        default=[],
        metavar="NAME=W",
        help="change a training source's sampling weight (repeatable; from the next epoch on a resume)",
    )
    ap.add_argument(
        "--aug",
        action="append",
        default=[],
        metavar="KEY=V",
        help="change an augmentation setting, e.g. mosaic=0.5 (repeatable; training/augment.py AugHyp)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.resume is not None:
        cfg = TrainConfig.from_dict(load_checkpoint(args.resume)["config"])
    elif args.config is not None:
        cfg = TrainConfig.from_dict(json.loads(args.config.read_text()))
    else:
        ap.error("--config or --resume is required")
    for key in ("epochs", "name", "threads", "workers", "batch", "epoch_size"):
        v = getattr(args, key)
        if v is not None:
            setattr(cfg, key, v)
    if args.loss_gr is not None:
        cfg.loss = {**cfg.loss, "gr": args.loss_gr}
    names = [str(src["name"]) for src in cfg.sources if src.get("name") is not None]
    for item in args.source_weight:
        name, weight = _assignment(ap, "--source-weight", item, names, "NAME", "W")
        cfg.sources = [{**src, "weight": weight} if src.get("name") == name else src for src in cfg.sources]
    for item in args.aug:
        key, value = _assignment(ap, "--aug", item, sorted(f.name for f in fields(AugHyp)))
        cfg.aug = {**cfg.aug, key: value}
    train(cfg, args.resume, stop_after_epoch=args.stop_after_epoch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
