"""`fixtalk prep` and `fixtalk train`: thin layers over `fixtalk.prep.prep` and `fixtalk.train.loop.train`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from fixtalk.errors import InputError

PREP_EPILOG = """
Writes OUT/clips/<clip>.mp4 + .npz (68 landmarks per frame, NaN where tracking failed; mel windows),
OUT/manifest.csv (clip, identity, emotion, frames, split, has_audio, source) and OUT/report.json.
Re-running resumes: clips with a result in OUT/clips/<clip>.json are skipped.
example:
  fixtalk prep raw_videos/ data256/ --size 256 --workers 8
"""

TRAIN_EPILOG = """
stages (docs/architecture.md 5, 9.3), in order:
  recon       E+G self-reconstruction: L1 + perceptual + GAN (+ L_dis with EMI)
  mouth-pose  cross-reconstruction from mouth-swap composites + lip/pose latent consistency
  expression  expression head + bank + EEM only (rest frozen), complementary self-reconstruction
  fixtalk     EMI (L_dis) + EDI (L_d-mem, L_align) + decoder; curriculum p: 0 -> 0.5 on the source address
  audio2lip   Audio2Lip on the generator's lip weights: regression + 0.1 smoothness (+ SyncNet with --syncnet)
  finetune    one person's video: decoder only by default
LIA presets (lia-256, fixtalk-lia, lia-small, fixtalk-lia-small: one motion, no FDM split) train with
recon, fixtalk and finetune. Re-running the same command resumes from RUN/checkpoint.pt; the finished
model is written to RUN/final/.
Multi-GPU / multi-node: torchrun --nproc_per_node 8 -m fixtalk.cli train ... (batch size is per process).
examples:
  fixtalk train --stage recon --data data256 --out runs/recon --preset fixtalk-256 --init edtalk256/ --time-budget 12h
  fixtalk train --stage fixtalk --data data256 --out runs/fixtalk --init runs/recon/final --max-steps 200000
  fixtalk train --stage fixtalk --data data256 --out runs/fixtalk-lia --preset fixtalk-lia --init lia/ --max-steps 1000
