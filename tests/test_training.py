"""training/: model shapes, target assignment, loss going down, exact resume, ONNX export parity."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training.augment import AugHyp
from training.dataset import MixedDataset, SourceSpec, collate, is_eval_stem, list_yolo_folder
from training.export import export_untrained_onnx, load_any
from training.loss import LossHyp, YoloLoss, bbox_ciou
from training.model import ModelConfig, build_model, load_model
from training.train import TrainConfig, load_checkpoint, train


def make_toy_set(root: Path, n: int = 6, size: int = 96) -> Path:
    """A tiny YOLO folder: light 'plates' (class 0) and 'labels' (class 2) on dark noise."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        img = rng.integers(0, 60, (size, size + 16, 3), dtype=np.uint8)
        h, w = img.shape[:2]
        lines = []
        for cls, (bw, bh) in ((0, (36, 10)), (2, (24, 30))):
            x1 = int(rng.integers(2, w - bw - 2))
            y1 = int(rng.integers(2, h - bh - 2))
            colour = (240, 240, 240) if cls == 0 else (200, 230, 250)
            cv2.rectangle(img, (x1, y1), (x1 + bw, y1 + bh), colour, -1)
            cx, cy = (x1 + bw / 2) / w, (y1 + bh / 2) / h
            lines.append(f"{cls} {cx:.6f} {cy:.6f} {bw / w:.6f} {bh / h:.6f}")
        cv2.imwrite(str(root / "images" / f"img{i:03d}.jpg"), img)
        (root / "labels" / f"img{i:03d}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The CPU is shared with a training run: one thread avoids OpenMP oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_set(tmp_path_factory.mktemp("toy") / "set")


@pytest.mark.parametrize(("size", "params"), [("n", (1.7e6, 1.9e6)), ("s", (6.9e6, 7.2e6))])
def test_model_shapes(size: str, params: tuple[float, float]) -> None:
    model = build_model({"size": size, "nc": 3})
    n = sum(p.numel() for p in model.parameters())
    assert params[0] < n < params[1]  # YOLOv5n/s with a 3-class head
    x = torch.zeros(2, 3, 128, 160)
    model.train()
    with torch.no_grad():
        outs = model(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 16, 20, 8), (2, 3, 8, 10, 8), (2, 3, 4, 5, 8)]
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (2, 3 * (16 * 20 + 8 * 10 + 4 * 5), 8)
    assert float(y[..., 4:].min()) >= 0 and float(y[..., 4:].max()) <= 1


def test_detect_bias_init_priors() -> None:
    model = build_model(ModelConfig())
    b = model.detect.m[0].bias.detach().view(3, -1)
    # obj prior: 8 objects per 640 image at stride 8 -> log(8 / 80^2)
    np.testing.assert_allclose(b[:, 4].numpy(), np.log(8 / 80**2), atol=0.2)
    assert float(b[:, 5:].mean()) == pytest.approx(np.log(0.6 / 2.01), abs=0.2)


def test_ciou_identical_and_disjoint() -> None:
    a = torch.tensor([[10.0, 10.0, 4.0, 2.0]])
    assert float(bbox_ciou(a, a)[0]) == pytest.approx(1.0, abs=1e-5)
    b = torch.tensor([[30.0, 10.0, 4.0, 2.0]])
    assert float(bbox_ciou(a, b)[0]) < 0


def test_build_targets_neighbour_cells_and_anchor_ratio() -> None:
    model = build_model(ModelConfig())
    loss = YoloLoss(model, LossHyp())
    preds = [torch.zeros(1, 3, s, s, 8) for s in (40, 20, 10)]  # 320 px input
    # a 48x8 px plate centred at (100.2, 52.3): P3 cell (12, 6), fractions 0.525/0.54 -> right+down
    t = torch.tensor([[0, 0, 100.2 / 320, 52.3 / 320, 48 / 320, 8 / 320]])
    tcls, tbox, indices, anch = loss.build_targets(preds, t)
    b, a, gj, gi = indices[0]
    cells = sorted(set(zip(gi.tolist(), gj.tolist(), strict=True)))
    assert (12, 6) in cells and (13, 6) in cells and (12, 7) in cells and (11, 6) not in cells
    # P3 anchors are 10x13, 16x30, 33x23 px: ratio test (< 4) drops 10x13 (48/10 = 4.8)
    assert sorted(set(a.tolist())) == [1, 2]
    # P5 anchors (116x90 ...) are far too big for a 48x8 box
    assert len(indices[2][0]) == 0
    assert (tbox[0][:, :2] > -0.5).all() and (tbox[0][:, :2] < 1.5).all()
    assert (tcls[0] == 0).all()


