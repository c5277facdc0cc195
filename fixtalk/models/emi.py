"""Enhanced Motion Indicator (EMI), FixTalk Sec. 4.1 and Fig. 4(b).

EDTalk feeds only the 512-d encoder latent f_6 into the Face Decoupling Module. EMI replaces that
input with an enhanced motion feature z built from every scale of the encoder:

* the extractor P (N stacked pre-LN [cross-attention + FFN] layers) lets learnable Q-Former-style
  queries q_l read the identity-rich f_4 map (K = V = its 32x32 tokens) and keep only what helps
  motion extraction;
* the other encoder maps are global-average-pooled ("Average Pooling layer") and projected to
  style_dim;
* a SUPERB-style Weighted Sum (softmax over learnable per-entry logits) merges
  [pooled maps..., P(f_4), f_6] into z, which the FDM consumes instead of f_6.

The disentanglement loss on z (Eq. 4) lives in `fixtalk.losses.disentangle_loss`.
Unspecified details follow docs/architecture.md 9.3 [ours]: N = 2, 32 queries, 8 heads, FFN 4C with GELU,
learnable 2-D positional embedding on the f_4 tokens, f_6 initialised to weight 0.9.

The attention building blocks (`CrossAttention`, `FeedForward`) are shared with EDI's MHCA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fixtalk.config import EMIConfig

F4_GRID = 32  # f_4 is the 32x32 encoder map at every input size (docs/architecture.md 1)


class CrossAttention(nn.Module):
    """Multi-head cross-attention, (B, Nq, C) x (B, Nk, C) -> (B, Nq, C).

    Written on F.scaled_dot_product_attention (flash / memory-efficient kernels on GPU, exports to
    ONNX) with plain Linear projections so the output projection can be zero-initialised.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # K and V in one matmul
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, nq, c = x.shape
        h = self.heads
        q = self.q(x).view(b, nq, h, c // h).transpose(1, 2)  # B x h x Nq x C/h
        k, v = self.kv(context).view(b, -1, 2, h, c // h).permute(2, 0, 3, 1, 4)  # each B x h x Nk x C/h
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, nq, c))


class FeedForward(nn.Sequential):
    """Linear(C -> mult*C) -> GELU -> Linear(mult*C -> C); the last Linear is `.out`."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, mult * dim)
        self.act = nn.GELU()
        self.out = nn.Linear(mult * dim, dim)


def map_to_tokens(x: Tensor, pos: Tensor | None = None) -> Tensor:
    """B x C x H x W (+ a 1 x C x h x w positional map, resized if needed) -> B x HW x C tokens."""
    if pos is not None:
        if pos.shape[-2:] != x.shape[-2:]:
            # The embedding is sized for f_4's 32x32 grid; other grids (tests, odd crops) interpolate.
            pos = F.interpolate(pos, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = x + pos
    return x.flatten(2).transpose(1, 2)


class ExtractorLayer(nn.Module):
    """One pre-LN layer of P: queries <- queries + CA(LN(queries), LN(f_4 tokens)); then + FFN(LN)."""

    def __init__(self, dim: int, heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_mult)

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        q = q + self.attn(self.norm_q(q), self.norm_kv(kv))
        return q + self.ffn(self.norm_ffn(q))


class Extractor(nn.Module):
    """The lightweight extractor P: learnable queries read f_4 (B x C x 32 x 32) -> B x Nq x C."""

    def __init__(self, dim: int, layers: int, heads: int, queries: int, ffn_mult: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, queries, dim) * 0.02)  # q_l, Q-Former init
        self.pos = nn.Parameter(torch.randn(1, dim, F4_GRID, F4_GRID) * 0.02)  # on the K/V tokens
        self.layers = nn.ModuleList(ExtractorLayer(dim, heads, ffn_mult) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)  # final LN of a pre-LN stack

    def forward(self, f4: Tensor) -> Tensor:
        kv = map_to_tokens(f4, self.pos)  # B x HW x C (B x 1024 x C for f_4)
        q = self.queries.expand(f4.shape[0], -1, -1)  # B x Nq x C
        for layer in self.layers:
            q = layer(q, kv)
        return self.norm(q)


class EMI(nn.Module):
    """Enhanced Motion Indicator: (other encoder maps, f_4, latent f_6) -> z (B x style_dim).

    Args:
        cfg:          EMIConfig (layers, heads, queries, ffn_mult, latent_init_weight).
        map_channels: channels of the other encoder maps, in the order `forward` receives them
                      (at 512 input, [ours]: f_1, f_2, f_3, f_5 = 64, 128, 256, 512).
        f4_channels:  channels C of f_4 (512 in every preset but `fixtalk-small`).
        style_dim:    width of the latent f_6 and of z (the FDM input).

    Initialisation: all projections into the weighted sum are zero, so at init
    z = latent_init_weight * f_6 exactly (an EDTalk-initialised FDM sees a rescaled baseline input).
    The projections' weights still receive gradient at step 0; P's own parameters start learning
    once its projection has moved (one optimizer step), the adaLN-Zero / zero-conv trade-off.
    """

    def __init__(self, cfg: EMIConfig, map_channels: Sequence[int], f4_channels: int, style_dim: int) -> None:
        super().__init__()
        if not 0.0 < cfg.latent_init_weight < 1.0:
            raise ValueError(f"latent_init_weight must be in (0, 1), got {cfg.latent_init_weight}")
        self.extractor = Extractor(f4_channels, cfg.layers, cfg.heads, cfg.queries, cfg.ffn_mult)
        self.extractor_proj = nn.Linear(f4_channels, style_dim)
        self.map_proj = nn.ModuleList(nn.Linear(c, style_dim) for c in map_channels)
        for lin in [self.extractor_proj, *self.map_proj]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

        # Weighted Sum over [pooled maps..., P(f_4), f_6]: logits = log(initial weight) so the softmax
        # starts at latent_init_weight for f_6 and shares the rest equally.
        n = len(map_channels) + 2
        rest = (1.0 - cfg.latent_init_weight) / (n - 1)
        logits = torch.full((n,), math.log(rest))
        logits[-1] = math.log(cfg.latent_init_weight)
        self.layer_logits = nn.Parameter(logits)

    def layer_weights(self) -> Tensor:
        """Softmax weights of the Weighted Sum, order [maps..., P(f_4), f_6]; shape (len(maps) + 2,)."""
        return self.layer_logits.softmax(0)

    def forward(self, maps: Sequence[Tensor], f4: Tensor, latent: Tensor) -> Tensor:
        """maps: B x C_k x H_k x W_k each; f4: B x C x 32 x 32; latent: B x style_dim -> z: B x style_dim."""
        if len(maps) != len(self.map_proj):
            raise ValueError(f"EMI was built for {len(self.map_proj)} maps, got {len(maps)}")
        entries = [proj(m.mean(dim=(2, 3))) for proj, m in zip(self.map_proj, maps)]  # Average Pooling
        entries.append(self.extractor_proj(self.extractor(f4).mean(dim=1)))  # mean over query tokens
        entries.append(latent)
        stacked = torch.stack(entries, dim=1)  # B x (n) x style_dim
        w = self.layer_weights().to(stacked.dtype)
        return torch.einsum("n,bnd->bd", w, stacked)
