"""TF.js graph models (``model.json`` + ``.bin`` weight shards) read without TF.js or TensorFlow.

A TF.js graph model is a GraphDef written as JSON (``modelTopology``) and a ``weightsManifest`` that
says, in order, which constant each run of bytes in the concatenated shards holds: its name, shape,
dtype and, when the converter shrank it, a ``quantization`` (float16, or uint8/uint16 with an affine
``scale``/``min``). We turn both into the same :class:`~imgsvc.vision.graphs.graph.Graph` as a frozen
protobuf graph, with every weight dequantised to float32 once at load.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from imgsvc.vision.graphs.graph import DTYPE_NAMES, Graph, Node

# Bytes per element of each stored dtype (the quantised one when a weight is quantised).
_STORED = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "uint8": np.uint8,
           "uint16": np.uint16, "int8": np.int8, "bool": np.bool_}  # fmt: skip


class TfjsFormatError(ValueError):
    """The model.json or its shards do not match what the manifest says."""


def _shape(value: dict[str, Any]) -> list[int] | None:
    if value.get("unknownRank"):
        return None
    return [int(d.get("size", 0)) for d in value.get("dim", [])]


def _attr(value: dict[str, Any]) -> Any:
    """One JSON AttrValue (``{"i": "2"}``, ``{"s": base64}``, ``{"list": {...}}``) as a Python value."""
    if "list" in value:
        items = value["list"]
        if "s" in items:
            return [base64.b64decode(s).decode("utf-8", "replace") for s in items["s"]]
        if "i" in items:
            return [int(i) for i in items["i"]]
        if "f" in items:
            return [float(f) for f in items["f"]]
        if "b" in items:
            return [bool(b) for b in items["b"]]
        if "type" in items:
            return [DTYPE_NAMES.get(t, t) for t in items["type"]]
        if "shape" in items:
            return [_shape(s) for s in items["shape"]]
        return []
    if "s" in value:
        return base64.b64decode(value["s"]).decode("utf-8", "replace")
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return DTYPE_NAMES.get(value["type"], value["type"])
    if "shape" in value:
        return _shape(value["shape"])
    return None  # "tensor" on Const nodes (values come from the manifest), "func": unused here


def _read_weights(manifest: list[dict[str, Any]], folder: Path) -> dict[str, np.ndarray]:
    """Every weight of every group, dequantised to float32 (integers stay integers)."""
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        buffer = b"".join((folder / path).read_bytes() for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            shape = [int(d) for d in spec["shape"]]
            count = int(np.prod(shape)) if shape else 1
            quant = spec.get("quantization")
            stored = np.dtype(_STORED[quant["dtype"] if quant else spec["dtype"]])
            size = count * stored.itemsize
            if offset + size > len(buffer):
                raise TfjsFormatError(f"weight {spec['name']} runs past the end of {group['paths']}")
            raw = np.frombuffer(buffer, dtype=stored, count=count, offset=offset)
            offset += size
            if quant and quant["dtype"] != "float16":
                # Affine uint8/uint16: value = q * scale + min (TF.js's dequantisation).
                array = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
            else:
                array = raw.astype(spec["dtype"] if spec["dtype"] != "float32" else np.float32)
            weights[spec["name"]] = array.reshape(shape)
        if offset != len(buffer):
            raise TfjsFormatError(f"{len(buffer) - offset} unused bytes in {group['paths']}")
    return weights


def load_tfjs(model_json: Path) -> Graph:
    """Read ``model_json`` and the shards it names (in the same folder) into a :class:`Graph`."""
    model = json.loads(model_json.read_text())
    try:
        topology, manifest = model["modelTopology"], model["weightsManifest"]
    except KeyError as exc:
        raise TfjsFormatError(f"{model_json.name} is not a TF.js graph model (no {exc})") from None
    constants = _read_weights(manifest, model_json.parent)
    nodes = []
    for spec in topology["node"]:
        attrs = {key: _attr(value) for key, value in spec.get("attr", {}).items()}
        nodes.append(Node(spec["name"], spec["op"], list(spec.get("input", [])), attrs))
        if spec["op"] == "Const" and spec["name"] not in constants:
            raise TfjsFormatError(f"constant {spec['name']} is not in the weights manifest")
    return Graph(nodes, constants)
