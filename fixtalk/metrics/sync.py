"""SyncNet audio-visual synchronisation: Sync_conf (FixTalk Tab. 3), a.k.a. LSE-C, and LSE-D.

Chung & Zisserman, "Out of time: automated lip sync in the wild" (ACCV 2016 workshops, the paper's [8]),
in the form of joonson/syncnet_python: the `S` network below (same module and parameter names, so the
released `syncnet_v2.model` state dict loads strictly) embeds 5-frame 224x224 face windows and 0.2 s MFCC
windows; for every offset in [-vshift, vshift] frames the mean distance over time is computed, and
  LSE-D = the minimum mean distance (lower is better),
  LSE-C = Sync_conf = median over offsets - minimum (higher is better),
  offset = the best audio-visual offset in frames.
This follows `SyncNetInstance.evaluate` (25 fps video, 16 kHz mono audio, 13 MFCCs at 100 Hz from
python_speech_features, vshift 15 in run_syncnet.py, BGR frames on 0..255 as cv2 reads them).

No weights ship offline. Pass the released `syncnet_v2.model` (from syncnet_python's download_model.sh)
as `weights=` or through $FIXTALK_SYNCNET; without it `load_syncnet` raises MetricUnavailable rather
than produce a number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import medfilt
from torch import nn

from fixtalk.config import SAMPLE_RATE, SAMPLES_PER_FRAME
from fixtalk.weights import read_weights

from ._assets import MetricUnavailable, user_file

SYNCNET_FILE = "syncnet_v2.model"
SYNCNET_ENV = "FIXTALK_SYNCNET"
_SYNCNET_URL = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"


def _bn_relu(conv: nn.Module, c: int, dims: int = 2) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(c) if dims == 2 else nn.BatchNorm3d(c), nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """syncnet_python's `S` (num_layers_in_fc_layers=1024).

    forward_aud: Bx1x13x20 MFCC -> Bx1024;  forward_lip: Bx3x5x224x224 (BGR, 0..255) -> Bx1024.
    """

    def __init__(self, embed_dim: int = 1024) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_bn_relu(nn.Conv2d(1, 64, 3, padding=1), 64), nn.MaxPool2d(1, 1),
            *_bn_relu(nn.Conv2d(64, 192, 3, padding=1), 192), nn.MaxPool2d(3, (1, 2)),
            *_bn_relu(nn.Conv2d(192, 384, 3, padding=1), 384),
            *_bn_relu(nn.Conv2d(384, 256, 3, padding=1), 256),
            *_bn_relu(nn.Conv2d(256, 256, 3, padding=1), 256), nn.MaxPool2d(3, 2),
            *_bn_relu(nn.Conv2d(256, 512, (5, 4)), 512))
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                      nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                      nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            *_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2)), 96, 3), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), 256, 3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, 3),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, 3),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, 3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), 512, 3))

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(x).flatten(1))


def load_syncnet(weights: str | os.PathLike[str] | None = None) -> SyncNet:
    """SyncNet with the released `syncnet_v2.model` (a state dict of `S`), eval mode.

    weights: path of the file, else $FIXTALK_SYNCNET. Raises MetricUnavailable when neither is a file.
    """
    path = user_file(weights, SYNCNET_ENV, SYNCNET_FILE, metric="SyncNet (Sync_conf / LSE-C / LSE-D)",
                     how=f"Download it from {_SYNCNET_URL} (joonson/syncnet_python, download_model.sh) "
                         "on a machine with network access.")
    state = read_weights(path, "SyncNet weights")
    if "state_dict" in state:
        state = state["state_dict"]
    model = SyncNet()
    # The 2017 checkpoint predates BatchNorm's num_batches_tracked buffer; everything else must match.
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} is not a syncnet_v2 state dict (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return model.eval()


def syncnet_crop(frame: np.ndarray, box: tuple[float, float, float, float],
                 crop_scale: float = 0.4) -> np.ndarray:
    """224x224 face crop as syncnet_python's run_pipeline.crop_video: box (x1, y1, x2, y2) -> square crop
    of half-size s=max(w, h)/2 from s above the centre to s(1+2 cs) below it, padded with grey 110."""
    import cv2

    x1, y1, x2, y2 = box
    bs = max(y2 - y1, x2 - x1) / 2
    bsi = int(bs * (1 + 2 * crop_scale))
    padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=110)
    my, mx = (y1 + y2) / 2 + bsi, (x1 + x2) / 2 + bsi
    face = padded[int(my - bs):int(my + bs * (1 + 2 * crop_scale)),
                  int(mx - bs * (1 + crop_scale)):int(mx + bs * (1 + crop_scale))]
    return cv2.resize(face, (224, 224))


def smooth_boxes(boxes: np.ndarray, kernel: int = 13) -> np.ndarray:
    """Median-filter a (T, 4) x1,y1,x2,y2 track over time (run_pipeline smooths centre and size, k=13)."""
    b = np.asarray(boxes, dtype=np.float64)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    cx, cy, s = (medfilt(v, kernel_size=kernel) for v in (cx, cy, s))
    return np.stack([cx - s, cy - s, cx + s, cy + s], axis=1)


@dataclass(frozen=True)
class SyncScores:
    """offset: best AV offset in frames; lse_d: min mean distance (LSE-D); lse_c: confidence (LSE-C)."""

    offset: int
    lse_d: float
    lse_c: float


def _mfcc(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    try:
        import python_speech_features
    except ImportError as err:
        raise MetricUnavailable("SyncNet", "package python_speech_features",
                                "Install it with `pip install python_speech_features`.") from err
    a = np.asarray(audio)
    if a.ndim == 2:
        a = a.mean(axis=1)
    if np.issubdtype(a.dtype, np.floating):         # syncnet_python feeds int16 samples
        a = np.clip(a * 32768.0, -32768, 32767)
    return python_speech_features.mfcc(a.astype(np.float64), sample_rate).T   # 13 x T (100 Hz)


def sync_scores(model: SyncNet, faces: np.ndarray, audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
                vshift: int = 15, batch_size: int = 20, rgb: bool = True) -> SyncScores:
    """Sync scores of a 25 fps face track and its 16 kHz mono audio, as SyncNetInstance.evaluate.

    faces: (T, 224, 224, 3) uint8 crops (see `syncnet_crop`), RGB unless rgb=False (then BGR as cv2).
    audio: int16 samples, or floats in [-1, 1].
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError("SyncNet expects 16 kHz audio; resample first")
    frames = np.asarray(faces)
    if frames.ndim != 4 or frames.shape[1:] != (224, 224, 3):
        raise ValueError(f"expected (T, 224, 224, 3) face crops, got {frames.shape}")
    if rgb:
        frames = frames[..., ::-1]
    video = torch.from_numpy(np.ascontiguousarray(frames.transpose(3, 0, 1, 2))).float()[None]  # 1x3xTxHxW
    mfcc = torch.from_numpy(_mfcc(audio, sample_rate)).float()[None, None]                    # 1x1x13xA
    n = min(len(frames), len(np.asarray(audio)) // SAMPLES_PER_FRAME) - 5
    if n < 1:
        raise ValueError("need at least 6 frames of video and audio")
    im_feat, cc_feat = [], []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            idx = range(i, min(n, i + batch_size))
            im_feat.append(model.forward_lip(torch.cat([video[:, :, v:v + 5] for v in idx])))
            cc_feat.append(model.forward_aud(torch.cat([mfcc[..., v * 4:v * 4 + 20] for v in idx])))
    im, cc = torch.cat(im_feat), torch.cat(cc_feat)
    win = 2 * vshift + 1
    ccp = torch.nn.functional.pad(cc, (0, 0, vshift, vshift))
    dists = torch.stack([torch.nn.functional.pairwise_distance(im[[i]].repeat(win, 1), ccp[i:i + win])
                         for i in range(len(im))], 1)   # offsets x time
    mdist = dists.mean(dim=1)
    minval, minidx = torch.min(mdist, 0)
    return SyncScores(int(vshift - minidx), float(minval), float(torch.median(mdist) - minval))
