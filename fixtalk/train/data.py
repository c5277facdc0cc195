"""Training data over a `fixtalk prep` folder (docs/architecture.md 5 "data & sampling", 5.1, 7).

Three item kinds, all sampled per clip (an epoch = one item per clip, as EDTalk's datasets):

* `PairDataset`   source and driver frame of one identity (stages recon, expression, fixtalk, finetune).
                  Two random frames of one clip (HDTF/LIA recipe); for an emotional MEAD clip the source is a
                  frame of a *neutral* clip of the same actor when the data has one (EDTalk stage 1).
* `SwapDataset`   persons a and b (different identities when possible): identity and target frames of each,
                  plus the mouth-swap composites "a with b's mouth" and "b with a's mouth" (Mouth-Pose stage).
* `AudioDataset`  T consecutive frames with their mel windows, plus an identity frame of the same clip.

Items are drawn from a per-item generator seeded by (seed, epoch, index), so a resumed run sees the same data
(`EpochSampler` encodes the epoch into the index). A clip that fails to load is reported in the item's "bad"
field (the loop logs it) and replaced by another clip; it is never silently skipped.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from fixtalk.errors import InputError
from fixtalk.faces import apply, umeyama
from fixtalk.train.clipstore import Clip, read_clips, read_frames

# What a broken clip raises while loading (unreadable video, truncated npz, wrong shapes): reported, replaced.
BAD_DATA = (InputError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)

__all__ = ["AudioDataset", "Clip", "ClipDataset", "EpochSampler", "PairDataset", "SwapDataset", "mouth_swap",
           "read_clips", "read_frames", "scale_landmarks", "to_tensor"]

log = logging.getLogger(__name__)


def to_tensor(img: np.ndarray, size: int) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x size x size float in [-1, 1] (EDTalk: Resize -> ToTensor -> Normalize(0.5, 0.5))."""
    if img.shape[0] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC)
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def scale_landmarks(lm: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Landmarks from a src-px crop to a dst-px crop (pixel centres kept aligned)."""
    r = dst / src
    return (lm + 0.5) * r - 0.5


# ----------------------------------------------------------------------------------------------- mouth swap

def _anchors(lm: np.ndarray) -> np.ndarray:
    """Centre of left eye (36-41), right eye (42-47) and inner mouth (60-67) (docs/architecture.md 5.1)."""
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[60:68].mean(0)])


def mouth_swap(face_x: np.ndarray, lm_x: np.ndarray, face_y: np.ndarray, lm_y: np.ndarray,
               margin: float | None = None) -> np.ndarray:
    """"Face of X with the mouth of Y" (EDTalk:datasets/dataset_HDTF_lip_nonlip.py; docs/architecture.md 5.1).

    Similarity from Y's 3 anchors to X's, translated so Y's inner-mouth centre lands exactly on X's; Y is warped
    onto an X-sized canvas (EDTalk's 224 canvas is a quirk) and the box of X's mouth landmarks 48-67, grown by
    `margin` px (5 px at 256), is pasted from the warped Y into X. Images S x S x 3 uint8, landmarks (68, 2).
    """
    size = face_x.shape[0]
    margin = 5.0 * size / 256 if margin is None else margin
    ax, ay = _anchors(lm_x), _anchors(lm_y)
    m = umeyama(ay, ax)
    m[:, 2] += ax[2] - apply(m, ay[2:3])[0]
    warped = cv2.warpAffine(face_y, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lo = np.floor(lm_x[48:68].min(0) - margin).astype(int).clip(0, size)
    hi = np.ceil(lm_x[48:68].max(0) + margin).astype(int).clip(0, size)
    out = face_x.copy()
    out[lo[1]:hi[1], lo[0]:hi[0]] = warped[lo[1]:hi[1], lo[0]:hi[0]]
    return out


# ----------------------------------------------------------------------------------------------- datasets

class ClipDataset(Dataset):
    """Base: one item per clip and epoch (at least `min_length` items), bad clips reported and replaced."""

    def __init__(self, clips: list[Clip], size: int, seed: int = 0, min_length: int = 1,
                 frame_fraction: float = 1.0) -> None:
        if not clips:
            raise InputError(None, f"{type(self).__name__}: no usable clips")
        self.clips, self.size, self.seed = clips, size, seed
        self.length = max(len(clips), min_length)
        self.frame_fraction = frame_fraction  # finetune: sample only the first 80 % of each clip (EDTalk)
        self.bad: dict[str, str] = {}

    def __len__(self) -> int:
        return self.length

    def usable_frames(self, clip: Clip) -> int:
        return max(1, int(clip.frames * self.frame_fraction))

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = divmod(int(key), self.length)
        rng = np.random.default_rng([self.seed, epoch, index])
        reports: list[str] = []
        clip = self.clips[index % len(self.clips)]
        for _ in range(20):
            if clip.name not in self.bad:
                try:
                    item = self.item(clip, rng)
                    item["bad"] = "; ".join(reports)
                    return item
                except BAD_DATA as err:
                    self.bad[clip.name] = str(err)
                    reports.append(f"{clip.name}: {err}")
            clip = self.clips[int(rng.integers(len(self.clips)))]
        raise RuntimeError(f"no loadable clip after 20 tries; last problems: {reports[-3:]}")

    def item(self, clip: Clip, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def landmarks(self, clip: Clip) -> np.ndarray:
        with np.load(clip.npz) as z:
            lm, size = z["landmarks"], int(z["size"])
        if lm.shape[0] != clip.frames:
            raise ValueError(f"{clip.npz.name}: {lm.shape[0]} landmark rows for {clip.frames} frames")
        return scale_landmarks(lm, size, self.size)


class PairDataset(ClipDataset):
    """{"source", "driver"}: 3 x S x S each, same identity."""

    def __init__(self, clips: list[Clip], size: int, seed: int = 0, min_length: int = 1,
                 frame_fraction: float = 1.0) -> None:
        super().__init__(clips, size, seed, min_length, frame_fraction)
        self.neutral: dict[str, list[Clip]] = {}
        for c in clips:
            if c.emotion == "neutral":
                self.neutral.setdefault(c.identity, []).append(c)

    def item(self, clip: Clip, rng: np.random.Generator) -> dict[str, Any]:
        n = self.usable_frames(clip)
        neutral = self.neutral.get(clip.identity, [])
        src_clip, i_drv = clip, int(rng.integers(n))
        if clip.emotion and clip.emotion != "neutral" and neutral:
            src_clip = neutral[int(rng.integers(len(neutral)))]
        i_src = int(rng.integers(self.usable_frames(src_clip)))
        if src_clip is clip:
            src, drv = read_frames(clip.mp4, [i_src, i_drv])
        else:
            (src,), (drv,) = read_frames(src_clip.mp4, [i_src]), read_frames(clip.mp4, [i_drv])
        # Landmarks in model pixels (NaN: no face) for the pixel path's landmark-flow loss.
        lm_src, lm_drv = self.landmarks(src_clip)[i_src], self.landmarks(clip)[i_drv]
        return {"source": to_tensor(src, self.size), "driver": to_tensor(drv, self.size),
                "source_landmarks": torch.from_numpy(lm_src.astype(np.float32)),
                "driver_landmarks": torch.from_numpy(lm_drv.astype(np.float32))}


class SwapDataset(ClipDataset):
    """Mouth-Pose items: a_id, a, b_id, b and the composites a_bm ("a with b's mouth"), b_am, 3 x S x S each."""

    def _frames_with_face(self, clip: Clip, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        lm = self.landmarks(clip)
        ok = np.flatnonzero(~np.isnan(lm).any(axis=(1, 2)))
        if ok.size == 0:
            raise ValueError("no frame with landmarks")
        ident, target = int(rng.integers(clip.frames)), int(ok[rng.integers(ok.size)])
        return read_frames(clip.mp4, [ident, target]), lm[target]

    def item(self, clip: Clip, rng: np.random.Generator) -> dict[str, Any]:
        others = [c for c in self.clips if c.identity != clip.identity and c.name not in self.bad]
        others = others or [c for c in self.clips if c.name != clip.name] or [clip]
        other = others[int(rng.integers(len(others)))]
        (a_id, a), lm_a = self._frames_with_face(clip, rng)
        try:
            (b_id, b), lm_b = self._frames_with_face(other, rng)
        except BAD_DATA as err:
            self.bad[other.name] = str(err)
            raise InputError(other.npz, f"partner clip of {clip.name}: {err}") from None
        s = self.size
        a, b, a_id, b_id = (cv2.resize(x, (s, s), interpolation=cv2.INTER_AREA) if x.shape[0] != s else x
                            for x in (a, b, a_id, b_id))
        out = {"a_id": a_id, "a": a, "b_id": b_id, "b": b,
               "a_bm": mouth_swap(a, lm_a, b, lm_b), "b_am": mouth_swap(b, lm_b, a, lm_a)}
        return {k: to_tensor(v, s) for k, v in out.items()}


class AudioDataset(ClipDataset):
    """Audio2Lip items (EDTalk: HDTF windows of T = 5): mel T x 1 x 80 x 16, the generator's mouth weights
    lip T x lip_dim and their clip mean lip_mean (lip_dim,) from `targets` (fixtalk.train.lip_targets, set
    before training), and with `frames`: frames T x 3 x S x S, landmarks T x 68 x 2 (NaN = no face) and an
    identity frame 3 x S x S of the same clip, for the image losses."""

    def __init__(self, clips: list[Clip], size: int, seed: int = 0, min_length: int = 1, window: int = 5,
                 frames: bool = True) -> None:
        usable = [c for c in clips if c.has_audio and c.frames >= window]
        if not usable:
            raise InputError(None, f"no clip with audio and >= {window} frames for the audio2lip stage")
        super().__init__(usable, size, seed, min_length)
        self.window, self.frames = window, frames
        self.targets: dict[str, np.ndarray] = {}
        self._mels: dict[str, np.ndarray] = {}  # float32 mel windows per clip: ~5 MB a minute of audio

    def _mel(self, clip: Clip) -> np.ndarray:
        """The clip's mel windows, read once: without the frames, reading them is most of an item's cost."""
        if clip.name not in self._mels:
            with np.load(clip.npz) as z:
                mel = z["mel"].astype(np.float32)
            if mel.shape[0] != clip.frames:
                raise ValueError(f"{clip.npz.name}: {mel.shape[0]} mel windows for {clip.frames} frames")
            self._mels[clip.name] = mel
        return self._mels[clip.name]

    def item(self, clip: Clip, rng: np.random.Generator) -> dict[str, Any]:
        t0 = int(rng.integers(clip.frames - self.window + 1))
        idx = list(range(t0, t0 + self.window))
        ident = int(rng.integers(clip.frames))
        mel = self._mel(clip)
        if clip.name not in self.targets:  # a bug, not bad data: the loop sets them before training
            raise RuntimeError(f"AudioDataset: no lip targets for {clip.name} (set .targets first)")
        lip = self.targets[clip.name]
        item = {"mel": torch.from_numpy(mel[idx]), "lip": torch.from_numpy(lip[idx]),
                "lip_mean": torch.from_numpy(lip.mean(0))}
        if self.frames:
            frames = read_frames(clip.mp4, [ident, *idx])
            item |= {"ident": to_tensor(frames[0], self.size),
                     "frames": torch.stack([to_tensor(f, self.size) for f in frames[1:]]),
                     "landmarks": torch.from_numpy(self.landmarks(clip)[idx].astype(np.float32))}
        return item


class EpochSampler(DistributedSampler):
    """DistributedSampler (shuffled, drop_last) that can start mid-epoch and tags indices with the epoch.

    Yields epoch * len(dataset) + index, which `ClipDataset` splits again to seed the item's generator, so a
    resumed run draws exactly the items it would have drawn (including the random frames).
    """

    def __init__(self, dataset: ClipDataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * len(self.dataset)  # type: ignore[arg-type]  # torch types it Dataset (no __len__)
        return iter([base + i for i in list(super().__iter__())[self.skip:]])

    def __len__(self) -> int:
        return self.num_samples - self.skip
