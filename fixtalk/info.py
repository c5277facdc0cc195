"""`fixtalk info PRESET`: parameter counts per module and MACs per frame (docs/architecture.md section 10).

Counts are state-dict values (parameters plus the FIR-kernel and BatchNorm buffers), which is how the
official layouts count: 64,228,877 for EDTalk.pt, 46,173,571 for EDTalk_lip_pose.pt, 2,827,361 for
Audio2Lip.pt, 45,116,797 for LIA's vox.pt (`lia-256`). MACs come from torch's FlopCounterMode
(convolutions, matmuls and attention; grid_sample and normalisations are not counted) for one video-driven
frame with the source encoding cached: one encoder pass on the driver, EMI, FDM (or LMD), EDI recall and G.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fixtalk.config import ModelConfig
from fixtalk.models.audio2lip import Audio2Lip
from fixtalk.models.fixtalk import FixTalk


def count_values(module: nn.Module) -> int:
    return sum(t.numel() for t in module.state_dict().values())


def module_counts(model: FixTalk) -> dict[str, int]:
    motion = "FDM" if model.cfg.decoupled else "LMD (LIA motion)"
    names = {"enc": "encoder E", "fdm": motion, "dec": "generator G (decoder)", "emi": "EMI", "edi": "EDI"}
    out = {}
    for attr, label in names.items():
        if getattr(model, attr) is not None:
            out[label] = count_values(getattr(model, attr))
        if attr == "dec" and model.dec.fineadainresblock is not None:
            out["  of which EEM"] = count_values(model.dec.fineadainresblock)
    return out


@torch.no_grad()
def macs_per_frame(model: FixTalk) -> dict[str, float]:
    """GMAC for: driver encoding (+EMI), FDM + EDI + G render; source preparation (once per clip)."""
    size = model.cfg.size
    x = torch.zeros(1, 3, size, size)
    # Views of parameters made under no_grad still require grad, which FlopCounterMode's module
    # tracker trips over; counting needs no autograd at all.
    model.eval().requires_grad_(False)
    src = model.prepare_source(x)
    res: dict[str, float] = {}
    with FlopCounterMode(display=False) as fc:
        model.prepare_source(x)
    res["source (once)"] = fc.get_total_flops() / 2e9
    with FlopCounterMode(display=False) as fc:
        feat = model.driving_features(x)
    res["driver encode (+EMI)"] = fc.get_total_flops() / 2e9
    motion = model.predict_motion(feat, feat, feat)
    with FlopCounterMode(display=False) as fc:
        model.render(src, motion)
    res["render (FDM, EDI, G)"] = fc.get_total_flops() / 2e9
    res["per frame, source cached"] = res["driver encode (+EMI)"] + res["render (FDM, EDI, G)"]
    return res


def report(cfg: ModelConfig, with_macs: bool = True) -> str:
    model = FixTalk(cfg)
    motion = "FDM (lip/pose/exp)" if cfg.decoupled else f"LIA ({cfg.lip_dim} directions, one motion)"
    lines = [f"preset {cfg.name}: size {cfg.size}, style_dim {cfg.style_dim}, motion {motion}, "
             f"EMI {'on' if cfg.use_emi else 'off'}, EDI {'on' if cfg.use_edi else 'off'}",
             "parameters (state-dict values, incl. FIR/BatchNorm buffers):"]
    for name, n in module_counts(model).items():
        lines.append(f"  {name:<28} {n:>14,}")
    total = count_values(model)
    trainable = sum(p.numel() for p in model.parameters())
    lines.append(f"  {'generator total':<28} {total:>14,}   ({trainable:,} trainable)")
    extra = 0
    if cfg.decoupled:  # Audio2Lip predicts FDM mouth weights; a LIA motion has none
        extra = count_values(Audio2Lip(cfg.lip_dim))
        lines.append(f"  {'Audio2Lip':<28} {extra:>14,}")
    lines.append(f"  fp16 weight file ~ {2 * (total + extra) / 2**20:,.1f} MiB")
    if with_macs:
        lines.append("GMAC per frame (batch 1, video-driven, FlopCounterMode estimate):")
        for name, g in macs_per_frame(model).items():
            lines.append(f"  {name:<28} {g:>10.2f}")
    return "\n".join(lines)
