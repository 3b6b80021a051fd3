"""The op table: what each TensorFlow op our detector graphs use does, as a torch step.

Geometry (TF's "SAME" padding, its bilinear resize), the convolution step that biases, batch norms
and activations fold into, and :func:`make_step`, which turns one node into its callable. A graph
that needs an op not listed here fails in :func:`make_step` at compile time, with the op's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imgsvc.vision.graphs.graph import GraphError, Node

TORCH_DTYPES = {
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
        shape = [1] * x.dim()
        shape[axis] = size_out
        # One pass (lerp) rather than three (sub, mul, add) over the enlarged activation.
        x = torch.lerp(x.index_select(axis, lower), x.index_select(axis, upper), weight.view(shape))
    return x


# ---------------------------------------------------------------------------------------------
# Compiled steps.

Step = Callable[..., Any]

HARD_SWISH = "imgsvc.HardSwish"  # not a TF op: what _fuse_hard_swish turns four nodes into


@dataclass
class Conv:
    """A 2-D convolution with its folded bias and activation; called on NHWC, returns NHWC.

    :meth:`prepare` (once, after folding) picks how it runs: a 1x1 stride-1 convolution is a
    matrix product over the NHWC pixels (no layout change; ``conv2d`` takes torch's slow im2col
    path there on channels-last input, and first fills its output with the bias, as ``addmm``
    does); the rest go to ``conv2d`` on the channels-last view. The activation runs in place on the fresh
    output, so it costs no allocation.
    """

    weight: torch.Tensor  # torch layout (out, in / groups, kh, kw)
    bias: torch.Tensor | None
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: str  # "SAME" | "VALID"
    groups: int = 1
    activation: str | None = None  # a key of ACTIVATIONS, or HARD_SWISH
    scale: float = 1.0  # HARD_SWISH's factor
    matrix: torch.Tensor | None = None  # (in, out), set by prepare() for a 1x1 stride-1 convolution

    def prepare(self) -> None:
        """Lay the weights out for how this convolution will run (after every fold into it)."""
        out_channels, in_channels, kh, kw = self.weight.shape
        if (kh, kw, self.stride, self.groups) == (1, 1, (1, 1), 1):
            self.matrix = self.weight.reshape(out_channels, in_channels).t().contiguous()
        self.weight = self.weight.contiguous()
        self.bias = None if self.bias is None else self.bias.contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.matrix is not None:
            pixels = x.reshape(-1, x.shape[3])
            out = pixels @ self.matrix if self.bias is None else (pixels @ self.matrix).add_(self.bias)
            return self.activate(out.view(*x.shape[:3], -1))
        nchw = x.permute(0, 3, 1, 2)
        geometry = zip(x.shape[1:3], self.weight.shape[2:], self.stride, self.dilation, strict=True)
        pads = [same_padding(*axis) if self.padding == "SAME" else (0, 0) for axis in geometry]
        even = [even_padding(before, after, s) for (before, after), s in zip(pads, self.stride, strict=True)]
        if None in even:  # uneven padding at stride 1 (an even kernel): an explicit copy of the input
            nchw = F.pad(nchw, (*pads[1], *pads[0]))
            even = [(0, 0), (0, 0)]
        (pad_h, skip_h), (pad_w, skip_w) = even
        out = F.conv2d(nchw, self.weight, self.bias, self.stride, (pad_h, pad_w), self.dilation, self.groups)
        if skip_h or skip_w:
            height, width = (math.ceil(size / s) for size, s in zip(x.shape[1:3], self.stride, strict=True))
            out = out[:, :, skip_h : skip_h + height, skip_w : skip_w + width]
        return self.activate(out).permute(0, 2, 3, 1)

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        """The folded activation, in place (``out`` is this step's own fresh tensor)."""
        if self.activation is None:
            return out
        if self.activation == HARD_SWISH:
            return F.hardswish(out, inplace=True).mul_(self.scale)
        return IN_PLACE[self.activation](out)


def even_padding(before: int, after: int, stride: int) -> tuple[int, int] | None:
    """TF's uneven "SAME" padding as the even padding torch's convolution takes, without copying
    the input: ``(pad, skip)``, pad both sides by ``pad`` and drop the first ``skip`` outputs.

    Output i of the evenly padded input reads from input row stride * i - pad, TF's output j from
    stride * j - before: with pad = before + stride * skip they line up, and the larger pad also
    covers TF's ``after``. None at stride 1, where no skip can line them up.
    """
    if before == after:
        return before, 0
    if stride == 1:
        return None
    skip = max(1, math.ceil((after - before) / stride))
    return before + stride * skip, skip


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": F.relu,
    "Relu6": lambda x: F.hardtanh(x, 0.0, 6.0),
    "Sigmoid": torch.sigmoid,
}
#: The same, in place: for a convolution's own output.
IN_PLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": torch.relu_,
    "Relu6": lambda x: x.clamp_(0.0, 6.0),
    "Sigmoid": torch.sigmoid_,
}
CONV_OPS = {"Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"}


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
    **ACTIVATIONS,
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
BATCH_NORMS = {"FusedBatchNorm", "FusedBatchNormV3"}


# Ops whose inputs from this position on are read at compile time (axes, shapes, sizes, weights).
STATIC_FROM = {
    "Mean": 1, "ExpandDims": 1, "StridedSlice": 1, "Slice": 1, "Pad": 1, "ResizeBilinear": 1,
    **{op: 1 for op in CONV_OPS},
}  # fmt: skip


