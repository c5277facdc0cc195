"""Image discriminator D of the adversarial loss L_adv (FixTalk Eq. 3; EDTalk:networks/discriminator.py).

StyleGAN2's ResNet discriminator as LIA and EDTalk use it (docs/architecture.md 4.1), with the same module
names so that an EDTalk/LIA discriminator state dict loads without renaming:

    convs        stem ConvLayer(3 -> ch(S), 1x1), then ResBlocks halving the resolution S -> 4
    (stddev)     minibatch standard deviation: one extra feature channel at 4x4
    final_conv   ConvLayer(ch(4) + 1 -> ch(4), 3x3)
    final_linear EqualLinear(ch(4)*16 -> ch(4), fused leaky ReLU), EqualLinear(ch(4) -> 1)

With the default channel table (EDTalk's: 512 at 4..32, 256 at 64, 128 at 128, 64 at 256) D has
24,001,089 parameters at 256x256 (docs/architecture.md: "~24.0 M"). Image-level only: EDTalk's released code
has no lip discriminator.
"""

from __future__ import annotations

import torch
from torch import nn

from fixtalk.config import ModelConfig
from fixtalk.models.layers import ConvLayer, EqualLinear, ResBlock


def stddev_group_size(batch: int, max_group: int = 4) -> int:
    """Largest divisor of `batch` that is <= min(batch, max_group).

    StyleGAN2 uses group = min(batch, 4) and requires batch % group == 0 (a view() fails otherwise).
    We fall back to the largest divisor instead of failing, so any batch works: 6 -> 3, 5 -> 1, 7 -> 1.
    For the batches the reference accepts (divisible by min(batch, 4)) the result is unchanged.
    A group of 1 has zero variance, so the stddev channel is then the constant sqrt(1e-8).
    """
    for g in range(min(batch, max_group), 0, -1):
        if batch % g == 0:
            return g
    return 1


def minibatch_stddev(x: torch.Tensor, max_group: int = 4, features: int = 1) -> torch.Tensor:
    """Append `features` channels holding the per-group feature standard deviation (Karras et al. 2018).

    x: B x C x H x W -> B x (C + features) x H x W. Grouping as in rosinality's StyleGAN2: the group axis is
    the outer one of `view(group, -1, ...)`, so sample i shares a group with samples i + k * B/group.
    """
    b, c, h, w = x.shape
    group = stddev_group_size(b, max_group)
    s = x.view(group, -1, features, c // features, h, w)
    s = torch.sqrt(s.var(0, unbiased=False) + 1e-8)      # (B/group) x F x C/F x H x W
    s = s.mean([2, 3, 4], keepdim=True).squeeze(2)       # (B/group) x F x 1 x 1
    s = s.repeat(group, 1, h, w)                         # B x F x H x W
    return torch.cat([x, s], 1)


class Discriminator(nn.Module):
    """D: B x 3 x S x S image in [-1, 1] -> B x 1 realness logit (S = cfg.size)."""

    def __init__(self, cfg: ModelConfig, stddev_group: int = 4, stddev_feat: int = 1) -> None:
        super().__init__()
        self.size = cfg.size
        self.stddev_group = stddev_group   # max samples per minibatch-stddev group
        self.stddev_feat = stddev_feat     # stddev channels appended at 4x4
        ch = cfg.channel
        convs: list[nn.Module] = [ConvLayer(3, ch(cfg.size), 1)]
        in_ch = ch(cfg.size)
        for i in range(cfg.log_size, 2, -1):          # S -> S/2 -> ... -> 4
            out_ch = ch(2 ** (i - 1))
            convs.append(ResBlock(in_ch, out_ch))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.final_conv = ConvLayer(in_ch + stddev_feat, ch(4), 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch(4) * 4 * 4, ch(4), activation=True),
            EqualLinear(ch(4), 1),
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[-2:] != (self.size, self.size):
            raise ValueError(f"Discriminator expects {self.size}x{self.size} images, got {tuple(img.shape)}")
        out = self.convs(img)                                        # B x ch(4) x 4 x 4
        out = minibatch_stddev(out, self.stddev_group, self.stddev_feat)
        out = self.final_conv(out)                                   # B x ch(4) x 4 x 4
        return self.final_linear(out.flatten(1))                     # B x 1


__all__ = ["Discriminator", "minibatch_stddev", "stddev_group_size"]
