"""relay.detector.YoloOnnxDetector on a small untrained model of the real architecture."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from relay.detector import (
    Detector,
    InvalidWeightsError,
    WeightsNotFoundError,
    YoloOnnxDetector,
)
from relay.model import (
    ALL_CLASS_NAMES,
    MODEL_CLASS_NAMES,
    MODEL_CLASSES,
    ClassId,
    ModelContract,
    ModelContractError,
    read_contract,
)
from relay.settings import DEFAULT_WEIGHTS, Settings
from training.export import export_untrained_onnx

IMGSZ = 160


@pytest.fixture(scope="module")
def untrained_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_untrained_onnx(tmp_path_factory.mktemp("onnx") / "untrained.onnx", IMGSZ)


@pytest.fixture(scope="module")
def detector(untrained_onnx: Path) -> YoloOnnxDetector:
    # a threshold this low keeps plenty of (random) boxes from the untrained head
    return YoloOnnxDetector(untrained_onnx, IMGSZ, score_floor=0.001, iou_threshold=0.45, threads=1)


def test_is_a_detector(detector: YoloOnnxDetector) -> None:
    d: Detector = detector
    assert d is detector
    assert detector.num_classes == 3


@pytest.mark.parametrize(("h", "w"), [(720, 1280), (479, 641), (240, 320), (1080, 607), (37, 53)])
def test_boxes_inside_image_for_odd_sizes(detector: YoloOnnxDetector, h: int, w: int) -> None:
    img = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    dets = detector.detect(img)
    assert dets.dtype == np.float32 and dets.ndim == 2 and dets.shape[1] == 6
    assert len(dets) > 0  # at conf 0.001 an untrained head yields boxes
    assert (dets[:, 0] >= 0).all() and (dets[:, 1] >= 0).all()
    assert (dets[:, 2] <= w).all() and (dets[:, 3] <= h).all()
    assert (dets[:, 2] > dets[:, 0]).all() and (dets[:, 3] > dets[:, 1]).all()
    assert ((dets[:, 4] >= 0.001) & (dets[:, 4] <= 1)).all()
    assert set(np.unique(dets[:, 5]).tolist()) <= {0.0, 1.0, 2.0}
    assert (np.diff(dets[:, 4]) <= 0).all()  # sorted by score
    assert len(dets) <= detector.max_det


def test_high_threshold_gives_empty_float32(untrained_onnx: Path) -> None:
    det = YoloOnnxDetector(untrained_onnx, IMGSZ, score_floor=0.99, iou_threshold=0.45, threads=1)
    out = det.detect(np.zeros((480, 640, 3), np.uint8))
    assert out.shape == (0, 6) and out.dtype == np.float32


def test_bad_input_images(detector: YoloOnnxDetector) -> None:
    with pytest.raises(ValueError):
        detector.detect(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError):
        detector.detect(np.zeros((100, 100, 3), np.float32))


def test_missing_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="not found") as ei:
        YoloOnnxDetector(tmp_path / "nope.onnx", 416, 0.6, 0.45, 1)
    assert isinstance(ei.value, FileNotFoundError)  # callers may catch the built-in


def test_malformed_weights_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    with pytest.raises(InvalidWeightsError, match="cannot load"):
        YoloOnnxDetector(bad, 416, 0.6, 0.45, 1)


def test_input_size_mismatch_error(untrained_onnx: Path) -> None:
    with pytest.raises(InvalidWeightsError, match="exported for 160x160"):
        YoloOnnxDetector(untrained_onnx, 416, 0.6, 0.45, 1)


def test_the_model_contract_is_read_from_the_onnx_metadata(
    untrained_onnx: Path, detector: YoloOnnxDetector
) -> None:
    """training/export.py writes names, imgsz and the serving threshold; the detector reads them."""
    assert detector.contract == ModelContract(MODEL_CLASS_NAMES, IMGSZ, Settings().conf_threshold)
    assert read_contract(untrained_onnx) == detector.contract
    assert tuple(ClassId)[:3] == MODEL_CLASSES and ALL_CLASS_NAMES[ClassId.TEXT] == "text"


def test_a_model_without_the_contract_is_refused_clearly(untrained_onnx: Path, tmp_path: Path) -> None:
    import onnx

    m = onnx.load(str(untrained_onnx))
    kept = [p for p in m.metadata_props if p.key != "conf_threshold"]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(m, str(old))
    with pytest.raises(InvalidWeightsError, match="no conf_threshold in its ONNX metadata"):
        YoloOnnxDetector(old, IMGSZ, 0.3, 0.45, 1)
    with pytest.raises(ModelContractError, match="re-export"):
        read_contract(old)


def test_shipped_model_carries_its_contract() -> None:
    c = read_contract(DEFAULT_WEIGHTS)
    s = Settings()
    assert (c.class_names, c.input_size, c.conf_threshold) == (
        MODEL_CLASS_NAMES,
        s.input_size,
        s.conf_threshold,
    )


def test_concurrent_callers_are_serialised(detector: YoloOnnxDetector) -> None:
    img = np.random.default_rng(5).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    expected = detector.detect(img)
    results: list[np.ndarray] = []

    def worker() -> None:
        results.append(detector.detect(img))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3
    for r in results:
        np.testing.assert_array_equal(r, expected)
