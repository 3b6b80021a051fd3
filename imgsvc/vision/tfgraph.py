"""A small TensorFlow graph executor in torch: the ops our detector graphs use, compiled once.

Why an interpreter rather than the architectures written out in code: the four models we run
(SSDLite-MobileNetV2, CenterNet-MobileNetV3, BlazeFace, the mini-Xception emotion net) are four
different networks, each already fully described by its graph; re-typing them would be four chances
to get a stride or a padding wrong, while some twenty-five ops cover all of them. Both file formats
(protobuf ``GraphDef``, TF.js JSON) decode to the same :class:`Graph`, and :func:`compile_graph`
turns the part between the chosen inputs and outputs into a flat list of steps:

* constants become torch tensors once; convolution weights are transposed to torch's layout and
  BiasAdd / FusedBatchNorm / Relu / Relu6 that directly follow a convolution are folded into it,
  so per image there is one torch call per convolution;
* activations stay in TensorFlow's NHWC order, so every axis, reshape and concat attribute means
  what the graph says. Convolutions see ``x.permute(0, 3, 1, 2)``, which for an NHWC-contiguous
  tensor is torch's channels-last memory format: no copy either way;
* "SAME" padding is TensorFlow's (the extra pixel goes right/bottom), resizes follow TF's
  ``align_corners`` / ``half_pixel_centers`` rules, so outputs match the original framework.

Anything outside the op table fails at compile time with the op's name, not mid-inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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
_TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float32,  # no double maths in these graphs: keep everything float32
    "float16": torch.float32,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int8": torch.int8,
    "bool": torch.bool,
}


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
            source = _split(node.inputs[1])[0]
            shape = self.constants.get(source)
            if shape is not None and shape.ndim == 1 and shape.size > 1 and shape[0] == 1 and -1 not in shape:
                self.constants[source] = np.concatenate([[-1], shape[1:]]).astype(shape.dtype)
            elif shape is None and by_name.get(source) is not None:
                raise GraphError(f"reshape {node.name} has a computed shape; cannot unbatch it")


def _split(ref: str) -> tuple[str, int]:
    """``"a/b:1"`` -> ``("a/b", 1)``; ``"a/b"`` -> ``("a/b", 0)``."""
    name, _, index = ref.partition(":")
    return name, int(index) if index else 0


# ---------------------------------------------------------------------------------------------
# TensorFlow's geometry: padding and resizing.


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME": output ceil(size / stride); odd totals put the extra pixel after."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


@lru_cache(maxsize=64)
def _resize_weights(
    size_in: int, size_out: int, align_corners: bool, half_pixel: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower index, upper index and weight of the upper one for each output row/column (TF's rules)."""
    scale = (size_in - 1) / (size_out - 1) if align_corners and size_out > 1 else size_in / size_out
    out = torch.arange(size_out, dtype=torch.float64)
    source = (out + 0.5) * scale - 0.5 if half_pixel else out * scale
    floor = torch.floor(source)
    lower = floor.clamp(0, size_in - 1).long()
    upper = torch.ceil(source).clamp(0, size_in - 1).long()
    return lower, upper, (source - floor).float()


def resize_bilinear(
    x: torch.Tensor, size: Sequence[int], align_corners: bool = False, half_pixel_centers: bool = False
) -> torch.Tensor:
    """Bilinear resize of an NHWC tensor exactly as TF's ``ResizeBilinear`` does it.

    The defaults are TF1's and TF.js's (no half-pixel offset), which
    ``torch.nn.functional.interpolate`` cannot express; the graphs were trained with them.
    """
    x = x.float()
    for axis, size_out in ((1, int(size[0])), (2, int(size[1]))):
        size_in = x.shape[axis]
        if size_out == size_in:
            continue
        lower, upper, weight = _resize_weights(size_in, size_out, align_corners, half_pixel_centers)
        low, high = x.index_select(axis, lower), x.index_select(axis, upper)
        shape = [1] * x.dim()
        shape[axis] = size_out
        x = low + (high - low) * weight.view(shape)
    return x


# ---------------------------------------------------------------------------------------------
# Compiled steps.

Step = Callable[..., Any]


