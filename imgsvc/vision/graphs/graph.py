"""The decoded graph both file formats read into: nodes, constants and TensorFlow's dtype numbers.

Framework-neutral (numpy only) so the readers (:mod:`~imgsvc.vision.graphs.graphdef`,
:mod:`~imgsvc.vision.graphs.tfjs`) and the compiler (:mod:`~imgsvc.vision.graphs.compiler`) share it
without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# TensorFlow's DataType enum (types.proto): number, TF name, numpy name.
_DT = [
    (1, "DT_FLOAT", "float32"),
    (2, "DT_DOUBLE", "float64"),
    (3, "DT_INT32", "int32"),
    (4, "DT_UINT8", "uint8"),
    (5, "DT_INT16", "int16"),
    (6, "DT_INT8", "int8"),
    (9, "DT_INT64", "int64"),
    (10, "DT_BOOL", "bool"),
    (19, "DT_HALF", "float16"),
]
DTYPES = {number: name for number, _, name in _DT}
DTYPE_NAMES = {tf_name: name for _, tf_name, name in _DT}


class GraphError(ValueError):
    """The graph uses an op or a form of an op this executor does not implement, or is malformed."""


@dataclass
class Node:
    """One NodeDef: ``inputs`` are ``name``, ``name:k`` (k-th output) or ``^name`` (control edge)."""

    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """A decoded graph: its nodes in file order and the values of its ``Const`` nodes."""

    nodes: list[Node]
    constants: dict[str, np.ndarray]

    def unbatch_reshapes(self) -> None:
        """Let a graph exported for batch 1 take any batch: constant Reshape targets ``[1, a, b]``
        become ``[-1, a, b]``. Only for graphs whose reshapes all keep the batch as the first axis."""
        by_name = {node.name: node for node in self.nodes}
        for node in self.nodes:
            if node.op != "Reshape":
                continue
            source = split_ref(node.inputs[1])[0]
            shape = self.constants.get(source)
            if shape is not None and shape.ndim == 1 and shape.size > 1 and shape[0] == 1 and -1 not in shape:
                self.constants[source] = np.concatenate([[-1], shape[1:]]).astype(shape.dtype)
            elif shape is None and by_name.get(source) is not None:
                raise GraphError(f"reshape {node.name} has a computed shape; cannot unbatch it")


def split_ref(ref: str) -> tuple[str, int]:
    """``"a/b:1"`` -> ``("a/b", 1)``; ``"a/b"`` -> ``("a/b", 0)``."""
    name, _, index = ref.partition(":")
    return name, int(index) if index else 0


def full_ref(name: str) -> str:
    base, index = split_ref(name)
    return f"{base}:{index}"
