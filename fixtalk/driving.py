"""Driving sources, resolved in one place for `Pipeline`, `Stream`, `live` and the web UI.

Each factor (mouth = "lip", "pose", expression = "exp") names where its bank weights come from:

    source   hold the portrait's own weights
    audio    Audio2Lip on the audio (mouth only)
    video    a video or image file (batch path; read at 25 fps)
    driver   the frames pushed into a `Stream` (streaming path)
    emotion  a preset of the checkpoint (expression only)
    npy      an EDTalk .npy of expression weights (expression only, batch path)

`parse_factor` turns a spec string into a `FactorSpec` once, with a one-line InputError when it cannot
drive that factor; `predict_weights` turns motion features into bank weights by the model's own motion
prediction (`predict_motion`) through the Runtime, so the device, dtype and backend (torch or ONNX)
are the ones every other model call uses; `mix` is the one strength mix around the portrait's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fixtalk.config import EMOTIONS, ModelConfig
from fixtalk.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fixtalk.models.fdm import Motion
    from fixtalk.runtime import Runtime

FACTORS = ("lip", "pose", "exp")
NAMES = {"lip": "mouth", "pose": "pose", "exp": "expression"}
CHUNK = 256  # motion features per prediction call: bounded memory on long drivers


@dataclass(frozen=True)
class FactorSpec:
    """One factor's parsed source: `kind` (see the module docstring) and `value` (the path as given, the
    lower-cased emotion, or the keyword itself)."""

    factor: str
    kind: str
    value: str

    @property
    def label(self) -> str:
        """How the source is named in logs and side-by-side panels."""
        return Path(self.value).name if self.kind in ("video", "npy") else self.value


@dataclass
class FactorTrack:
    """Per-frame motion for one factor: bank weights (T x n) before strength scaling."""

    weights: torch.Tensor
    label: str
    thumbs: Sequence[np.ndarray] | None = None  # small driver crops (T of them), only for --side-by-side


@dataclass
class Drive:
    lip: FactorTrack
    pose: FactorTrack
    exp: FactorTrack | None
    frames: int
    audio: str | None = None           # file whose audio track is muxed
    audio_samples: np.ndarray | None = None  # 16 kHz mono, muxed when `audio` cannot be read by FFmpeg


def pingpong(i: int, n: int) -> int:
    """Frame index i of an output longer than a driver of n frames: 0..n-1, n-2..1, 0.. (no repeats)."""
    if n <= 1:
        return 0
    period = 2 * (n - 1)
    k = i % period
    return k if k < n else period - k


def is_emotion(spec: str) -> bool:
    return not Path(spec).suffix and spec.lower() in EMOTIONS


def parse_factor(spec: str, factor: str, stream: bool = False) -> FactorSpec:
    """Parse one factor's spec before any model work; `stream`: the spec of a `Stream` ('driver' for the
    pushed frames, no files). InputError naming the file or the value when it cannot drive `factor`."""
    name = NAMES[factor]
    if spec == "source" or (spec == "audio" and factor == "lip"):
        return FactorSpec(factor, spec, spec)
    if spec == "audio":
        raise InputError(None, f"'audio' can drive the mouth only, not the {name}")
    if factor == "exp" and is_emotion(spec):
        return FactorSpec(factor, "emotion", spec.lower())
    if stream:
        if spec == "driver":
            return FactorSpec(factor, "driver", spec)
        choices = "'driver', 'source'" + (", 'audio'" if factor == "lip" else "") + \
                  (f" or an emotion ({', '.join(EMOTIONS)})" if factor == "exp" else "")
        raise InputError(None, f"{name} source {spec!r}: expected {choices}")
    if Path(spec).exists():
        if Path(spec).is_dir():
            raise InputError(spec, "is a directory, expected a video or image file")
        return FactorSpec(factor, "npy" if factor == "exp" and spec.lower().endswith(".npy") else "video", spec)
    if factor == "exp" and not Path(spec).suffix and "/" not in spec and "\\" not in spec:
        raise InputError(None, f"unknown expression {spec!r}: expected an emotion ({', '.join(EMOTIONS)}), "
                               "'source', an EDTalk .npy, or a video/image path")
    extra = {"lip": ", 'audio'", "pose": "", "exp": f", an emotion ({', '.join(EMOTIONS)})"}[factor]
    raise InputError(spec, f"file not found (the {name} takes a video or image path, 'source'{extra})")


def parse_factors(mouth: str, pose: str, expression: str | None, stream: bool = False) -> dict[str, FactorSpec]:
    """All three specs (expression None = 'source'), each checked before any decoding."""
    return {f: parse_factor(s, f, stream) for f, s in zip(FACTORS, (mouth, pose, expression or "source"))}


def require_audio(mouth: str, audio: Any) -> None:
    """The one check that audio driving the mouth was given an audio file (batch path and `live`)."""
    if mouth == "audio" and not audio:
        raise InputError(None, "--mouth audio needs --audio FILE")


def check_one_motion(cfg: ModelConfig, mouth: str, pose: str, expression: str | None) -> None:
    """A LIA model has one motion: mouth, pose and expression from one driver (expression None follows it)."""
    if cfg.decoupled:
        return
    if mouth == "audio":
        raise InputError(None, "a LIA model has one motion and no Audio2Lip, so audio cannot drive it; "
                               "drive it with one video (--driving)")
    given = {"mouth": mouth, "pose": pose, **({"expression": expression} if expression is not None else {})}
    same = {str(Path(v).resolve()) if Path(v).exists() else v for v in given.values()}
    if len(same) > 1:
        named = ", ".join(f"{k} {v!r}" for k, v in given.items())
        raise InputError(None, f"a LIA model has one motion, so mouth, pose and expression cannot come from "
                               f"different sources ({named}); drive it with one video (--driving)")


def check_strength(cfg: ModelConfig, strength: Sequence[float]) -> None:
    """A LIA model's one motion is scaled by the mouth strength; other strengths would be silently ignored."""
    if not cfg.decoupled and tuple(strength[1:]) != (1, 1):
        raise InputError(None, "a LIA model has one motion: scale it with the mouth strength "
                               "(--mouth-strength); the pose and expression strengths must stay 1")


