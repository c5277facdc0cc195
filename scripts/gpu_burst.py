"""A short training burst on a lent GPU: continue the shipped model's recon stage for a fixed time budget.

For machines where the project is not installed (no PyAV, no offline-assets package): clips are decoded with
OpenCV, whole and once per data-loading process (the prepared clips are a few hundred 128 px frames each, so
they fit in memory and the GPU is not left waiting on seeks), and the MobileNetV2 weights are found through
PYTHONPATH as usual. The recipe is scripts/continue_shipped.sh's recon stage (pixel path, landmark-guided flow
weight 10, no GAN), with a larger batch because the GPU has room for it.

Usage: python scripts/gpu_burst.py DATA OUT [--minutes 6.5] [--batch 32] [--workers 12]
Prints the training log lines and leaves OUT/final (a fixtalk checkpoint folder) when the budget is spent.
"""
from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@functools.cache
def _decode_clip(path: str) -> tuple[np.ndarray, ...]:
    import cv2

    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(np.ascontiguousarray(frame[:, :, ::-1]))  # BGR -> RGB, as PyAV's rgb24
    cap.release()
    return tuple(frames)


def read_frames_cv2(path: Path, indices: list[int]) -> list[np.ndarray]:
    """fixtalk.train.clipstore.read_frames without PyAV (identical pixels: both use FFmpeg's H.264 decoder)."""
    from fixtalk.errors import InputError

    frames = _decode_clip(str(path))
    bad = [i for i in indices if not 0 <= i < len(frames)]
    if bad:
        raise InputError(path, f"frame {bad[0]} is past the end of the clip ({len(frames)} frames)")
    return [frames[i] for i in indices]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--init", default=str(Path(__file__).resolve().parents[1] / "fixtalk" / "assets" / "model"))
    ap.add_argument("--minutes", type=float, default=6.5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--landmark-flow", type=float, default=10.0)
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--precision", default="fp32", choices=["auto", "bf16", "fp32"],
                    help="fp32 (TF32 matmuls on CUDA) by default: flows and warps keep full precision")
    args = ap.parse_args()

    try:
        import av  # noqa: F401
    except ImportError:
        import fixtalk.train.data as data

        data.read_frames = read_frames_cv2
        print("gpu_burst: PyAV missing, clips decoded with OpenCV (cached per worker)", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

    from fixtalk.losses import LossWeights
    from fixtalk.train.loop import train
    from fixtalk.train.options import TrainOptions

    opts = TrainOptions(
        stage="recon", data=args.data, out=args.out, preset="fixtalk-small", init=args.init,
        time_budget=args.minutes * 60, max_steps=args.max_steps, batch=args.batch, workers=args.workers,
        precision=args.precision,
        save_every=200, log_every=20, sample_every=10**9,
        weights=replace(LossWeights(), gan=0.0, landmark_flow=args.landmark_flow))
    return train(opts)


if __name__ == "__main__":
    raise SystemExit(main())
