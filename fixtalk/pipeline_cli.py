"""`fixtalk animate`: a portrait plus driving signals -> an mp4 (a thin layer over `Pipeline`)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from fixtalk.checkpoint import EMOTIONS
from fixtalk.errors import InputError

EPILOG = f"""
factor sources: a video or image path | 'source' (hold the portrait's own) | 'audio' (mouth only)
expression also takes an emotion ({', '.join(EMOTIONS)}) or an EDTalk .npy of 10 weights.
Length: the audio's when audio drives the mouth, else the mouth driver's (then pose, expression).
A driver shorter than the output plays forward, then backward (ping-pong). Drivers are read at 25 fps.
examples:
  fixtalk animate --source me.jpg --driving talk.mp4 --output out.mp4
  fixtalk animate --source me.jpg --audio speech.wav --expression happy --pose source --output out.mp4
  fixtalk animate --source me.jpg --mouth a.mp4 --pose b.mp4 --expression c.mp4 --output out.mp4
"""


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    p = sub.add_parser("animate", help="animate a portrait", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("inputs")
    g.add_argument("--source", required=True, help="portrait image (any size; the face is found and aligned)")
    g.add_argument("--output", required=True, help="output .mp4 (written atomically)")
    g.add_argument("--driving", help="one video driving mouth, pose and expression")
    g.add_argument("--mouth", help="mouth source (default: --driving, or 'audio' when --audio is given)")
    g.add_argument("--pose", help="head-pose source (default: --driving, else 'source')")
    g.add_argument("--expression", help="expression source (default: --driving, else 'source')")
    g.add_argument("--audio", help="speech that drives the mouth (with --mouth audio) and is muxed in")
    g.add_argument("--face-index", type=int, default=0, help="which face of the portrait (largest first)")
    s = p.add_argument_group("strength (0 = hold the source, 1 = follow the driver)")
    s.add_argument("--mouth-strength", type=float, default=1.0)
    s.add_argument("--pose-strength", type=float, default=1.0)
    s.add_argument("--expression-strength", type=float, default=1.0)
    o = p.add_argument_group("output")
    o.add_argument("--no-paste-back", action="store_true", help="write the aligned face crop only")
    o.add_argument("--side-by-side", action="store_true", help="show source, drivers and result")
    r = p.add_argument_group("runtime")
    r.add_argument("--checkpoint", help="checkpoint directory (default: the model shipped in the package)")
    r.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    r.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="reduced precision falls back to fp32 for any non-finite frame")
    r.add_argument("--compile", action="store_true", help="torch.compile the generator")
    r.add_argument("--batch", type=int, default=8, help="frames per batch")
    r.add_argument("--quiet", action="store_true", help="no progress bars or warnings")
    handlers["animate"] = _animate


def _animate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fixtalk.pipeline import Pipeline
    from fixtalk.runtime import Runtime

    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, format="fixtalk: %(message)s")
    if not args.output.lower().endswith((".mp4", ".mov", ".mkv")):
        raise InputError(args.output, "output must be a video file (.mp4, .mov or .mkv)")
    if args.batch < 1:
        raise InputError(None, "--batch must be >= 1")
    mouth = args.mouth or args.driving or ("audio" if args.audio else "source")
    pose = args.pose or args.driving or "source"
    expression = args.expression or args.driving or "source"
    for name, value in (("--mouth", mouth), ("--pose", pose), ("--expression", expression)):
        if value == "audio" and name != "--mouth":
            raise InputError(None, f"{name} cannot be 'audio' (audio drives the mouth only)")
    if args.audio and not Path(args.audio).exists():
        raise InputError(args.audio, "file not found")
    pipe = Pipeline.from_pretrained(args.checkpoint, runtime=Runtime(args.device, args.dtype, args.compile),
                                    batch_size=args.batch, progress=not args.quiet)
    src = pipe.prepare_source(args.source, face_index=args.face_index)
    drive = pipe.drive(src, mouth=mouth, pose=pose, expression=expression, audio=args.audio,
                       side_by_side=args.side_by_side)
    out = pipe.render(src, drive, args.output,
                      strength=(args.mouth_strength, args.pose_strength, args.expression_strength),
                      paste_back=not args.no_paste_back, side_by_side=args.side_by_side)
    if not args.quiet:
        print(f"wrote {out} ({drive.frames} frames, {drive.frames / 25:.2f} s)")
    return 0
