"""StyleGAN2 building blocks shared by E, G and D (EDTalk, via LIA; docs/architecture.md section 1 and 3.1).

Equalised learning rate: weights are stored ~N(0, 1) and scaled at run time by 1/sqrt(fan_in) (Karras et
al. 2018), which is why official checkpoints hold unit-variance tensors. Parameter names mirror the
reference code so that EDTalk.pt state dicts load without renaming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BLUR_KERNEL = (1, 3, 3, 1)


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    """Separable FIR kernel: outer product, normalised to sum 1."""
    t = torch.tensor(k, dtype=torch.float32)
    if t.ndim == 1:
        t = t[None, :] * t[:, None]
    return t / t.sum()


def fir_weight(kernel: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """The FIR kernel as a fixed depthwise conv weight (C x 1 x kh x kw), flipped: conv2d correlates, while
    upfirdn2d convolves."""
    return torch.flip(kernel, (0, 1)).to(dtype)[None, None].expand(channels, 1, *kernel.shape)


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR-filter (depthwise) and subsample, as StyleGAN2's upfirdn2d.

    Only non-negative pads occur in this codebase, so the cropping branch of the original is not needed.
    A symmetric pad goes to the convolution itself rather than through F.pad, saving a copy of the tensor.
    """
    b, c, h, w = x.shape
    if up > 1:
        # Zero insertion: each sample followed by (up - 1) zeros along both axes.
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    if p0 != p1:
        x, p0 = F.pad(x, (p0, p1, p0, p1)), 0
    x = F.conv2d(x, fir_weight(kernel, c, x.dtype), padding=p0, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


class Blur(nn.Module):
    """Depthwise FIR low-pass used around strided convs; `kernel` is a buffer (it is in checkpoints)."""

    kernel: torch.Tensor

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor**2
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """x2 FIR upsampling of the RGB / flow skip connections."""

    kernel: torch.Tensor

    def __init__(self, kernel: Sequence[float] = BLUR_KERNEL, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        k = make_kernel(kernel) * factor**2
        self.register_buffer("kernel", k)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2,
                     scale: float = 2**0.5) -> torch.Tensor:
    """leaky_relu(x + bias) * scale, in x's dtype: under bf16 autocast a float32 bias would turn every activation
    back into float32 and make the next conv cast it again (bf16 frames 4-10% slower; docs/performance.md)."""
    bias = bias.to(x.dtype)
    if bias.ndim == 1 and x.ndim > 2:
        bias = bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x + bias, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """Learnable per-channel bias, leaky ReLU (0.2), gain sqrt(2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class ScaledLeakyReLU(nn.Module):
    def __init__(self, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope) * math.sqrt(2)


class EqualConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, bias if bias is not None else torch.zeros_like(out[0]))
        return F.linear(x, self.weight * self.scale, bias=bias)


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [FusedLeakyReLU]; stride-2 when `downsample` (LIA's ConvLayer)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, downsample: bool = False,
                 bias: bool = True, activate: bool = True) -> None:
        layers: list[nn.Module] = []
        if downsample:
            p = (len(BLUR_KERNEL) - 2) + (kernel_size - 1)
            layers.append(Blur(BLUR_KERNEL, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channels) if bias else ScaledLeakyReLU(0.2))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs (the second strided) plus a strided 1x1 skip; halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution of StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality
    of StyleGAN", Sec. 2.2, Eq. 1 and 3), evaluated in the paper's non-fused form.

    The paper scales the weights per sample, w'_{bock} = s_{bc} w_{ock}, and demodulates them,
    w''_{bock} = w'_{bock} / sqrt(sum_{c,k} w'_{bock}^2 + 1e-8). Folding those per-sample weights into one
    grouped convolution (groups = B; the reference code's form) rebuilds B x O x C x k x k weights on every call
    and runs a grouped kernel. Since s scales input channels and the demodulation output channels, the same
    result is conv(x * s, w) * d: scale the activations, convolve with the fixed, batch-shared weight, scale the
    output by d_{bo} = rsqrt(sum_c s_{bc}^2 sum_k w_{ock}^2 + 1e-8) (StyleGAN2's `fused_modconv=False`). Why:
    one ordinary batched convolution instead of a grouped one over rebuilt weights. On one CPU thread it costs
    the same at 128 px (batch 1 and 8) and 11-19% less at 256 px and batch 4 (docs/performance.md); training
    costs the same, so one code path serves both; and the batch stays a free axis for ONNX, which fixes
    `groups` at export.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.upsample = upsample
        if upsample:
            p = (len(BLUR_KERNEL) - 2) - (kernel_size - 1)
            self.blur = Blur(BLUR_KERNEL, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style)  # B x C: the style's scale of each input channel
        w = self.scale * self.weight[0]  # O x C x k x k, equalised learning rate
        out = self._conv(x * s[:, :, None, None], w)
        if not self.demodulate:
            return out
        # d scales whole output channels, so it commutes with the per-channel blur of the upsampling path.
        return out * demodulation(s, w).to(out.dtype)[:, :, None, None]

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The batch-shared convolution; upsampling is a stride-2 transposed conv, then the FIR low-pass.

        The weight takes x's memory layout. Under bf16 on CPUs the model runs channels_last (`Runtime.prepare`),
        and oneDNN's NHWC kernels want NHWC weights as well: with the NCHW weight it converts one of the two on
        every call. In a frozen trace the laid-out weight is a constant (docs/performance.md, "channels_last
        end to end")."""
        if self.upsample:
            w = w.transpose(0, 1)
        if is_channels_last(x):
            w = w.contiguous(memory_format=torch.channels_last)
        if self.upsample:
            return self.blur(F.conv_transpose2d(x, w, stride=2))
        return F.conv2d(x, w, padding=self.padding)


def is_channels_last(x: torch.Tensor) -> bool:
    """x is 4-D and laid out NHWC (and not also NCHW, as maps with one channel or one pixel are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def demodulation(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """StyleGAN2's demodulation coefficients d_{bo} = rsqrt(sum_{c,k} (s_{bc} w_{ock})^2 + 1e-8), B x O, from the
    styles s (B x C) and the weight w (O x C x k x k) without forming per-sample weights: the sum factorises as
    sum_c s_{bc}^2 sum_k w_{ock}^2. Computed in float32 (or wider) even under autocast, as the per-sample form was."""
    dtype = torch.promote_types(torch.promote_types(s.dtype, w.dtype), torch.float32)
    with torch.autocast(s.device.type, enabled=False):
        return torch.rsqrt(s.to(dtype).square() @ w.to(dtype).square().sum((2, 3)).t() + 1e-8)


class NoiseInjection(nn.Module):
    """Kept for checkpoint compatibility: EDTalk never supplies noise, so this is the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return x if noise is None else x + self.weight * noise


class StyledConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style)))


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)
