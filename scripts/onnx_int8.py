"""Is an int8 renderer worth shipping? onnxruntime dynamic and static quantisation of render.onnx (and, for
dynamic, driver.onnx) against the fp32 graphs, on real renders of the shipped model: PSNR of the 8-bit frames
and the renderer's ms/frame. fixtalk ships int8 only at >= 35 dB (issue #11).

    python scripts/onnx_int8.py [--faces ../shared/data/faces] [--frames 16]

Static quantisation is calibrated on other portraits and clips than the ones it is scored on.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from fixtalk.checkpoint import load_bundle
from fixtalk.onnx_backend import OnnxFixTalk
from fixtalk.onnx_cli import _run, psnr_uint8, real_inputs
from fixtalk.onnx_export import export_graphs, flatten_state
from fixtalk.pipeline import SHIPPED

SCORE = ("images/edtalk__identity_source.jpg", "videos/edtalk__mouth_source.mp4")
CALIBRATE = [("images/liveportrait__s1.jpg", "videos/liveportrait__d0.mp4"),
             ("images/lia__macron.png", "videos/edtalk__pose_source1.mp4")]


class Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


def render_feeds(m: OnnxFixTalk, source: torch.Tensor, drivers: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """render.onnx's inputs for each driver frame (batch 1), as the Pipeline feeds them."""
    state = {k: v.numpy() for k, v in flatten_state(m.prepare_source(source), m.cfg).items()}
    feat = m.driving_features(drivers)
    motion = m.predict_motion(feat, feat, feat)
    names = [i.name for i in m.sessions["render"].get_inputs()]
    out = []
    for i in range(drivers.shape[0]):
        x = {**state, "lip": motion.lip[i:i + 1].numpy(), "pose": motion.pose[i:i + 1].numpy()}
        if motion.exp is not None:
            x["exp"] = motion.exp[i:i + 1].numpy()
        out.append({n: np.ascontiguousarray(x[n]) for n in names})
    return out


def render_ms(m: OnnxFixTalk, source: torch.Tensor, driver: torch.Tensor, iters: int = 10) -> float:
    state = m.prepare_source(source)
    feat = m.driving_features(driver)
    motion = m.predict_motion(feat, feat, feat)
    m.render(state, motion)
    t = time.perf_counter()
    for _ in range(iters):
        m.render(state, motion)
    return (time.perf_counter() - t) / iters * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", default=str(Path(__file__).resolve().parents[2] / "shared/data/faces"))
    ap.add_argument("--frames", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    faces = Path(args.faces)
    model = load_bundle(SHIPPED).model
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_graphs(model, Path(tmp) / "fp32", model.cfg.size)
        ref_model = OnnxFixTalk(model, fp32, threads=1)
        src, drv = real_inputs(model, str(faces / SCORE[0]), str(faces / SCORE[1]), args.frames)
        ref = _run(ref_model, src, drv)[2]
        calib = [f for s, d in CALIBRATE
                 for f in render_feeds(ref_model, *real_inputs(model, str(faces / s), str(faces / d), 8))]
        variants = {}
        for name in ("dynamic: render", "dynamic: render + driver", "static QDQ per-channel: render"):
            out = Path(tmp) / name.replace(" ", "_").replace(":", "").replace("+", "and")
            shutil.copytree(fp32, out)
            if name.startswith("dynamic"):
                for g in ("render", "driver") if "driver" in name else ("render",):
                    quantize_dynamic(str(fp32 / f"{g}.onnx"), str(out / f"{g}.onnx"), weight_type=QuantType.QInt8)
            else:
                quant_pre_process(str(fp32 / "render.onnx"), str(Path(tmp) / "pre.onnx"))
                quantize_static(str(Path(tmp) / "pre.onnx"), str(out / "render.onnx"), Feeds(calib),
                                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, per_channel=True)
            variants[name] = OnnxFixTalk(model, out, threads=1)
        print(f"shipped model, {args.frames} frames of {Path(SCORE[1]).name} driving {Path(SCORE[0]).name}; "
              f"renderer ms/frame at batch 1, 1 thread")
        print(f"  fp32 onnx: render {render_ms(ref_model, src, drv[:1]):.1f} ms")
        for name, m in variants.items():
            got = _run(m, src, drv)[2]
            print(f"  int8 {name}: PSNR vs fp32 {psnr_uint8(ref, got):.1f} dB, max abs {(ref - got).abs().max():.3f}, "
                  f"render {render_ms(m, src, drv[:1]):.1f} ms")


if __name__ == "__main__":
    main()
