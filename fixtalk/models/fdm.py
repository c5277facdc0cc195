"""Face Decoupling Module (EDTalk Sec. 3.2; FixTalk Fig. 4a; docs/architecture.md section 2).

Three latent navigations share a 4-layer linear trunk `fc`; the mouth (MLN), pose (PLN) and expression
(ELN) heads predict the weights of three orthonormal banks: 20 mouth, 6 pose and 10 expression bases of a
`style_dim` space. Orthonormality is by construction: a reduced QR of the raw bank matrices
[W_lip,pose | W_exp] (+1e-8 as in the reference). Because QR orthogonalises columns in order, the first
26 columns equal the lip/pose-only model's bank, and every expression base is orthogonal to them.

Motion m = Q alpha (absolute motion); G renders latent = f_6^s + m, and EEM receives the expression part e.
LIA's relative mode (`Motion.relative`) is an affine map of alpha, so it needs no support inside the model.
In eval mode Q is computed once and cached; training recomputes it every step. The bank and cache logic is
`MotionNet`, shared with LIA's motion network (`fixtalk.models.lmd.LMD`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fixtalk.config import ModelConfig
from fixtalk.models.layers import EqualLinear


@dataclass
class Motion:
    """Bank weights of one or more frames; any factor may be None only before composition."""

    lip: torch.Tensor    # B x 20
    pose: torch.Tensor   # B x 6
    exp: torch.Tensor | None = None  # B x 10 (None for the lip/pose-only model)

    def alpha(self) -> torch.Tensor:
        parts = [self.lip, self.pose] + ([self.exp] if self.exp is not None else [])
        return torch.cat(parts, dim=-1)

    def scaled(self, lip: float = 1.0, pose: float = 1.0, exp: float = 1.0) -> Motion:
        return Motion(self.lip * lip, self.pose * pose, None if self.exp is None else self.exp * exp)

    def relative(self, start: Motion, source: Motion) -> Motion:
        """LIA's relative motion: alpha - alpha_start + alpha_source per factor. Since m = Q alpha is linear,
        Q of this equals the demo's D(alpha_drive) - D(alpha_start) + D(alpha_source): the driver's motion
        since its first frame, applied on top of the source's own pose and expression."""
        exp = None
        if self.exp is not None and start.exp is not None and source.exp is not None:
            exp = self.exp - start.exp + source.exp
        return Motion(self.lip - start.lip + source.lip, self.pose - start.pose + source.pose, exp)


class Bank(nn.Module):
    """A raw basis matrix (style_dim x n); named `direction_*.weight` in EDTalk checkpoints."""

    def __init__(self, style_dim: int, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(style_dim, n))


def linear_mlp(dims: list[int]) -> nn.Sequential:
    # Purely linear, as in LIA/EDTalk: no activation between the EqualLinear layers.
    return nn.Sequential(*[EqualLinear(a, b) for a, b in zip(dims[:-1], dims[1:])])


class MotionNet(nn.Module):
    """What FDM (EDTalk) and LMD (LIA, `fixtalk.models.lmd`) share: heads that map a motion feature to bank
    weights, and orthonormal banks (QR, cached in eval mode) that compose them into m = Q alpha."""

    lip_dim: int
    pose_dim: int
    exp_dim: int

    def __init__(self) -> None:
        super().__init__()
        self._q_cache: torch.Tensor | None = None

    def raw_bank(self) -> torch.Tensor:
        """The raw bank matrix (style_dim x n_motion), columns in alpha's order."""
        raise NotImplementedError

    def head(self, factor: str, latent: torch.Tensor) -> torch.Tensor:
        """Bank weights of one factor ('lip', 'pose' or 'exp') from a motion feature B x style_dim."""
        raise NotImplementedError

    # --- banks ----------------------------------------------------------------------------------
    def basis(self) -> torch.Tensor:
        """Orthonormal bases Q (style_dim x n_motion); cached while the module is in eval mode."""
        if not self.training and self._q_cache is not None:
            return self._q_cache
        q, _ = torch.linalg.qr(self.raw_bank() + 1e-8, mode="reduced")
        if not self.training:
            # Eval mode means frozen banks: cache a constant (no autograd graph to keep alive).
            self._q_cache = q = q.detach()
        return q

    def train(self, mode: bool = True) -> MotionNet:
        self._q_cache = None  # the banks may change (training, or a new state dict) -> recompute
        return super().train(mode)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._q_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def compose(self, motion: Motion) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(m = Q alpha, e = expression part of m). A missing expression counts as zero weights."""
        q = self.basis()
        n_lp = self.lip_dim + self.pose_dim
        alpha_lp = torch.cat([motion.lip, motion.pose], dim=-1)
        m = alpha_lp @ q[:, :n_lp].T
        e = None
        if self.exp_dim:
            exp = motion.exp if motion.exp is not None else alpha_lp.new_zeros(alpha_lp.shape[0], self.exp_dim)
            e = exp @ q[:, n_lp:].T
            m = m + e
        return m, e


class FDM(MotionNet):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.style_dim
        self.lip_dim, self.pose_dim, self.exp_dim = cfg.lip_dim, cfg.pose_dim, cfg.exp_dim
        self.fc = linear_mlp([d] * 5)
        self.lip_fc = linear_mlp([d, d, d, cfg.lip_dim])
        self.pose_fc = linear_mlp([d, d, d, cfg.pose_dim])
        self.direction_lipnonlip = Bank(d, cfg.lip_dim + cfg.pose_dim)
        if cfg.exp_dim:
            self.exp_fc = linear_mlp([d, d, d, cfg.exp_dim])
            self.direction_exp = Bank(d, cfg.exp_dim)

    def raw_bank(self) -> torch.Tensor:
        w = self.direction_lipnonlip.weight
        return torch.cat([w, self.direction_exp.weight], dim=1) if self.exp_dim else w

    # --- latent navigation ----------------------------------------------------------------------
    def trunk(self, latent: torch.Tensor) -> torch.Tensor:
        return self.fc(latent)

    def head(self, factor: str, latent: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"{factor}_fc")(self.fc(latent))  # lip_fc / pose_fc / exp_fc over the shared trunk

    def predict(self, lip_latent: torch.Tensor, pose_latent: torch.Tensor,
                exp_latent: torch.Tensor | None = None) -> Motion:
        """Bank weights from the driving latents of each factor (each may come from its own frame)."""
        exp = None
        if self.exp_dim and exp_latent is not None:
            exp = self.head("exp", exp_latent)
        return Motion(self.head("lip", lip_latent), self.head("pose", pose_latent), exp)
