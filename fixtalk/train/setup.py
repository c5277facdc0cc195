"""Building a run: model config, initial weights, frozen/trainable split, data, checkpoints and presets.

A training checkpoint (RUN/checkpoint.pt) is one `torch.save` dict, read back with `weights_only=True`:

    format "fixtalk-train/1", step, elapsed (s of training so far), config (JSON of the resolved run config),
    model / d / audio2lip state dicts, opt_g / opt_d optimiser states, rng (one entry per rank),
    presets (expression presets carried to the exported checkpoint)

It is written to a temporary file and renamed, so a killed run always leaves the previous complete one.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fixtalk.checkpoint import EMOTIONS, load_bundle
from fixtalk.config import ModelConfig, get_preset
from fixtalk.errors import InputError
from fixtalk.models.fdm import Motion
from fixtalk.models.fixtalk import FixTalk
from fixtalk.naming import mead_speaker
from fixtalk.train.data import AudioDataset, Clip, ClipDataset, PairDataset, SwapDataset, read_frames, to_tensor
from fixtalk.train.options import STAGES, TrainOptions
from fixtalk.weights import read_weights

TRAIN_FORMAT = "fixtalk-train/1"
CKPT = "checkpoint.pt"


@dataclass
class InitWeights:
    """Weights to start from (`--init`): a fixtalk checkpoint dir or a training run / checkpoint.pt."""

    cfg: ModelConfig
    model: dict[str, torch.Tensor]
    d: dict[str, torch.Tensor] | None = None
    audio2lip: dict[str, torch.Tensor] | None = None
    presets: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""


def load_checkpoint(path: Path) -> dict[str, Any]:
    ck = read_weights(path, "training checkpoint")
    if ck.get("format") != TRAIN_FORMAT:
        raise InputError(path, f"not a {TRAIN_FORMAT} checkpoint")
    return ck


def save_checkpoint(run: Path, state: dict[str, Any]) -> Path:
    """Atomic: a temporary sibling, then os.replace onto RUN/checkpoint.pt."""
    tmp = run / f".{CKPT}.{uuid.uuid4().hex[:8]}.part"
    try:
        torch.save({"format": TRAIN_FORMAT, **state}, tmp)
        os.replace(tmp, run / CKPT)
    finally:
        tmp.unlink(missing_ok=True)
    return run / CKPT


def presets_to_lists(presets: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {k: np.asarray(v, np.float32).reshape(-1).tolist() for k, v in presets.items()}


def read_init(path: str) -> InitWeights:
    p = Path(path)
    if p.is_dir() and (p / CKPT).is_file():
        p = p / CKPT
    if p.is_file() and p.suffix == ".pt":
        ck = load_checkpoint(p)
        cfg = ModelConfig.from_dict(json.loads(ck["config"])["model"])
        presets = {k: np.asarray(v, np.float32).reshape(1, -1) for k, v in ck.get("presets", {}).items()}
        return InitWeights(cfg, ck["model"], ck.get("d"), ck.get("audio2lip"), presets, f"training checkpoint {p}")
    if (p / "config.json").is_file():
        b = load_bundle(p)
        a2l = None if b.audio2lip is None else b.audio2lip.state_dict()
        return InitWeights(b.model.cfg, b.model.state_dict(), None, a2l, b.expression_presets, f"checkpoint {p}")
    raise InputError(p, "not a fixtalk checkpoint folder, training run or checkpoint.pt "
                        "(import official EDTalk .pt files with `fixtalk convert-edtalk` first)")


def resolve_model_config(opts: TrainOptions, init: InitWeights | None, resumed: dict[str, Any] | None) -> ModelConfig:
    """Resumed run's config; else --preset (name or .json); else --init's; else fixtalk-small. Then --size."""
    if resumed is not None:
        return ModelConfig.from_dict(resumed["model"])
    if opts.preset:
        if opts.preset.endswith(".json"):
            try:
                cfg = ModelConfig.from_dict(json.loads(Path(opts.preset).read_text()))
            except (OSError, ValueError, TypeError) as err:
                raise InputError(opts.preset, f"not a model config ({err})") from None
        else:
            try:
                cfg = get_preset(opts.preset)
            except KeyError as err:
                raise InputError(None, str(err.args[0])) from None
    else:
        cfg = init.cfg if init is not None else get_preset("fixtalk-small")
    if opts.size is not None and opts.size != cfg.size:
        try:
            cfg = cfg.replace(size=opts.size)
        except ValueError as err:
            raise InputError(None, f"--size: {err}") from None
    if opts.stage == "fixtalk" and not (cfg.use_emi and cfg.use_edi):
        raise InputError(None, f"stage fixtalk needs a model with EMI and EDI; {cfg.name} has neither/one")
    if not cfg.decoupled and opts.stage in ("mouth-pose", "expression", "audio2lip"):
        raise InputError(None, f"stage {opts.stage} needs EDTalk's FDM (mouth/pose/expression banks); {cfg.name} is "
                               "a LIA model with one motion: train it with the recon, fixtalk or finetune stage")
    if opts.stage == "expression" and not cfg.has_expression:
        raise InputError(None, f"stage expression needs a model with an expression head; {cfg.name} has exp_dim=0")
    return cfg


def partial_load(module: nn.Module, state: dict[str, torch.Tensor] | None) -> str:
    """Load every tensor whose name and shape match; returns a one-line summary of what was (not) loaded.

    This is how a FixTalk model starts from EDTalk weights (EMI/EDI new) or a 512 model from a 256 one
    (docs/architecture.md 9.3: only the stem, first ResBlock and 512-level decoder layers differ).
    """
    if state is None:
        return "nothing to load"
    own = module.state_dict()
    ok = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in ok.items()}, strict=False)
    new = [k for k in own if k not in ok]
    dropped = [k for k in state if k not in ok]
    line = f"loaded {len(ok)}/{len(own)} tensors"
    if new:
        line += f", {len(new)} new (e.g. {new[0]})"
    if dropped:
        line += f", {len(dropped)} of the init not used (e.g. {dropped[0]})"
    return line


def set_trainable(named: list[tuple[str, nn.Parameter]], prefixes: tuple[str, ...], strict: bool) -> list[str]:
    """requires_grad = name starts with one of `prefixes` (a bare name gets a '.'); returns the trained names.

    `strict` (user-given prefixes): every prefix must match something.
    """
    norm = tuple(p if p.endswith(".") else p + "." for p in prefixes)
    trained = []
    for name, p in named:
        p.requires_grad_(name.startswith(norm))
        if p.requires_grad:
            trained.append(name)
    if strict:
        for pref in norm:
            if not any(n.startswith(pref) for n, _ in named):
                raise InputError(None, f"--trainable {pref.rstrip('.')}: no parameter of this model starts with it")
    if not trained:
        raise InputError(None, f"nothing to train: no parameter matches {', '.join(prefixes)}")
    return trained


def make_dataset(opts: TrainOptions, clips: list[Clip], size: int, min_length: int) -> ClipDataset:
    kind = opts.preset_of_stage.data
    if kind == "swap":
        return SwapDataset(clips, size, opts.seed, min_length)
    if kind == "audio":
        return AudioDataset(clips, size, opts.seed, min_length, frames=opts.image_losses)
    return PairDataset(clips, size, opts.seed, min_length, opts.fraction)


def moves_motion_heads(stage: str) -> bool:
    """Whether `stage` trains a part that the bank weights are computed through (E, the FDM heads or EMI's
    motion feature), so that expression presets and Audio2Lip's targets from before it are stale."""
    return any(p in ("enc.", "emi.") or p.startswith("fdm.") for p in STAGES[stage].trainable)


