"""The model contract in one place: class ids and names, input size, serving threshold.

``training/export.py`` writes the contract into the ONNX metadata (``names``, ``imgsz``,
``conf_threshold``); :func:`read_contract` reads it back for the server and ``relay.offline``.
A model without it is refused with a clear error (:class:`ModelContractError`): the relay does not
guess which class an output column is or at which score an object counts as found.

Class ids are :class:`ClassId` members, never bare integers. ``TEXT`` and ``BARCODE`` are the
regions of the text/barcode safety net (not outputs of the YOLO model): they share the id space so
the tracker, the policy and the per-class stats treat every hidden region alike.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from relay.settings import Settings


class ClassId(IntEnum):
    LICENSE_PLATE = 0
    ID_CARD = 1
    SHIPPING_LABEL = 2
    TEXT = 3  # safety net: printed text
    BARCODE = 4  # safety net: barcode / QR code


#: the YOLO model's classes, in output-column order
MODEL_CLASSES: tuple[ClassId, ...] = (ClassId.LICENSE_PLATE, ClassId.ID_CARD, ClassId.SHIPPING_LABEL)
#: regions found by the text/barcode safety net
REGION_CLASSES: tuple[ClassId, ...] = (ClassId.TEXT, ClassId.BARCODE)
#: every class a hidden box can have, indexed by id (per-class stats name them with this)
ALL_CLASS_NAMES: tuple[str, ...] = tuple(c.name.lower() for c in ClassId)
MODEL_CLASS_NAMES: tuple[str, ...] = tuple(ALL_CLASS_NAMES[c] for c in MODEL_CLASSES)


def class_name(class_id: float) -> str:
    """Name of a box's class column value (``"unknown"`` outside the known ids)."""
    i = int(class_id)
    return ALL_CLASS_NAMES[i] if 0 <= i < len(ALL_CLASS_NAMES) else "unknown"


class ModelContractError(ValueError):
    """The model file does not say what it detects (ONNX metadata missing or malformed)."""


@dataclass(frozen=True)
class ModelContract:
    class_names: tuple[str, ...]  # output column i is class_names[i]
    input_size: int  # square letterboxed input, px
    conf_threshold: float  # serving threshold: a detection scoring this is hidden

    def metadata(self) -> dict[str, str]:
        """ONNX ``metadata_props`` that :func:`contract_from_metadata` reads back."""
        return {
            "names": json.dumps(list(self.class_names)),
            "imgsz": str(self.input_size),
            "conf_threshold": repr(float(self.conf_threshold)),
        }


def contract_from_metadata(meta: Mapping[str, str], source: str = "model") -> ModelContract:
    missing = [k for k in ("names", "imgsz", "conf_threshold") if k not in meta]
    if missing:
        raise ModelContractError(
            f"{source} has no {', '.join(missing)} in its ONNX metadata: re-export it with "
            "`python -m training.export` (it writes names, imgsz and conf_threshold)"
        )
    try:
        names = json.loads(meta["names"])
        size = int(meta["imgsz"])
        conf = float(meta["conf_threshold"])
    except ValueError as exc:
        raise ModelContractError(f"{source}: malformed contract metadata: {exc}") from exc
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelContractError(f"{source}: metadata 'names' is not a list of class names: {names!r}")
    unknown = [n for n in names if n not in ALL_CLASS_NAMES]
    if unknown or tuple(names) != ALL_CLASS_NAMES[: len(names)]:
        raise ModelContractError(f"{source}: classes {names} do not match the relay's {ALL_CLASS_NAMES}")
    if size <= 0 or size % 32 or not 0.0 < conf < 1.0:
        raise ModelContractError(f"{source}: imgsz {size} / conf_threshold {conf} out of range")
    return ModelContract(tuple(names), size, conf)


def read_contract(weights: Path) -> ModelContract:
    """The contract written into ``weights`` (an ONNX file) by ``training/export.py``."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(weights), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelContractError(f"cannot read {weights}: {exc}") from exc
    meta = dict(session.get_modelmeta().custom_metadata_map)
    return contract_from_metadata(meta, str(weights))


def apply_contract(settings: Settings, contract: ModelContract, *, keep: Collection[str] = ()) -> Settings:
    """``settings`` with the model's serving threshold and input size, except the fields in ``keep``
    (those the user set explicitly). The tracker floor never exceeds the serving threshold."""
    values: dict[str, float | int] = {}
    if "conf_threshold" not in keep:
        values["conf_threshold"] = contract.conf_threshold
    if "input_size" not in keep:
        values["input_size"] = contract.input_size
    return dataclasses.replace(settings, **values)  # type: ignore[arg-type]
