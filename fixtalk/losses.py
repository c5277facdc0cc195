"""Training losses of EDTalk and FixTalk as small pure functions, each tagged with its source.

* Image losses (FixTalk Eqs. 2-3, as EDTalk's code computes them; docs/architecture.md 4.2):
  `reconstruction_l1`, `perceptual_pyramid` (FOMM/LIA "VGGLoss": L1 over a 4-scale pyramid, not the
  squared L2 written in the paper), `gan_generator_loss`, `gan_discriminator_loss` (non-saturating),
  `r1_penalty` (Mescheder et al. 2018; optional, `fixtalk train --r1`).
* FixTalk (Sec. 4): `disentangle_loss` (L_dis, Eq. 4), `memory_recall_loss` (L_d-mem, Eq. 6),
  `memory_align_kl` (L_align, Eq. 8).
* Pixel path (docs/quality.md): `landmark_flow_loss`, MetaPortrait's landmark-guided flow supervision.
* EDTalk stages: `latent_consistency` (Mouth-Pose decoupling), `audio2lip_regression`,
  `audio2lip_smoothness` (Audio2Lip).

Weights come from `LossWeights` (docs/architecture.md 4.2 and 9.3); the combining trainer applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class LossWeights:
    """Loss weights; defaults from docs/architecture.md 9.3 [ours] and 4.2 [EDTalk code]."""

    rec: float = 1.0                 # L1 reconstruction (L_rec, Eq. 2)
    perceptual: float = 1.0          # VGG pyramid (L_per, Eq. 2); its per-layer weight 10 is inside
    perceptual_layer: float = 10.0   # per-layer weight inside `perceptual_pyramid`
    gan: float = 1.0                 # non-saturating adversarial loss (L_adv, Eq. 3), G and D
    dis: float = 1.0                 # L_dis (Eq. 4); its margin xi is EMIConfig.xi
    mem: float = 1.0                 # L_d-mem (Eq. 6)
    mem_commit: float = 0.0          # optional commitment term of L_d-mem (0.25 if tokens drift)
    align: float = 1.0               # L_align (Eq. 8)
    latent_consistency: float = 1.0  # Mouth-Pose stage exp(-cos) consistency
    audio_reg: float = 1.0           # Audio2Lip weight regression
    audio_smooth: float = 0.1        # Audio2Lip temporal smoothness
    face_crop: float = 1.0           # audio stage: L1 on 96x96 face crops
    sync: float = 5.0                # audio stage: SyncNet BCE
    landmark_flow: float = 0.0       # pixel path: the flow carries driver landmarks onto the source's (MetaPortrait)


# --- image losses (Eqs. 2-3) ----------------------------------------------------------------------


def reconstruction_l1(pred: Tensor, target: Tensor) -> Tensor:
    """L_rec = mean |I^d - I^g| (FixTalk Eq. 2; EDTalk weight 1)."""
    return (pred - target).abs().mean()


@lru_cache(maxsize=16)
def _gaussian_1d(scale: float) -> tuple[Tensor, int, int]:
    """FOMM AntiAliasInterpolation2d kernel for `scale`, as a normalised 1-D Gaussian plus (ka, kb) pads.

    sigma = (1/scale - 1)/2, size = 2*round(4 sigma) + 1. FOMM builds the 2-D product kernel; being
    separable, two 1-D passes give the same result at a fraction of the cost (29x29 taps at 1/8).
    """
    sigma = (1.0 / scale - 1.0) / 2.0
    size = 2 * round(sigma * 4) + 1
    ka = size // 2
    kb = ka - 1 if size % 2 == 0 else ka
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float(), ka, kb


def anti_alias_downsample(x: Tensor, scale: float) -> Tensor:
    """FOMM AntiAliasInterpolation2d: depthwise Gaussian blur then strided subsampling by int(1/scale).

    x: B x C x H x W -> B x C x ceil(H*scale) x ceil(W*scale); scale 1 returns x unchanged.
    """
    if scale == 1.0:
        return x
    k, ka, kb = _gaussian_1d(float(scale))
    c = x.shape[1]
    k = k.to(device=x.device, dtype=x.dtype)
    out = F.pad(x, (ka, kb, ka, kb))
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # horizontal pass
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # vertical pass
    step = int(1.0 / scale)
    return out[:, :, ::step, ::step]


def perceptual_pyramid(
    pred: Tensor,
    target: Tensor,
    backbone: nn.Module,
    scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
    layer_weight: float | Sequence[float] = 10.0,
) -> Tensor:
    """L_per as EDTalk's "VGGLoss" (EDTalk:train/vgg19.py; docs/architecture.md 4.2), images in [-1, 1].

    For each scale, both images are anti-alias downsampled (FOMM pyramid) and passed through
    `backbone`, which returns a list of feature maps and handles its own input normalisation
    (VGG19: clamp, [0, 1], ImageNet mean/std, relu1_1..relu5_1). Loss = sum over scales and layers of
    layer_weight * mean |phi(pred) - phi(target)|, target features without gradient. L1, not the squared
    L2 of FixTalk Eq. 2, because the EDTalk weights were trained with it.
    """
    total = pred.new_zeros(())
    for scale in scales:
        feats_pred = backbone(anti_alias_downsample(pred, scale))
        with torch.no_grad():  # == detaching the target features, without storing their graph
            feats_tgt = backbone(anti_alias_downsample(target, scale))
        weights = [layer_weight] * len(feats_pred) if isinstance(layer_weight, int | float) else layer_weight
        for w, fp, ft in zip(weights, feats_pred, feats_tgt, strict=True):
            total = total + w * (fp - ft).abs().mean()
    return total


def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss softplus(-D(I^g)).mean() (FixTalk Eq. 3; EDTalk code)."""
    return F.softplus(-fake_logits).mean()


