"""Enhanced Detail Indicator (EDI), FixTalk Sec. 4.2 and Fig. 4(c)-(e).

In the self-driven case the driver's f_4^d "leaks" details that help G render extreme poses and
expressions (Sec. 3.2). EDI stores that leakage in a memory during training and recalls it at
inference, when f_4^d of the source identity does not exist:

* compressor Pi (Fig. 4c): f_4 (B x C x 32 x 32) -> compact token f_pi (B x C);
* Leakage Memory (Fig. 4d): driven-identity memory M_d (S x C) and motion-source memory
  M_m-s (S x (C + key_dim)).
  Training: alpha_d = softmax(cos(f_pi^d, m_d^i)) (Eq. 5), \\hat f_pi^d = sum alpha_d m_d (Eq. 6),
  alpha_m-s = softmax(cos(f_pi^s (+) key, m_m-s^i)) (Eq. 7), aligned to alpha_d by KL (Eq. 8).
  Inference: \\hat f_pi^s = sum alpha_m-s m_d (Eq. 9): address from M_m-s, values from M_d;
* decompressor Lambda (Fig. 4e): token -> \\hat f_4^s (B x C x 32 x 32);
* MHCA (RestoreFormer-style): Q = f_4^s tokens, K = V = \\hat f_4^s tokens -> fused f_4 for G.

The paper's key is z_s^d = z^d - z^s (EMI difference); ours defaults to the FDM motion difference
m^d - m^s (EDIConfig.motion_key, docs/architecture.md 9.3): EDI takes whatever key_dim-wide key it is given.
The softmax carries a temperature kappa (kappa = 1 is the paper's literal form; docs/architecture.md 9.3).
The losses (Eqs. 6, 8) live in `fixtalk.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fixtalk.config import EDIConfig
from fixtalk.models.emi import F4_GRID, CrossAttention, FeedForward, map_to_tokens


class Compressor(nn.Module):
    """Pi: average pooling + weighted sum. f_4 (B x C x H x W) -> f_pi (B x C).

    Tokens = adaptive average pool to grid x grid (grid^2 tokens) + one global-pool token; the
    softmax over grid^2 + 1 learnable logits starts uniform, i.e. at the plain global average.
    """

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.logits = nn.Parameter(torch.zeros(grid * grid + 1))

    def forward(self, f4: Tensor) -> Tensor:
        local = F.adaptive_avg_pool2d(f4, self.grid).flatten(2)  # B x C x grid^2
        tokens = torch.cat([local, f4.mean(dim=(2, 3)).unsqueeze(2)], dim=2)  # B x C x (grid^2 + 1)
        return tokens @ self.logits.softmax(0).to(tokens.dtype)  # B x C


class LeakageMemory(nn.Module):
    """Leakage Memory Network: M_d (S x C) and M_m-s (S x (C + key_dim)), Eqs. 5-9.

    Rows start as L2-normalised Gaussians (so initial cosines are spread and values have unit norm).
    kappa multiplies every cosine before the softmax; it is a parameter iff `learn_kappa`.
    """

    def __init__(self, slots: int, dim: int, key_dim: int, kappa_init: float, learn_kappa: bool) -> None:
        super().__init__()
        self.m_d = nn.Parameter(F.normalize(torch.randn(slots, dim), dim=1))
        self.m_ms = nn.Parameter(F.normalize(torch.randn(slots, dim + key_dim), dim=1))
        kappa = torch.tensor(float(kappa_init))
        if learn_kappa:
            self.kappa = nn.Parameter(kappa)
        else:
            self.register_buffer("kappa", kappa)

    @staticmethod
    def _cosine(query: Tensor, memory: Tensor) -> Tensor:
        """B x D, S x D -> B x S cosine similarities."""
        return F.normalize(query, dim=-1) @ F.normalize(memory, dim=-1).t()

    def address_driven(self, f_pi_d: Tensor) -> tuple[Tensor, Tensor]:
        """Eqs. 5-6: f_pi^d (B x C) -> (alpha_d: B x S, \\hat f_pi^d: B x C)."""
        alpha_d = (self.kappa * self._cosine(f_pi_d, self.m_d)).softmax(dim=-1)
        return alpha_d, alpha_d @ self.m_d

    def address_motion_source(self, f_pi_s: Tensor, motion_key: Tensor) -> tuple[Tensor, Tensor]:
        """Eqs. 7 and 9: (f_pi^s: B x C, key: B x key_dim) -> (alpha_m-s: B x S, \\hat f_pi^s: B x C).

        Query with f_pi^s (+) key because f_pi^d is unavailable at inference; the address comes from
        M_m-s but the values from M_d, which L_align (Eq. 8) keeps slot-aligned with M_m-s.
        """
        query = torch.cat([f_pi_s, motion_key], dim=-1)
        alpha_ms = (self.kappa * self._cosine(query, self.m_ms)).softmax(dim=-1)
        return alpha_ms, alpha_ms @ self.m_d


def _group_count(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= max_groups that divides `channels` (GroupNorm needs a divisor)."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


class Decompressor(nn.Module):
    """Lambda: token (B x C) -> \\hat f_4 (B x C x 32 x 32).

    Linear to Cw x 4 x 4, three [nearest x2, 3x3 conv, GroupNorm, LeakyReLU 0.2] stages to 32x32, a 1x1
    conv back to C and a learnable C x 32 x 32 positional bias (a single vector carries no layout).
    """

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Linear(dim, width * 4 * 4)
        stages: list[nn.Module] = []
        for _ in range(3):  # 4 -> 8 -> 16 -> 32
            stages += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GroupNorm(_group_count(width), width),
                nn.LeakyReLU(0.2),
            ]
        self.up = nn.Sequential(*stages)
        self.out = nn.Conv2d(width, dim, 1)
        self.pos = nn.Parameter(torch.zeros(1, dim, F4_GRID, F4_GRID))

    def forward(self, token: Tensor) -> Tensor:
        x = self.fc(token).view(-1, self.width, 4, 4)
        return self.out(self.up(x)) + self.pos


class MHCA(nn.Module):
    """RestoreFormer-style multi-head cross-attention: fused = MHCA(q = f_4^s, kv = \\hat f_4^s).

    Pre-LN, learnable 2-D positional embeddings on the Q and K/V tokens (not on the residual stream),
    attention residual then FFN residual. The last Linear of both residual branches is zero-initialised,
    so at init the output equals f_4^s exactly and an EDTalk-initialised G starts from baseline
    behaviour; those Linears get gradient at step 0, everything upstream once they have moved.
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.pos_q = nn.Parameter(torch.randn(1, dim, F4_GRID, F4_GRID) * 0.02)
        self.pos_kv = nn.Parameter(torch.randn(1, dim, F4_GRID, F4_GRID) * 0.02)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_mult)
        for lin in (self.attn.out, self.ffn.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, f4_s: Tensor, f4_hat: Tensor) -> Tensor:
        """f4_s: B x C x H x W; f4_hat: B x C x H' x W' -> B x C x H x W."""
        b, c, h, w = f4_s.shape
        x = f4_s.flatten(2).transpose(1, 2)  # B x HW x C residual stream (B x 1024 x C for f_4)
        q = self.norm_q(map_to_tokens(f4_s, self.pos_q))
        kv = self.norm_kv(map_to_tokens(f4_hat, self.pos_kv))
        x = x + self.attn(q, kv)
        x = x + self.ffn(self.norm_ffn(x))
        return x.transpose(1, 2).reshape(b, c, h, w)


