"""The graph loaders and executor on tiny hand-built graphs, and the detectors' box arithmetic.

No weights needed: every message, graph and heat map here is built in the test, and every expected
value is worked out independently (by hand or with plain torch calls).
"""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imgsvc.vision.base import Box, Detection
from imgsvc.vision.graphs.compiler import compile_graph
from imgsvc.vision.graphs.graph import Graph, GraphError, Node
from imgsvc.vision.graphs.graphdef import ProtobufError, parse_graphdef
from imgsvc.vision.graphs.ops import resize_bilinear, same_padding
from imgsvc.vision.graphs.tfjs import TfjsFormatError, load_tfjs
from imgsvc.vision.scene.blazeface import face_anchors
from imgsvc.vision.scene.boxes import batched_nms, drop_contained, iou, nms, normalised_box
from imgsvc.vision.scene.centernet import decode
from imgsvc.vision.scene.ssd_person import decode_boxes, ssd_anchors, views

# --- a minimal protobuf writer, to build GraphDefs byte by byte


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten-byte two's complement varints
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, payload: bytes | str) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_float(number: int, value: float) -> bytes:
    return varint(number << 3 | 5) + struct.pack("<f", value)


def shape(*dims: int) -> bytes:
    return b"".join(field_bytes(2, field_varint(1, d)) for d in dims)


def attr(key: str, value: bytes) -> bytes:
    return field_bytes(5, field_bytes(1, key) + field_bytes(2, value))


def node(name: str, op: str, inputs: list[str], *attrs: bytes) -> bytes:
    return field_bytes(
        1,
        field_bytes(1, name)
        + field_bytes(2, op)
        + b"".join(field_bytes(3, i) for i in inputs)
        + b"".join(attrs),
    )


def const(name: str, tensor: bytes) -> bytes:
    return node(name, "Const", [], attr("value", field_bytes(8, tensor)), attr("dtype", field_varint(6, 1)))


def test_graphdef_decodes_names_inputs_every_attr_kind_and_tensors() -> None:
    weights = np.arange(4, dtype=np.float32).reshape(2, 2)
    data = b"".join(
        [
            const("w", field_varint(1, 1) + field_bytes(2, shape(2, 2)) + field_bytes(4, weights.tobytes())),
            # A repeated value shorter than the shape is TF's "fill with the last value".
            const(
                "splat",
                field_varint(1, 1) + field_bytes(2, shape(3)) + field_bytes(5, struct.pack("<f", 7.0)),
            ),
            # int_val, unpacked (one key per value), with a negative entry.
            const(
                "ints",
                field_varint(1, 3) + field_bytes(2, shape(2)) + field_varint(7, 1) + field_varint(7, -2),
            ),
            node(
                "conv",
                "Conv2D",
                ["x", "w:0", "^control"],
                attr("padding", field_bytes(2, "SAME")),
                attr("strides", field_bytes(1, field_bytes(3, b"".join(varint(v) for v in (1, 2, 2, 1))))),
                attr("fused_ops", field_bytes(1, field_bytes(2, "BiasAdd") + field_bytes(2, "Relu"))),
                attr("T", field_varint(6, 1)),
                attr("axis", field_varint(3, -1)),
                attr("epsilon", field_float(4, 0.5)),
                attr("keep_dims", field_varint(5, 1)),
                attr("shape", field_bytes(7, shape(1, -1, 3))),
                field_bytes(4, "/device:CPU:0"),  # a field we do not read: skipped
            ),
            field_bytes(4, field_varint(1, 27)),  # GraphDef.versions: skipped
        ]
    )
    graph = parse_graphdef(data)
    assert [n.name for n in graph.nodes] == ["w", "splat", "ints", "conv"]
    conv = graph.nodes[-1]
    assert conv.op == "Conv2D" and conv.inputs == ["x", "w:0", "^control"]
    assert conv.attrs == {
        "padding": "SAME",
        "strides": [1, 2, 2, 1],
        "fused_ops": ["BiasAdd", "Relu"],
        "T": "float32",
        "axis": -1,
        "epsilon": 0.5,
        "keep_dims": True,
        "shape": [1, -1, 3],
    }
    np.testing.assert_array_equal(graph.constants["w"], weights)
    np.testing.assert_array_equal(graph.constants["splat"], [7.0, 7.0, 7.0])
    assert graph.constants["ints"].tolist() == [1, -2] and graph.constants["ints"].dtype == np.int32


