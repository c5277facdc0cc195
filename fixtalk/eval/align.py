"""Decode and align the real clips and portraits once, at every resolution the evaluation needs.

A clip is read at 25 fps and its face tracked with `fixtalk.faces.FaceTrack`, the tracker the Pipeline
uses for drivers; every frame is cropped with its (smoothed) transform at the evaluation size (the
ground truth the metrics compare against) and at each checkpoint's input size (what the model sees).
One transform per frame serves all sizes (`fixtalk.faces.crop` rescales it), so a generated frame and
its ground truth share the crop exactly. A faceless frame holds the last tracked transform (leading
faceless frames take the first one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fixtalk.config import FPS
from fixtalk.errors import InputError
from fixtalk.eval.data import EvalClip, Portrait
from fixtalk.faces import FaceDetector, FaceTrack, crop


@dataclass
class AlignedClip:
    """A real clip as aligned crops. Frame 0 is the self-driven source."""

    clip: EvalClip
    crops: dict[int, np.ndarray]      # size -> T x S x S x 3 uint8
    frames_without_face: int

    @property
    def length(self) -> int:
        return len(next(iter(self.crops.values())))


def load_clip(clip: EvalClip, sizes: set[int], max_frames: int | None, detector: FaceDetector) -> AlignedClip:
    """Track and crop the first `max_frames` frames (all when None) at every size in `sizes`."""
    from fixtalk.io import open_frames

    track = FaceTrack(detector, fps=FPS, path=clip.path)
    frames: list[np.ndarray] = []
    transforms: list[np.ndarray | None] = []
    crops: dict[int, list[np.ndarray]] = {s: [] for s in sizes}
    last: np.ndarray | None = None
    reader = open_frames(clip.path, FPS)
    with reader:
        for frame in reader:
            if max_frames is not None and len(transforms) >= max_frames:
                break
            face = track.update(frame)
            transforms.append(None if face is None else face.transform)
            if face is not None:
                for pending in frames:    # leading faceless frames: the first tracked transform
                    _crop_all(crops, pending, face.transform)
                frames.clear()
                last = face.transform
            if face is None and last is None:
                frames.append(frame)
            else:                         # a faceless frame later on holds the last transform
                assert last is not None
                _crop_all(crops, frame, last)
    if last is None:
        raise InputError(clip.path, "no face found in any frame")
    if len(transforms) < 2:
        raise InputError(clip.path, "need at least 2 frames (frame 0 is the source)")
    missing = sum(t is None for t in transforms)
    return AlignedClip(clip, {s: np.stack(v) for s, v in crops.items()}, missing)


def _crop_all(crops: dict[int, list[np.ndarray]], frame: np.ndarray, transform: np.ndarray) -> None:
    for size, out in crops.items():
        out.append(crop(frame, transform, size))


def load_portrait(portrait: Portrait, sizes: set[int], detector: FaceDetector) -> dict[int, np.ndarray]:
    """size -> S x S x 3 aligned crop of a portrait image (or of a video's first frame)."""
    from fixtalk.io import load_image, open_frames

    if portrait.is_video:
        reader = open_frames(portrait.path, FPS)
        with reader:
            image = next(iter(reader))
    else:
        image = load_image(portrait.path)
    face = detector.align(image, path=portrait.path)
    return {s: crop(image, face.transform, s) for s in sizes}
