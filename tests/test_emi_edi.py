"""EMI (FixTalk Sec. 4.1) and EDI (Sec. 4.2): addressing equations, init behaviour, gradients, shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fixtalk import losses
from fixtalk.config import EDIConfig, EMIConfig
from fixtalk.models.edi import EDI, MHCA, Compressor, LeakageMemory
from fixtalk.models.emi import EMI

TINY_EMI = EMIConfig(layers=1, heads=2, queries=4, ffn_mult=2)
TINY_EDI = EDIConfig(slots=8, decompress_channels=8, heads=2, ffn_mult=2)
C, STYLE, MAPS = 16, 16, (8, 12)  # tiny f_4 channels, latent width, other-map channels


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_cos(q: np.ndarray, m: np.ndarray) -> np.ndarray:
    return (q @ m.T) / (np.linalg.norm(q, axis=-1, keepdims=True) * np.linalg.norm(m, axis=-1)[None])


def test_memory_addressing_matches_eqs_5_to_9() -> None:
    kappa = 2.5
    mem = LeakageMemory(slots=3, dim=2, key_dim=1, kappa_init=kappa, learn_kappa=False)
    m_d = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
    m_ms = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, -1.0]])
    with torch.no_grad():
        mem.m_d.copy_(torch.tensor(m_d))
        mem.m_ms.copy_(torch.tensor(m_ms))
    f_pi_d = np.array([[3.0, 1.0], [-1.0, 0.5]])
    f_pi_s = np.array([[1.0, 2.0], [0.5, -1.0]])
    key = np.array([[0.5], [-2.0]])

    alpha_d, f_hat_d = mem.address_driven(torch.tensor(f_pi_d, dtype=torch.float32))
    want_alpha_d = _np_softmax(kappa * _np_cos(f_pi_d, m_d))  # Eq. 5
    np.testing.assert_allclose(alpha_d.detach().numpy(), want_alpha_d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f_hat_d.detach().numpy(), want_alpha_d @ m_d, rtol=1e-5, atol=1e-6)  # Eq. 6

    alpha_ms, f_hat_s = mem.address_motion_source(
        torch.tensor(f_pi_s, dtype=torch.float32), torch.tensor(key, dtype=torch.float32)
    )
    want_alpha_ms = _np_softmax(kappa * _np_cos(np.concatenate([f_pi_s, key], axis=1), m_ms))  # Eq. 7
    np.testing.assert_allclose(alpha_ms.detach().numpy(), want_alpha_ms, rtol=1e-5, atol=1e-6)
    # Eq. 9: the address comes from M_m-s, the values from M_d.
    np.testing.assert_allclose(f_hat_s.detach().numpy(), want_alpha_ms @ m_d, rtol=1e-5, atol=1e-6)


def test_memory_kappa_parameter_or_buffer_and_row_norms() -> None:
    learned = LeakageMemory(8, 4, 3, kappa_init=10.0, learn_kappa=True)
    fixed = LeakageMemory(8, 4, 3, kappa_init=1.0, learn_kappa=False)
    assert "kappa" in dict(learned.named_parameters())
    assert "kappa" not in dict(fixed.named_parameters()) and "kappa" in dict(fixed.named_buffers())
    torch.testing.assert_close(learned.m_d.norm(dim=1), torch.ones(8))
    torch.testing.assert_close(learned.m_ms.norm(dim=1), torch.ones(8))
    assert learned.m_ms.shape == (8, 7)


def test_compressor_starts_at_global_average() -> None:
    f4 = torch.randn(2, C, 32, 32)
    torch.testing.assert_close(Compressor(4)(f4), f4.mean(dim=(2, 3)))


def test_mhca_is_identity_at_init() -> None:
    mhca = MHCA(C, heads=2, ffn_mult=2)
    f4_s, f4_hat = torch.randn(2, C, 32, 32), torch.randn(2, C, 32, 32)
    assert torch.equal(mhca(f4_s, f4_hat), f4_s)


def test_emi_starts_from_scaled_latent() -> None:
    emi = EMI(TINY_EMI, MAPS, C, STYLE)
    maps = [torch.randn(2, 8, 64, 64), torch.randn(2, 12, 16, 16)]
    latent = torch.randn(2, STYLE)
    z = emi(maps, torch.randn(2, C, 32, 32), latent)
    torch.testing.assert_close(z, TINY_EMI.latent_init_weight * latent)
    w = emi.layer_weights()
    assert w.shape == (4,) and math.isclose(w[-1].item(), 0.9, rel_tol=1e-6)
    torch.testing.assert_close(w[:-1], torch.full((3,), 0.1 / 3))


def test_emi_accepts_other_f4_grid() -> None:
    emi = EMI(TINY_EMI, MAPS, C, STYLE)
    with torch.no_grad():
        emi.extractor_proj.weight.normal_()
    maps = [torch.randn(1, 8, 8, 8), torch.randn(1, 12, 4, 4)]
    assert emi(maps, torch.randn(1, C, 16, 16), torch.randn(1, STYLE)).shape == (1, STYLE)


def test_edi_infer_matches_train_source_path() -> None:
    edi = EDI(TINY_EDI, C, STYLE)
    with torch.no_grad():  # make MHCA non-trivial so the comparison means something
        edi.mhca.attn.out.weight.normal_(std=0.1)
    f4_s, f4_d, key = torch.randn(3, C, 32, 32), torch.randn(3, C, 32, 32), torch.randn(3, STYLE)
    out = edi.forward_train(f4_s, f4_d, key, use_source_address=True)
    torch.testing.assert_close(edi.forward_infer(f4_s, key), out.fused)
    torch.testing.assert_close(edi.forward_infer(f4_s, key, f_pi_s=out.f_pi_s), out.fused)
    # A per-sample mask picks the source address only where it is True.
    mixed = edi.forward_train(f4_s, f4_d, key, use_source_address=torch.tensor([True, False, True]))
    driven = edi.forward_train(f4_s, f4_d, key, use_source_address=False)
    torch.testing.assert_close(mixed.fused[[0, 2]], out.fused[[0, 2]])
    torch.testing.assert_close(mixed.fused[1], driven.fused[1])


def _fixtalk_aux_loss(emi: EMI, edi: EDI, gen: torch.Generator) -> torch.Tensor:
    """L_dis + L_d-mem + L_align + L1 on the fused map, over a tiny siamese source/driver batch."""

    def encode() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        maps = [torch.randn(4, 8, 16, 16, generator=gen), torch.randn(4, 12, 8, 8, generator=gen)]
        return maps, torch.randn(4, C, 32, 32, generator=gen), torch.randn(4, STYLE, generator=gen)

    (maps_s, f4_s, lat_s), (maps_d, f4_d, lat_d) = encode(), encode()
    z_s, z_d = emi(maps_s, f4_s, lat_s), emi(maps_d, f4_d, lat_d)
    # Mixed mask: both the driven (Eq. 6) and the motion-source (Eq. 9) tokens reach Lambda/MHCA.
    out = edi.forward_train(f4_s, f4_d, z_d - z_s, use_source_address=torch.tensor([True, False] * 2))
    return (
        losses.disentangle_loss(z_s, z_d, xi=-1.0)  # xi = -1 keeps the hinge active for the check
        + losses.memory_recall_loss(out.f_pi_d, out.f_hat_d)
        + losses.memory_align_kl(out.alpha_ms, out.alpha_d)
        + losses.reconstruction_l1(out.fused, torch.randn(out.fused.shape, generator=gen))
    )


def test_every_parameter_gets_gradient() -> None:
    torch.manual_seed(0)
    emi, edi = EMI(TINY_EMI, MAPS, C, STYLE), EDI(TINY_EDI, C, STYLE)
    params = dict(emi.named_parameters(prefix="emi")) | dict(edi.named_parameters(prefix="edi"))
    zero_init = {
        "emi.extractor_proj",
        "emi.map_proj.0",
        "emi.map_proj.1",
        "edi.mhca.attn.out",
        "edi.mhca.ffn.out",
    }

    # Step 0: the zero-initialised last layers themselves get gradient (no branch is dead).
    _fixtalk_aux_loss(emi, edi, torch.Generator().manual_seed(1)).backward()
    for name in zero_init:
        assert params[name + ".weight"].grad.abs().sum() > 0, name

    # After one step those layers are non-zero, so every parameter upstream receives gradient too.
    torch.optim.Adam(params.values(), lr=1e-2).step()
    for p in params.values():
        p.grad = None
    _fixtalk_aux_loss(emi, edi, torch.Generator().manual_seed(2)).backward()
    dead = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reached: {dead}"


def test_real_default_shapes_and_sizes() -> None:
    # fixtalk-512 layout [ours]: f_1, f_2, f_3, f_5 = 64x256x256, 128x128x128, 256x64x64, 512x16x16.
    emi = EMI(EMIConfig(), (64, 128, 256, 512), 512, 512)
    edi = EDI(EDIConfig(), 512, 512)
    maps = [torch.randn(1, 64, 256, 256), torch.randn(1, 128, 128, 128), torch.randn(1, 256, 64, 64)]
    maps.append(torch.randn(1, 512, 16, 16))
    f4_s, f4_d = torch.randn(1, 512, 32, 32), torch.randn(1, 512, 32, 32)
    with torch.no_grad():
        z = emi(maps, f4_s, torch.randn(1, 512))
        out = edi.forward_train(f4_s, f4_d, torch.randn(1, 512))
        fused = edi.forward_infer(f4_s, torch.randn(1, 512))
    assert z.shape == (1, 512)
    assert out.alpha_d.shape == out.alpha_ms.shape == (1, 1024)
    assert out.f_pi_d.shape == out.f_hat_d.shape == out.f_hat_s.shape == (1, 512)
    assert out.fused.shape == fused.shape == (1, 512, 32, 32)
    assert edi.memory.m_ms.shape == (1024, 1024)
    # docs/architecture.md 10: EMI ~6.3 M (P) + ~0.5 M (projections) + 0.5 M pos; EDI ~1.6 + 4.5 + 4.2 M.
    n_emi = sum(p.numel() for p in emi.parameters())
    n_edi = sum(p.numel() for p in edi.parameters())
    assert 6.5e6 < n_emi < 8.0e6, n_emi
    assert 9.5e6 < n_edi < 11.5e6, n_edi


@pytest.mark.parametrize("bad", [0.0, 1.0])
def test_emi_rejects_degenerate_latent_weight(bad: float) -> None:
    with pytest.raises(ValueError):
        EMI(EMIConfig(latent_init_weight=bad), MAPS, C, STYLE)
