"""Fits the loudness mouth (fixtalk.models.loudness_mouth; docs/quality.md, "The loudness mouth") on the
training clips with audio, at the end of the audio2lip stage (or by scripts/fit_loudness_mouth.py).

1. direction: how the generator's mouth weights move when real mouths open, Cov(w, o) / Var(o) over all
   frames after removing each clip's mean (w: the frame's mouth weights, Audio2Lip's targets; o: the mouth
   opening of its landmarks, `fixtalk.metrics.landmarks.mouth_opening`).
2. quiet, loud: the 10th and 90th percentiles of `speech_level` over the clips' mel windows.
3. gain: a render swings from quiet to loud as far as the real mouths swing in these clips (the median over
   clips of the opening's 90th minus 10th percentile). The generator renders the first frame of up to
   `sources` clips with its own mouth weights and with `probe` added along the direction; dlib measures both
   openings, and gain = swing / (median change per unit of move). A generator that does not open the mouth
   along the direction cannot be fitted (a reason instead of a fit).
   The offset is centred on the envelope's mean (`center`), as Audio2Lip's output is centred on the speaker's
   mean mouth, and the gain never exceeds `reach`: the largest gain whose loudest and quietest moves stay
   within the 0.1st..99.9th percentiles of how far real frames' weights go along the direction from their
   clip's median. Beyond it the generator leaves what it was trained on and breaks the
   face (looked at, fixtalk-small v4: a move of 0.6 smears the lips, 1.0 and more tear the face apart, while
   the swing calibration asked for 1.9).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from fixtalk.metrics.landmarks import face_landmarks, mouth_opening
from fixtalk.models.fdm import Motion
from fixtalk.models.fixtalk import FixTalk
from fixtalk.models.loudness_mouth import LoudnessMouth, speech_level
from fixtalk.train.clipstore import Clip, read_frames
from fixtalk.train.data import to_tensor


@dataclass(frozen=True)
class Statistics:
    """What the fit reads from the data, before any render."""

    direction: np.ndarray   # lip_dim, unit
    quiet: float
    loud: float
    center: float           # mean envelope over the frames
    reach: float            # the largest gain whose moves stay where real frames' weights go
    swing: float            # real opening swing (eye distances, median over clips of p90 - p10)
    frames: int


@dataclass(frozen=True)
class LoudnessFit:
    stats: Statistics
    gain: float
    slope: float            # rendered opening per unit of move along the direction
    sources: int            # renders that calibrated the slope

    def apply(self, module: LoudnessMouth) -> None:
        s = self.stats
        module.set(torch.from_numpy(s.direction), s.quiet, s.loud, self.gain, s.center)

    def summary(self) -> str:
        s = self.stats
        return (f"loudness mouth: gain {self.gain:.3f} (at most the reach {s.reach:.3f}; real swing "
                f"{s.swing:.3f} eye distances, rendered {self.slope:.3f} per unit, {self.sources} sources), "
                f"levels {s.quiet:.2f}..{s.loud:.2f}, center {s.center:.3f}, {s.frames} frames")


def _openings(clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mouth opening (NaN without landmarks) and speech level of a clip's prep files."""
    with np.load(clip.npz) as z:
        lms, mel = z["landmarks"], z["mel"]
    opening = np.array([mouth_opening(lm) if np.isfinite(lm).all() else np.nan for lm in lms])
    return opening, speech_level(torch.from_numpy(mel.astype(np.float32))).numpy()


def statistics(clips: list[Clip], targets: dict[str, np.ndarray]) -> Statistics:
    """Direction, levels, center, reach and swing from the landmarks, mel windows and mouth weights."""
    ws, os_, levels, swings = [], [], [], []
    for clip in clips:
        opening, level = _openings(clip)
        ok = np.isfinite(opening)
        levels.append(level)
        if ok.sum() < 10:
            continue
        w = targets[clip.name][ok].astype(np.float64)
        ws.append(w - w.mean(0))
        os_.append(opening[ok] - opening[ok].mean())
        swings.append(float(np.percentile(opening[ok], 90) - np.percentile(opening[ok], 10)))
    if not ws:
        raise ValueError("no clip with audio has landmarks on 10 or more frames")
    w, o = np.concatenate(ws), np.concatenate(os_)
    a = (w * o[:, None]).sum(0) / max(float((o * o).sum()), 1e-12)
    a = a / max(np.linalg.norm(a), 1e-12)
    level = np.concatenate(levels)
    quiet, loud = (float(v) for v in np.percentile(level, [10, 90]))
    if not loud > quiet:
        raise ValueError(f"the speech level does not vary (10th and 90th percentiles both {quiet:.2f})")
    center = float(np.clip((level - quiet) / (loud - quiet), 0, 1).mean())
    # The offset runs from -gain * center (silence) to gain * (1 - center) (loud): both ends must stay within
    # the 0.1st..99.9th percentiles of how far real frames go along the direction from their clip's median.
    along = np.concatenate([p - np.median(p) for p in (targets[c.name].astype(np.float64) @ a for c in clips)])
    low, high = np.percentile(along, [0.1, 99.9])
    reach = min(float(high) / max(1 - center, 1e-6), float(-low) / max(center, 1e-6))
    return Statistics(a, quiet, loud, center, reach, float(np.median(swings)), len(o))


def _rendered_opening(img: torch.Tensor) -> float:
    """dlib's mouth opening of a B=1 render in [-1, 1], upsampled to 256 px as eval does; NaN without a face."""
    rgb = ((img[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    lm = face_landmarks(cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_CUBIC))
    return np.nan if lm is None else mouth_opening(lm)


@torch.no_grad()
def rendered_slope(model: FixTalk, clips: list[Clip], direction: np.ndarray, size: int, device: torch.device,
                   sources: int = 8, probe: float = 0.4) -> tuple[float, int]:
    """Median rendered opening change per unit of move along `direction`, and how many sources measured it."""
    d = torch.as_tensor(direction, dtype=torch.float32, device=device)
    changes = []
    for clip in clips[:sources]:
        state = model.prepare_source(to_tensor(read_frames(clip.mp4, [0])[0], size)[None].to(device))
        own = state.motion
        pair = [_rendered_opening(model.render(state, Motion(own.lip + k * d, own.pose, own.exp))) for k in (0, probe)]
        if np.isfinite(pair).all():
            changes.append((pair[1] - pair[0]) / probe)
    return (float(np.median(changes)) if changes else float("nan")), len(changes)


def fit(model: FixTalk, clips: list[Clip], targets: dict[str, np.ndarray], size: int, device: torch.device,
        sources: int = 8) -> LoudnessFit | str:
    """The fit, or a one-line reason why there is none."""
    try:
        stats = statistics(clips, targets)
    except ValueError as err:
        return str(err)
    was_training = model.training
    model.eval()
    slope, n = rendered_slope(model, clips, stats.direction, size, device, sources)
    model.train(was_training)
    if not n:
        return "dlib found no face in the calibration renders"
    if not slope > 0:
        return f"the generator does not open the mouth along the opening direction (slope {slope:.4f})"
    return LoudnessFit(stats, min(stats.swing / slope, stats.reach), slope, n)
