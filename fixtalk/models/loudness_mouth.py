"""Loudness mouth: the audio-driven mouth opens with the speech's loudness (ours, not in the papers;
docs/quality.md, "The loudness mouth").

Audio2Lip (EDTalk Sec. 3.4) regresses the generator's mouth-bank weights from a mel window. On our ~13k frames
of speech the real mouths' opening correlates with loudness at only r ~0.15 (per clip -0.3..0.5), speech barely
predicts the targets, and the regression shrinks towards their mean: the rendered mouth hardly moved (opening
std 0.002-0.010 eye distances against 0.03-0.13 in the real videos). This term adds to Audio2Lip's output a
move along the mouth bank's opening direction that grows with the window's speech level, the way a jaw-flap
rig animates a face from audio. It makes no visemes (an "o" and an "a" open alike); it makes a mouth that
visibly opens on speech and closes in pauses:

    offset(mel) = gain * (clamp((level(mel) - quiet) / (loud - quiet), 0, 1) - center) * direction

- level: the mean normalised log-mel (fixtalk.audio, [-4, 4]) over all 80 bands of the window's last 8 mel
  frames, i.e. from 0.5 to 3 video frames after frame i (`fixtalk.audio.mel_windows` starts two frames before
  it): the mouth moves 2-3 frames ahead of its sound.
- center: the envelope's mean over the training frames. With `ModelConfig.relative_to_speaker` Audio2Lip's
  output is a change from the speaker's mean mouth, which the portrait's own weights stand for, so the offset
  is centred the same way: quieter than usual closes the mouth a little below the portrait's, louder opens it.
- direction (unit, lip_dim), quiet and loud (levels), center, gain: fitted on training data by
  `fixtalk.train.loudness_fit` and kept as buffers, so they load and save with Audio2Lip's weights.
  A zero gain (an unfitted module) adds nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

LATE_FRAMES = slice(8, 16)   # mel frames of the window read for the level: 100-200 ms after its start


def speech_level(mel: Tensor) -> Tensor:
    """Mean normalised log-mel of the window's late frames: (..., 1, 80, 16) -> (...)."""
    return mel[..., 0, :, LATE_FRAMES].float().mean(dim=(-1, -2))


class LoudnessMouth(nn.Module):
    """Opening along `direction` from the window's speech level; buffers only, nothing trains."""

    direction: Tensor   # lip_dim, unit
    levels: Tensor      # quiet, loud speech levels
    center: Tensor      # scalar: the envelope's training mean (0 = silence holds the portrait's mouth)
    gain: Tensor        # scalar: the move along `direction` at or above the loud level

    def __init__(self, lip_dim: int = 20) -> None:
        super().__init__()
        self.register_buffer("direction", torch.zeros(lip_dim))
        self.register_buffer("levels", torch.tensor([-4.0, 0.0]))   # quiet, loud
        self.register_buffer("center", torch.zeros(()))
        self.register_buffer("gain", torch.zeros(()))

    def set(self, direction: Tensor, quiet: float, loud: float, gain: float, center: float = 0.0) -> None:
        """Store a fit (fixtalk.train.loudness_fit): direction is normalised here, loud must exceed quiet."""
        if not loud > quiet:
            raise ValueError(f"loud level {loud} must be above the quiet level {quiet}")
        d = direction.detach().float().flatten()
        self.direction.copy_(d / d.norm().clamp_min(1e-12))
        self.levels.copy_(torch.tensor([quiet, loud]))
        self.gain.fill_(float(gain))
        self.center.fill_(float(center))

    def envelope(self, mel: Tensor) -> Tensor:
        """0 at or below the quiet level, 1 at or above the loud one: (..., 1, 80, 16) -> (...)."""
        quiet, loud = self.levels[0], self.levels[1]
        return ((speech_level(mel) - quiet) / (loud - quiet)).clamp(0.0, 1.0)

    def forward(self, mel: Tensor) -> Tensor:
        """(..., 1, 80, 16) -> (..., lip_dim) change of the mouth weights, float32."""
        return (self.gain * (self.envelope(mel) - self.center))[..., None] * self.direction