def test_objectness_target_follows_gr() -> None:
    """gr = 1: a matched anchor's objectness target is its box IoU (YOLOv5); gr = 0: it is 1."""
    model = build_model(ModelConfig())
    t = torch.tensor([[0, 0, 100.2 / 320, 52.3 / 320, 48 / 320, 8 / 320]])
    preds = [torch.zeros(1, 3, s, s, 8) for s in (40, 20, 10)]
    for p in preds:
        p[..., 4] = 4.0  # confident everywhere: the closer a target is to 1, the lower the loss
    obj = {}
    for gr in (1.0, 0.5, 0.0):
        hyp = LossHyp(gr=gr)
        assert hyp.scaled(3, 3, 320).gr == gr
        _, items = YoloLoss(model, hyp)(preds, t)
        obj[gr] = float(items[1])
    assert obj[0.0] < obj[0.5] < obj[1.0]


def test_loss_decreases_overfitting_two_images(toy_set: Path) -> None:
    torch.manual_seed(0)
    ds = MixedDataset(
        [SourceSpec("toy", str(toy_set))],
        96,
        2,
        AugHyp(
            mosaic=0,
            scale=0,
            translate=0,
            degrees=0,
            shear=0,
            perspective=0,
            hsv_h=0,
            hsv_s=0,
            hsv_v=0,
            fliplr=0,
            blur=0,
            motion_blur=0,
            jpeg=0,
            noise=0,
        ),
    )
    ds.refresh()
    imgs, targets = collate([ds[0], ds[1]])
    assert len(targets) == 4
    x = imgs.float() / 255
    model = build_model(ModelConfig())
    model.train()
    loss_fn = YoloLoss(model, LossHyp().scaled(3, 3, 96))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, items = loss_fn(model(x), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_dataset_holdout_rule_and_labels(toy_set: Path, tmp_path: Path) -> None:
    import zlib

    assert is_eval_stem("00003") == (zlib.crc32(b"00003") % 100 < 15)
    pairs = list_yolo_folder(toy_set)
    assert len(pairs) == 6
    ds = MixedDataset(
        [SourceSpec("toy", str(toy_set)), SourceSpec("missing", str(tmp_path / "nope"))], 96, 8, AugHyp()
    )
    counts = ds.refresh()
    assert counts == {"toy": 6, "missing": 0}
    for i in range(8):
        img, lab = ds[i]
        assert img.shape == (3, 96, 96) and img.dtype == torch.uint8
        assert lab.shape[1] == 6
        if len(lab):
            assert (lab[:, 2:] >= 0).all() and (lab[:, 2:] <= 1.0001).all()
            assert set(lab[:, 1].tolist()) <= {0.0, 2.0}
    img_a, lab_a = ds[3]
    img_b, lab_b = ds[3]
    assert torch.equal(img_a, img_b) and torch.equal(lab_a, lab_b)  # deterministic per (epoch, index)


def _tiny_cfg(toy: Path) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "name": "tiny",
            "sources": [{"name": "toy", "path": str(toy)}],
            "img_size": 64,
            "multiscale": [64, 96],
            "epochs": 2,
            "epoch_size": 12,
            "batch": 4,
            "nominal_batch": 4,
            "warmup_epochs": 0.5,
            "workers": 0,
            "threads": 1,
            "ckpt_minutes": 1000,
            "ema_tau": 5,
        }
    )


def test_checkpoint_resume_reproduces_uninterrupted_run(toy_set: Path, tmp_path: Path) -> None:
    straight = train(_tiny_cfg(toy_set), runs_dir=tmp_path / "a")
    interrupted = train(_tiny_cfg(toy_set), runs_dir=tmp_path / "b", max_iterations=2)  # mid-epoch 1
    ck = load_checkpoint(interrupted / "last.pt")
    assert (ck["epoch"], ck["batch_i"], ck["iteration"]) == (0, 2, 2)
    resumed = train(_tiny_cfg(toy_set), resume=interrupted / "last.pt", runs_dir=tmp_path / "b")
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["iteration"] == b["iteration"] == 6 and a["epoch"] == b["epoch"] == 2
    for key in ("model", "ema"):
        for k, v in a[key].items():
            torch.testing.assert_close(b[key][k], v, rtol=1e-5, atol=1e-6, msg=f"{key}.{k}")
    assert a["ema_updates"] == b["ema_updates"]
    lines = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    # the exported weights load back from a checkpoint (no pickled classes)
    sd, cfg, info = load_any(resumed / "last.pt")
    model = load_model(sd, cfg)
    assert model.cfg.size == "n" and info["epoch"] == 2


