"""ModulatedConv2d's non-fused form (scale x by s, batch-shared conv, scale the output by d) against the fused
computation it replaced (per-sample modulated/demodulated weights in one grouped conv; StyleGAN2 Eq. 1 and 3),
in float64, values and gradients; and Blur's padding inside the conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fixtalk.models.layers import Blur, ModulatedConv2d, demodulation, make_kernel

STYLE_DIM = 16


def fused_reference(mod: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The fused form: B x O x C x k x k weights w'' = demod(s * w), the batch folded into groups = B."""
    b, c, h, w = x.shape
    k, o = mod.kernel_size, mod.out_channels
    s = mod.modulation(style).view(b, 1, c, 1, 1)
    weight = mod.scale * mod.weight * s
    if mod.demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, o, 1, 1, 1)
    x = x.reshape(1, b * c, h, w)
    if mod.upsample:
        out = F.conv_transpose2d(x, weight.transpose(1, 2).reshape(b * c, o, k, k), stride=2, groups=b)
        return mod.blur(out.view(b, o, *out.shape[-2:]))
    out = F.conv2d(x, weight.reshape(b * o, c, k, k), padding=mod.padding, groups=b)
    return out.view(b, o, *out.shape[-2:])


def make(kernel: int, demodulate: bool, upsample: bool, seed: int = 0) -> tuple[ModulatedConv2d, torch.Tensor,
                                                                               torch.Tensor]:
    """A float64 layer with random weights (modulation bias too, so the styles are far from 1) and inputs."""
    torch.manual_seed(seed)
    mod = ModulatedConv2d(5, 4, kernel, STYLE_DIM, demodulate=demodulate, upsample=upsample).double()
    assert mod.modulation.bias is not None
    with torch.no_grad():
        mod.modulation.bias.normal_()
    return mod, torch.randn(3, 5, 6, 6, dtype=torch.float64), torch.randn(3, STYLE_DIM, dtype=torch.float64)


CASES = [(k, dm, up) for k in (1, 3) for dm in (False, True) for up in (False, True) if not (k == 1 and up)]


@pytest.mark.parametrize(("kernel", "demodulate", "upsample"), CASES)
def test_non_fused_equals_fused(kernel: int, demodulate: bool, upsample: bool) -> None:
    mod, x, style = make(kernel, demodulate, upsample)
    with torch.no_grad():
        got, want = mod(x, style), fused_reference(mod, x, style)
    size = 12 if upsample else 6
    assert got.shape == want.shape == (3, 4, size, size)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    # Negative control: the comparison can fail. Another sample's style gives another output.
    with torch.no_grad():
        other = fused_reference(mod, x, style.roll(1, 0))
    assert (got - other).abs().max() > 1e-2


@pytest.mark.parametrize(("kernel", "demodulate", "upsample"), CASES)
def test_non_fused_gradients_equal_fused(kernel: int, demodulate: bool, upsample: bool) -> None:
    """Training runs the same path, so its gradients (weight, style MLP, input, style) must match too."""
    mod, x, style = make(kernel, demodulate, upsample, seed=1)
    x.requires_grad_(True)
    style.requires_grad_(True)
    target = torch.randn_like(fused_reference(mod, x, style))
    assert mod.modulation.bias is not None
    leaves = [x, style, mod.weight, mod.modulation.weight, mod.modulation.bias]
    got = torch.autograd.grad((mod(x, style) * target).sum(), leaves)
    want = torch.autograd.grad((fused_reference(mod, x, style) * target).sum(), leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-11, rtol=1e-9)


def test_demodulation_stays_float32_under_bf16_autocast() -> None:
    """As in the fused form, where fp32 weights times bf16 styles gave fp32 coefficients."""
    mod, x, style = make(3, True, False)
    mod, x, style = mod.float(), x.float(), style.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = mod.modulation(style)
        d = demodulation(s, mod.scale * mod.weight[0])
    assert s.dtype == torch.bfloat16 and d.dtype == torch.float32
    want = torch.rsqrt((mod.scale * mod.weight * s.float()[:, None, :, None, None]).pow(2).sum([2, 3, 4]) + 1e-8)
    torch.testing.assert_close(d, want, atol=0, rtol=1e-5)


@pytest.mark.parametrize("pad", [(1, 1), (2, 2), (2, 1)])
def test_blur_pads_like_explicit_zero_padding(pad: tuple[int, int]) -> None:
    """Blur hands a symmetric pad to the conv itself; the result is that of padding first (upfirdn2d)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    k = make_kernel((1, 3, 3, 1)).double()
    p0, p1 = pad
    want = F.conv2d(F.pad(x, (p0, p1, p0, p1)), torch.flip(k, (0, 1))[None, None].expand(3, 1, 4, 4), groups=3)
    torch.testing.assert_close(Blur((1, 3, 3, 1), pad).double()(x), want, atol=1e-14, rtol=0)