def check_expression(cfg: ModelConfig, expression: str | None, where: Any) -> None:
    """A lip/pose checkpoint has no expression module: only 'source' (or None) can drive its expression."""
    if cfg.decoupled and not cfg.has_expression and expression not in (None, "source"):
        raise InputError(where, "this checkpoint has no expression module (lip/pose model)")


def choices(cfg: ModelConfig | None, has_audio2lip: bool, presets: Sequence[str]) -> dict[str, list[str]]:
    """What each factor can follow with this checkpoint (cfg None: not known, a decoupled model with an
    expression is assumed): kinds ('video', 'audio', 'source') and, for the expression, the preset
    emotions it has (in EMOTIONS' order)."""
    if cfg is not None and not cfg.decoupled:
        return {f: ["video"] for f in FACTORS}  # one motion: all three follow the same video
    emotions = [e for e in EMOTIONS if e in presets]
    return {"lip": ["video", *(["audio"] if has_audio2lip else []), "source"],
            "pose": ["video", "source"],
            "exp": ["video", "source", *emotions] if cfg is None or cfg.has_expression else ["source"]}


def predict_weights(runtime: Runtime, model: Any, feats: torch.Tensor,
                    factors: Sequence[str]) -> dict[str, torch.Tensor]:
    """Bank weights (T x n, float32, CPU) of `factors` from motion features T x style_dim, by the model's
    own prediction run through `runtime` (its device, dtype and backend: torch or ONNX)."""
    import torch

    out: dict[str, list[torch.Tensor]] = {f: [] for f in factors}
    for chunk in feats.split(CHUNK):
        motion = runtime.run(model.predict_motion, chunk, chunk, chunk)
        for f in factors:
            out[f].append(getattr(motion, f).float().cpu())
    return {f: torch.cat(w) for f, w in out.items()}


def relative(weights: torch.Tensor, start: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """LIA's relative motion (`Motion.relative`): the driver's change since `start`, on the portrait's own."""
    return weights - start + own


def audio_mouth(cfg: ModelConfig, predicted: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Mouth weights from Audio2Lip's (smoothed) output. EDTalk uses the output as the weights; with
    `cfg.relative_to_speaker` it is a change from the speaker's mean mouth, put on the portrait's own weights.
    Why (docs/architecture.md 6.3): speech cannot say whose mouth it is, and the mean mouth weights of different
    clips spread ~10x more than one speaker's weights move while talking, so an absolute target teaches
    Audio2Lip mostly to guess the identity, and its guess lands on the portrait as a foreign mouth."""
    return own + predicted if cfg.relative_to_speaker else predicted


def emotion_expression(cfg: ModelConfig, preset: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Expression weights of an emotion preset: EDTalk's are absolute weights (the mean over the emotion's
    clips, identities and all); with `cfg.relative_to_speaker` a preset is the emotion's mean change from each
    speaker's own mean, put on the portrait's own expression (train/setup.py `expression_presets`)."""
    return own + preset if cfg.relative_to_speaker else preset


def mix(own: torch.Tensor, driven: torch.Tensor, strength: float) -> torch.Tensor:
    """The strength mix around the portrait's own weights: 0 holds it, 1 follows the driver, >1 exaggerates."""
    return own + strength * (driven - own)


def mix_motion(own: Motion, driven: Motion, strength: Sequence[float]) -> Motion:
    """`mix` per factor (strength: mouth, pose, expression); no expression unless both have one."""
    from fixtalk.models.fdm import Motion

    exp = None
    if own.exp is not None and driven.exp is not None:
        exp = mix(own.exp, driven.exp, strength[2])
    return Motion(mix(own.lip, driven.lip, strength[0]), mix(own.pose, driven.pose, strength[1]), exp)
