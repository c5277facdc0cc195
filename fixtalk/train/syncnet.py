"""Wav2Lip's colour "expert" SyncNet, frozen, for the SyncNet loss of the audio stage (docs/architecture.md 4.2).

Prajwal et al., "A Lip Sync Expert Is All You Need" (ACM MM 2020), models/syncnet.py `SyncNet_color`: a face
encoder over 5 stacked lower-face crops (15 x 48 x 96, RGB order as cv2 reads it = BGR, values in [0, 1]) and
an audio encoder over the 1 x 80 x 16 mel window of those 5 frames; both end in 512-d embeddings.
EDTalk's loss = 5 x BCE(cos(audio, video), 1). Module names mirror `lipsync_expert.pth` ("state_dict"), which
no package ships: the loss runs only when its path is given (`fixtalk train --syncnet PATH`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fixtalk.errors import InputError
from fixtalk.models.audio2lip import Conv2dBlock
from fixtalk.weights import read_weights

_FACE = ((15, 32, 7, 1, 3, False), (32, 64, 5, (1, 2), 1, False), (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True),
         (64, 128, 3, 2, 1, False), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True),
         (128, 256, 3, 2, 1, False), (256, 256, 3, 1, 1, True), (256, 256, 3, 1, 1, True),
         (256, 512, 3, 2, 1, False), (512, 512, 3, 1, 1, True), (512, 512, 3, 1, 1, True),
         (512, 512, 3, 2, 1, False), (512, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False))
_AUDIO = ((1, 32, 3, 1, 1, False), (32, 32, 3, 1, 1, True), (32, 32, 3, 1, 1, True), (32, 64, 3, (3, 1), 1, False),
          (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True), (64, 128, 3, 3, 1, False), (128, 128, 3, 1, 1, True),
          (128, 128, 3, 1, 1, True), (128, 256, 3, (3, 2), 1, False), (256, 256, 3, 1, 1, True),
          (256, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False))


class SyncNetColor(nn.Module):
    """(mel B x 1 x 80 x 16, faces B x 15 x 48 x 96) -> L2-normalised (audio, face) embeddings, B x 512 each."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder = nn.Sequential(*(Conv2dBlock(*s) for s in _FACE))
        self.audio_encoder = nn.Sequential(*(Conv2dBlock(*s) for s in _AUDIO))

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = F.normalize(self.audio_encoder(mel).flatten(1), dim=1)
        v = F.normalize(self.face_encoder(faces).flatten(1), dim=1)
        return a, v


def load_syncnet(path: str | Path) -> SyncNetColor:
    """Frozen, eval-mode SyncNet from Wav2Lip's lipsync_expert.pth (weights_only load; "module." stripped)."""
    p = Path(path)
    obj = read_weights(p, "SyncNet weights (Wav2Lip's lipsync_expert.pth)")
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict):
        raise InputError(p, "expected a state dict (or a dict with 'state_dict')")
    net = SyncNetColor()
    try:
        net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise InputError(p, f"not a Wav2Lip SyncNet_color state dict: {str(err).splitlines()[0]}") from None
    return net.eval().requires_grad_(False)


def lower_face_stack(frames: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """B x 5 x 3 x S x S frames in [-1, 1] + B x 5 x 68 x 2 landmarks -> B x 15 x 48 x 96 SyncNet input.

    Each frame is cropped to the square around its landmarks (the whole frame where they are NaN), resized to
    96 x 96 bilinearly and cut to its lower half; channels are flipped to BGR and mapped to [0, 1].
    """
    b, t, _, s, _ = frames.shape
    lm = landmarks.reshape(b * t, 68, 2)
    valid = ~torch.isnan(lm).any(dim=(1, 2))
    lo = torch.where(valid[:, None], torch.nan_to_num(lm, nan=0.0).amin(1), torch.zeros(b * t, 2, device=lm.device))
    hi = torch.where(valid[:, None], torch.nan_to_num(lm, nan=0.0).amax(1),
                     torch.full((b * t, 2), s - 1.0, device=lm.device))
    centre, half = (lo + hi) / 2, ((hi - lo).amax(1) / 2 * 1.1).clamp_min(8.0)
    # affine_grid maps output [-1, 1] to input normalised coordinates (align_corners=False convention).
    theta = torch.zeros(b * t, 2, 3, device=frames.device, dtype=frames.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = (half / (s / 2)).to(frames.dtype)
    theta[:, :, 2] = ((centre + 0.5) / (s / 2) - 1).to(frames.dtype)
    grid = F.affine_grid(theta, [b * t, 3, 96, 96], align_corners=False)
    crops = F.grid_sample(frames.reshape(b * t, 3, s, s), grid, align_corners=False, padding_mode="border")
    lower = crops[:, [2, 1, 0], 48:, :].add(1).div(2)                   # (B*T) x 3 x 48 x 96, BGR in [0, 1]
    return lower.reshape(b, t * 3, 48, 96)


def sync_loss(net: SyncNetColor, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """BCE(cos(audio, video), 1) (Wav2Lip's expert loss; EDTalk weight 5, applied by the caller)."""
    a, v = net(mel, faces)
    cos = F.cosine_similarity(a, v).clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(cos.float(), torch.ones_like(cos, dtype=torch.float32))
