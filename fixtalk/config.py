"""Frozen model configurations and their named presets.

A checkpoint is `model.safetensors` + `config.json`; `config.json` holds `ModelConfig.to_dict()` and is
the only thing needed to rebuild the network (docs/architecture.md, Conventions 2). Presets:

* `edtalk-256`          the official EDTalk.pt layout (E, FDM with lip/pose/expression, G with EEM).
* `edtalk-256-lip-pose` the official EDTalk_lip_pose.pt layout (no expression head, bank or EEM).
* `fixtalk-256`         EDTalk-256 + EMI + EDI.
* `fixtalk-512`         the paper's setting: 512x512 input, f_4 = 512x32x32 (FixTalk Sec. 5, "512x512").
* `fixtalk-small`       a narrow FixTalk that trains on a 2-core CPU at 128/256 px (< 50 MB of fp16 weights).
* `lia-256`             the official LIA layout (vox.pt, taichi.pt, ted.pt): one 20-direction motion, no FDM
                        split, no EEM (FixTalk Sec. 5, "Generalizability": the second baseline).
* `fixtalk-lia`         LIA-256 + EMI + EDI.
* `lia-small`, `fixtalk-lia-small`  LIA without / with EMI and EDI at fixtalk-small's CPU sizes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

# Video frame rate and audio sample rate of every model input (EDTalk/Wav2Lip: 25 fps, 16 kHz mono), so one
# video frame covers SAMPLES_PER_FRAME = 640 samples. Here, not in audio.py: no librosa import.
FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS

# The eight MEAD emotions: expression presets, `--expression NAME` (here, not in checkpoint.py: no torch import).
EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")


@dataclass(frozen=True)
class EMIConfig:
    """Enhanced Motion Indicator (FixTalk Sec. 4.1); defaults from docs/architecture.md 9.3 [ours]."""

    layers: int = 2             # N stacked [cross-attention + FFN] layers of the extractor P
    heads: int = 8
    queries: int = 32           # learnable query tokens q_l (Q-Former default)
    ffn_mult: int = 4           # FFN hidden = ffn_mult * f_4 channels
    latent_init_weight: float = 0.9  # initial softmax weight of f_6 (the latent) in the Weighted Sum
    xi: float = 0.5             # margin of L_dis (Eq. 4)


@dataclass(frozen=True)
class EDIConfig:
    """Enhanced Detail Indicator (FixTalk Sec. 4.2); defaults from docs/architecture.md 9.3 [ours]."""

    slots: int = 1024           # S, slots of M_d and M_m-s
    kappa_init: float = 10.0    # softmax temperature on cosines (Eqs. 5, 7); 1.0 is the paper's literal form
    learn_kappa: bool = True
    compress_grid: int = 4      # Pi: adaptive pool to grid x grid tokens + 1 global token, weighted sum
    decompress_channels: int = 256  # Lambda's working width
    heads: int = 8              # MHCA heads
    ffn_mult: int = 4
    motion_key: str = "fdm"     # "fdm": key = m^d - m^s (works in audio/multi-source mode), "emi": z^d - z^s


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the whole generator (E, FDM, G, optional EMI/EDI) and of its discriminator."""

    size: int = 256                 # input/output resolution (power of two, >= 64)
    style_dim: int = 512            # latent width (wa, motion, expression latent e)
    max_channels: int = 512         # channel table: ch(r) = min(max_channels, channel_base // r)
    channel_base: int = 16384       # 16384 reproduces EDTalk's table (4..32: 512, 64: 256, ..., 512: 32)
    lip_dim: int = 20
    pose_dim: int = 6
    exp_dim: int = 10               # 0 = lip/pose-only model (no expression head, bank or EEM)
    # "fdm": EDTalk's Face Decoupling Module (lip/pose/expression banks). "lia": LIA's Linear Motion Decomposition,
    # one undecoupled motion over `lip_dim` directions (pose_dim = exp_dim = 0; Motion.lip holds its magnitudes).
    motion_net: str = "fdm"
    eem_hidden: int = 128           # ADAIN MLP width inside EEM
    use_emi: bool = False
    use_edi: bool = False
    rgb_warp: bool = False          # pixel path: warp the source image too (generator.PixelWarp; CPU presets)
    # Audio2Lip's output and the emotion presets are changes from the speaker's mean bank weights, put on the
    # portrait's own (ours; fixtalk.driving.audio_mouth / emotion_expression, docs/architecture.md 6.3), instead
    # of EDTalk's absolute weights, which carry the identity of the people they were learnt from.
    relative_to_speaker: bool = False
    # The audio-driven mouth also opens with the speech's loudness (ours; fixtalk.models.loudness_mouth, fitted
    # at the end of the audio2lip stage by fixtalk.train.loudness_fit).
    loudness_mouth: bool = False
    emi: EMIConfig = field(default_factory=EMIConfig)
    edi: EDIConfig = field(default_factory=EDIConfig)
    name: str = "custom"

    def __post_init__(self) -> None:
        log = math.log2(self.size)
        if log != int(log) or self.size < 64:
            raise ValueError(f"size must be a power of two >= 64, got {self.size}")
        if self.style_dim < self.motion_dim:
            raise ValueError(f"style_dim {self.style_dim} < {self.motion_dim} bases: the banks cannot be orthonormal")
        if self.channel(32) <= 0:
            raise ValueError("channel table gives no channels at 32x32")
        if self.motion_net not in ("fdm", "lia"):
            raise ValueError(f"motion_net must be 'fdm' or 'lia', got {self.motion_net!r}")
        if self.motion_net == "lia" and (self.pose_dim or self.exp_dim):
            raise ValueError("a LIA motion (motion_net='lia') has one bank of lip_dim directions: "
                             "set pose_dim=0 and exp_dim=0")

    # --- derived quantities -----------------------------------------------------------------------
    def channel(self, res: int) -> int:
        """Channels of the encoder/decoder maps at resolution `res`."""
        return min(self.max_channels, self.channel_base // res)

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def map_resolutions(self) -> list[int]:
        """Resolutions of the encoder maps handed to G, coarse -> fine (8, 16, ..., size)."""
        return [2**i for i in range(3, self.log_size + 1)]

    @property
    def f4_index(self) -> int:
        """Index of f_4 (the 32x32 map) in the coarse -> fine list."""
        return self.map_resolutions.index(32)

    @property
    def motion_dim(self) -> int:
        return self.lip_dim + self.pose_dim + self.exp_dim

    @property
    def default_render_size(self) -> int:
        """Side of the frames drawn by default: 2 S with the pixel path, which warps the portrait's own crop at
        that size (docs/quality.md, "Rendering above the model's size"), else S."""
        return 2 * self.size if self.rgb_warp else self.size

    def check_render_size(self, size: int) -> int:
        """`size` if the model can draw at it, else ValueError with the reason (the CLI's one-line error)."""
        if size < self.size:
            raise ValueError(f"--render-size must be at least the model's size {self.size}, got {size}")
        if size != self.size and not self.rgb_warp:
            raise ValueError(f"--render-size above the model's size {self.size} needs a model with the pixel "
                             "path (rgb_warp)")
        return size

    @property
    def has_expression(self) -> bool:
        return self.exp_dim > 0

    @property
    def decoupled(self) -> bool:
        """Mouth, pose and expression are separate motions (EDTalk's FDM); False for LIA's one motion."""
        return self.motion_net == "fdm"

    # --- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        kwargs = dict(data)
        if isinstance(kwargs.get("emi"), dict):
            kwargs["emi"] = EMIConfig(**kwargs["emi"])
        if isinstance(kwargs.get("edi"), dict):
            kwargs["edi"] = EDIConfig(**kwargs["edi"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    "edtalk-256": ModelConfig(name="edtalk-256"),
    "edtalk-256-lip-pose": ModelConfig(name="edtalk-256-lip-pose", exp_dim=0),
    "fixtalk-256": ModelConfig(name="fixtalk-256", use_emi=True, use_edi=True),
    "fixtalk-512": ModelConfig(name="fixtalk-512", size=512, use_emi=True, use_edi=True),
    # Narrow enough for CPU training: ch(r) = min(128, 4096 // r) -> 32x32 map has 128 channels.
    "fixtalk-small": ModelConfig(
        name="fixtalk-small",
        size=128,
        style_dim=256,
        max_channels=128,
        channel_base=4096,
        eem_hidden=64,
        use_emi=True,
        use_edi=True,
        rgb_warp=True,
        relative_to_speaker=True,
        loudness_mouth=True,
        emi=EMIConfig(layers=1, heads=4, queries=16, ffn_mult=2),
        edi=EDIConfig(slots=256, decompress_channels=64, heads=4, ffn_mult=2),
    ),
}

# LIA (wyhsirius/LIA, ICLR 2022): EDTalk's encoder and decoder without EEM, and one 20-direction motion.
_LIA: dict[str, Any] = {"motion_net": "lia", "lip_dim": 20, "pose_dim": 0, "exp_dim": 0}
_SMALL = PRESETS["fixtalk-small"]
PRESETS.update({
    "lia-256": ModelConfig(name="lia-256", **_LIA),
    "fixtalk-lia": ModelConfig(name="fixtalk-lia", use_emi=True, use_edi=True, **_LIA),
    "lia-small": _SMALL.replace(name="lia-small", use_emi=False, use_edi=False, **_LIA),
    "fixtalk-lia-small": _SMALL.replace(name="fixtalk-lia-small", **_LIA),
})


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
