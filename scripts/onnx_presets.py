"""Do the paper's presets export? Each preset with seeded random weights: export time, graph sizes, and the
ONNX frames against torch float32 and both against a float64 torch run (random generators are chaotic, so
torch float32's own error is the yardstick; tests/test_onnx.py holds the same at 64 px).

    python scripts/onnx_presets.py [PRESET ...] [--no-fp64]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from fixtalk.config import PRESETS, get_preset
from fixtalk.models.fixtalk import FixTalk
from fixtalk.onnx_backend import OnnxFixTalk
from fixtalk.onnx_cli import _run, psnr_uint8
from fixtalk.onnx_export import example_inputs, export_graphs


def randomised(cfg_name: str) -> FixTalk:
    """Default init, with the zero-initialised layers (EMI/EDI/pixel-path outputs) given small values."""
    torch.manual_seed(0)
    model = FixTalk(get_preset(cfg_name)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().max():
                p.add_(0.02 * torch.randn_like(p))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--no-fp64", action="store_true", help="skip the float64 reference (memory at 512 px)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.presets:
        model = randomised(name)
        src, drv = example_inputs(model.cfg, batch=2, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            graphs = export_graphs(model, Path(tmp) / "g", model.cfg.size)
            secs = time.perf_counter() - t
            mb = sum(p.stat().st_size for p in graphs.glob("*.onnx")) / 1e6
            onnx_frames = _run(OnnxFixTalk(model, graphs), src, drv)[2]
        ref = _run(model, src, drv)[2]
        d = (onnx_frames - ref).abs()
        line = (f"{name}: exported in {secs:.1f} s ({mb:.0f} MB); onnx vs torch fp32: max {d.max():.2e}, "
                f"mean {d.mean():.2e}, PSNR {psnr_uint8(ref, onnx_frames):.1f} dB")
        if not args.no_fp64:
            wide = copy.deepcopy(model).double().eval()  # eval() drops the float32 bank basis cached by FDM
            r64 = _run(wide, src.double(), drv.double())[2]
            et, eo = (ref.double() - r64).abs(), (onnx_frames.double() - r64).abs()
            line += (f"; vs float64: torch max {et.max():.2e} mean {et.mean():.2e}, "
                     f"onnx max {eo.max():.2e} mean {eo.mean():.2e}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