@pytest.mark.parametrize("data", [b"", b"\x0a\x05abc", b"\x0a\xff", b"\x0b"])
def test_graphdef_rejects_what_is_not_a_graph(data: bytes) -> None:
    with pytest.raises(ProtobufError):
        parse_graphdef(data)


# --- TF.js model.json + shards


def write_tfjs(folder: Path, weights: list[dict], shard: bytes, nodes: list[dict]) -> Path:
    (folder / "group1-shard1of1.bin").write_bytes(shard)
    model = {
        "format": "graph-model",
        "modelTopology": {"node": nodes},
        "weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": weights}],
    }
    path = folder / "model.json"
    path.write_text(json.dumps(model))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_tfjs_dequantises_weights_and_runs_a_fused_conv(tmp_path: Path) -> None:
    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype(np.float16)
    bias_q = np.array([0, 10, 200, 255], dtype=np.uint8)  # affine uint8: q * 0.01 - 1
    path = write_tfjs(
        tmp_path,
        [
            {"name": "w", "shape": [3, 3, 2, 4], "dtype": "float32", "quantization": {"dtype": "float16"}},
            {
                "name": "b",
                "shape": [4],
                "dtype": "float32",
                "quantization": {"dtype": "uint8", "scale": 0.01, "min": -1},
            },
        ],
        kernel.tobytes() + bias_q.tobytes(),
        [
            {"name": "x", "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}}},
            {"name": "w", "op": "Const"},
            {"name": "b", "op": "Const"},
            {
                "name": "y",
                "op": "_FusedConv2D",
                "input": ["x", "w", "b"],
                "attr": {
                    "padding": {"s": b64("SAME")},
                    "strides": {"list": {"i": ["1", "1", "1", "1"]}},
                    "fused_ops": {"list": {"s": [b64("BiasAdd"), b64("Relu")]}},
                    "num_args": {"i": "1"},
                    "data_format": {"s": b64("NHWC")},
                },
            },
        ],
    )
    graph = load_tfjs(path)
    bias = bias_q.astype(np.float32) * 0.01 - 1
    np.testing.assert_allclose(graph.constants["b"], bias, atol=1e-6)
    assert graph.constants["w"].dtype == np.float32
    x = torch.randn(1, 5, 5, 2)
    (y,) = compile_graph(graph, ["x"], ["y"])(x)
    expected = F.relu(
        F.conv2d(
            x.permute(0, 3, 1, 2),
            torch.from_numpy(kernel.astype(np.float32)).permute(3, 2, 0, 1),
            torch.from_numpy(bias),
            padding=1,
        )
    ).permute(0, 2, 3, 1)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_tfjs_shards_must_match_the_manifest(tmp_path: Path) -> None:
    weights = [{"name": "w", "shape": [4], "dtype": "float32"}]
    nodes = [{"name": "w", "op": "Const"}]
    with pytest.raises(TfjsFormatError, match="runs past the end"):
        load_tfjs(write_tfjs(tmp_path, weights, b"\0" * 8, nodes))
    with pytest.raises(TfjsFormatError, match="unused bytes"):
        load_tfjs(write_tfjs(tmp_path, weights, b"\0" * 20, nodes))


# --- the executor


def conv_graph(
    kernel: np.ndarray, op: str, stride: int, padding: str, *extra: Node, **constants: np.ndarray
) -> Graph:
    nodes = [
        Node("x", "Placeholder", []),
        Node("w", "Const", []),
        Node("conv", op, ["x", "w"], {"strides": [1, stride, stride, 1], "padding": padding}),
        *extra,
    ]
    return Graph(nodes, {"w": kernel, **constants})


@pytest.mark.parametrize("size", [5, 6])
def test_same_padding_puts_the_odd_pixel_right_and_bottom_like_tensorflow(size: int) -> None:
    kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 3)).astype(np.float32)
    x = torch.randn(1, size, size, 2)
    (y,) = compile_graph(conv_graph(kernel, "Conv2D", 2, "SAME"), ["x"], ["conv"])(x)
    # TF: output ceil(size / 2); total padding 2 for 5 (1 + 1), 1 for 6 (0 before, 1 after).
    before, after = same_padding(size, 3, 2)
    assert (before, after) == ((1, 1) if size == 5 else (0, 1))
    padded = F.pad(x.permute(0, 3, 1, 2), (before, after, before, after))
    expected = F.conv2d(padded, torch.from_numpy(kernel).permute(3, 2, 0, 1), stride=2).permute(0, 2, 3, 1)
    assert y.shape == (1, math.ceil(size / 2), math.ceil(size / 2), 3)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("height", "width", "kernel_size", "stride"),
    [(6, 7, 3, 2), (8, 8, 5, 2), (9, 10, 3, 3), (7, 7, 2, 1), (12, 11, 1, 2)],
)
def test_uneven_same_padding_matches_explicit_padding(
    height: int, width: int, kernel_size: int, stride: int
) -> None:
    # The executor lines TF's uneven padding up with an even one instead of padding the input: the
    # same numbers whatever the kernel, stride and odd or even sides.
    kernel = np.random.default_rng(4).normal(size=(kernel_size, kernel_size, 2, 3)).astype(np.float32)
    x = torch.randn(2, height, width, 2)
    (y,) = compile_graph(conv_graph(kernel, "Conv2D", stride, "SAME"), ["x"], ["conv"])(x)
    top, bottom = same_padding(height, kernel_size, stride)
    left, right = same_padding(width, kernel_size, stride)
    padded = F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom))
    weight = torch.from_numpy(kernel).permute(3, 2, 0, 1)
    expected = F.conv2d(padded, weight, stride=stride).permute(0, 2, 3, 1)
    assert y.shape == (2, math.ceil(height / stride), math.ceil(width / stride), 3)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_depthwise_with_a_channel_multiplier() -> None:
    kernel = np.random.default_rng(2).normal(size=(3, 3, 2, 2)).astype(np.float32)  # (kh, kw, in, multiplier)
    x = torch.randn(1, 4, 4, 2)
    (y,) = compile_graph(conv_graph(kernel, "DepthwiseConv2dNative", 1, "VALID"), ["x"], ["conv"])(x)
    # TF's output channel c * multiplier + m is input channel c convolved with kernel[..., c, m].
    for c in range(2):
        for m in range(2):
            plain = F.conv2d(x[..., c][:, None], torch.from_numpy(kernel[:, :, c, m])[None, None])
            torch.testing.assert_close(y[..., c * 2 + m], plain[:, 0], atol=1e-5, rtol=1e-5)


