"""TensorFlow's frozen ``GraphDef`` (a ``.pb`` file) read straight from the protobuf wire format.

Why by hand: the schema we need is five small messages (GraphDef, NodeDef, AttrValue, TensorProto,
TensorShapeProto), and the wire format is a few lines of varint arithmetic, so decoding it ourselves
keeps TensorFlow, ``protobuf`` and generated stubs out of the install. Only the fields a frozen
inference graph uses are read; every other field is skipped by its wire type, as protobuf itself does.
The result is the framework-neutral :class:`~imgsvc.vision.graphs.graph.Graph` that the executor compiles.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from imgsvc.vision.graphs.graph import DTYPES, Graph, Node

# Wire types (the low three bits of a field key).
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_DT_STRING = 7


class ProtobufError(ValueError):
    """The bytes are not a well-formed message of the expected kind."""


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint longer than 10 bytes")


def fields(data: bytes | memoryview) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(field number, wire type, value)``: an int for varint/fixed, a memoryview for bytes."""
    data = memoryview(data)
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire == _FIXED64:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == _FIXED32:
            value, pos = data[pos : pos + 4], pos + 4
        elif wire == _BYTES:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        else:
            raise ProtobufError(f"unsupported wire type {wire} for field {number}")
        if pos > len(data):
            raise ProtobufError(f"field {number} runs past the end of the message")
        yield number, wire, value


def _signed(value: int) -> int:
    """int64 fields are two's complement in a 64-bit varint (-1 is ten bytes)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed_varints(wire: int, value: Any) -> list[int]:
    """Repeated scalars arrive packed (one length-delimited run) or one per key; accept both."""
    if wire == _VARINT:
        return [_signed(value)]
    out, pos = [], 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        out.append(_signed(item))
    return out


def _packed_floats(wire: int, value: Any) -> list[float]:
    raw = bytes(value)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw)) if wire == _BYTES else [struct.unpack("<f", raw)[0]]


def _shape(data: memoryview) -> list[int] | None:
    """TensorShapeProto: repeated Dim{size=1} at field 2; unknown_rank (3) gives None."""
    dims: list[int] = []
    for number, _, value in fields(data):
        if number == 2:
            size = next((_signed(v) for n, _, v in fields(value) if n == 1), 0)
            dims.append(size)
        elif number == 3 and value:
            return None
    return dims


def _tensor(data: memoryview) -> np.ndarray:
    """TensorProto: dtype, shape, and the values either as raw ``tensor_content`` or typed repeats."""
    dtype_enum, shape, content = 1, [], None
    values: list[Any] = []
    for number, wire, value in fields(data):
        if number == 1:
            dtype_enum = value
        elif number == 2:
            shape = _shape(value) or []
        elif number == 4:
            content = bytes(value)
        elif number == 5:  # float_val
            values += _packed_floats(wire, value)
        elif number in (7, 10, 11):  # int_val, int64_val, bool_val
            values += _packed_varints(wire, value)
        elif number == 13:  # half_val: float16 bit patterns held in int32s
            values += [np.uint16(v).view(np.float16) for v in _packed_varints(wire, value)]
        elif number == 8:  # string_val: never needed for inference; keep the bytes
            values.append(bytes(value))
    if dtype_enum == _DT_STRING:  # assert messages and the like: kept, never computed with
        return np.asarray(values, dtype=object).reshape(shape if len(values) > 1 else ())
    if dtype_enum not in DTYPES:
        raise ProtobufError(f"tensor of unsupported dtype enum {dtype_enum}")
    dtype = np.dtype(DTYPES[dtype_enum])
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        array = np.frombuffer(content, dtype=dtype).copy()
    elif not values:
        array = np.zeros(count, dtype=dtype)
    else:
        # A repeated field shorter than the shape means "repeat the last value" (TF's splat encoding).
        array = np.asarray(values, dtype=dtype)
        if array.size < count:
            array = np.concatenate([array, np.full(count - array.size, array[-1], dtype=dtype)])
    return array.reshape(shape)


def _list(data: memoryview) -> list[Any]:
    """AttrValue.ListValue: only one of its repeated fields is used in practice; return that one."""
    out: list[Any] = []
    for number, wire, value in fields(data):
        if number == 2:
            out.append(bytes(value).decode("utf-8", "replace"))
        elif number == 3:
            out += _packed_varints(wire, value)
        elif number == 4:
            out += _packed_floats(wire, value)
        elif number == 5:
            out += [bool(v) for v in _packed_varints(wire, value)]
        elif number == 6:
            out += [DTYPES.get(v, v) for v in _packed_varints(wire, value)]
        elif number == 7:
            out.append(_shape(value))
        elif number == 8:
            out.append(_tensor(value))
    return out


def _attr_value(data: memoryview) -> Any:
    for number, _wire, value in fields(data):
        if number == 1:
            return _list(value)
        if number == 2:
            return bytes(value).decode("utf-8", "replace")
        if number == 3:
            return _signed(value)
        if number == 4:
            return struct.unpack("<f", bytes(value))[0]
        if number == 5:
            return bool(value)
        if number == 6:
            return DTYPES.get(value, value)
        if number == 7:
            return _shape(value)
        if number == 8:
            return _tensor(value)
    return None  # an empty AttrValue (e.g. an empty list)


def _node(data: memoryview) -> Node:
    name, op, inputs, attrs = "", "", [], {}
    for number, _, value in fields(data):
        if number == 1:
            name = bytes(value).decode()
        elif number == 2:
            op = bytes(value).decode()
        elif number == 3:
            inputs.append(bytes(value).decode())
        elif number == 5:  # map<string, AttrValue> entry: key=1, value=2
            key, attr = "", None
            for n, _, v in fields(value):
                if n == 1:
                    key = bytes(v).decode()
                elif n == 2:
                    attr = _attr_value(v)
            attrs[key] = attr
    return Node(name, op, inputs, attrs)


def parse_graphdef(data: bytes) -> Graph:
    """Decode a serialized ``GraphDef``; ``Const`` nodes' tensors become the graph's constants."""
    nodes, constants = [], {}
    for number, _, value in fields(data):
        if number == 1:
            node = _node(value)
            if node.op == "Const":
                constants[node.name] = node.attrs.pop("value")
            nodes.append(node)
    if not nodes:
        raise ProtobufError("no nodes: not a GraphDef")
    return Graph(nodes, constants)


def load_graphdef(path: Path) -> Graph:
    return parse_graphdef(path.read_bytes())