@dataclass
class _Conv:
    """A 2-D convolution with its folded bias and activation; called on NHWC, returns NHWC."""

    weight: torch.Tensor  # torch layout (out, in / groups, kh, kw)
    bias: torch.Tensor | None
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: str  # "SAME" | "VALID"
    groups: int = 1
    activation: str | None = None  # a key of _ACTIVATIONS

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        nchw = x.permute(0, 3, 1, 2)
        kh, kw = self.weight.shape[2:]
        if self.padding == "SAME":
            top, bottom = same_padding(x.shape[1], kh, self.stride[0], self.dilation[0])
            left, right = same_padding(x.shape[2], kw, self.stride[1], self.dilation[1])
        else:
            top = bottom = left = right = 0
        if top == bottom and left == right:
            # Symmetric: let the convolution pad, an explicit F.pad would copy the whole input.
            out = F.conv2d(nchw, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        else:
            nchw = F.pad(nchw, (left, right, top, bottom))
            out = F.conv2d(nchw, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        if self.activation is not None:
            out = _ACTIVATIONS[self.activation](out)
        return out.permute(0, 2, 3, 1)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": F.relu,
    "Relu6": lambda x: F.hardtanh(x, 0.0, 6.0),
    "Sigmoid": torch.sigmoid,
}
_CONV_OPS = {"Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"}


def _max_pool(attrs: dict[str, Any]) -> Step:
    _, kh, kw, _ = attrs["ksize"]
    _, sh, sw, _ = attrs["strides"]
    same = attrs["padding"] == "SAME"

    def run(x: torch.Tensor) -> torch.Tensor:
        nchw = x.permute(0, 3, 1, 2)
        if same:  # TF pads with -inf, and unevenly like its convolutions
            top, bottom = same_padding(x.shape[1], kh, sh)
            left, right = same_padding(x.shape[2], kw, sw)
            nchw = F.pad(nchw, (left, right, top, bottom), value=-math.inf)
        return F.max_pool2d(nchw, (kh, kw), (sh, sw)).permute(0, 2, 3, 1)

    return run


def _strided_slice(attrs: dict[str, Any], begin: list[int], end: list[int], strides: list[int]) -> Step:
    """TF StridedSlice with its five bit masks, resolved once into a Python index tuple."""
    begin_mask, end_mask = attrs.get("begin_mask", 0), attrs.get("end_mask", 0)
    shrink, new_axis = attrs.get("shrink_axis_mask", 0), attrs.get("new_axis_mask", 0)
    ellipsis = attrs.get("ellipsis_mask", 0)
    index: list[Any] = []
    negative_steps = []
    for i, (b, e, s) in enumerate(zip(begin, end, strides, strict=True)):
        bit = 1 << i
        if ellipsis & bit:
            index.append(Ellipsis)
        elif new_axis & bit:
            index.append(None)
        elif shrink & bit:
            index.append(b)
        else:
            if s < 0:
                negative_steps.append(i)
            index.append(slice(None if begin_mask & bit else b, None if end_mask & bit else e, s))
    if negative_steps:
        raise GraphError("StridedSlice with a negative stride is not supported")
    key = tuple(index)
    return lambda x: x[key]


_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Identity": lambda x: x,
    "Sqrt": torch.sqrt,
    "Softmax": lambda x: torch.softmax(x, dim=-1),
    **_ACTIVATIONS,
}
_BINARY: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    "Add": torch.add,
    "AddV2": torch.add,
    "BiasAdd": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "RealDiv": torch.div,
    "Minimum": torch.minimum,
}
_BATCH_NORMS = {"FusedBatchNorm", "FusedBatchNormV3"}


@dataclass
class _Instruction:
    run: Step
    inputs: list[int]  # slots read
    outputs: list[int]  # slots written (one per output of the op)


