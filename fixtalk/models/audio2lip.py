"""Audio2Lip: mel window -> 20 mouth-bank weights (EDTalk Sec. 3.4; docs/architecture.md 6.2-6.3).

EDTalk:networks/audio_encoder.py, class Audio2Lip: the audio encoder of the Wav2Lip generator
(Prajwal et al., ACM MM 2020) followed by a Linear(512 -> 20) `mapping` that predicts the weights of the
20 orthonormal mouth bases of the FDM for one video frame. Its input is the 1 x 80 x 16 mel window of
`fixtalk.audio.mel_windows`. Module and parameter names mirror the official `Audio2Lip.pt` state dict
(key "audio2lip"): `audio_encoder.<0-12>.conv_block.{0,1}` and `mapping`, so it loads with strict=True.

Size: 2,822,932 trainable parameters; the state dict holds 2,827,361 values (adding the 13 BatchNorms'
running mean/var and their scalar `num_batches_tracked`). With `loudness=True` (ModelConfig.loudness_mouth)
it also holds the buffers of `fixtalk.models.loudness_mouth.LoudnessMouth` (`loudness.*`, ours), whose
offset is added to the output; training regresses `learned` alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fixtalk.models.loudness_mouth import LoudnessMouth


class Conv2dBlock(nn.Module):
    """Wav2Lip `Conv2d`: conv + BatchNorm, then ReLU; a residual block adds its input before the ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int,
                 residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        return F.relu(out + x if self.residual else out)


# (cin, cout, kernel, stride, padding, residual): 1x80x16 -> 512x1x1 (docs/architecture.md 6.2).
_ENCODER: tuple[tuple[int, int, int, int | tuple[int, int], int, bool], ...] = (
    (1, 32, 3, 1, 1, False),
    (32, 32, 3, 1, 1, True),
    (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False),     # 80x16 -> 27x16
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False),         # -> 9x6
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False),   # -> 3x3
    (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False),        # -> 1x1
    (512, 512, 1, 1, 0, False),
)


class Audio2Lip(nn.Module):
    """Wav2Lip audio encoder + linear map to the mouth-bank weights alpha_lip."""

    def __init__(self, lip_dim: int = 20, loudness: bool = False) -> None:
        super().__init__()
        self.audio_encoder = nn.Sequential(*(Conv2dBlock(*spec) for spec in _ENCODER))
        self.mapping = nn.Linear(512, lip_dim)
        nn.init.zeros_(self.mapping.bias)  # as in the reference; the Wav2Lip part is loaded pretrained
        self.loudness = LoudnessMouth(lip_dim) if loudness else None

    def learned(self, mel: torch.Tensor) -> torch.Tensor:
        """The network alone (what training regresses): mel B x 1 x 80 x 16 -> B x 20, or B x T x ... -> B x T x 20."""
        lead = mel.shape[:-3]
        feat = self.audio_encoder(mel.reshape(-1, *mel.shape[-3:]))  # (B*T) x 512 x 1 x 1
        return self.mapping(feat.flatten(1)).reshape(*lead, -1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """The mouth weights of inference: `learned`, plus the loudness mouth's offset when there is one."""
        out = self.learned(mel)
        return out if self.loudness is None else out + self.loudness(mel).to(out.dtype)


# Normalised Gaussian, size 3, sigma 1: exp(-x^2 / 2) for x in (-1, 0, 1), divided by its sum.
_SMOOTH = torch.exp(-torch.tensor([-1.0, 0.0, 1.0]) ** 2 / 2)
_SMOOTH = _SMOOTH / _SMOOTH.sum()   # (0.2741, 0.4519, 0.2741)


def smooth_lip_weights(alpha: torch.Tensor) -> torch.Tensor:
    """Temporal Gaussian smoothing of per-frame lip weights (docs/architecture.md 6.3), T x 20 -> T x 20.

    Zero padding at the ends, as in the reference, so the first and last frames shrink by ~27%.
    """
    kernel = _SMOOTH.to(dtype=alpha.dtype, device=alpha.device).view(1, 1, 3)
    x = alpha.transpose(0, 1).unsqueeze(1)  # 20 x 1 x T: each weight is an independent 1-D signal
    return F.conv1d(x, kernel, padding=1).squeeze(1).transpose(0, 1)
