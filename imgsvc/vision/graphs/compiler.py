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

Anything outside the op table (:mod:`imgsvc.vision.graphs.ops`) fails at compile time with the op's name,
not mid-inference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from imgsvc.vision.graphs.graph import Graph, GraphError, Node, full_ref, split_ref
from imgsvc.vision.graphs.ops import (
    ACTIVATIONS,
    BATCH_NORMS,
    CONV_OPS,
    HARD_SWISH,
    Conv,
    Step,
    make_step,
    static_inputs,
)


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
        self.input_names = [full_ref(name) for name in inputs]
        self.output_names = [full_ref(name) for name in outputs]
        self.slot_of: dict[str, int] = {}  # "node:k" -> slot
        self.constants: dict[str, Any] = {}  # "node:k" -> value known at compile time
        self.instructions: list[_Instruction] = []
        self.producer: dict[int, _Instruction] = {}
        self.consumers: dict[str, int] = {}
        self.slots = 0

    # --- graph walking
    def needed(self) -> list[Node]:
        """Nodes the outputs depend on, stopping at the fed inputs, in an order that respects edges."""
        stop = {split_ref(name)[0] for name in self.input_names}
        order: list[Node] = []
        state: dict[str, int] = {}  # 1 visiting, 2 done
        for root in self.output_names:
            stack: list[tuple[str, bool]] = [(split_ref(root)[0], False)]
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
                    source = split_ref(ref)[0]
                    if not state.get(source):
                        stack.append((source, False))
                    elif state[source] == 1:
                        raise GraphError(f"cycle through {source}: cut the graph before its loops")
        for node in order:
            for ref in node.inputs:
                if not ref.startswith("^"):
                    self.consumers[full_ref(ref)] = self.consumers.get(full_ref(ref), 0) + 1
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
        fed = {split_ref(name)[0] for name in self.input_names}
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
        for instruction in self.instructions:
            if isinstance(instruction.run, Conv):
                instruction.run.prepare()
        return Program(self.instructions, input_slots, output_slots, self.slots)

    def compile_node(self, node: Node) -> None:
        refs = [full_ref(r) for r in node.inputs if not r.startswith("^")]
        if node.op == "Const":
            self.constants[f"{node.name}:0"] = _to_torch(self.graph.constants[node.name])
            return
        if node.op == "Placeholder":
            raise GraphError(f"placeholder {node.name} is needed but not fed")
        static = static_inputs(node.op, refs)
        dynamic = [r for i, r in enumerate(refs) if i not in static]
        if all(r in self.constants for r in dynamic) and node.op not in CONV_OPS:
            # Constant folding: run the op once now (anchor grids, shape arithmetic...).
            run, n_out = make_step(node, refs, self.const)
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
        run, n_out = make_step(node, refs, self.const)
        self.emit(node, run, dynamic, n_out)

    def fold_into_conv(self, node: Node, refs: list[str]) -> bool:
        """BiasAdd / FusedBatchNorm / an activation right after a convolution joins that convolution."""
        if node.op not in {"BiasAdd", HARD_SWISH, *BATCH_NORMS, *ACTIVATIONS}:
            return False
        source = refs[0]
        slot = self.slot_of.get(source)
        instruction = self.producer.get(slot) if slot is not None else None
        if (
            instruction is None
            or not isinstance(instruction.run, Conv)
            or self.consumers.get(source, 0) != 1
            or source in self.output_names
            or instruction.run.activation is not None  # nothing folds past an activation
            or not all(r in self.constants for r in refs[1:])
        ):
            return False
        conv = instruction.run
        if node.op in ACTIVATIONS:
            conv.activation = node.op
        elif node.op == HARD_SWISH:
            conv.activation, conv.scale = HARD_SWISH, float(node.attrs["scale"])
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


def _to_torch(value: np.ndarray) -> Any:
    if value.dtype == object:
        return value  # strings: only ever reach Assert-like nodes we never run
    array = value.astype(np.float32) if value.dtype.kind == "f" else value
    return torch.from_numpy(array.copy())  # copy: 0-d stays 0-d (ascontiguousarray makes it 1-d)


def _fuse_hard_swish(by_name: dict[str, Node], constants: dict[str, np.ndarray]) -> dict[str, Node]:
    """MobileNetV3's ``(c * x) * Relu6(x + 3)`` (c = 1/6 in float16), four passes over a large
    activation, as one ``hardswish(x) * 6c`` step: a third of CenterNet's time went to these."""
    consumers: dict[str, int] = {}
    for node in by_name.values():
        for ref in node.inputs:
            consumers[split_ref(ref)[0]] = consumers.get(split_ref(ref)[0], 0) + 1

    def constant(ref: str) -> float | None:
        value = constants.get(split_ref(ref)[0])
        return float(value) if value is not None and value.size == 1 else None

    def only_use(ref: str, *ops: str) -> Node | None:
        node = by_name.get(split_ref(ref)[0])
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
            if constant(c) is None or constant(three) != 3.0 or full_ref(x) != full_ref(y):
                continue
            fused[node.name] = Node(node.name, HARD_SWISH, [x], {"scale": 6 * constant(c)})
            break
    return fused


def compile_graph(graph: Graph, inputs: Iterable[str], outputs: Iterable[str]) -> Program:
    """Compile the part of ``graph`` that computes ``outputs`` from ``inputs`` (tensor names,
    ``node`` or ``node:k``). Nodes upstream of the inputs, and everything the outputs do not need
    (a detector's post-processing loops), are left out."""
    return _Compiler(graph, list(inputs), list(outputs)).compile()
