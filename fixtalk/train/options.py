"""Resolved options of one training run (written to RUN/config.json; docs/architecture.md, Conventions 8).

One frozen dataclass holds every knob of `fixtalk train`; the CLI only fills it. Stage presets (the table of
docs/architecture.md 5 and our defaults of 9.3) give the batch size, the trained sub-modules and the data kind.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from fixtalk.errors import InputError
from fixtalk.losses import LossWeights

G_LR = 0.002 * 4 / 5                  # EDTalk: lr * g_ratio, g_ratio = g_reg_every / (g_reg_every + 1) = 4/5
G_BETAS = (0.0, 0.99 ** (4 / 5))
D_LR = 0.002 * 16 / 17                # d_reg_every = 16 -> ratio 16/17
D_BETAS = (0.0, 0.99 ** (16 / 17))
DISCRIMINATORS = ("stylegan", "projected")  # fixtalk/models/discriminator.py, projected_discriminator.py


@dataclass(frozen=True)
class StagePreset:
    data: str                 # "pair" | "swap" | "audio"
    batch: int                # per process (EDTalk: batch size is per GPU)
    trainable: tuple[str, ...]  # parameter-name prefixes with gradients; everything else is frozen
    uses_d: bool = True
    summary: str = ""
    lr: float = G_LR                      # the default of --lr
    betas: tuple[float, float] = G_BETAS  # Adam's betas for the trained parts


STAGES: dict[str, StagePreset] = {
    "recon": StagePreset("pair", 12, ("enc.", "fdm.", "dec.", "emi."),
                         summary="E+G self-reconstruction: L1 + perceptual + GAN (+ L_dis with EMI)"),
    "mouth-pose": StagePreset("swap", 4, ("enc.", "fdm.fc.", "fdm.lip_fc.", "fdm.pose_fc.",
                                          "fdm.direction_lipnonlip.", "dec.", "emi."),
                              summary="self + cross reconstruction with mouth-swap composites, latent consistency"),
    "expression": StagePreset("pair", 8, ("fdm.exp_fc.", "fdm.direction_exp.", "dec.fineadainresblock."),
                              summary="ELN + expression bank + EEM; complementary self-reconstruction"),
    "fixtalk": StagePreset("pair", 8, ("emi.", "edi.", "dec."),
                           summary="EMI (L_dis) + EDI (L_d-mem, L_align) + G, curriculum on the EDI address"),
    # Audio2Lip is a BatchNorm conv net fitted by plain regression, not a StyleGAN2 generator: with G's schedule
    # (beta1 = 0, lr 1.6e-3) it was still above the predict-zero baseline after 550 steps (batch 16); with
    # Adam's usual betas at 1e-3 it is below it within 200 (docs/quality.md, "The audio-driven mouth").
    "audio2lip": StagePreset("audio", 4, ("audio2lip.",), uses_d=False, lr=1e-3, betas=(0.9, 0.999),
                             summary="mel -> lip weights of the frozen generator: regression + 0.1 smoothness"),
    "finetune": StagePreset("pair", 8, ("dec.",), summary="one person: decoder only, L1 + perceptual + GAN"),
}


def parse_loss_weights(items: list[str] | None) -> LossWeights:
    """['gan=0', 'perceptual=0.5'] -> LossWeights with those fields replaced (InputError on a bad item)."""
    names = {f.name for f in dataclasses.fields(LossWeights)}
    changes: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in names:
            raise InputError(None, f"--loss-weight {item!r}: use NAME=VALUE, NAME one of {', '.join(sorted(names))}")
        try:
            changes[key.strip()] = float(value)
        except ValueError:
            raise InputError(None, f"--loss-weight {item!r}: {value!r} is not a number") from None
    return dataclasses.replace(LossWeights(), **changes)


def parse_duration(text: str | None) -> float | None:
    """'2h', '90m', '1h30m', '45s', '3600' -> seconds (None stays None)."""
    if text is None:
        return None
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms])", s)
    if not parts or "".join(f"{a}{b}" for a, b in parts) != s.replace(" ", ""):
        raise InputError(None, f"cannot read duration {text!r}; use e.g. 2h, 90m, 1h30m or seconds")
    unit = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(float(a) * unit[b] for a, b in parts)


@dataclass(frozen=True)
class TrainOptions:
    stage: str
    data: str
    out: str
    preset: str | None = None          # preset name or ModelConfig .json (default: --init's, else fixtalk-small)
    init: str | None = None            # fixtalk checkpoint dir, or a training run dir / checkpoint.pt
    size: int | None = None            # replaces the preset's resolution
    max_steps: int | None = None
    time_budget: float | None = None   # seconds of training (counted across resumes)
    batch: int | None = None           # per process; default from the stage preset
    lr: float | None = None            # generator (and Audio2Lip) lr, default 0.002 * 4/5
    d_lr: float | None = None          # discriminator lr, default 0.002 * 16/17
    perceptual: str = "mobilenet_v2"   # backbone of the L_per pyramid: mobilenet_v2 (offline) or vgg19
    vgg19: str | None = None           # torchvision vgg19-dcbb9e9d.pth for --perceptual vgg19
    syncnet: str | None = None         # Wav2Lip lipsync_expert.pth; the SyncNet loss is skipped without it
    trainable: tuple[str, ...] | None = None  # parameter-name prefixes; default from the stage preset
    save_every: int = 1000
    log_every: int = 10
    sample_every: int = 500
    seed: int = 0
    workers: int = 2                   # DataLoader worker processes per training process
    precision: str = "auto"            # auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp32
    curriculum_max: float = 0.5        # fixtalk stage: p(use the motion-source address) ramps 0 -> this
    image_losses: bool = True          # audio2lip stage: L1 + perceptual of frames rendered with predicted lips
    frame_fraction: float | None = None  # sample only the first fraction of each clip (finetune: 0.8)
    split: str | None = None           # manifest split to train on (default train; finetune: all)
    pixel_lr_mult: float = 10.0        # lr multiplier of the rgb_warp pixel path's head (dec.pixel_warp.)
    ema_halflife: float = 0.0          # EMA of G's weights, half-life in steps (0: off); final/ = EMA, final_raw/
    discriminator: str = "stylegan"    # stylegan (EDTalk's D) or projected (Projected GANs, frozen MobileNetV2)
    r1: float = 0.0                    # R1 gamma on real images (0: off), applied lazily every r1_every steps
    r1_every: int = 16                 # StyleGAN2 lazy regularisation interval (the penalty is scaled by it)
    weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise InputError(None, f"unknown stage {self.stage!r}; choose one of: {', '.join(STAGES)}")
        if self.max_steps is None and self.time_budget is None:
            raise InputError(None, "give --max-steps and/or --time-budget")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InputError(None, f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.perceptual not in ("mobilenet_v2", "vgg19"):
            raise InputError(None, f"--perceptual must be mobilenet_v2 or vgg19, got {self.perceptual!r}")
        for name in ("batch", "max_steps", "save_every", "log_every", "sample_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(None, f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.workers < 0:
            raise InputError(None, "--workers must be >= 0")
        if self.discriminator not in DISCRIMINATORS:
            raise InputError(None, f"--discriminator must be one of {', '.join(DISCRIMINATORS)}, "
                                   f"got {self.discriminator!r}")
        for name in ("ema_halflife", "r1"):
            if getattr(self, name) < 0:
                raise InputError(None, f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.r1_every < 1:
            raise InputError(None, f"--r1-every must be >= 1, got {self.r1_every}")

    @property
    def preset_of_stage(self) -> StagePreset:
        return STAGES[self.stage]

    @property
    def batch_size(self) -> int:
        return self.batch or self.preset_of_stage.batch

    @property
    def trainable_prefixes(self) -> tuple[str, ...]:
        return self.trainable or self.preset_of_stage.trainable

    @property
    def fraction(self) -> float:
        return self.frame_fraction if self.frame_fraction is not None else (0.8 if self.stage == "finetune" else 1.0)

    @property
    def data_split(self) -> str:
        return self.split or ("all" if self.stage == "finetune" else "train")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Options that may change between a run and its resumption (everything else must match).
    RESUMABLE_CHANGES = ("max_steps", "time_budget", "save_every", "log_every", "sample_every", "workers", "data")