class Program:
    """A compiled slice of a graph: call it with the input tensors, get the output tensors back."""

    def __init__(self, instructions: list[_Instruction], inputs: list[int], outputs: list[int], slots: int):
        self._instructions = instructions
        self._inputs = inputs
        self._outputs = outputs
        self._slots = slots
        # After each step, the slots nobody reads any more: dropping them keeps peak memory at a few
        # activations rather than all of them (a batch of 512x512 CenterNet inputs would hold GBs).
        last_use: dict[int, int] = {}
        for index, instruction in enumerate(instructions):
            for slot in instruction.inputs:
                last_use[slot] = index
        self._release: list[list[int]] = [[] for _ in instructions]
        for slot, index in last_use.items():
            if slot not in outputs:
                self._release[index].append(slot)

    @property
    def steps(self) -> int:
        return len(self._instructions)

    def __call__(self, *feeds: torch.Tensor) -> list[torch.Tensor]:
        if len(feeds) != len(self._inputs):
            raise GraphError(f"expected {len(self._inputs)} input(s), got {len(feeds)}")
        values: list[Any] = [None] * self._slots
        for slot, value in zip(self._inputs, feeds, strict=True):
            values[slot] = value
        for instruction, release in zip(self._instructions, self._release, strict=True):
            result = instruction.run(*(values[i] for i in instruction.inputs))
            if len(instruction.outputs) == 1:
                values[instruction.outputs[0]] = result
            else:
                for slot, value in zip(instruction.outputs, result, strict=True):
                    values[slot] = value
            for slot in release:
                values[slot] = None
        return [values[i] for i in self._outputs]


