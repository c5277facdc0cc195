"""fixtalk.losses: each function against its defining formula (FixTalk Eqs. 2-8, EDTalk code)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fixtalk import losses


def _fomm_anti_alias(x: torch.Tensor, scale: float) -> torch.Tensor:
    """FOMM's AntiAliasInterpolation2d verbatim in spirit: full 2-D Gaussian kernel, then stride."""
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    ka = size // 2
    kb = ka - 1 if size % 2 == 0 else ka
    grid = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    kernel = torch.ones(size, size)
    for g in grid:
        kernel = kernel * torch.exp(-((g - (size - 1) / 2) ** 2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, size, size).repeat(x.shape[1], 1, 1, 1)
    out = F.conv2d(F.pad(x, (ka, kb, ka, kb)), kernel, groups=x.shape[1])
    return out[:, :, :: int(1 / scale), :: int(1 / scale)]


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25, 0.125])
def test_anti_alias_downsample_matches_fomm(scale: float) -> None:
    x = torch.randn(2, 3, 64, 64)
    got = losses.anti_alias_downsample(x, scale)
    want = x if scale == 1.0 else _fomm_anti_alias(x, scale)
    assert got.shape == (2, 3, int(64 * scale), int(64 * scale))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class _ToyBackbone(nn.Module):
    """Stand-in for VGG19: two 'layers' of features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.conv(x)
        return [f1, F.avg_pool2d(f1, 2)]


def test_perceptual_pyramid_formula_and_gradients() -> None:
    torch.manual_seed(0)
    net = _ToyBackbone()
    pred = torch.randn(2, 3, 32, 32, requires_grad=True)
    target = torch.randn(2, 3, 32, 32, requires_grad=True)
    got = losses.perceptual_pyramid(pred, target, net)
    want = torch.zeros(())
    for s in (1.0, 0.5, 0.25, 0.125):
        fp = net(_fomm_anti_alias(pred, s) if s != 1 else pred)
        ft = net(_fomm_anti_alias(target, s) if s != 1 else target)
        want = want + sum(10.0 * (a - b).abs().mean() for a, b in zip(fp, ft))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    got.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None  # target features carry no gradient
    assert losses.perceptual_pyramid(pred, pred.detach(), net).item() == 0.0
    per_layer = losses.perceptual_pyramid(pred, target, net, scales=(1.0,), layer_weight=(1.0, 0.0))
    torch.testing.assert_close(per_layer, (net(pred)[0] - net(target)[0]).abs().mean())


def test_reconstruction_and_gan_losses() -> None:
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(losses.reconstruction_l1(a, b), (a - b).abs().mean())
    real, fake = torch.randn(5, 1), torch.randn(5, 1)
    # Eq. 3 in log form: -log D(real) - log(1 - D(fake)), D = sigmoid(logit); G: -log D(fake).
    torch.testing.assert_close(losses.gan_generator_loss(fake), -torch.sigmoid(fake).log().mean())
    want_d = -torch.sigmoid(real).log().mean() - (1 - torch.sigmoid(fake)).log().mean()
    torch.testing.assert_close(losses.gan_discriminator_loss(real, fake), want_d)


def _pair_with_cosine(c: float) -> tuple[torch.Tensor, torch.Tensor]:
    t = math.acos(c)
    return torch.tensor([[2.0, 0.0]]), torch.tensor([[3 * math.cos(t), 3 * math.sin(t)]], requires_grad=True)


def test_disentangle_loss_hinge_and_slope() -> None:
    xi = 0.5
    for c in (-0.9, 0.0, 0.3, 0.49):  # below xi: zero and no gradient
        z_s, z_d = _pair_with_cosine(c)
        loss = losses.disentangle_loss(z_s, z_d, xi)
        loss.backward()
        assert loss.item() == 0.0 and z_d.grad.abs().sum() == 0
    values = {c: losses.disentangle_loss(*_pair_with_cosine(c), xi).item() for c in (0.6, 0.7, 0.9)}
    for c, v in values.items():  # above xi: exactly cos - xi, i.e. slope 1 in the cosine
        assert v == pytest.approx(c - xi, abs=1e-6)
    assert (values[0.9] - values[0.6]) / 0.3 == pytest.approx(1.0, abs=1e-5)
    # Batch mean of per-pair hinges.
    zs = torch.cat([_pair_with_cosine(0.2)[0], _pair_with_cosine(0.8)[0]])
    zd = torch.cat([_pair_with_cosine(0.2)[1], _pair_with_cosine(0.8)[1]]).detach()
    assert losses.disentangle_loss(zs, zd, xi).item() == pytest.approx(0.3 / 2, abs=1e-6)


def test_memory_recall_loss_stops_gradient_on_target() -> None:
    f_pi_d = torch.randn(3, 6, requires_grad=True)
    f_hat_d = torch.randn(3, 6, requires_grad=True)
    loss = losses.memory_recall_loss(f_pi_d, f_hat_d)
    torch.testing.assert_close(loss, (f_pi_d - f_hat_d).abs().mean())
    loss.backward()
    assert f_pi_d.grad is None and f_hat_d.grad.abs().sum() > 0
    losses.memory_recall_loss(f_pi_d, f_hat_d, commitment=0.25).backward()
    assert f_pi_d.grad.abs().sum() > 0  # the optional commitment term moves the token


def test_memory_align_kl_direction_and_gradients() -> None:
    torch.manual_seed(0)
    logits_ms = torch.randn(4, 5, requires_grad=True)
    logits_d = torch.randn(4, 5, requires_grad=True)
    p, q = logits_ms.softmax(-1), logits_d.softmax(-1)
    loss = losses.memory_align_kl(p, q)
    pn, qn = p.detach().numpy().astype(np.float64), q.detach().numpy().astype(np.float64)
    want = (pn * np.log(pn / qn)).sum(-1).mean()  # KL(P || Q), P = alpha_ms (Eq. 8)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert abs(want - (qn * np.log(qn / pn)).sum(-1).mean()) > 1e-3  # the direction is observable here
    loss.backward()
    assert logits_ms.grad.abs().sum() > 0
    assert logits_d.grad is None  # Q = alpha_d is a stop-gradient target
    assert losses.memory_align_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_memory_align_kl_is_finite_with_zeros() -> None:
    p = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    q = torch.tensor([[0.5, 0.5, 0.0]])
    loss = losses.memory_align_kl(p, q)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    loss.backward()
    assert torch.isfinite(p.grad).all()
    assert torch.isfinite(losses.memory_align_kl(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])))


def test_latent_consistency_sums_over_batch() -> None:
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    per = torch.exp(-F.cosine_similarity(a, b, dim=-1))
    torch.testing.assert_close(losses.latent_consistency(a, b), per.sum())
    torch.testing.assert_close(losses.latent_consistency(a, b, reduction="mean"), per.mean())
    assert losses.latent_consistency(a, a).item() == pytest.approx(4 * math.exp(-1.0), rel=1e-5)


def test_audio2lip_losses() -> None:
    pred, gt = torch.randn(2, 5, 20), torch.randn(2, 5, 20)
    torch.testing.assert_close(losses.audio2lip_regression(pred, gt), ((pred - gt) ** 2).mean())
    want = (((pred[:, 1:] - pred[:, :-1]) - (gt[:, 1:] - gt[:, :-1])) ** 2).mean()
    torch.testing.assert_close(losses.audio2lip_smoothness(pred, gt), want)
    assert losses.audio2lip_smoothness(gt + 3.0, gt).item() == pytest.approx(0.0, abs=1e-6)


def test_loss_weights_defaults() -> None:
    w = losses.LossWeights()
    assert (w.rec, w.perceptual, w.gan, w.dis, w.mem, w.align) == (1.0,) * 6
    assert (w.perceptual_layer, w.audio_smooth, w.sync) == (10.0, 0.1, 5.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.rec = 2.0  # type: ignore[misc]


def test_landmark_flow_loss_in_pixels() -> None:
    from fixtalk.models.generator import pixel_identity_grid

    size = 64
    grid = pixel_identity_grid(size, torch.zeros(())).expand(2, -1, -1, -1).clone()
    lm = torch.rand(2, 68, 2) * 40 + 5
    assert float(losses.landmark_flow_loss(grid, lm, lm)) < 1e-4   # identity flow, same landmarks
    assert abs(float(losses.landmark_flow_loss(grid, lm, lm + torch.tensor([3.0, 4.0]))) - 7.0) < 1e-3  # L1, px
    grid[..., 0] += 3 * 2 / (size - 1)                                # sample 3 px to the right
    assert float(losses.landmark_flow_loss(grid, lm, lm + torch.tensor([3.0, 0.0]))) < 1e-3
    lm_nan = lm.clone()
    lm_nan[0, :] = float("nan")                                      # no face: left out, not NaN
    value = losses.landmark_flow_loss(grid, lm_nan, lm_nan)
    assert torch.isfinite(value) and abs(float(value) - 3.0) < 1e-3
    assert float(losses.landmark_flow_loss(grid[:1], lm_nan[:1], lm_nan[:1])) == 0.0


def test_r1_penalty_of_a_linear_and_a_quadratic_d() -> None:
    """R1 = gamma/2 E||grad_x D(x)||^2 (Mescheder et al. 2018): D(x) = sum(w*x) has grad w for every sample;
    D(x) = sum(w*x^2)/2 has grad w*x, so the batch mean differs from the sum and from any one sample."""
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4, requires_grad=True)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    gamma = 0.7
    r1 = losses.r1_penalty((w * x).flatten(1).sum(1, keepdim=True), x, gamma)
    assert r1.item() == pytest.approx(gamma / 2 * w.detach().pow(2).sum().item(), rel=1e-5)
    r1.backward()  # create_graph: the penalty trains D, d/dw gamma/2 ||w||^2 = gamma w
    torch.testing.assert_close(w.grad, gamma * w.detach())
    x2 = x.detach().requires_grad_(True)
    r1q = losses.r1_penalty((w * x2 ** 2 / 2).flatten(1).sum(1, keepdim=True), x2, gamma)
    per_sample = gamma / 2 * (w.detach() * x2.detach()).pow(2).flatten(1).sum(1)
    assert r1q.item() == pytest.approx(per_sample.mean().item(), rel=1e-5)
    # several logits per image (a patch D): the gradient of the image's summed logit
    r1p = losses.r1_penalty(torch.stack([(w * x2).flatten(1).sum(1), (w * x2).flatten(1).sum(1)], 1), x2, gamma)
    assert r1p.item() == pytest.approx(gamma / 2 * (2 * w.detach()).pow(2).sum().item(), rel=1e-5)