@dataclass
class EDIOutput:
    """Everything one training step needs from EDI (B = batch, S = slots, C = f_4 channels)."""

    f_pi_s: Tensor  # B x C       compressed source token
    f_pi_d: Tensor  # B x C       compressed driven token (target of L_d-mem, Eq. 6)
    alpha_d: Tensor  # B x S      driven address (Eq. 5), Q of L_align
    alpha_ms: Tensor  # B x S     motion-source address (Eq. 7), P of L_align
    f_hat_d: Tensor  # B x C      recalled via the driven address (Eq. 6)
    f_hat_s: Tensor  # B x C      recalled via the motion-source address (Eq. 9)
    fused: Tensor  # B x C x H x W  MHCA(f_4^s, Lambda(chosen token)), replaces f_4^s in G


class EDI(nn.Module):
    """Enhanced Detail Indicator: Pi, the Leakage Memory, Lambda and MHCA.

    Args:
        cfg:         EDIConfig (slots, kappa_init, learn_kappa, compress_grid, decompress_channels,
                     heads, ffn_mult).
        f4_channels: channels C of f_4 (= token width, M_d slot width).
        key_dim:     width of the motion key concatenated to f_pi^s (style_dim for both key kinds).
    """

    def __init__(self, cfg: EDIConfig, f4_channels: int, key_dim: int) -> None:
        super().__init__()
        self.compressor = Compressor(cfg.compress_grid)
        self.memory = LeakageMemory(cfg.slots, f4_channels, key_dim, cfg.kappa_init, cfg.learn_kappa)
        self.decompressor = Decompressor(f4_channels, cfg.decompress_channels)
        self.mhca = MHCA(f4_channels, cfg.heads, cfg.ffn_mult)

    def compress(self, f4: Tensor) -> Tensor:
        """Pi: B x C x H x W -> B x C."""
        return self.compressor(f4)

    def fuse(self, f4_s: Tensor, token_hat: Tensor) -> Tensor:
        """Lambda then MHCA: (f_4^s: B x C x H x W, recalled token: B x C) -> fused f_4 (B x C x H x W)."""
        return self.mhca(f4_s, self.decompressor(token_hat))

    def forward_train(
        self,
        f4_s: Tensor,
        f4_d: Tensor,
        motion_key: Tensor,
        use_source_address: bool | Tensor = False,
    ) -> EDIOutput:
        """Both addressings plus the fused map (training, same identity for source and driver).

        use_source_address picks the token that G consumes: False -> \\hat f_pi^d (driven address),
        True -> \\hat f_pi^s (Eq. 9, the inference path); a B-element bool tensor picks per sample,
        for the curriculum that switches to the source address with probability p (docs/architecture.md 9.3).
        """
        f_pi_s, f_pi_d = self.compress(f4_s), self.compress(f4_d)
        alpha_d, f_hat_d = self.memory.address_driven(f_pi_d)
        alpha_ms, f_hat_s = self.memory.address_motion_source(f_pi_s, motion_key)
        if isinstance(use_source_address, Tensor):
            token = torch.where(use_source_address.view(-1, 1).to(f_hat_s.device), f_hat_s, f_hat_d)
        else:
            token = f_hat_s if use_source_address else f_hat_d
        return EDIOutput(f_pi_s, f_pi_d, alpha_d, alpha_ms, f_hat_d, f_hat_s, self.fuse(f4_s, token))

    def forward_infer(self, f4_s: Tensor, motion_key: Tensor, f_pi_s: Tensor | None = None) -> Tensor:
        """Eq. 9 path: (f_4^s: B x C x H x W, key: B x key_dim) -> fused f_4 (B x C x H x W).

        Pass a cached f_pi_s (B x C, from `compress(f4_s)`) to skip Pi on every frame of one source.
        """
        if f_pi_s is None:
            f_pi_s = self.compress(f4_s)
        _, f_hat_s = self.memory.address_motion_source(f_pi_s, motion_key)
        return self.fuse(f4_s, f_hat_s)
