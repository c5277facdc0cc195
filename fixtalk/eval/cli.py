"""`fixtalk eval`: the FixTalk Sec. 5 protocols on a folder of clips, one row per checkpoint (a thin layer
over `fixtalk.eval.runner.run`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from fixtalk.errors import InputError
from fixtalk.options import RuntimeOptions, add_runtime_args

EPILOG = """
rows: 'real' (the ground-truth frames, no-reference metrics only), 'copy-source' (the source crop repeated)
and one per --checkpoint, named after its folder or NAME=PATH (so an EMI/EDI-off ablation is one more
--checkpoint). Proxies are labelled in the output: CSIM-dlib (not ArcFace), FID-proxy (MobileNetV2; real FID
with --inception), Acc_emo with a FER2013 classifier. SyncNet scores need --syncnet; without it they are
reported as unavailable, with the reason.
parallel: --shard i/n evaluates every n-th clip; the last shard to finish writes --out. Under torchrun each
rank takes its shard from RANK/WORLD_SIZE and its GPU from LOCAL_RANK:
  torchrun --nproc-per-node 4 -m fixtalk.cli eval --checkpoint ckpt --videos test/ --out results.json
examples:
  fixtalk eval --checkpoint runs/full --checkpoint no-emi=runs/no_emi --videos mead_test/ --out r.json \\
      --markdown r.md --split-manifest prep/manifest.csv
  fixtalk eval --checkpoint ckpt --videos clips/ --portraits faces/ --max-clips 20 --max-frames 100 --out r.json
"""


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    from fixtalk.pipeline_cli import add_render_size_arg

    p = sub.add_parser("eval", help="evaluate checkpoints (PSNR, SSIM, FID, CSIM, NIQE, CPBD, LMD, Sync, Acc_emo)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("inputs")
    g.add_argument("--checkpoint", action="append", default=[], metavar="[NAME=]DIR",
                   help="checkpoint directory (repeat for more rows; default: the shipped model)")
    g.add_argument("--videos", required=True, metavar="DIR",
                   help="folder of real talking-head clips (searched recursively)")
    g.add_argument("--portraits", metavar="DIR",
                   help="folder of cross-identity source images (default: the other clips' first frames)")
    g.add_argument("--audio", metavar="DIR", help="folder of audio files named like the clips (default: each "
                                                  "clip's own track, or a same-named file beside it or in ../audio)")
    g.add_argument("--manifest", metavar="CSV",
                   help="dataset manifest.csv with identity= notes (default: next to --videos)")
    s = g.add_mutually_exclusive_group()
    s.add_argument("--identities", metavar="ID,ID,...", help="comma-separated test identities (default: all)")
    s.add_argument("--split-manifest", metavar="FILE", help="test identities: `fixtalk prep`'s manifest.csv "
                                                            "(split column) or a text file, one identity a line")
    o = p.add_argument_group("outputs")
    o.add_argument("--out", required=True, metavar="FILE.json",
                   help="results .json (every number, label, count and reason)")
    o.add_argument("--markdown", metavar="FILE.md", help="also write the tables as markdown")
    o.add_argument("--quiet", action="store_true", help="no progress bar and no printed tables")
    lim = p.add_argument_group("protocol")
    lim.add_argument("--max-clips", type=int, metavar="N",
                     help="evaluate the first N clips (after the identity filter)")
    lim.add_argument("--max-frames", type=int, metavar="N", help="use the first N frames (25 fps) of each clip")
    lim.add_argument("--eval-size", type=int, metavar="PX",
                     help="crop side the metrics see (default: the largest checkpoint size, at least 256)")
    lim.add_argument("--cross-pairs", type=int, default=2, metavar="K", help="portraits of other identities per clip")
    lim.add_argument("--inception", metavar="FILE", help="pt_inception-2015-12-05-6726825d.pth for the real FID "
                                                         "(else $FIXTALK_FID_INCEPTION, else the MobileNetV2 proxy)")
    lim.add_argument("--syncnet", metavar="FILE", help="syncnet_v2.model for LSE-C/LSE-D (else $FIXTALK_SYNCNET)")
    r = add_runtime_args(p, batch=8, compile=False, dtype="fp32")  # --device auto: cuda:LOCAL_RANK under torchrun
    r.add_argument("--tune", type=int, default=0, metavar="N",
                   help="also score every checkpoint with the generator tuned N steps on each source (row NAME+tuneN)")
    add_render_size_arg(r, help_text="as for animate; above the model's size (the default for models with the pixel "
                                "path) a row renders at the evaluation size, from the source crop at that size")
    r.add_argument("--shard", metavar="I/N", help="evaluate every N-th clip starting at I (default: "
                                                  "RANK/WORLD_SIZE under torchrun, else all)")
    handlers["eval"] = _eval


def _shard_and_device(args: argparse.Namespace) -> tuple[tuple[int, int], str]:
    from fixtalk.eval.data import parse_shard

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.shard:
        shard = parse_shard(args.shard)
    elif world > 1:
        shard = (int(os.environ.get("RANK", "0")), world)
    else:
        shard = (0, 1)
    device = args.device
    if device == "auto" and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return shard, device


def _eval(args: argparse.Namespace) -> int:
    from fixtalk.eval import report
    from fixtalk.eval.runner import run
    from fixtalk.eval.suite import EvalOptions

    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, format="fixtalk: %(message)s")
    options = RuntimeOptions.from_args(args)  # checks --batch and --threads
    for flag in ("max_clips", "max_frames"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise InputError(None, f"--{flag.replace('_', '-')} must be >= 1")
    if args.max_frames is not None and args.max_frames < 2:
        raise InputError(None, "--max-frames must be >= 2 (frame 0 is the source)")
    if args.cross_pairs < 0:
        raise InputError(None, "--cross-pairs must be >= 0")
    if args.eval_size is not None and not 64 <= args.eval_size <= 2048:
        raise InputError(None, "--eval-size must be between 64 and 2048")
    if not args.out.lower().endswith(".json"):
        raise InputError(args.out, "--out must be a .json file")
    shard, device = _shard_and_device(args)
    ids = [s.strip() for s in args.identities.split(",") if s.strip()] if args.identities else None
    from fixtalk.pipeline import SHIPPED

    checkpoints = list(args.checkpoint) or [f"shipped={SHIPPED}"]
    opts = EvalOptions(videos=args.videos, checkpoints=checkpoints, portraits=args.portraits,
                       audio=args.audio, manifest=args.manifest, max_clips=args.max_clips,
                       max_frames=args.max_frames, eval_size=args.eval_size, cross_pairs=args.cross_pairs,
                       identities=ids, split_manifest=args.split_manifest, inception=args.inception,
                       syncnet=args.syncnet, device=device, dtype=args.dtype, batch=args.batch, tune=args.tune,
                       render_size=args.render_size)
    import torch

    from fixtalk.options import choose_threads

    torch.set_num_threads(choose_threads(options.threads))
    res = run(opts, args.out, args.markdown, shard, progress=not args.quiet)
    if res is None:
        print(f"shard {shard[0]}/{shard[1]} done; {args.out} is written when every shard has finished",
              file=sys.stderr)
        return 0
    if not args.quiet:
        print(report.markdown(res))
    print(f"wrote {args.out}" + (f" and {args.markdown}" if args.markdown else ""), file=sys.stderr)
    return 0
