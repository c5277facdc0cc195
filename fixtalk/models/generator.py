"""Generator G: the flow-warping style decoder (EDTalk Sec. 3.1/3.3; FixTalk Fig. 4a; docs/architecture.md 3).

A StyleGAN2 decoder driven by latent = f_6^s + m. At every resolution 8..S a ToFlow head predicts a
dense flow (tanh) and a mask (sigmoid) that warp the *source* encoder map of that resolution into the
decoder stream; the RGB output is built only from the warped maps (LIA design). With expression, an EEM
block (ADAIN conditioned on the expression latent e) first edits the source map of each level.

Pixel path (`ModelConfig.rgb_warp`, CPU-scale presets only; docs/quality.md): the LIA design synthesises
every output pixel from warped *feature maps*, which takes GPU-days to become sharp. With `rgb_warp`, a
`PixelWarp` head also warps the source *image* and blends it with G's RGB through a learned occlusion mask
(FOMM/TPSMM occlusion-aware warping), so G only has to fill what the source cannot show.

Quirks kept for checkpoint compatibility (docs/architecture.md 11): ToRGB applies a leaky ReLU before its
bias; the identity grid is linspace(-1, 1) while grid_sample uses align_corners=False; `to_rgb1`, the
noise weights and EEM's dead conv1/norm1 branch exist as parameters but are never evaluated.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from fixtalk.config import ModelConfig
from fixtalk.models.layers import (
    ConstantInput,
    ConvLayer,
    EqualConv2d,
    ModulatedConv2d,
    StyledConv,
    Upsample,
    is_channels_last,
)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ConvLayer(in_channels, 3, 1)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x) + self.bias
        return out if skip is None else out + self.upsample(skip)


class ToFlow(nn.Module):
    """Flow + mask head; warps a source map and blends it into the decoder features."""

    def __init__(self, in_channels: int, style_dim: int) -> None:
        super().__init__()
        self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self._grids: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def identity_grid(self, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """1 x H x W x 2 grid (x, y) from linspace(-1, 1); cached per shape/device/dtype."""
        key = (size, device, dtype)
        if key not in self._grids:
            xs = torch.linspace(-1, 1, size, dtype=torch.float64)
            gy, gx = torch.meshgrid(xs, xs, indexing="ij")
            self._grids[key] = torch.stack([gx, gy], dim=-1)[None].to(device=device, dtype=dtype)
        return self._grids[key]

    def forward(self, x: torch.Tensor, style: torch.Tensor, feat: torch.Tensor,
                skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (warped source map, blended decoder features, raw 3-channel flow/mask logits)."""
        raw = self.conv(x, style) + self.bias
        if skip is not None:
            raw = raw + self.upsample(skip)
        # In raw's dtype, float32 under bf16 autocast (its bias is), not x's: a bf16 identity grid is off by up
        # to 1/8 pixel at 128 px.
        grid = self.identity_grid(x.shape[-1], x.device, raw.dtype) + torch.tanh(raw[:, 0:2]).permute(0, 2, 3, 1)
        mask = torch.sigmoid(raw[:, 2:3])
        warped = F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=False) * mask
        # x first: a sum takes its first operand's layout, and grid_sample's output is NCHW whatever its input.
        # So a channels_last stream stays channels_last (the same sum, bit for bit; docs/performance.md).
        return warped, x * (1 - mask) + warped, raw


def pixel_identity_grid(size: int, like: torch.Tensor) -> torch.Tensor:
    """1 x S x S x 2 identity grid (x, y) for grid_sample with align_corners=True: an exact no-op warp."""
    xs = torch.linspace(-1, 1, size, device=like.device, dtype=like.dtype)
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


