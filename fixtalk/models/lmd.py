"""Linear Motion Decomposition: LIA's motion network (LIA, Wang et al., ICLR 2022, Sec. 3; FixTalk Sec. 5,
"Generalizability"; docs/architecture.md 2.3).

LIA navigates the latent space along one learned set of directions D = {d_1, ..., d_M} (M = 20 in the
released models): a linear MLP of 4 x EqualLinear(512, 512) + EqualLinear(512, M) (no activations) maps the
motion feature to magnitudes alpha, and the directions are Q of a reduced QR of a free 512 x M matrix
(+1e-8, as in the reference), so the motion is m = Q alpha = sum_i alpha_i d_i. Unlike EDTalk's FDM there
is no split into mouth, pose and expression: one motion, held in `Motion.lip` (pose is empty, B x 0).

The first four layers are exactly FDM's shared trunk (EDTalk's stage 2 starts its trunk from them), which is
why both live under `fdm.` in fixtalk checkpoints: `fdm.fc.0..4` = LIA's `enc.fc.0..4`, `fdm.direction` =
LIA's `dec.direction` (`fixtalk.checkpoint.convert_lia`).
"""

from __future__ import annotations

import torch

from fixtalk.config import ModelConfig
from fixtalk.models.fdm import Bank, Motion, MotionNet, linear_mlp


class LMD(MotionNet):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.decoupled:
            raise ValueError(f"LMD is LIA's motion network; {cfg.name} has motion_net={cfg.motion_net!r}")
        d = cfg.style_dim
        self.lip_dim, self.pose_dim, self.exp_dim = cfg.lip_dim, 0, 0
        self.fc = linear_mlp([d] * 5 + [cfg.lip_dim])
        self.direction = Bank(d, cfg.lip_dim)

    def raw_bank(self) -> torch.Tensor:
        return self.direction.weight

    def head(self, factor: str, latent: torch.Tensor) -> torch.Tensor:
        if factor == "lip":
            return self.fc(latent)
        if factor == "pose":
            return latent.new_zeros(latent.shape[0], 0)
        raise ValueError("a LIA model has one motion and no expression head")

    def predict(self, lip_latent: torch.Tensor, pose_latent: torch.Tensor | None = None,
                exp_latent: torch.Tensor | None = None) -> Motion:
        """The magnitudes of one motion feature. Other features for pose/expression are refused: a LIA model
        has one motion, so it cannot take the mouth, pose and expression from different frames."""
        for other in (pose_latent, exp_latent):
            if other is not None and other is not lip_latent and not torch.equal(other, lip_latent):
                raise ValueError("a LIA model has one motion: mouth, pose and expression must come from "
                                 "the same driver")
        alpha = self.fc(lip_latent)
        return Motion(alpha, alpha.new_zeros(alpha.shape[0], 0))