def test_staged_recipe_stops_after_an_epoch_and_resumes_with_new_loss_gr(
    toy_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = train(_tiny_cfg(toy_set), runs_dir=tmp_path, stop_after_epoch=1)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    # the CLI: a resumed run keeps its checkpoint's config, with --epochs / --loss-gr applied on top
    import training.train as tt

    seen: dict[str, object] = {}

    def fake_train(cfg: TrainConfig, resume: Path | None, stop_after_epoch: int | None = None) -> Path:
        seen.update(cfg=cfg, resume=resume, stop=stop_after_epoch)
        return run

    monkeypatch.setattr(tt, "train", fake_train)
    args = ["--resume", str(run / "last.pt"), "--epochs", "3", "--loss-gr", "0.5", "--stop-after-epoch", "2"]
    assert tt.main([*args, "--source-weight", "toy=0.25", "--aug", "mosaic=0.5", "--aug", "blur=0.2"]) == 0
    cfg = seen["cfg"]
    assert isinstance(cfg, TrainConfig)
    assert (cfg.epochs, cfg.loss["gr"], cfg.img_size, seen["stop"]) == (3, 0.5, 64, 2)
    assert [(src["name"], src["weight"]) for src in cfg.sources] == [("toy", 0.25)]
    assert cfg.aug == {"mosaic": 0.5, "blur": 0.2}
    for bad in ("nosuch=0.5", "toy=", "toy=heavy", "toy=-1"):
        with pytest.raises(SystemExit):
            tt.main([*args, "--source-weight", bad])
    for bad in ("mosaics=0.5", "mosaic=", "mosaic=often", "mosaic=-1"):
        with pytest.raises(SystemExit):
            tt.main([*args, "--aug", bad])
    # and for real: the second stage runs epoch 2 with the new target and records it
    monkeypatch.undo()
    cfg.epochs = 2
    train(cfg, resume=run / "last.pt", runs_dir=tmp_path)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((run / "config.json").read_text())["loss"]["gr"] == 0.5
    assert json.loads((run / "config.json").read_text())["aug"] == {"mosaic": 0.5, "blur": 0.2}
    assert load_checkpoint(run / "last.pt")["config"]["loss"]["gr"] == 0.5


def test_export_onnx_matches_torch(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = export_untrained_onnx(tmp_path / "m.onnx", 160)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "images" and sess.get_inputs()[0].shape == [1, 3, 160, 160]
    x = np.random.default_rng(1).random((1, 3, 160, 160), dtype=np.float32)
    y_onnx = sess.run(None, {"images": x})[0]
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    with torch.no_grad():
        y_torch = model(torch.from_numpy(x)).numpy()
    assert y_onnx.shape == y_torch.shape == (1, 3 * (20 * 20 + 10 * 10 + 5 * 5), 8)
    np.testing.assert_allclose(y_onnx[..., :4], y_torch[..., :4], atol=1e-2)
    np.testing.assert_allclose(y_onnx[..., 4:], y_torch[..., 4:], atol=1e-4)


def test_average_checkpoints_means_the_ema_and_exports(toy_set: Path, tmp_path: Path) -> None:
    import shutil

    from training.average import main as average_main

    run = train(_tiny_cfg(toy_set), runs_dir=tmp_path, stop_after_epoch=1)
    shutil.copy(run / "last.pt", tmp_path / "e1.pt")
    train(_tiny_cfg(toy_set), resume=run / "last.pt", runs_dir=tmp_path)
    shutil.copy(run / "last.pt", tmp_path / "e2.pt")
    out = tmp_path / "avg.pt"
    assert (
        average_main(["--weights", str(tmp_path / "e1.pt"), str(tmp_path / "e2.pt"), "--out", str(out)]) == 0
    )
    a, b, m = (load_checkpoint(tmp_path / n) for n in ("e1.pt", "e2.pt", "avg.pt"))
    changed = [k for k, v in a["ema"].items() if v.is_floating_point() and not torch.equal(v, b["ema"][k])]
    assert changed, "the two epochs' weights should differ"
    for k in changed:
        torch.testing.assert_close(m["ema"][k], (a["ema"][k] + b["ema"][k]) / 2)
    assert m["epoch"] == 2 and m["averaged"] == [str(tmp_path / "e1.pt"), str(tmp_path / "e2.pt")]
    sd, cfg, _ = load_any(out)  # what training.export reads
    torch.testing.assert_close(sd[changed[0]].float(), m["ema"][changed[0]].float())
    for bad in ([str(tmp_path / "e1.pt")], [str(tmp_path / "e1.pt"), str(tmp_path / "nope.pt")]):
        with pytest.raises(SystemExit):
            average_main(["--weights", *bad, "--out", str(tmp_path / "x.pt")])