"""


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    p = sub.add_parser("prep", help="preprocess talking-head videos into training clips", epilog=PREP_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="folder searched recursively for videos")
    p.add_argument("out", help="output folder (resumable)")
    p.add_argument("--size", type=int, default=256, help="crop size: 128, 256 or 512 (default 256)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (one clip each)")
    p.add_argument("--max-frames", type=int, help="read at most this many 25-fps frames per clip")
    p.add_argument("--min-frames", type=int, default=25, help="drop clips whose face tube is shorter (default 25)")
    p.add_argument("--manifest", help="dataset manifest.csv with identity=/emotion: notes "
                                      "(default: SRC/manifest.csv or its parent's)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of identities in the test split")
    p.add_argument("--test-ids", help="comma-separated identities for the test split (overrides the fraction)")
    p.add_argument("--retry-dropped", action="store_true", help="process previously dropped clips again")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    handlers["prep"] = _prep

    t = sub.add_parser("train", help="train one stage (resumable)", epilog=TRAIN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = t.add_argument_group("run")
    g.add_argument("--stage", required=True,
                   choices=["recon", "mouth-pose", "expression", "fixtalk", "audio2lip", "finetune"])
    g.add_argument("--data", required=True, help="a `fixtalk prep` output folder")
    g.add_argument("--out", required=True, help="run folder: checkpoint.pt, config.json, logs, final/")
    g.add_argument("--max-steps", type=int, help="stop after this many steps")
    g.add_argument("--time-budget", help="stop after this much training time, e.g. 2h, 90m (summed over resumes)")
    g.add_argument("--save-every", type=int, default=1000, help="checkpoint interval in steps")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--sample-every", type=int, default=500, help="sample-grid interval in steps")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    m = t.add_argument_group("model")
    m.add_argument("--preset", help="model preset or ModelConfig .json (default: --init's, else fixtalk-small)")
    m.add_argument("--init", help="start from a fixtalk checkpoint folder or a training run (partial loads ok)")
    m.add_argument("--size", type=int, help="resolution (replaces the preset's)")
    m.add_argument("--trainable", help="comma-separated parameter prefixes to train (e.g. dec,edi,fdm.exp_fc); "
                                       "default per stage")
    o = t.add_argument_group("optimisation")
    o.add_argument("--batch", type=int, help="batch per process (default per stage: 12/4/8/8/4/8)")
    o.add_argument("--lr", type=float, help="generator lr (default 0.002*4/5; audio2lip 1e-3)")
    o.add_argument("--d-lr", type=float, help="discriminator lr (default 0.002*16/17)")
    o.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    o.add_argument("--workers", type=int, default=2, help="data-loading processes per training process")
    o.add_argument("--pixel-lr-mult", type=float, default=10.0, help="lr multiplier of the pixel path's head")
    o.add_argument("--curriculum-max", type=float, default=0.5,
                   help="fixtalk stage: final probability of rendering from the motion-source address")
    o.add_argument("--ema-halflife", type=float, default=0.0, metavar="STEPS",
                   help="EMA of G's weights with this half-life in steps (StyleGAN2's G_ema; 0 = off): final/ is "
                        "then written from the EMA weights and final_raw/ from the raw ones")
    l_ = t.add_argument_group("losses")
    l_.add_argument("--perceptual", default="mobilenet_v2", choices=["mobilenet_v2", "vgg19"],
                    help="backbone of the perceptual pyramid (vgg19 needs --vgg19)")
    l_.add_argument("--vgg19", help="torchvision vgg19-dcbb9e9d.pth")
    l_.add_argument("--syncnet", help="Wav2Lip lipsync_expert.pth for the audio2lip SyncNet loss")
    l_.add_argument("--loss-weight", action="append", metavar="NAME=VALUE",
                    help="replace one loss weight (repeatable), e.g. gan=0 (drops D) or perceptual=0.5")
    l_.add_argument("--discriminator", default="stylegan", choices=["stylegan", "projected"],
                    help="D of the GAN loss: stylegan (EDTalk's) or projected (Projected GANs: heads over frozen "
                         "MobileNetV2 features); only built when the GAN weight is > 0")
    l_.add_argument("--r1", type=float, default=0.0, metavar="GAMMA",
                    help="R1 penalty gamma/2*E||grad D(real)||^2 in the D step (0 = off)")
    l_.add_argument("--r1-every", type=int, default=16, help="lazy R1: every this many steps, scaled by it")
    l_.add_argument("--no-image-losses", action="store_true", help="audio2lip: weight losses only")
    l_.add_argument("--frame-fraction", type=float, help="use only the first fraction of each clip (finetune 0.8)")
    l_.add_argument("--split", choices=["train", "test", "all"], help="manifest split (default train; finetune all)")
    handlers["train"] = _train


def _prep(args: argparse.Namespace) -> int:
    import json

    from fixtalk.prep import PrepOptions, prep

    if args.workers < 1:
        raise InputError(None, "--workers must be >= 1")
    opts = PrepOptions(size=args.size, min_frames=args.min_frames, max_frames=args.max_frames)
    test_ids = [s.strip() for s in args.test_ids.split(",") if s.strip()] if args.test_ids else None
    report = prep(args.src, args.out, opts, workers=args.workers, test_fraction=args.test_fraction,
                  test_ids=test_ids, manifest=args.manifest, retry_dropped=args.retry_dropped,
                  progress=not args.quiet)
    summary = {k: report[k] for k in ("clips_in", "kept", "dropped", "drop_reasons", "frames", "minutes")}
    print(json.dumps(summary))
    return 0


def _train(args: argparse.Namespace) -> int:
    from fixtalk.train.loop import train
    from fixtalk.train.options import TrainOptions, parse_duration, parse_loss_weights

    trainable = tuple(s.strip() for s in args.trainable.split(",") if s.strip()) if args.trainable else None
    opts = TrainOptions(
        stage=args.stage, data=args.data, out=args.out, preset=args.preset, init=args.init, size=args.size,
        max_steps=args.max_steps, time_budget=parse_duration(args.time_budget), batch=args.batch, lr=args.lr,
        d_lr=args.d_lr, perceptual=args.perceptual, vgg19=args.vgg19, syncnet=args.syncnet, trainable=trainable,
        save_every=args.save_every, log_every=args.log_every, sample_every=args.sample_every, seed=args.seed,
        workers=args.workers, precision=args.precision, curriculum_max=args.curriculum_max,
        image_losses=not args.no_image_losses, frame_fraction=args.frame_fraction, split=args.split,
        weights=parse_loss_weights(args.loss_weight), pixel_lr_mult=args.pixel_lr_mult,
        ema_halflife=args.ema_halflife, discriminator=args.discriminator, r1=args.r1, r1_every=args.r1_every)
    return train(opts, dry_run=args.dry_run)
