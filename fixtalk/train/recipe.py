"""The optional parts of the training recipe (issue #10), which fixtalk/train/loop.py calls through small hooks.

* `--discriminator {stylegan,projected}`: which D the GAN loss uses (`make_discriminator`, `d_parameters`).
* `--r1 GAMMA --r1-every K`: lazy R1 in the D step (`r1_scale`; the penalty is `fixtalk.losses.r1_penalty`).
* `--ema-halflife N`: an EMA of the trained weights (`make_ema`), exported to final/ with the raw weights in
  final_raw/ (`exports`).

All are off by default, which leaves the loop's behaviour (and its checkpoints' layout) as before.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fixtalk.config import ModelConfig
from fixtalk.models.audio2lip import Audio2Lip
from fixtalk.models.discriminator import Discriminator
from fixtalk.models.fixtalk import FixTalk
from fixtalk.train.ema import Ema
from fixtalk.train.options import TrainOptions


def make_discriminator(opts: TrainOptions, cfg: ModelConfig) -> nn.Module | None:
    """D of the stage, or None when the stage has none or the GAN weight is 0 (no wasted D passes)."""
    if not (opts.preset_of_stage.uses_d and opts.weights.gan > 0):
        return None
    if opts.discriminator == "projected":
        from fixtalk.models.projected_discriminator import projected_discriminator

        # One seed for every process: the fixed random projections must be the same everywhere.
        return projected_discriminator(cfg.size, seed=opts.seed)
    return Discriminator(cfg)


def d_parameters(d: nn.Module) -> list[nn.Parameter]:
    """What the D optimiser steps: the trainable parameters (the projected D's frozen backbone is left out)."""
    return [p for p in d.parameters() if p.requires_grad]


def r1_scale(opts: TrainOptions, step: int) -> float:
    """StyleGAN2's lazy regularisation: R1 every `r1_every`-th step, multiplied by the interval so that its
    average strength is gamma's (0.0: no R1 on this step)."""
    return float(opts.r1_every) if opts.r1 > 0 and step % opts.r1_every == 0 else 0.0


def _tracked(model: FixTalk, a2l: Audio2Lip | None) -> nn.ModuleDict:
    return nn.ModuleDict({"model": model} if a2l is None else {"model": model, "audio2lip": a2l})


def make_ema(opts: TrainOptions, model: FixTalk, a2l: Audio2Lip | None, ck: dict[str, Any] | None) -> Ema | None:
    """The EMA of the generator (and Audio2Lip) when --ema-halflife > 0; continued from the run's checkpoint.
    Call it once the models are loaded and on their device."""
    if opts.ema_halflife <= 0:
        return None
    ema = Ema(_tracked(model, a2l), opts.ema_halflife)
    if ck is not None and ck.get("ema") is not None:
        ema.load_state_dict(ck["ema"])
    return ema


def exports(ema: Ema | None, model: FixTalk, a2l: Audio2Lip | None
            ) -> list[tuple[str, FixTalk, Audio2Lip | None]]:
    """(folder, model, audio2lip) to write at the end: final/ from the raw weights, or with an EMA final/ from
    the averaged weights (a copy: the live model is left as it is) and final_raw/ from the raw ones."""
    if ema is None:
        return [("final", model, a2l)]
    avg = dict(ema.averaged().named_children())
    avg_model, avg_a2l = avg["model"], avg.get("audio2lip")
    assert isinstance(avg_model, FixTalk) and (avg_a2l is None or isinstance(avg_a2l, Audio2Lip))
    return [("final", avg_model, avg_a2l), ("final_raw", model, a2l)]


__all__ = ["d_parameters", "exports", "make_discriminator", "make_ema", "r1_scale"]
