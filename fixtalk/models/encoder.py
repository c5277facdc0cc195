"""Encoder E (EDTalk Sec. 3.1 / FixTalk Fig. 4a; docs/architecture.md section 1).

A StyleGAN2 ResNet encoder (as in LIA): a 1x1 stem, one ResBlock per halving down to 4x4, then a 4x4
conv to a `style_dim` latent. It returns the latent f_6 ("wa") and the multi-scale maps f_{1:5} that G
warps, coarse -> fine, starting at 8x8 and ending with the full-resolution stem output. f_4 is the 32x32
map (512x32x32 at the paper's setting), index `ModelConfig.f4_index` of that list.
"""

from __future__ import annotations

import torch
from torch import nn

from fixtalk.config import ModelConfig
from fixtalk.models.layers import ConvLayer, EqualConv2d, ResBlock


class EncoderApp(nn.Module):
    """The appearance/motion encoder; module name `net_app` as in EDTalk checkpoints."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ch = cfg.channel
        self.convs = nn.ModuleList([ConvLayer(3, ch(cfg.size), 1)])
        res = cfg.size
        while res > 4:
            self.convs.append(ResBlock(ch(res), ch(res // 2)))
            res //= 2
        self.convs.append(EqualConv2d(ch(4), cfg.style_dim, 4, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: B x 3 x S x S in [-1, 1] -> (latent B x style_dim, maps coarse->fine [B x C_r x r x r])."""
        outs = []
        h = x
        for conv in self.convs:
            h = conv(h)
            outs.append(h)
        # outs = [stem S, S/2, ..., 4x4, 1x1]; G consumes 8x8 .. S.
        return outs[-1].flatten(1), outs[-3::-1]


class Encoder(nn.Module):
    """Wrapper holding `net_app` so that parameter names read `enc.net_app.*` as in EDTalk."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.net_app = EncoderApp(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.net_app(x)