class _Compiler:
    """Walks the nodes between ``inputs`` and ``outputs`` in dependency order and emits steps."""

    def __init__(self, graph: Graph, inputs: Sequence[str], outputs: Sequence[str]):
        self.graph = graph
        self.by_name = {node.name: node for node in graph.nodes}
        self.input_names = [_ref(name) for name in inputs]
        self.output_names = [_ref(name) for name in outputs]
        self.slot_of: dict[str, int] = {}  # "node:k" -> slot
        self.constants: dict[str, Any] = {}  # "node:k" -> value known at compile time
        self.instructions: list[_Instruction] = []
        self.producer: dict[int, _Instruction] = {}
        self.consumers: dict[str, int] = {}
        self.slots = 0

    # --- graph walking
    def needed(self) -> list[Node]:
        """Nodes the outputs depend on, stopping at the fed inputs, in an order that respects edges."""
        stop = {_split(name)[0] for name in self.input_names}
        order: list[Node] = []
        state: dict[str, int] = {}  # 1 visiting, 2 done
        for root in self.output_names:
            stack: list[tuple[str, bool]] = [(_split(root)[0], False)]
            while stack:
                name, expanded = stack.pop()
                if expanded:
                    state[name] = 2
                    order.append(self.by_name[name])
                    continue
                if state.get(name):
                    continue
                if name not in self.by_name:
                    raise GraphError(f"no node named {name!r} in the graph")
                state[name] = 1
                stack.append((name, True))
                if name in stop:
                    continue
                for ref in self.by_name[name].inputs:
                    if ref.startswith("^"):
                        continue
                    source = _split(ref)[0]
                    if not state.get(source):
                        stack.append((source, False))
                    elif state[source] == 1:
                        raise GraphError(f"cycle through {source}: cut the graph before its loops")
        for node in order:
            for ref in node.inputs:
                if not ref.startswith("^"):
                    self.consumers[_ref(ref)] = self.consumers.get(_ref(ref), 0) + 1
        return order

    def new_slot(self, ref: str) -> int:
        self.slot_of[ref] = self.slots
        self.slots += 1
        return self.slots - 1

    def const(self, ref: str) -> Any:
        if ref not in self.constants:
            raise GraphError(f"{ref} must be a constant here")
        return self.constants[ref]

    def emit(self, node: Node, run: Step, inputs: list[str], n_outputs: int = 1) -> _Instruction:
        instruction = _Instruction(
            run,
            [self.slot_of[r] for r in inputs],
            [self.new_slot(f"{node.name}:{k}") for k in range(n_outputs)],
        )
        self.instructions.append(instruction)
        for slot in instruction.outputs:
            self.producer[slot] = instruction
        return instruction

    # --- compilation
    def compile(self) -> Program:
        self.by_name = _fuse_hard_swish(self.by_name, self.graph.constants)
        order = self.needed()
        input_slots = [self.new_slot(name) for name in self.input_names]
        fed = {_split(name)[0] for name in self.input_names}
        for node in order:
            if node.name in fed:
                continue
            self.compile_node(node)
        missing = [
            name for name in self.output_names if name not in self.slot_of and name not in self.constants
        ]
        if missing:
            raise GraphError(f"outputs not computed: {missing}")
        output_slots = []
        for name in self.output_names:
            if name not in self.slot_of:  # an output that folded to a constant
                value = self.constants[name]
                self.instructions.append(_Instruction(lambda v=value: v, [], [self.new_slot(name)]))
            output_slots.append(self.slot_of[name])
        return Program(self.instructions, input_slots, output_slots, self.slots)

    def compile_node(self, node: Node) -> None:
        refs = [_ref(r) for r in node.inputs if not r.startswith("^")]
        if node.op == "Const":
            self.constants[f"{node.name}:0"] = _to_torch(self.graph.constants[node.name])
            return
        if node.op == "Placeholder":
            raise GraphError(f"placeholder {node.name} is needed but not fed")
        static = _static_inputs(node.op, refs)
        dynamic = [r for i, r in enumerate(refs) if i not in static]
        if all(r in self.constants for r in dynamic) and node.op not in _CONV_OPS:
            # Constant folding: run the op once now (anchor grids, shape arithmetic...).
            run, n_out = self.make_step(node, refs)
            result = run(*(self.constants[r] for r in dynamic))
            for k, value in enumerate(result if n_out > 1 else [result]):
                self.constants[f"{node.name}:{k}"] = value
            return
        if self.fold_into_conv(node, refs):
            return
        for r in dynamic:
            if r not in self.slot_of:
                value = self.const(r)
                self.instructions.append(_Instruction(lambda v=value: v, [], [self.new_slot(r)]))
        run, n_out = self.make_step(node, refs)
        self.emit(node, run, dynamic, n_out)

    def fold_into_conv(self, node: Node, refs: list[str]) -> bool:
        """BiasAdd / FusedBatchNorm / an activation right after a convolution joins that convolution."""
        if node.op not in {"BiasAdd", *_BATCH_NORMS, *_ACTIVATIONS}:
            return False
        source = refs[0]
        slot = self.slot_of.get(source)
        instruction = self.producer.get(slot) if slot is not None else None
        if (
            instruction is None
            or not isinstance(instruction.run, _Conv)
            or self.consumers.get(source, 0) != 1
            or source in self.output_names
            or instruction.run.activation is not None  # nothing folds past an activation
            or not all(r in self.constants for r in refs[1:])
        ):
            return False
        conv = instruction.run
        if node.op in _ACTIVATIONS:
            conv.activation = node.op
        elif node.op == "BiasAdd":
            bias = self.const(refs[1]).float()
            conv.bias = bias if conv.bias is None else conv.bias + bias
        else:
            scale, offset, mean, variance = (self.const(r).float() for r in refs[1:5])
            factor = scale / torch.sqrt(variance + float(node.attrs.get("epsilon", 1e-3)))
            conv.weight = conv.weight * factor.view(-1, 1, 1, 1)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
            conv.bias = (bias - mean) * factor + offset
        self.slot_of[f"{node.name}:0"] = slot
        return True

    def make_step(self, node: Node, refs: list[str]) -> tuple[Step, int]:
        """The callable for one node (and how many outputs it has); constant inputs listed in
        :func:`_static_inputs` are read here, once, instead of per call."""
        op, attrs = node.op, node.attrs
        if op in _CONV_OPS:
            return self.conv(node, refs), 1
        if op in _UNARY:
            return _UNARY[op], 1
        if op in _BINARY:
            return _BINARY[op], 1
        if op == HARD_SWISH:
            scale = float(attrs["scale"])
            return (lambda x: F.hardswish(x) * scale), 1
        if op in _BATCH_NORMS:  # one not right after a convolution
            epsilon = float(attrs.get("epsilon", 1e-3))
            return (lambda x, s, o, m, v: (x - m) * (s / torch.sqrt(v + epsilon)) + o), 1
        if op == "MaxPool":
            return _max_pool(attrs), 1
        if op == "Mean":
            axes = [int(a) for a in np.atleast_1d(self.const(refs[1]).numpy())]
            keep = bool(attrs.get("keep_dims", False))
            return (lambda x: torch.mean(x, dim=axes, keepdim=keep)), 1
        if op == "Reshape":
            return (lambda x, s: x.reshape([int(v) for v in s.reshape(-1).tolist()])), 1
        if op == "ExpandDims":
            axis = int(self.const(refs[1]))
            return (lambda x: x.unsqueeze(axis if axis >= 0 else x.dim() + axis + 1)), 1
        if op == "ConcatV2":
            axis = int(self.const(refs[-1]))
            return (lambda *xs: torch.cat(xs, dim=axis)), 1
        if op == "Pack":
            axis = int(attrs.get("axis", 0))
            return (lambda *xs: torch.stack([torch.as_tensor(x) for x in xs], dim=axis)), 1
        if op == "Cast":
            dtype = _TORCH_DTYPES[attrs["DstT"]]
            return (lambda x: x.to(dtype)), 1
        if op == "Shape":
            dtype = _TORCH_DTYPES[attrs.get("out_type", "int32")]
            return (lambda x: torch.tensor(list(x.shape), dtype=dtype)), 1
        if op == "StridedSlice":
            begin, end, strides = (self.const(r).reshape(-1).tolist() for r in refs[1:4])
            return _strided_slice(attrs, begin, end, strides), 1
        if op == "Slice":
            begin, size = (self.const(r).reshape(-1).tolist() for r in refs[1:3])
            key = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size, strict=True))
            return (lambda x: x[key]), 1
        if op == "Pad":
            pads = self.const(refs[1]).reshape(-1, 2).tolist()
            flat = [int(v) for pair in reversed(pads) for v in pair]  # F.pad wants the last axis first
            return (lambda x: F.pad(x, flat)), 1
        if op == "ResizeBilinear":
            size = [int(s) for s in self.const(refs[1]).tolist()]
            align, half = bool(attrs.get("align_corners")), bool(attrs.get("half_pixel_centers"))
            return (lambda x: resize_bilinear(x, size, align, half)), 1
        if op == "Fill":
            return (lambda shape, v: torch.full([int(s) for s in shape.tolist()], v.item(), dtype=v.dtype)), 1
        if op == "Tile":
            return (lambda x, reps: x.repeat(*[int(r) for r in reps.tolist()])), 1
        if op == "Range":
            return (lambda a, b, d: torch.arange(a.item(), b.item(), d.item(), dtype=a.dtype)), 1
        raise GraphError(f"op {op} (node {node.name}) is not supported by this executor")

    def conv(self, node: Node, refs: list[str]) -> _Conv:
        attrs = node.attrs
        if attrs.get("data_format", "NHWC") != "NHWC":
            raise GraphError(f"{node.name}: only NHWC graphs are supported")
        padding = attrs.get("padding", "VALID")
        if padding not in ("SAME", "VALID"):
            raise GraphError(f"{node.name}: padding {padding} is not supported")
        weight = self.const(refs[1]).float()  # TF layout (kh, kw, in, out) / (kh, kw, in, multiplier)
        if "Depthwise" in node.op:
            kh, kw, channels, multiplier = weight.shape
            torch_weight = weight.permute(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw).contiguous()
            groups = channels
        else:
            torch_weight = weight.permute(3, 2, 0, 1).contiguous()
            groups = 1
        strides, dilations = attrs.get("strides") or [1, 1, 1, 1], attrs.get("dilations") or [1, 1, 1, 1]
        conv = _Conv(
            torch_weight, None, (strides[1], strides[2]), (dilations[1], dilations[2]), padding, groups
        )
        # TF.js's fused forms: a bias and then at most an activation, in that order.
        extra = [self.const(r).float() for r in refs[2:]]
        for kind in attrs.get("fused_ops") or []:
            if kind == "BiasAdd" and extra:
                conv.bias = extra.pop(0)
            elif kind in _ACTIVATIONS and conv.activation is None:
                conv.activation = kind
            else:
                raise GraphError(f"{node.name}: fused op {kind} is not supported")
        return conv


