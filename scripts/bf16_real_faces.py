"""PSNR of bf16 frames against fp32 frames of the shipped model on real faces (issue #11, docs/performance.md).

`tests/test_options.py` holds bf16 to >= 40 dB on smooth-noise frames; this checks the same on a portrait and a
driving clip through the whole Pipeline (face crop, 256 px render, paste-back off), with the runtime each dtype
gets by default (bf16 on a CPU: frozen traces, NHWC end to end; fp32: NCHW).

    python scripts/bf16_real_faces.py ../shared/data/faces/images/edtalk__identity_source.jpg \
        ../shared/data/faces/videos/lia__vox_driving1.mp4 --frames 48
"""

from __future__ import annotations

import argparse

import numpy as np


def render(source: str, clip: str, frames: int, dtype: str) -> np.ndarray:
    from fixtalk.options import RuntimeOptions
    from fixtalk.pipeline import Pipeline

    rt = RuntimeOptions(dtype=dtype, threads=1).runtime()
    pipe = Pipeline.from_pretrained(runtime=rt, progress=False)
    src = pipe.prepare_source(source)
    drive = pipe.drive(src, mouth=clip, pose=clip, expression=clip, max_frames=frames)
    print(f"{dtype}: {rt.describe()}")
    return np.stack(list(pipe.frames(src, drive, paste_back=False))).astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("clip")
    ap.add_argument("--frames", type=int, default=48)
    args = ap.parse_args()
    bf16, fp32 = (render(args.source, args.clip, args.frames, d) for d in ("bf16", "fp32"))
    mse = ((bf16 - fp32) ** 2).mean(axis=(1, 2, 3))
    psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))
    print(f"{len(psnr)} frames, PSNR bf16 vs fp32 (8-bit): min {psnr.min():.2f} dB, median {np.median(psnr):.2f} dB, "
          f"max abs difference {np.abs(bf16 - fp32).max():.0f} levels")


if __name__ == "__main__":
    main()
