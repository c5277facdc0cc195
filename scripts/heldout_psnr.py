"""Quick held-out score of a checkpoint or training run: self-driven PSNR on the test split of a prep folder.

    python scripts/heldout_psnr.py RUN_OR_CKPT DATA [--frames 8] [--threads 2] [--no-rgb-warp]

For each held-out clip (manifest split "test"), frame 0 is the source and `--frames` evenly spaced later frames
drive it (the self-driven protocol of `fixtalk eval`, on prep's crops, which are the inference framing). Prints
the model's PSNR, the copy-the-source PSNR on the same frames, and the landmark error of the pixel path (how far,
in pixels, its flow puts each driver landmark from the source's; copy_landmark_px is the same for zero flow),
one JSON line. It takes seconds, so training
runs are compared with it as they go; `fixtalk eval` gives the full table.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fixtalk.losses import landmark_flow_loss
from fixtalk.metrics.image import psnr as psnr8
from fixtalk.models.fixtalk import FixTalk
from fixtalk.models.generator import pixel_identity_grid
from fixtalk.pipeline import to_uint8
from fixtalk.train.clipstore import read_clips, read_frames
from fixtalk.train.data import scale_landmarks, to_tensor
from fixtalk.train.setup import read_init
from fixtalk.tune import tune_generator


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of two [-1, 1] images after the Pipeline's 8-bit mapping, as `fixtalk eval` scores them."""
    x, y = to_uint8(torch.stack([a, b]))
    return psnr8(x, y)


def score(model: FixTalk, data: str, frames: int, tune: int = 0, per_identity: bool = False) -> dict[str, float]:
    size = model.cfg.size
    ours, copy, lmk, lmk_copy = [], [], [], []
    seen: set[str] = set()
    for clip in read_clips(data, "test")[0]:
        if per_identity and clip.identity in seen:
            continue
        seen.add(clip.identity)
        idx = np.linspace(0, clip.frames - 1, frames + 1).round().astype(int).tolist()
        imgs = torch.stack([to_tensor(f, size) for f in read_frames(clip.mp4, idx)])
        src, drv = imgs[:1], imgs[1:]
        net = tune_generator(model, src, tune)[0] if tune else model
        with torch.no_grad():
            out = net.forward_train(src.expand(len(drv), -1, -1, -1), drv, use_source_address=True)
        ours += [psnr(o, d) for o, d in zip(out.image, drv)]
        copy += [psnr(src[0], d) for d in drv]
        if out.grid is not None:
            with np.load(clip.npz) as z:
                lm = torch.from_numpy(scale_landmarks(z["landmarks"][idx], int(z["size"]), size).astype(np.float32))
            lm_s = lm[:1].expand(len(drv), -1, -1)
            lmk.append(landmark_flow_loss(out.grid, lm[1:], lm_s).item())
            zero_flow = pixel_identity_grid(size, out.grid).expand_as(out.grid)
            lmk_copy.append(landmark_flow_loss(zero_flow, lm[1:], lm_s).item())
    res = {"psnr": float(np.mean(ours)), "copy_psnr": float(np.mean(copy)), "frames": len(ours)}
    if lmk:
        res["landmark_px"], res["copy_landmark_px"] = float(np.mean(lmk)), float(np.mean(lmk_copy))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", help="fixtalk checkpoint folder, training run folder or checkpoint.pt")
    ap.add_argument("data", help="a `fixtalk prep` folder with a test split")
    ap.add_argument("--frames", type=int, default=8, help="driver frames per clip")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tune", type=int, default=0, help="tune G on each source for N steps first (fixtalk.tune)")
    ap.add_argument("--per-identity", action="store_true", help="only the first held-out clip of each identity")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    init = read_init(args.weights)
    model = FixTalk(init.cfg)
    model.load_state_dict({k: v.float() for k, v in init.model.items()})
    t0 = time.perf_counter()
    res = score(model.eval(), args.data, args.frames, args.tune, args.per_identity)
    print(json.dumps({"weights": args.weights, "tune": args.tune, **{k: round(v, 3) for k, v in res.items()},
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