# Ops whose inputs from this position on are read at compile time (axes, shapes, sizes, weights).
_STATIC_FROM = {
    "Mean": 1, "ExpandDims": 1, "StridedSlice": 1, "Slice": 1, "Pad": 1, "ResizeBilinear": 1,
    **{op: 1 for op in _CONV_OPS},
}  # fmt: skip


def _static_inputs(op: str, refs: list[str]) -> set[int]:
    """Positions of the inputs a step takes in at compile time rather than per call."""
    if op in _STATIC_FROM:
        return set(range(_STATIC_FROM[op], len(refs)))
    if op == "ConcatV2":
        return {len(refs) - 1}
    return set()


def _ref(name: str) -> str:
    base, index = _split(name)
    return f"{base}:{index}"


def _to_torch(value: np.ndarray) -> Any:
    if value.dtype == object:
        return value  # strings: only ever reach Assert-like nodes we never run
    array = value.astype(np.float32) if value.dtype.kind == "f" else value
    return torch.from_numpy(array.copy())  # copy: 0-d stays 0-d (ascontiguousarray makes it 1-d)


HARD_SWISH = "imgsvc.HardSwish"  # not a TF op: what _fuse_hard_swish turns four nodes into


def _fuse_hard_swish(by_name: dict[str, Node], constants: dict[str, np.ndarray]) -> dict[str, Node]:
    """MobileNetV3's ``(c * x) * Relu6(x + 3)`` (c = 1/6 in float16), four passes over a large
    activation, as one ``hardswish(x) * 6c`` step: a third of CenterNet's time went to these."""
    consumers: dict[str, int] = {}
    for node in by_name.values():
        for ref in node.inputs:
            consumers[_split(ref)[0]] = consumers.get(_split(ref)[0], 0) + 1

    def constant(ref: str) -> float | None:
        value = constants.get(_split(ref)[0])
        return float(value) if value is not None and value.size == 1 else None

    def only_use(ref: str, *ops: str) -> Node | None:
        node = by_name.get(_split(ref)[0])
        return node if node is not None and node.op in ops and consumers.get(node.name) == 1 else None

    fused = dict(by_name)
    for node in by_name.values():
        if node.op != "Mul" or len(node.inputs) != 2:
            continue
        for scaled_ref, relu_ref in (node.inputs, node.inputs[::-1]):
            scaled, relu6 = only_use(scaled_ref, "Mul"), only_use(relu_ref, "Relu6")
            add = only_use(relu6.inputs[0], "Add", "AddV2") if relu6 else None
            if scaled is None or add is None or len(scaled.inputs) != 2 or len(add.inputs) != 2:
                continue
            c, x = scaled.inputs if constant(scaled.inputs[0]) is not None else scaled.inputs[::-1]
            three, y = add.inputs if constant(add.inputs[0]) is not None else add.inputs[::-1]
            if constant(c) is None or constant(three) != 3.0 or _ref(x) != _ref(y):
                continue
            fused[node.name] = Node(node.name, HARD_SWISH, [x], {"scale": 6 * constant(c)})
            break
    return fused