def static_inputs(op: str, refs: list[str]) -> set[int]:
    """Positions of the inputs a step takes in at compile time rather than per call."""
    if op in STATIC_FROM:
        return set(range(STATIC_FROM[op], len(refs)))
    if op == "ConcatV2":
        return {len(refs) - 1}
    return set()


def make_step(node: Node, refs: list[str], const: Callable[[str], Any]) -> tuple[Step, int]:
    """The callable for one node (and how many outputs it has); constant inputs listed in
    :func:`static_inputs` are read here, once, instead of per call."""
    op, attrs = node.op, node.attrs
    if op in CONV_OPS:
        return conv_step(node, refs, const), 1
    if op in _UNARY:
        return _UNARY[op], 1
    if op in _BINARY:
        return _BINARY[op], 1
    if op == HARD_SWISH:
        scale = float(attrs["scale"])
        return (lambda x: F.hardswish(x).mul_(scale)), 1
    if op in BATCH_NORMS:  # one not right after a convolution
        epsilon = float(attrs.get("epsilon", 1e-3))
        return (lambda x, s, o, m, v: (x - m) * (s / torch.sqrt(v + epsilon)) + o), 1
    if op == "MaxPool":
        return _max_pool(attrs), 1
    if op == "Mean":
        axes = [int(a) for a in np.atleast_1d(const(refs[1]).numpy())]
        keep = bool(attrs.get("keep_dims", False))
        return (lambda x: torch.mean(x, dim=axes, keepdim=keep)), 1
    if op == "Reshape":
        return (lambda x, s: x.reshape([int(v) for v in s.reshape(-1).tolist()])), 1
    if op == "ExpandDims":
        axis = int(const(refs[1]))
        return (lambda x: x.unsqueeze(axis if axis >= 0 else x.dim() + axis + 1)), 1
    if op == "ConcatV2":
        axis = int(const(refs[-1]))
        return (lambda *xs: torch.cat(xs, dim=axis)), 1
    if op == "Pack":
        axis = int(attrs.get("axis", 0))
        return (lambda *xs: torch.stack([torch.as_tensor(x) for x in xs], dim=axis)), 1
    if op == "Cast":
        dtype = TORCH_DTYPES[attrs["DstT"]]
        return (lambda x: x.to(dtype)), 1
    if op == "Shape":
        dtype = TORCH_DTYPES[attrs.get("out_type", "int32")]
        return (lambda x: torch.tensor(list(x.shape), dtype=dtype)), 1
    if op == "StridedSlice":
        begin, end, strides = (const(r).reshape(-1).tolist() for r in refs[1:4])
        return _strided_slice(attrs, begin, end, strides), 1
    if op == "Slice":
        begin, size = (const(r).reshape(-1).tolist() for r in refs[1:3])
        key = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size, strict=True))
        return (lambda x: x[key]), 1
    if op == "Pad":
        pads = const(refs[1]).reshape(-1, 2).tolist()
        flat = [int(v) for pair in reversed(pads) for v in pair]  # F.pad wants the last axis first
        return (lambda x: F.pad(x, flat)), 1
    if op == "ResizeBilinear":
        size = [int(s) for s in const(refs[1]).tolist()]
        align, half = bool(attrs.get("align_corners")), bool(attrs.get("half_pixel_centers"))
        return (lambda x: resize_bilinear(x, size, align, half)), 1
    if op == "Fill":
        return (lambda shape, v: torch.full([int(s) for s in shape.tolist()], v.item(), dtype=v.dtype)), 1
    if op == "Tile":
        return (lambda x, reps: x.repeat(*[int(r) for r in reps.tolist()])), 1
    if op == "Range":
        return (lambda a, b, d: torch.arange(a.item(), b.item(), d.item(), dtype=a.dtype)), 1
    raise GraphError(f"op {op} (node {node.name}) is not supported by this executor")


def conv_step(node: Node, refs: list[str], const: Callable[[str], Any]) -> Conv:
    attrs = node.attrs
    if attrs.get("data_format", "NHWC") != "NHWC":
        raise GraphError(f"{node.name}: only NHWC graphs are supported")
    padding = attrs.get("padding", "VALID")
    if padding not in ("SAME", "VALID"):
        raise GraphError(f"{node.name}: padding {padding} is not supported")
    weight = const(refs[1]).float()  # TF layout (kh, kw, in, out) / (kh, kw, in, multiplier)
    if "Depthwise" in node.op:
        kh, kw, channels, multiplier = weight.shape
        torch_weight = weight.permute(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw).contiguous()
        groups = channels
    else:
        torch_weight = weight.permute(3, 2, 0, 1).contiguous()
        groups = 1
    strides, dilations = attrs.get("strides") or [1, 1, 1, 1], attrs.get("dilations") or [1, 1, 1, 1]
    conv = Conv(torch_weight, None, (strides[1], strides[2]), (dilations[1], dilations[2]), padding, groups)
    # TF.js's fused forms: a bias and then at most an activation, in that order.
    extra = [const(r).float() for r in refs[2:]]
    for kind in attrs.get("fused_ops") or []:
        if kind == "BiasAdd" and extra:
            conv.bias = extra.pop(0)
        elif kind in ACTIVATIONS and conv.activation is None:
            conv.activation = kind
        else:
            raise GraphError(f"{node.name}: fused op {kind} is not supported")
    return conv