def gan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss softplus(-D(I^d)).mean() + softplus(D(I^g)).mean() (FixTalk Eq. 3)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def r1_penalty(real_logits: Tensor, real: Tensor, gamma: float) -> Tensor:
    """R1 = gamma/2 * E_x[||grad_x D(x)||^2] on real images (Mescheder, Geiger and Nowozin, "Which Training
    Methods for GANs do actually Converge?", ICML 2018, Eq. 9; StyleGAN2 applies it lazily).

    real_logits: D(real), B x K (K logits per image are summed: the gradient of the image's total logit, as
    StyleGAN2 does for its single logit); real: the B x ... input with requires_grad, in the graph of
    real_logits. Built with create_graph so that the penalty trains D. Returns the batch mean.
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return 0.5 * gamma * grad.float().pow(2).flatten(1).sum(1).mean()


# --- FixTalk (Sec. 4) -----------------------------------------------------------------------------


def disentangle_loss(z_s: Tensor, z_d: Tensor, xi: float) -> Tensor:
    """L_dis = max(0, cos(z^s, z^d) - xi), batch mean (FixTalk Eq. 4). z_s, z_d: B x D."""
    return (F.cosine_similarity(z_s, z_d, dim=-1) - xi).clamp_min(0).mean()


def memory_recall_loss(f_pi_d: Tensor, f_hat_d: Tensor, commitment: float = 0.0) -> Tensor:
    """L_d-mem = mean |sg(f_pi^d) - \\hat f_pi^d| (FixTalk Eq. 6; L1 and stop-gradient are ours, 9.3).

    The stop-gradient makes the memory move to the token rather than the token to the memory (Pi and E
    learn from the image losses). `commitment` > 0 adds VQ-VAE's commitment term
    commitment * mean |f_pi^d - sg(\\hat f_pi^d)| in case the tokens drift.
    """
    loss = (f_pi_d.detach() - f_hat_d).abs().mean()
    if commitment:
        loss = loss + commitment * (f_pi_d - f_hat_d.detach()).abs().mean()
    return loss


def memory_align_kl(alpha_ms: Tensor, alpha_d: Tensor, eps: float = 1e-12) -> Tensor:
    """L_align = KL(Omega_m-s || Omega_d) = sum_i P_i log(P_i / Q_i), batch mean (FixTalk Eq. 8).

    P = alpha_ms (B x S, trained), Q = sg(alpha_d) (docs/architecture.md 9.3): the motion-source address
    learns to point where the driven address points, not the other way round. Computed in float32 with
    probabilities clamped to eps inside the logs; a P_i of 0 contributes 0.
    """
    p = alpha_ms.float()
    q = alpha_d.detach().float()
    return (p * (p.clamp_min(eps).log() - q.clamp_min(eps).log())).sum(dim=-1).mean()


# --- pixel path (rgb_warp) -------------------------------------------------------------------------


def landmark_flow_loss(grid: Tensor, lm_driver: Tensor, lm_source: Tensor) -> Tensor:
    """Mean L1 (in pixels) between where the flow samples the source at each driver landmark and that
    landmark on the source (MetaPortrait, Zhang et al. CVPR 2023, Sec. 3.1: landmark-guided warping).

    grid: B x S x S x 2 sampling grid (align_corners=True units, x then y); lm_driver, lm_source: B x N x 2
    in output pixels (centres at integers); NaN rows (no face found) are left out. Zero when none is valid.
    """
    size = grid.shape[1]
    valid = ~(torch.isnan(lm_driver).any(-1) | torch.isnan(lm_source).any(-1))  # B x N
    to_unit = lambda p: p.nan_to_num(0.0) * (2.0 / (size - 1)) - 1.0  # noqa: E731
    where = F.grid_sample(grid.permute(0, 3, 1, 2).float(), to_unit(lm_driver.float())[:, None],
                          mode="bilinear", padding_mode="border", align_corners=True)  # B x 2 x 1 x N
    err = (where[:, :, 0].transpose(1, 2) - to_unit(lm_source.float())).abs().sum(-1) * ((size - 1) / 2.0)
    return (err * valid).sum() / valid.sum().clamp_min(1)


# --- EDTalk stages ----------------------------------------------------------------------------------


def latent_consistency(cross: Tensor, self_: Tensor, reduction: str = "sum") -> Tensor:
    """exp(-cos(cross, self)) per sample, summed over the batch as EDTalk's Mouth-Pose stage does.

    cross, self_: B x D latents (lip or pose) from the cross-swapped and the self pass. EDTalk sums
    (docs/architecture.md 11: the scale grows with the batch); reduction="mean" is the batch-size-free form.
    """
    per_sample = torch.exp(-F.cosine_similarity(cross, self_, dim=-1))
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def audio2lip_regression(pred: Tensor, gt: Tensor) -> Tensor:
    """MSE between predicted and ground-truth lip-bank weights, B x T x 20 (EDTalk Audio2Lip)."""
    return F.mse_loss(pred, gt)


def audio2lip_smoothness(pred: Tensor, gt: Tensor, time_dim: int = 1) -> Tensor:
    """MSE of frame-to-frame differences, pred vs gt (EDTalk Audio2Lip; weight 0.1 applied by caller)."""
    return F.mse_loss(torch.diff(pred, dim=time_dim), torch.diff(gt, dim=time_dim))