def compile_graph(graph: Graph, inputs: Iterable[str], outputs: Iterable[str]) -> Program:
    """Compile the part of ``graph`` that computes ``outputs`` from ``inputs`` (tensor names,
    ``node`` or ``node:k``). Nodes upstream of the inputs, and everything the outputs do not need
    (a detector's post-processing loops), are left out."""
    return _Compiler(graph, list(inputs), list(outputs)).compile()


def resized(image: Any, size: int | tuple[int, int]) -> Any:
    """``image`` (PIL) as RGB of ``size`` pixels (``(width, height)`` or a square side).

    Pillow's bicubic filter, antialiased: the detectors shrink photos a lot (512 -> 300 and more),
    and TF's ``ResizeBilinear`` would sample only 4 pixels per output pixel and skip the rest.
    Bicubic is Pillow's default resize, as used in the hand check of these models (astronaut
    person 0.95: 0.91 with plain bilinear).
    """
    from PIL import Image

    target = (size, size) if isinstance(size, int) else size
    image = image.convert("RGB")
    return image if image.size == target else image.resize(target, Image.Resampling.BICUBIC)


def letterboxed(image: Any) -> Any:
    """``image`` (PIL) on a black square canvas, top-left aligned, so things keep their shape when
    a model squeezes it to its square input; a box's pixels on the canvas are the photo's pixels."""
    from PIL import Image

    image = image.convert("RGB")
    if image.width == image.height:
        return image
    canvas = Image.new("RGB", (max(image.size),) * 2)
    canvas.paste(image, (0, 0))
    return canvas


def image_batch(images: Sequence[Any]) -> torch.Tensor:
    """Same-size PIL images as one ``(N, H, W, 3)`` float tensor of 0-255 RGB values."""
    return torch.from_numpy(
        np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    )