def test_batch_norm_and_relu6_fold_into_the_conv_without_changing_results() -> None:
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(1, 1, 2, 3)).astype(np.float32)
    scale, offset, mean = (rng.normal(size=3).astype(np.float32) for _ in range(3))
    variance = rng.uniform(0.5, 2, size=3).astype(np.float32)
    graph = conv_graph(
        kernel,
        "Conv2D",
        1,
        "VALID",
        Node("s", "Const", []), Node("o", "Const", []), Node("m", "Const", []), Node("v", "Const", []),
        Node("bn", "FusedBatchNorm", ["conv", "s", "o", "m", "v"], {"epsilon": 0.001}),
        Node("act", "Relu6", ["bn"]),
        s=scale, o=offset, m=mean, v=variance,
    )  # fmt: skip
    x = torch.randn(2, 3, 3, 2) * 4
    program = compile_graph(graph, ["x"], ["act"])
    (y,) = program(x)
    conv = torch.einsum("nhwc,cd->nhwd", x, torch.from_numpy(kernel[0, 0]))
    expected = (
        (conv - torch.from_numpy(mean)) / torch.sqrt(torch.from_numpy(variance) + 0.001)
    ) * torch.from_numpy(scale) + torch.from_numpy(offset)
    torch.testing.assert_close(y, expected.clamp(0, 6), atol=1e-5, rtol=1e-5)
    assert program.steps == 1  # one convolution call, nothing after it


