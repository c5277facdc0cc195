"""Overfit check (the quality issue, build item 4): train `recon`'s losses on ONE clip and print PSNR vs steps.

    python scripts/overfit_one_clip.py DATA CLIP [--init fixtalk/assets/model] [--steps 300] [--threads 2]

A generator that cannot reproduce the frames of a single clip it trains on has a bug, not a data problem, so
this runs before any long training. Source and driver are random frames of CLIP (a clip of a `fixtalk prep`
folder); the losses are the recon stage's (L1 + MobileNetV2 perceptual pyramid, + the landmark flow term with
the pixel path). Every `--every` steps it prints one JSON line: step, seconds, and the mean self-driven PSNR
over 8 fixed frames of the clip driven from frame 0 (the `fixtalk eval` protocol on this clip). Exit status 1
when the best PSNR stays under `--target` (30 dB by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from fixtalk import losses as L
from fixtalk.config import get_preset
from fixtalk.metrics.image import psnr as psnr8
from fixtalk.models.backbones import load_backbone
from fixtalk.models.fixtalk import FixTalk
from fixtalk.pipeline import to_uint8
from fixtalk.train.clipstore import read_clips, read_frames
from fixtalk.train.data import scale_landmarks, to_tensor
from fixtalk.train.setup import partial_load, read_init


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of two [-1, 1] images after the Pipeline's 8-bit mapping, as `fixtalk eval` scores them."""
    x, y = to_uint8(torch.stack([a, b]))
    return psnr8(x, y)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("clip", help="clip name (DATA/clips/<clip>.mp4)")
    ap.add_argument("--init", help="checkpoint to start from (default: a fresh fixtalk-small)")
    ap.add_argument("--preset", default="fixtalk-small")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--landmark-flow", type=float, default=10.0, help="weight of the landmark flow term")
    ap.add_argument("--head-lr-mult", type=float, default=10.0, help="lr multiplier of the pixel path's head")
    ap.add_argument("--target", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    model = FixTalk(cfg)
    if args.init:
        print(partial_load(model, read_init(args.init).model), file=sys.stderr)
    clip = next((c for c in read_clips(args.data, "all")[0] if c.name == args.clip), None)
    if clip is None:
        raise SystemExit(f"{args.data}: no clip named {args.clip!r} in manifest.csv")
    size = cfg.size
    frames = torch.stack([to_tensor(f, size) for f in read_frames(clip.mp4, list(range(clip.frames)))])
    with np.load(clip.npz) as z:
        lms = torch.from_numpy(scale_landmarks(z["landmarks"], int(z["size"]), size).astype(np.float32))
    test = np.linspace(1, clip.frames - 1, 8).round().astype(int)
    backbone = load_backbone("mobilenet_v2")
    head = [p for n, p in model.named_parameters() if n.startswith("dec.pixel_warp.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("dec.pixel_warp.")]
    opt = torch.optim.Adam([{"params": rest}, {"params": head, "lr": args.lr * args.head_lr_mult}],
                           lr=args.lr, betas=(0.0, 0.99))
    rng = np.random.default_rng(0)
    best, t0 = -1.0, time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            model.eval()
            with torch.no_grad():
                res = model.forward_train(frames[:1].expand(len(test), -1, -1, -1), frames[test], True)
            out = res.image
            p = float(np.mean([psnr(o, d) for o, d in zip(out, frames[test])]))
            lmk = (None if res.grid is None else
                   round(float(L.landmark_flow_loss(res.grid, lms[test], lms[:1].expand(len(test), -1, -1))), 3))
            copy = float(np.mean([psnr(frames[0], d) for d in frames[test]]))
            best = max(best, p)
            print(json.dumps({"step": step, "seconds": round(time.perf_counter() - t0, 1), "psnr": round(p, 2),
                              "copy_psnr": round(copy, 2), "landmark_px": lmk}), flush=True)
            model.train()
        if step == args.steps:
            break
        i_s, i_d = rng.integers(clip.frames, size=(2, args.batch))
        out = model.forward_train(frames[i_s], frames[i_d], use_source_address=True)
        loss = L.reconstruction_l1(out.image, frames[i_d]) + L.perceptual_pyramid(out.image, frames[i_d], backbone)
        if out.grid is not None and args.landmark_flow:
            loss = loss + args.landmark_flow * L.landmark_flow_loss(out.grid, lms[i_d], lms[i_s])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    print(json.dumps({"best_psnr": round(best, 2), "target": args.target, "reached": best >= args.target}))
    return 0 if best >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
