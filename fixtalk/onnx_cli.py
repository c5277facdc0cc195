"""`fixtalk export-onnx CKPT OUT [--check]`: write the ONNX graph set and compare it with torch.

The comparison runs the whole inference path both ways on the same inputs (source -> cache, drivers ->
motion features -> bank weights -> frames), in onnxruntime on the CPU and in torch fp32, and reports
the max / mean absolute difference of the raw frames (in [-1, 1] units) and the PSNR of the 8-bit frames.
Stated tolerance (`TOLERANCE`): mean abs <= 1e-3 and PSNR >= 50 dB. fp32 rounding differs between the two
(the exported modulated convolutions run unfused); the max is reported but not bounded, because an untrained
(random) generator is chaotic: bilinear sampling turns 1e-7 differences into single pixels off by 1e-2 and
more, in torch float32 against float64 just the same (tests/test_onnx.py). The shipped model: max 1.4e-5.
Inputs: a real portrait and driving video when given (--source / --driving; the face is aligned as in
`fixtalk animate`), else seeded random images.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fixtalk.errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used: `fixtalk --help` builds this parser without it
    from torch import Tensor

    from fixtalk.models.fixtalk import FixTalk

TOLERANCE = {"mean_abs": 1e-3, "psnr_db": 50.0}


@dataclass
class Comparison:
    max_abs: float     # raw frames, [-1, 1] units
    mean_abs: float
    psnr: float        # dB between the 8-bit frames (inf when identical)
    cache_max_abs: float  # largest difference over the source cache tensors
    feature_max_abs: float  # driver motion features

    def ok(self) -> bool:
        return self.mean_abs <= TOLERANCE["mean_abs"] and self.psnr >= TOLERANCE["psnr_db"]

    def line(self) -> str:
        return (f"frames: max abs {self.max_abs:.2e}, mean abs {self.mean_abs:.2e}, PSNR {self.psnr:.1f} dB "
                f"(8-bit); source cache max abs {self.cache_max_abs:.2e}; motion features max abs "
                f"{self.feature_max_abs:.2e}")


def psnr_uint8(a: Tensor, b: Tensor) -> float:
    """PSNR in dB between two frame batches after the fixed [-1, 1] -> 0..255 map of the Pipeline."""
    from fixtalk.metrics.image import psnr
    from fixtalk.pipeline import to_uint8

    x, y = to_uint8(a), to_uint8(b)  # B x S x S x 3: one tall image, so the MSE is over every frame
    return psnr(x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:]))


def _run(m: object, source: Tensor, drivers: Tensor, image: Tensor | None = None
         ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """(source cache by name, motion features, frames) through FixTalk's inference methods on `m`; `image`: the
    source crop at the render size (pixel path)."""
    import torch

    from fixtalk.onnx_export import flatten_state

    with torch.inference_mode():
        state = m.prepare_source(source, image)  # type: ignore[attr-defined]
        feat = m.driving_features(drivers)  # type: ignore[attr-defined]
        frames = m.render(state, m.predict_motion(feat, feat, feat))  # type: ignore[attr-defined]
    return flatten_state(state, m.cfg), feat, frames.float()  # type: ignore[attr-defined]


def compare(model: FixTalk, other: object, source: Tensor, drivers: Tensor, image: Tensor | None = None
            ) -> Comparison:
    """torch `model` against `other` (anything with FixTalk's inference methods) on the same inputs."""
    cache_a, feat_a, ref = _run(model, source, drivers, image)
    cache_b, feat_b, got = _run(other, source, drivers, image)
    d = (ref - got).abs()
    cache = max(float((cache_a[k] - cache_b[k]).abs().max()) for k in cache_a)
    return Comparison(float(d.max()), float(d.mean()), psnr_uint8(ref, got), cache,
                      float((feat_a - feat_b).abs().max()))


def real_inputs(model: FixTalk, source: str, driving: str, frames: int, render_size: int | None = None
                ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Aligned crops of a portrait (at S, and at the render size when above S) and of the first `frames` faces
    of a video, as the Pipeline makes them."""
    import torch

    from fixtalk.checkpoint import Bundle
    from fixtalk.faces import FaceTrack, crop
    from fixtalk.io import open_frames
    from fixtalk.pipeline import FPS, Pipeline, to_tensor

    pipe = Pipeline(Bundle(model), progress=False, render_size=render_size)
    src = pipe.prepare_source(source)
    track = FaceTrack(pipe.detector, fps=FPS, path=driving)
    crops = []
    with open_frames(driving, FPS) as reader:
        for frame in reader:
            face = track.update(frame)
            if face is not None:
                crops.append(to_tensor(crop(frame, face.transform, model.cfg.size)))
            if len(crops) == frames:
                break
    if not crops:
        raise InputError(driving, "no face found in the driving video")
    return to_tensor(src.crop), torch.cat(crops), None if src.full is None else to_tensor(src.full)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise InputError(out, "is a non-empty directory but no ONNX graph set; refusing to replace it")


def _cmd_export(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    from fixtalk.checkpoint import load_bundle
    from fixtalk.onnx_backend import OnnxFixTalk, require_onnxruntime
    from fixtalk.onnx_export import example_inputs, export_graphs
    from fixtalk.pipeline import SHIPPED

    require_onnxruntime()
    out = Path(args.out)
    _check_out(out)
    if (args.source is None) != (args.driving is None):
        raise InputError(None, "--source and --driving go together")
    if args.frames < 1:
        raise InputError(None, "--frames must be >= 1")
    model = load_bundle(SHIPPED if args.ckpt == "shipped" else args.ckpt).model
    try:
        size = model.cfg.check_render_size(args.render_size or model.cfg.default_render_size)
    except ValueError as err:
        raise InputError(None, str(err)) from None
    t0 = time.perf_counter()
    try:
        export_graphs(model, out, size)
    except OSError as err:
        raise InputError(out, f"cannot write the graphs ({err.strerror or err})") from None
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(out.glob("*.onnx")))
    print(f"wrote {out} ({sizes}; frames drawn at {size} px) in {time.perf_counter() - t0:.1f} s")
    if not args.check:
        return 0
    if args.source:
        source, drivers, image = real_inputs(model, args.source, args.driving, args.frames, size)
        what = f"{Path(args.source).name} driven by {drivers.shape[0]} frames of {Path(args.driving).name}"
    else:
        source, drivers = example_inputs(model.cfg, batch=args.frames, seed=1)
        image = None if size == model.cfg.size else F.interpolate(source, size=size, mode="bilinear",
                                                                   align_corners=False)
        what = f"random images, {args.frames} frames"
    res = compare(model, OnnxFixTalk(model, out), source, drivers, image)
    print(f"onnxruntime vs torch fp32 on {what}:\n  {res.line()}")
    verdict = "within" if res.ok() else "OUTSIDE"
    print(f"  {verdict} the tolerance (mean abs <= {TOLERANCE['mean_abs']:g}, PSNR >= {TOLERANCE['psnr_db']:g} dB)")
    return 0 if res.ok() else 1


def register(sub: argparse._SubParsersAction, handlers: dict) -> None:
    p = sub.add_parser("export-onnx", help="export the source encoder, driver encoder and renderer to ONNX",
                       description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="checkpoint directory, or 'shipped' for the model inside the package")
    p.add_argument("out", help="directory to write source.onnx, driver.onnx, render.onnx, manifest.json")
    p.add_argument("--check", action="store_true", help="compare onnxruntime with torch and print the numbers")
    p.add_argument("--source", help="portrait for --check (default: random images)")
    p.add_argument("--driving", help="driving video for --check")
    p.add_argument("--frames", type=int, default=8, help="driver frames for --check (default 8)")
    p.add_argument("--render-size", type=int, metavar="PX",
                   help="side of the frames the renderer draws (default: twice the model's size with the pixel "
                        "path, else the model's size); `--backend onnx` needs graphs of the size it draws at")
    handlers["export-onnx"] = _cmd_export