def test_hard_swish_chain_becomes_one_step() -> None:
    nodes = [
        Node("x", "Placeholder", []),
        Node("sixth", "Const", []),
        Node("three", "Const", []),
        Node("scaled", "Mul", ["sixth", "x"]),
        Node("plus", "Add", ["x", "three"]),
        Node("r6", "Relu6", ["plus"]),
        Node("y", "Mul", ["scaled", "r6"]),
    ]
    graph = Graph(nodes, {"sixth": np.float32(0.1666259765625), "three": np.float32(3.0)})
    x = torch.linspace(-5, 5, 41).reshape(1, 41)
    program = compile_graph(graph, ["x"], ["y"])
    (y,) = program(x)
    torch.testing.assert_close(y, 0.1666259765625 * x * (x + 3).clamp(0, 6), atol=1e-6, rtol=1e-6)
    assert program.steps == 1


@pytest.mark.parametrize(
    ("align_corners", "half_pixel", "expected"),
    [
        (False, False, [0.0, 0.5, 1.0, 1.0]),  # TF1 / TF.js default: source = out * in/out
        (False, True, [0.0, 0.25, 0.75, 1.0]),  # half-pixel centres (torch's align_corners=False)
        (True, False, [0.0, 1 / 3, 2 / 3, 1.0]),
    ],
)
def test_resize_bilinear_follows_tf_rules(
    align_corners: bool, half_pixel: bool, expected: list[float]
) -> None:
    x = torch.tensor([0.0, 1.0]).reshape(1, 1, 2, 1)
    out = resize_bilinear(x, (1, 4), align_corners, half_pixel)
    torch.testing.assert_close(out.reshape(-1), torch.tensor(expected))


def test_max_pool_same_pads_with_minus_infinity() -> None:
    graph = Graph(
        [
            Node("x", "Placeholder", []),
            Node("p", "MaxPool", ["x"], {"ksize": [1, 3, 3, 1], "strides": [1, 2, 2, 1], "padding": "SAME"}),
        ],
        {},
    )
    x = -torch.arange(1.0, 10.0).reshape(1, 3, 3, 1)  # all negative: zero padding would win
    (y,) = compile_graph(graph, ["x"], ["p"])(x)
    # 3x3 -> 2x2, one padded row and column on each side: windows start at -1 and 1.
    assert y.reshape(-1).tolist() == [-1.0, -2.0, -4.0, -5.0]


def test_unsupported_ops_and_loops_fail_at_compile_time() -> None:
    graph = Graph([Node("x", "Placeholder", []), Node("y", "NonMaxSuppressionV5", ["x"])], {})
    with pytest.raises(GraphError, match="NonMaxSuppressionV5"):
        compile_graph(graph, ["x"], ["y"])
    loop = Graph([Node("a", "Identity", ["b"]), Node("b", "Identity", ["a"])], {})
    with pytest.raises(GraphError, match="cycle"):
        compile_graph(loop, [], ["a"])
    with pytest.raises(GraphError, match="no node named"):
        compile_graph(graph, ["x"], ["nowhere"])


def test_unbatch_reshapes_opens_a_batch_one_graph_to_any_batch() -> None:
    graph = Graph(
        [Node("x", "Placeholder", []), Node("shape", "Const", []), Node("y", "Reshape", ["x", "shape"])],
        {"shape": np.array([1, 4, 2], dtype=np.int32)},
    )
    graph.unbatch_reshapes()
    (y,) = compile_graph(graph, ["x"], ["y"])(torch.zeros(3, 2, 2, 2))
    assert y.shape == (3, 4, 2)


# --- anchors and decoding


def test_ssd_anchor_grid() -> None:
    anchors = ssd_anchors()
    assert anchors.shape == (19 * 19 * 3 + (10 * 10 + 5 * 5 + 3 * 3 + 2 * 2 + 1) * 6, 4) == (1917, 4)
    # First cell of the 19x19 map: centre half a cell in, boxes 0.1@1:1, then 0.2 at 2:1 (wide).
    torch.testing.assert_close(anchors[0], torch.tensor([0.5 / 19, 0.5 / 19, 0.1, 0.1]))
    torch.testing.assert_close(
        anchors[1], torch.tensor([0.5 / 19, 0.5 / 19, 0.2 / math.sqrt(2), 0.2 * math.sqrt(2)])
    )
    # The last anchor: the single 1x1 map, its extra box at sqrt(0.95 * 1.0).
    torch.testing.assert_close(anchors[-1], torch.tensor([0.5, 0.5, math.sqrt(0.95), math.sqrt(0.95)]))


