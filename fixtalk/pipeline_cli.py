"""`fixtalk animate`: a portrait plus driving signals -> an mp4 (a thin layer over `Pipeline`)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from fixtalk.config import EMOTIONS
from fixtalk.errors import InputError
from fixtalk.options import add_runtime_args

EPILOG = f"""
factor sources: a video or image path | 'source' (hold the portrait's own) | 'audio' (mouth only)
expression also takes an emotion ({', '.join(EMOTIONS)}) or an EDTalk .npy of 10 weights.
Length: the audio's when audio drives the mouth, else the mouth driver's (then pose, expression).
A driver shorter than the output plays forward, then backward (ping-pong). Drivers are read at 25 fps.
Driver frames without a face hold the last face's motion. A LIA model (preset lia-256, fixtalk-lia) has one
motion: drive it with one video (--driving); by default it moves relative to the driver's first frame
(--motion-mode). Bad input: one line on stderr, exit code 2, and no output file.
examples:
  fixtalk animate --source me.jpg --driving talk.mp4 --output out.mp4
  fixtalk animate --source me.jpg --audio speech.wav --expression happy --pose source --output out.mp4
  fixtalk animate --source me.jpg --mouth a.mp4 --pose b.mp4 --expression c.mp4 --output out.mp4
"""


def add_strength_args(p: argparse.ArgumentParser) -> None:
    """Per-factor strengths, shared by `animate` and `live`."""
    s = p.add_argument_group("strength (0 = hold the source, 1 = follow the driver)")
    s.add_argument("--mouth-strength", type=float, default=1.0)
    s.add_argument("--pose-strength", type=float, default=1.0)
    s.add_argument("--expression-strength", type=float, default=1.0)


def strengths(args: argparse.Namespace) -> tuple[float, float, float]:
    return args.mouth_strength, args.pose_strength, args.expression_strength


def add_backend_args(r: argparse._ArgumentGroup) -> None:
    """--backend / --onnx, shared by `animate` and `live` (fixtalk.options.RuntimeOptions reads them)."""
    r.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                   help="torch, or onnx: onnxruntime on the CPU in fp32 (graphs exported on first use and cached "
                        "per checkpoint, or taken from --onnx)")
    r.add_argument("--onnx", metavar="DIR", help="graphs from `fixtalk export-onnx` for --backend onnx")


def check_tune(args: argparse.Namespace) -> None:
    if args.tune and args.backend == "onnx":
        # Tuning trains torch weights; graphs exported from the untuned weights would ignore it.
        raise InputError(None, "--tune needs the torch backend (--backend torch)")


RENDER_SIZE_HELP = ("side of the face the model draws; above the model's size the pixel path warps the portrait "
                    "at that size (default for models with the pixel path: the face's size in the portrait's own "
                    "pixels, from twice the model's size to four times (fixed at twice for live and ONNX); "
                    "else the model's size)")


def add_render_size_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup,
                        help_text: str = RENDER_SIZE_HELP) -> None:
    """`--render-size`, shared by `animate`, `live`, `serve` and `eval` (Pipeline.render_size)."""
    p.add_argument("--render-size", type=int, metavar="PX", help=help_text)


def add_motion_mode_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--motion-mode`, shared by `animate`, `live` and `serve`."""
    p.add_argument("--motion-mode", default="auto", choices=["auto", "relative", "absolute"],
                   help="relative: the driver's motion since its first frame, on the portrait's own (LIA's demo); "
                        "absolute: the driver's own (EDTalk's demo); auto (default): relative for LIA models and "
                        "models with the pixel path (the shipped one), else absolute")


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    p = sub.add_parser("animate", help="animate a portrait", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("inputs")
    g.add_argument("--source", required=True, help="portrait image (any size; the face is found and aligned)")
    g.add_argument("--output", required=True, help="output .mp4 (written atomically)")
    g.add_argument("--driving", help="one video driving mouth, pose and expression")
    g.add_argument("--mouth", help="mouth source (default: 'audio' when --audio is given, else --driving)")
    g.add_argument("--pose", help="head-pose source (default: --driving, else 'source')")
    g.add_argument("--expression", help="expression source (default: --driving, else 'source')")
    g.add_argument("--audio", help="speech that drives the mouth (unless --mouth says otherwise); muxed in")
    g.add_argument("--face-index", type=int, default=0, help="which face of the portrait (largest first)")
    add_strength_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--no-paste-back", action="store_true", help="write the aligned face crop only")
    o.add_argument("--side-by-side", action="store_true", help="show source, drivers and result")
    o.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames (a quick preview)")
    r = add_runtime_args(p)
    r.add_argument("--checkpoint", help="checkpoint directory (default: the model shipped in the package)")
    r.add_argument("--tune", type=int, default=0, metavar="N",
                   help="tune the generator N steps on the source first (cached)")
    add_render_size_arg(r)
    add_backend_args(r)
    add_motion_mode_arg(r)
    r.add_argument("--quiet", action="store_true", help="no progress bars or warnings")
    handlers["animate"] = _animate


def check_audio(path: str) -> None:
    """InputError unless `path` is a non-empty file with a readable audio track (before any model work)."""
    from pathlib import Path

    from fixtalk.io import has_audio

    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file not found" if not p.exists() else "not a file")
    if p.stat().st_size == 0:
        raise InputError(p, "empty file (0 bytes)")
    try:
        import soundfile as sf

        sf.info(str(p))
        return
    except Exception:  # not for libsndfile: compressed audio, a video container, or not audio at all
        pass
    if not has_audio(p):
        raise InputError(p, "not audio: no readable audio stream (expected wav, mp3, m4a, flac, ... "
                            "or a video with sound)")


def _animate(args: argparse.Namespace) -> int:
    from fixtalk.driving import check_one_motion, check_strength, parse_factors, require_audio
    from fixtalk.io import load_image
    from fixtalk.options import RuntimeOptions
    from fixtalk.pipeline import Pipeline

    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, format="fixtalk: %(message)s")
    # Everything cheap is checked before the model loads, so bad input fails in a fraction of a second.
    if not args.output.lower().endswith((".mp4", ".mov", ".mkv")):
        raise InputError(args.output, "output must be a video file (.mp4, .mov or .mkv)")
    options = RuntimeOptions.from_args(args)
    check_tune(args)
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(None, "--max-frames must be >= 1")
    mouth = args.mouth or ("audio" if args.audio else args.driving) or "source"
    pose = args.pose or args.driving or "source"
    expression = args.expression or args.driving  # None: 'source' (or, for a LIA model, the one motion's driver)
    require_audio(mouth, args.audio)
    parse_factors(mouth, pose, expression)
    if args.audio:
        check_audio(args.audio)
    image = load_image(args.source)
    rt = options.runtime()
    if not args.quiet:
        print(f"fixtalk animate: {rt.describe()}")
    pipe = Pipeline.from_pretrained(args.checkpoint, runtime=rt, batch_size=options.batch,
                                    progress=not args.quiet, tune_steps=args.tune, motion_mode=args.motion_mode,
                                    render_size=args.render_size)
    check_one_motion(pipe.cfg, mouth, pose, expression)  # before the face search: needs the model's kind only
    check_strength(pipe.cfg, strengths(args))
    src = pipe.prepare_source(image, face_index=args.face_index, path=args.source)
    drive = pipe.drive(src, mouth=mouth, pose=pose, expression=expression, audio=args.audio,
                       side_by_side=args.side_by_side, max_frames=args.max_frames)
    out = pipe.render(src, drive, args.output,
                      strength=strengths(args),
                      paste_back=not args.no_paste_back, side_by_side=args.side_by_side)
    if not args.quiet:
        print(f"wrote {out} ({drive.frames} frames, {drive.frames / 25:.2f} s)")
    return 0