def preset_clips(clips: list[Clip]) -> list[Clip]:
    """The labelled clips the presets are computed from: MEAD ones (speaker id in the name) when present."""
    labelled = [c for c in clips if c.emotion in EMOTIONS]
    mead = [c for c in labelled if mead_speaker(c.name)]
    return mead or labelled


@torch.no_grad()
def expression_presets(model: FixTalk, clips: list[Clip], size: int, device: torch.device,
                       frames_per_clip: int = 8, max_frames: int = 128) -> dict[str, np.ndarray]:
    """Per-emotion expression presets (1, exp_dim) from the clips labelled with that emotion
    (docs/architecture.md 6.3 [ours]: how EDTalk's predefined_exp_weights/*.npy are regenerated). MEAD clips are
    used where there are any: their eight labels are acted at a controlled intensity, while free-form labels
    ("expressive", a "happy" vlog) mix emotion with speaking style.

    EDTalk's presets are the mean expression weights of the emotion's frames. With `relative_to_speaker` a preset
    is the mean, over the emotion's clips, of each clip's change from its speaker's neutral clip (or, without one,
    the speaker's mean over all their clips): expression weights carry identity too, and an absolute mean of
    other people's faces, put on a portrait, reshapes it (fixtalk.driving.emotion_expression)."""
    if not model.cfg.has_expression:
        return {}
    was_training = model.training
    model.eval()
    per_clip: dict[Clip, np.ndarray] = {}  # mean expression weights of each usable clip
    labelled = preset_clips(clips)
    for emotion in EMOTIONS:
        taken = 0
        for c in (c for c in labelled if c.emotion == emotion):
            if taken >= max_frames:
                break
            idx = np.linspace(0, c.frames - 1, min(frames_per_clip, c.frames)).round().astype(int).tolist()
            try:
                exp = frame_motion(model, c, idx, size, device).exp
            except (InputError, OSError):
                continue
            assert exp is not None
            per_clip[c] = exp.float().cpu().numpy().mean(0)
            taken += len(idx)
    model.train(was_training)
    if model.cfg.relative_to_speaker:
        per_clip = {c: w - _speaker_reference(c.identity, per_clip) for c, w in per_clip.items()}
    out: dict[str, np.ndarray] = {}
    for emotion in EMOTIONS:
        ws = [w for c, w in per_clip.items() if c.emotion == emotion]
        if ws:
            out[emotion] = np.mean(ws, 0, keepdims=True).astype(np.float32)
    return out


def frame_motion(model: FixTalk, clip: Clip, idx: list[int], size: int, device: torch.device) -> Motion:
    """Bank weights of frames `idx` of a prepared clip, each factor from its own frame (as inference does)."""
    x = torch.stack([to_tensor(f, size) for f in read_frames(clip.mp4, idx)]).to(device)
    feat = model.driving_features(x)
    return model.predict_motion(feat, feat, feat)


def _speaker_reference(identity: str, per_clip: dict[Clip, np.ndarray]) -> np.ndarray:
    """A speaker's own expression: their neutral clip's weights, else their mean over all their clips."""
    own = {c: w for c, w in per_clip.items() if c.identity == identity}
    neutral = [w for c, w in own.items() if c.emotion == "neutral"]
    return np.mean(neutral or list(own.values()), 0)