def test_ssd_box_coder() -> None:
    anchor = torch.tensor([[0.5, 0.4, 0.2, 0.1]])  # ycenter, xcenter, height, width
    # Zero encodings give the anchor itself; ty = 10 moves the centre one anchor height down.
    torch.testing.assert_close(
        decode_boxes(torch.zeros(1, 4), anchor), torch.tensor([[0.35, 0.4, 0.45, 0.6]])
    )
    moved = decode_boxes(torch.tensor([[10.0, 0.0, 5 * math.log(2), 0.0]]), anchor)
    torch.testing.assert_close(moved, torch.tensor([[0.35, 0.5, 0.45, 0.9]]))


def test_face_anchors() -> None:
    anchors = face_anchors()
    assert anchors.shape == (16 * 16 * 2 + 8 * 8 * 6, 2) == (896, 2)
    assert anchors[:3].tolist() == [[8.0, 8.0], [8.0, 8.0], [24.0, 8.0]]  # x first, two per cell
    assert anchors[32].tolist() == [8.0, 24.0]  # second row
    assert anchors[512:519].tolist() == [[16.0, 16.0]] * 6 + [[48.0, 16.0]]


def test_centernet_decoding_picks_peaks() -> None:
    heat = torch.zeros(1, 8, 8, 3)
    heat[0, 2, 5, 1] = 0.9  # a peak of class 1 at row 2, column 5
    heat[0, 2, 6, 1] = 0.5  # its neighbour: not a peak
    heat[0, 6, 1, 2] = 0.4
    sizes = torch.zeros(1, 8, 8, 4)
    sizes[0, 2, 5] = torch.tensor([3.0, 2.0, 1.0, 4.0])  # left, top, right, bottom
    found = decode(heat, sizes, k=3)[0]
    # Stride 4: centre (20, 8) in input pixels.
    assert found[0].tolist() == pytest.approx([17.0, 6.0, 21.0, 12.0, 0.9, 1.0])
    assert found[1, 4:].tolist() == pytest.approx([0.4, 2.0])
    assert found[2, 4].item() == 0.0


def test_views_tile_wide_photos_only() -> None:
    assert views(600, 400) == [(0, 0, 600, 400)]
    assert views(1536, 512) == [
        (0, 0, 1536, 512),
        (0, 0, 512, 512),
        (512, 0, 1024, 512),
        (1024, 0, 1536, 512),
    ]
    assert views(300, 700)[1:] == [(0, 0, 300, 300), (0, 200, 300, 500), (0, 400, 300, 700)]


# --- box arithmetic


def boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_iou_and_nms() -> None:
    a = boxes((0, 0, 10, 10), (1, 0, 11, 10), (20, 20, 30, 30), (0, 0, 10, 5))
    assert iou(a[:1], a).reshape(-1).tolist() == pytest.approx([1.0, 90 / 110, 0.0, 0.5])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # 0.95 (top half) and 0.9 overlap at 0.5: kept at threshold 0.6, suppressed at 0.4.
    assert nms(a, scores, 0.6).tolist() == [3, 0, 2]
    assert nms(a, scores, 0.4).tolist() == [3, 2]
    assert nms(boxes(), torch.tensor([]), 0.5).tolist() == []


def test_batched_nms_keeps_overlapping_boxes_of_different_classes() -> None:
    a = boxes((0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10))
    kept = batched_nms(a, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), 0.4)
    assert kept.tolist() == [0, 1]


def detection(score: float, x1: float, y1: float, x2: float, y2: float, label: str = "person") -> Detection:
    return Detection(label, score, Box(x1, y1, x2, y2))


def test_drop_contained_removes_parts_of_a_better_box() -> None:
    whole = detection(0.9, 0.0, 0.0, 0.5, 1.0)
    torso = detection(0.6, 0.1, 0.3, 0.45, 0.7)  # fully inside
    neighbour = detection(0.7, 0.3, 0.0, 0.8, 1.0)  # 40 % inside: a second person
    cup = detection(0.8, 0.1, 0.3, 0.2, 0.4, label="cup")  # inside, but another label
    kept = drop_contained([torso, neighbour, whole, cup], 0.7)
    assert kept == [whole, cup, neighbour]


def test_normalised_box_clips_to_the_photo() -> None:
    assert normalised_box(-5, 10, 250, 90, width=200, height=100) == Box(0.0, 0.1, 1.0, 0.9)
