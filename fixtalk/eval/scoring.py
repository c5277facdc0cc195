"""Per-frame measurements on top of `fixtalk.metrics`, with every missing model or package turned into a
reason instead of a number.

Scores are kept as running sums `[sum, n, skipped]` per clip, so clips (and shards) combine exactly into
frame-weighted means; a frame whose score cannot be computed (no face found) is counted in `skipped`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from fixtalk import metrics as M
from fixtalk.config import SAMPLE_RATE, SAMPLES_PER_FRAME
from fixtalk.errors import InputError
from fixtalk.metrics import emotion as _emotion
from fixtalk.metrics import fid as _fid
from fixtalk.metrics import identity as _identity
from fixtalk.metrics import sync as _sync

T = TypeVar("T")
PSNR_CAP = 100.0        # dB; identical frames (a copy of the source, duplicated video frames) score this
Stat = list[float]      # [sum, n, skipped]
# Metric groups: one model or package each, so one failure explains every metric of the group.
GROUPS = ("csim", "landmarks", "niqe", "cpbd", "fid", "emotion", "sync")


def stat(values: Iterable[float]) -> Stat:
    """[sum of the finite values, how many, how many non-finite (skipped)]."""
    total, n, skipped = 0.0, 0, 0
    for v in values:
        if v is None or not math.isfinite(v):
            skipped += 1
        else:
            total, n = total + float(v), n + 1
    return [total, n, skipped]


@dataclass
class Analysis:
    """Per-frame measurements of one frame sequence; None where the metric group is unavailable."""

    emb: list[np.ndarray | None] | None = None   # CSIM-dlib descriptors (None: no face)
    lm: np.ndarray | None = None                 # T x 68 x 2, NaN rows without a face
    niqe: list[float] | None = None
    cpbd: list[float] | None = None
    feats: np.ndarray | None = None              # T x D features of the FID network
    emo: np.ndarray | None = None                # T x 7 FER probabilities, NaN rows without a face


class Scorer:
    """Loads the metric networks once and runs them; `reasons[group]` says why a group is unavailable.

    inception: pytorch-fid weights for the real FID (else $FIXTALK_FID_INCEPTION, else the labelled
    MobileNetV2 proxy). syncnet: syncnet_v2.model (else $FIXTALK_SYNCNET, else Sync is unavailable).
    A path the user names but that cannot be loaded is an InputError, never a silent fallback.
    """

    def __init__(self, inception: str | None = None, syncnet: str | None = None) -> None:
        self.reasons: dict[str, str] = {}
        self._inception = inception or os.environ.get(_fid.INCEPTION_ENV) or None
        self.fid_label = _fid.INCEPTION_LABEL if self._inception else _fid.LABEL
        self._fid_net: Any = None
        self._sync_net: Any = None
        if self._inception:
            self._fid_net = self._load_named(_fid.load_fid_inception, self._inception, "--inception")
        try:
            self._sync_net = self._load_named(_sync.load_syncnet, syncnet, "--syncnet")
        except M.MetricUnavailable as err:
            where = err.how.split(" Pass its path")[0]
            self.reasons["sync"] = (f"{err.metric} unavailable: no {_sync.SYNCNET_FILE} given. Run with --syncnet "
                                    f"PATH (or set ${_sync.SYNCNET_ENV}). {where}")

    @staticmethod
    def _load_named(loader: Callable[[Any], T], path: str | None, flag: str) -> T:
        try:
            return loader(path)
        except M.MetricUnavailable:
            if path is not None:      # the user named a file: a bad one is their input error
                raise InputError(path, f"{flag}: file not found") from None
            raise
        except (OSError, RuntimeError, ValueError) as err:
            raise InputError(path, f"{flag}: cannot load ({str(err).splitlines()[0]})") from None

    @property
    def has_sync(self) -> bool:
        return self._sync_net is not None

    @property
    def labels(self) -> dict[str, str]:
        return {"csim": _identity.LABEL, "fid": self.fid_label, "emotion": _emotion.LABEL}

    def _guard(self, group: str, fn: Callable[[], T]) -> T | None:
        """fn() unless the group is known unavailable; a MetricUnavailable records why and returns None."""
        if group in self.reasons:
            return None
        try:
            return fn()
        except M.MetricUnavailable as err:
            self.reasons[group] = str(err)
            return None

    def _per_frame(self, group: str, frames: Sequence[np.ndarray], fn: Callable[[np.ndarray], T]) -> list[T] | None:
        """fn on each distinct frame object (a repeated copy-baseline frame is measured once)."""
        def run() -> list[T]:
            cache: dict[int, T] = {}
            out = []
            for f in frames:
                if id(f) not in cache:
                    cache[id(f)] = fn(f)
                out.append(cache[id(f)])
            return out

        return self._guard(group, run)

    def analyse(self, frames: Sequence[np.ndarray], want: set[str]) -> Analysis:
        """Measure the groups in `want` ("csim", "landmarks", "niqe", "cpbd", "fid", "emotion")."""
        a = Analysis()
        if "csim" in want:
            a.emb = self._per_frame("csim", frames, M.identity_embedding)
        if "landmarks" in want:
            lms = self._per_frame("landmarks", frames, M.face_landmarks)
            if lms is not None:
                a.lm = np.stack([np.full((68, 2), np.nan) if x is None else np.asarray(x) for x in lms])
        if "niqe" in want:
            a.niqe = self._per_frame("niqe", frames, _niqe)
        if "cpbd" in want:
            a.cpbd = self._per_frame("cpbd", frames, M.cpbd)
        if "fid" in want:
            a.feats = self._guard("fid", lambda: self._features(frames))
        if "emotion" in want:
            crops = self._per_frame("emotion", frames, _emotion.face_crop)
            a.emo = None if crops is None else self._guard("emotion", lambda: _emotion_probs(crops))
        return a

    def _features(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """FID features, each distinct frame object once."""
        first: dict[int, int] = {}
        for f in frames:
            first.setdefault(id(f), len(first))
        unique = {i: f for f in frames for i in [first[id(f)]]}
        feats = M.extract_features(self.fid_net(), [unique[i] for i in range(len(unique))])
        return feats[[first[id(f)] for f in frames]]

    def fid_net(self) -> Any:
        if self._fid_net is None:
            self._fid_net = M.load_mobilenet_v2()
        return self._fid_net

    def sync(self, frames: Sequence[np.ndarray], lm: np.ndarray | None, audio: np.ndarray) -> list[float] | None:
        """[LSE-C, LSE-D] of frames (25 fps) with their 16 kHz audio; None when unavailable or too short."""
        if self._sync_net is None or lm is None or len(frames) < 6:
            return None
        boxes = _boxes(lm)
        if boxes is None:
            return None
        # run_pipeline's 13-frame median filter, narrowed (odd) on short clips: scipy zero-pads the ends,
        # so a kernel longer than the clip would pull every box towards 0.
        kernel = min(13, len(boxes) - 1 + len(boxes) % 2)
        smooth = _sync.smooth_boxes(boxes, kernel)
        faces = np.stack([_sync.syncnet_crop(f, (b[0], b[1], b[2], b[3])) for f, b in zip(frames, smooth)])
        try:
            s = _sync.sync_scores(self._sync_net, faces, audio[:len(frames) * SAMPLES_PER_FRAME], SAMPLE_RATE)
        except ValueError:            # fewer than 6 frames
            return None
        return [s.lse_c, s.lse_d]


def _niqe(frame: np.ndarray) -> float:
    import warnings

    with warnings.catch_warnings():  # a block without texture divides by zero inside NIQE: NaN, skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        return M.niqe(frame)


def _emotion_probs(crops: Sequence[np.ndarray | None]) -> np.ndarray:
    """T x 7 FER probabilities of fer-style 64x64 face crops (None: no face), in one classifier batch."""
    out = np.full((len(crops), len(_emotion.CLASSES)), np.nan)
    found = [(i, c) for i, c in enumerate(crops) if c is not None]
    if found:
        out[[i for i, _ in found]] = _emotion.classify_faces(np.stack([c for _, c in found]))
    return out


def _boxes(lm: np.ndarray) -> np.ndarray | None:
    """(T, 4) face boxes from landmarks (the 68 points' bounds, raised by 1/3 of the eye-chin height to
    cover the brow line as a face detector's box does); faceless frames hold the nearest box."""
    idx = np.flatnonzero(np.isfinite(lm).all(axis=(1, 2)))
    if not len(idx):
        return None
    boxes = np.concatenate([lm[idx].min(axis=1), lm[idx].max(axis=1)], axis=1)
    boxes[:, 1] -= (boxes[:, 3] - boxes[:, 1]) / 3
    return boxes[np.abs(np.arange(len(lm))[:, None] - idx[None]).argmin(axis=1)]


# -- scores of one protocol -------------------------------------------------------------------------------

def psnr_capped(a: np.ndarray, b: np.ndarray) -> float:
    return min(M.psnr(a, b), PSNR_CAP)


def pixel_scores(gen: Sequence[np.ndarray], real: Sequence[np.ndarray] | np.ndarray) -> dict[str, Stat]:
    return {"psnr": stat(psnr_capped(g, r) for g, r in zip(gen, real)),
            "ssim": stat(M.ssim(g, r) for g, r in zip(gen, real))}


def lmd_scores(gen: Analysis, real: Analysis) -> dict[str, Stat | None]:
    if gen.lm is None or real.lm is None:
        return {"m_lmd": None, "f_lmd": None}
    out: dict[str, Stat | None] = {}
    regions: tuple[tuple[str, Literal["mouth", "face"]], ...] = (("m_lmd", "mouth"), ("f_lmd", "face"))
    for key, region in regions:
        r = M.lmd(gen.lm, real.lm, region)
        out[key] = [r.value * r.n_frames if r.n_frames else 0.0, r.n_frames, r.n_skipped]
    return out


def cosines(embs: Sequence[np.ndarray | None], ref: Sequence[np.ndarray | None] | np.ndarray | None) -> list[float]:
    """Per-frame cosine of descriptors against one reference descriptor or a per-frame list; NaN when a
    face is missing on either side."""
    refs = ref if isinstance(ref, (list, tuple)) else [ref] * len(embs)
    return [M.cosine_similarity(e, r) if e is not None and r is not None else math.nan
            for e, r in zip(embs, refs)]


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance of two N x D feature sets (Heusel et al. 2017).

    With fewer samples than dimensions (every small evaluation: D = 1280 or 2048) the covariances have
    rank < D and Tr sqrt(S1 S2) is computed exactly from the centred features a, b as the nuclear norm
    ||a b^T||_* / sqrt((n1 - 1)(n2 - 1)) (the non-zero eigenvalues of S1 S2 are the squared singular values
    of a b^T / sqrt(...)): no D x D matrix square root, which is slow (~30 s at D = 1280) and ill-conditioned
    when singular. Otherwise pytorch-fid's formula (`fixtalk.metrics.fid_from_features`).
    """
    import warnings

    n1, n2, d = len(real), len(fake), real.shape[1]
    if min(n1, n2) > d:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return M.fid_from_features(real, fake)
    a = np.asarray(real, np.float64) - real.mean(axis=0)
    b = np.asarray(fake, np.float64) - fake.mean(axis=0)
    diff = real.mean(axis=0) - fake.mean(axis=0)
    tr_s1, tr_s2 = (a * a).sum() / (n1 - 1), (b * b).sum() / (n2 - 1)
    tr_cov = np.linalg.svd(a @ b.T, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    return float(diff @ diff + tr_s1 + tr_s2 - 2 * tr_cov)