class PixelWarp(nn.Module):
    """Occlusion-aware warp of the source image (FOMM Sec. 3.3, TPSMM): out = M * warp(I^s) + (1 - M) * G_rgb.

    The flow is linear in the motion *difference* delta = alpha^d - alpha^s (the FDM bank weights of driver and
    source, B x motion_dim): flow = mean_k (W delta)_k B_k, with K flow fields B_k predicted from the source's
    f_4 map by a conv whose bias is the source-independent part (a source-specific basis: "what moving along
    motion k does to this face"). So holding the source's own motion gives exactly zero flow, and each motion
    weight has a direct, smooth path to the pixels. Features of G's stream (latent-conditioned) did not work
    here: a head on them did not lower the landmark error on one clip in 60 steps (docs/quality.md). The mask
    comes from G's features at half size (where G must draw: the inside of the mouth, disocclusions).
    Everything starts at zero with the mask at sigmoid(4) = 0.98, so an untrained head returns the source.

    The source image may be larger than G's size S (the render size, docs/quality.md "Rendering above the
    model's size"): the flow (in half-widths) and the mask are upsampled to it as they are to S, and G's RGB,
    which only fills what the source cannot show, is upsampled bilinearly. The warped pixels then keep the
    source's own detail instead of a 128 px face blown up to the screen.
    """

    def __init__(self, map_channels: int, feat_channels: int, style_dim: int, motion_dim: int,
                 basis: int = 32, mask_init: float = 4.0) -> None:
        super().__init__()
        self.basis = basis
        self.coeff = nn.Linear(motion_dim, basis)
        # Equalised lr (weights ~ 1/sqrt(fan_in) at run time) and a 1/K gain: an Adam step of lr then moves the
        # flow by about lr (in half-widths), whatever the width of f_4 and the number of fields.
        self.fields = EqualConv2d(map_channels, 2 * basis, 3, padding=1)
        nn.init.zeros_(self.fields.weight)
        self.mask = ModulatedConv2d(feat_channels, 1, 3, style_dim, demodulate=False)
        nn.init.zeros_(self.mask.weight)
        self.mask_bias = nn.Parameter(torch.tensor(float(mask_init)))

    def forward(self, x: torch.Tensor, style: torch.Tensor, source: torch.Tensor, synth: torch.Tensor,
                f4: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (blended image B x 3 x S x S, sampling grid B x S x S x 2 in align_corners=True units)."""
        size, b = source.shape[-1], synth.shape[0]
        fields = self.fields(f4.to(synth.dtype))
        fields = fields.expand(b, -1, -1, -1).view(b, self.basis, 2, *fields.shape[-2:])
        flow = (self.coeff(delta.to(synth.dtype))[:, :, None, None, None] * fields).mean(1)  # B x 2 x h x w
        # The flow, its grid and the mask in float32 (synth's dtype) even under bf16 autocast: a bf16 sampling grid
        # is quantised to 1/128 of the half-width near the border, a whole pixel at 256 px, which moved sharp
        # detail and put bf16 renders of real faces 36.8 dB from float32 ones (docs/performance.md).
        flow = F.interpolate(flow.to(synth.dtype), size=(size, size), mode="bilinear", align_corners=False)
        grid = pixel_identity_grid(size, flow) + flow.permute(0, 2, 3, 1)
        # Bicubic: nearly every pixel moves by a fraction of a pixel, and bilinear blurs each one. On the held-out
        # clips (fixtalk eval, 256 px) CPBD 0.164 -> 0.201 (real frames 0.194), NIQE 8.39 -> 7.96, FID-proxy
        # 28.6 -> 27.2, for -0.08 dB PSNR and ~1.5 ms a frame at 256 px (docs/quality.md, "Sharp paste-back").
        warped = F.grid_sample(source.to(flow.dtype).expand(b, -1, -1, -1), grid, mode="bicubic",
                               padding_mode="border", align_corners=True)
        logits = F.interpolate(self.mask(x, style).to(synth.dtype), size=(size, size), mode="bilinear",
                               align_corners=False)
        mask = torch.sigmoid(logits + self.mask_bias)
        if synth.shape[-1] != size:
            synth = F.interpolate(synth, size=(size, size), mode="bilinear", align_corners=False)
        return mask * warped + (1 - mask) * synth, grid


class ADAIN(nn.Module):
    """Instance norm modulated by the expression latent: (1 + gamma(e)) * IN(x) + beta(e)."""

    def __init__(self, channels: int, feature_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU())
        self.mlp_gamma = nn.Linear(hidden, channels)
        self.mlp_beta = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.modulate(F.instance_norm(x, eps=1e-5), e)

    def modulate(self, normed: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        actv = self.mlp_shared(e.flatten(1))
        gamma = self.mlp_gamma(actv)[:, :, None, None]
        beta = self.mlp_beta(actv)[:, :, None, None]
        return normed * (1 + gamma) + beta


class EEM(nn.Module):
    """Expression Enhancement Module (EDTalk's FineADAINResBlock2d): x + ADAIN_2(conv2(x), e).

    The released code also computes conv1 -> ADAIN_1 -> LeakyReLU and then discards it; we skip that
    dead branch at run time (10 GMAC/frame at 256) but keep its parameters so official checkpoints load.
    """

    def __init__(self, channels: int, feature_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = ADAIN(channels, feature_dim, hidden)
        self.norm2 = ADAIN(channels, feature_dim, hidden)

    def forward(self, x: torch.Tensor, e: torch.Tensor | None, normed: torch.Tensor | None = None) -> torch.Tensor:
        """`normed` = precompute(x), when x is a constant source map: then no convolution runs per frame."""
        if e is None:
            return x
        if normed is None:
            normed = self.precompute(x)
        return x + self.norm2.modulate(normed, e)

    def precompute(self, x: torch.Tensor) -> torch.Tensor:
        """IN(conv2(x)): everything of EEM that does not depend on e (conv2 reads x, not e), laid out like x.
        instance_norm returns NCHW whatever its input, and adding an NCHW map to a channels_last x every frame
        cost 3 ms per 128 px level at fixtalk-256 (docs/performance.md, "channels_last end to end")."""
        normed = F.instance_norm(self.conv2(x), eps=1e-5)
        return normed.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else normed


class Synthesis(nn.Module):
    """G. Module names mirror EDTalk's `dec` so its checkpoints load unchanged."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ch, d = cfg.channel, cfg.style_dim
        self.n_latent = cfg.log_size * 2 - 2
        self.input = ConstantInput(ch(4))
        self.conv1 = StyledConv(ch(4), ch(4), 3, d)
        self.to_rgb1 = ToRGB(ch(4), upsample=False)  # unused by the reference forward; kept for loading
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.to_flows = nn.ModuleList()
        in_ch = ch(4)
        for res in cfg.map_resolutions:
            self.convs.append(StyledConv(in_ch, ch(res), 3, d, upsample=True))
            self.convs.append(StyledConv(ch(res), ch(res), 3, d))
            self.to_rgbs.append(ToRGB(ch(res)))
            self.to_flows.append(ToFlow(ch(res), d))
            in_ch = ch(res)
        self.fineadainresblock: nn.ModuleList | None
        if cfg.has_expression:
            self.fineadainresblock = nn.ModuleList(
                [EEM(ch(res), d, cfg.eem_hidden) for res in cfg.map_resolutions])
        else:
            self.fineadainresblock = None
        # Absent (not just unused) without rgb_warp, so the paper-scale layouts and parity are untouched.
        self.pixel_warp = PixelWarp(ch(32), ch(cfg.size // 2), d, cfg.motion_dim) if cfg.rgb_warp else None

    def eem_cache(self, feats: list[torch.Tensor], skip: int | None = None) -> list[torch.Tensor | None] | None:
        """Per-source EEM precomputation (None for the level `skip`, whose map changes per frame)."""
        if self.fineadainresblock is None:
            return None
        blocks = cast("list[EEM]", list(self.fineadainresblock))  # a ModuleList yields nn.Module
        return [None if k == skip else blk.precompute(f) for k, (blk, f) in enumerate(zip(blocks, feats))]

    def forward(self, latent: torch.Tensor, feats: list[torch.Tensor],
                e: torch.Tensor | None = None, eem_cache: list[torch.Tensor | None] | None = None,
                source: torch.Tensor | None = None, delta: torch.Tensor | None = None) -> torch.Tensor:
        """latent: B x style_dim (f_6^s + m); feats: source maps coarse->fine; e: B x style_dim or None.

        All n_latent style copies of the reference are identical, so one vector serves every layer.
        `eem_cache` (from `eem_cache(feats)` on a constant source) removes EEM's convolutions per frame.
        With rgb_warp, `source` (B x 3 x R x R, R >= S the render size) is the source image and `delta`
        (B x motion_dim) the driver's bank weights minus the source's (`PixelWarp`). Returns the raw RGB image
        B x 3 x R x R (R = S without rgb_warp; no tanh, roughly in [-1, 1]).
        """
        return self.synthesise(latent, feats, e, eem_cache, source, delta)[0]

    def synthesise(self, latent: torch.Tensor, feats: list[torch.Tensor], e: torch.Tensor | None = None,
                   eem_cache: list[torch.Tensor | None] | None = None, source: torch.Tensor | None = None,
                   delta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward`, also returning the pixel path's sampling grid (None without rgb_warp)."""
        if self.pixel_warp is not None and (source is None or delta is None):
            raise ValueError("this generator warps the source image (rgb_warp): pass source= and delta=")
        x = self.conv1(self.input(latent.shape[0]), latent)
        rgb = raw = x_half = None
        for k, feat in enumerate(feats):
            x = self.convs[2 * k](x, latent)
            x = self.convs[2 * k + 1](x, latent)
            if self.fineadainresblock is not None:
                normed = None if eem_cache is None else eem_cache[k]
                if normed is not None and normed.shape[0] != feat.shape[0]:
                    normed = normed.expand(feat.shape[0], -1, -1, -1)
                feat = self.fineadainresblock[k](feat, e, normed)
            warped, x, raw = self.to_flows[k](x, latent, feat, raw)
            rgb = self.to_rgbs[k](warped, rgb)
            if k == len(feats) - 2:
                x_half = x
        assert rgb is not None
        if self.pixel_warp is None:
            return rgb, None
        assert source is not None and delta is not None and x_half is not None
        src_f4 = feats[[f.shape[-1] for f in feats].index(32)]  # the source's own f_4 (before EDI/EEM)
        return self.pixel_warp(x_half, latent, source, rgb, src_f4, delta)
