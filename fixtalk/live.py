"""`fixtalk live`: stream a driving video file or a camera through `fixtalk.stream.Stream`.

Frames go in one at a time, as from a camera; the latency of each output frame (from its driver frame's
arrival to its finished, pasted-back output) is printed, with the median and p95 at the end, and the
per-stage times (tracking, encoding, rendering, paste-back) separately.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fixtalk.config import EMOTIONS, SAMPLE_RATE
from fixtalk.errors import InputError
from fixtalk.options import RuntimeOptions, add_runtime_args
from fixtalk.pipeline_cli import (
    add_backend_args,
    add_motion_mode_arg,
    add_render_size_arg,
    add_strength_args,
    check_tune,
    strengths,
)

if TYPE_CHECKING:  # numpy is imported where it is used: `fixtalk --help` builds this parser without it
    import numpy as np

EPILOG = f"""
factor sources: 'driver' (the --driving frames) | 'source' (hold the portrait's own) | 'audio' (mouth
only, streamed from --audio in 40 ms chunks) | an emotion for the expression ({', '.join(EMOTIONS)}).
Audio-driven mouths lag 160 ms behind their audio (Audio2Lip's window + one frame of smoothing).
examples:
  fixtalk live --source me.jpg --driving talk.mp4 --checkpoint ckpt --output out.mp4
  fixtalk live --source me.jpg --driving 0 --checkpoint ckpt --max-frames 250     # camera 0
  fixtalk live --source me.jpg --driving head.mp4 --audio speech.wav --mouth audio --expression happy
"""


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    p = sub.add_parser("live", help="stream a video file or camera through the model, frame by frame",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("inputs")
    g.add_argument("--source", required=True, help="portrait image")
    g.add_argument("--driving", required=True, help="driving video file, or a camera index (0, 1, ...)")
    g.add_argument("--audio", help="speech streamed alongside the frames (for --mouth audio)")
    g.add_argument("--mouth", default=None, help="driver | source | audio (default: audio with --audio, "
                                                 "else driver)")
    g.add_argument("--pose", default="driver", help="driver | source")
    g.add_argument("--expression", default="driver", help="driver | source | an emotion")
    g.add_argument("--face-index", type=int, default=0, help="which face of the portrait (largest first)")
    add_strength_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--output", help="also write the frames to this .mp4 (25 fps)")
    o.add_argument("--no-paste-back", action="store_true", help="output the aligned face crop only")
    o.add_argument("--max-frames", type=int, help="stop after this many driver frames (cameras run until "
                                                  "Ctrl-C otherwise)")
    o.add_argument("--realtime", action="store_true",
                   help="feed a video file at its frame rate, as a camera would (default: as fast as possible)")
    o.add_argument("--quiet", action="store_true", help="print only the summary")
    r = add_runtime_args(p, batch=False)  # one frame per call: a live stream cannot wait for a batch
    r.add_argument("--checkpoint", help="checkpoint directory (default: the model shipped in the package)")
    r.add_argument("--tune", type=int, default=0, metavar="N",
                   help="tune the generator N steps on the source first (cached)")
    add_render_size_arg(r)
    add_backend_args(r)
    add_motion_mode_arg(r)
    handlers["live"] = _live


def _camera(index: int, max_frames: int | None) -> tuple[Iterator[np.ndarray], float]:
    import cv2

    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        cap.release()
        raise InputError(f"camera {index}", "cannot be opened (no camera at this index, or no permission)")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0) or 25.0

    def frames() -> Iterator[np.ndarray]:
        try:
            n = 0
            while max_frames is None or n < max_frames:
                ok, bgr = cap.read()
                if not ok:
                    break
                n += 1
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    return frames(), fps


def _video(path: str, max_frames: int | None, realtime: bool) -> Iterator[np.ndarray]:
    from fixtalk.io import open_frames
    from fixtalk.pipeline import FPS

    reader = open_frames(path, FPS)  # opened now: a bad file fails before the model loads

    def frames() -> Iterator[np.ndarray]:
        with reader:
            t0 = time.perf_counter()
            for n, frame in enumerate(reader):
                if max_frames is not None and n >= max_frames:
                    break
                if realtime:
                    time.sleep(max(0.0, t0 + n / FPS - time.perf_counter()))
                yield frame

    return frames()


def summary(latencies: list[float], timings: dict[str, list[float]], wall: float, frames: int) -> str:
    """The closing report: latency median / p95 / max, throughput, per-stage medians (ms)."""
    import numpy as np

    if not latencies:
        return "no frames were produced"
    ms = np.asarray(latencies) * 1000
    stages = ", ".join(f"{k} {np.median(v) * 1000:.1f}" for k, v in timings.items() if v)
    return (f"{frames} frames in {wall:.2f} s ({frames / wall:.1f} fps)\n"
            f"latency per frame: median {np.median(ms):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, "
            f"max {ms.max():.1f} ms (first frame {ms[0]:.1f} ms)\n"
            f"median per call (ms): {stages}")


def _live(args: argparse.Namespace) -> int:
    from fixtalk.driving import check_one_motion, parse_factors, require_audio
    from fixtalk.pipeline import FPS, Pipeline
    from fixtalk.stream import Stream

    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, format="fixtalk: %(message)s")
    if args.output and not args.output.lower().endswith((".mp4", ".mov", ".mkv")):
        raise InputError(args.output, "output must be a video file (.mp4, .mov or .mkv)")
    mouth = args.mouth or ("audio" if args.audio else "driver")
    require_audio(mouth, args.audio)
    parse_factors(mouth, args.pose, args.expression, stream=True)  # bad specs fail before any file is read
    options = RuntimeOptions.from_args(args)  # bad runtime flags fail before any file is read
    check_tune(args)
    camera, wav, frames, fps = _inputs(args)
    rt = options.runtime()
    print(f"fixtalk live: {rt.describe()}", flush=True)
    pipe = Pipeline.from_pretrained(args.checkpoint, runtime=rt, batch_size=1, progress=False, tune_steps=args.tune,
                                    motion_mode=args.motion_mode, render_size=args.render_size,
                                    auto_render_size=False)  # live: a frame rate independent of the photo
    check_one_motion(pipe.cfg, mouth, args.pose, args.expression)  # before the face search
    src = pipe.prepare_source(args.source, face_index=args.face_index)
    stream = Stream(pipe, src, mouth=mouth, pose=args.pose, expression=args.expression,
                    strength=strengths(args),
                    paste_back=not args.no_paste_back, fps=fps if mouth != "audio" else FPS)
    uses_frames = "driver" in (mouth, args.pose, args.expression)
    feed: np.ndarray | None = wav if mouth == "audio" else None  # streamed into the model, not just muxed
    writer = _writer(args, wav, camera, fps if uses_frames else FPS)
    shown = 0

    def emit(outs: list[np.ndarray]) -> None:
        nonlocal shown
        for frame in outs:
            if writer is not None:
                writer.write(frame)
            if not args.quiet:
                print(f"frame {shown:5d}  latency {stream.latencies[shown] * 1000:7.1f} ms", flush=True)
            shown += 1

    t0 = time.perf_counter()
    try:
        _feed(stream, frames if uses_frames else None, feed, args.max_frames, emit)
        emit(stream.flush())
    except KeyboardInterrupt:
        emit(stream.flush())
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    wall = time.perf_counter() - t0
    if writer is not None:
        if shown:
            writer.close()
        else:
            writer.abort()
    print(summary(stream.latencies, stream.timings, wall, shown))
    if writer is not None and shown:
        print(f"wrote {args.output} ({shown} frames, {shown / FPS:.2f} s)")
    return 0


def _writer(args: argparse.Namespace, wav: np.ndarray | None, camera: bool, fps: float) -> Any:
    """The --output VideoWriter (None without --output), with the driving audio or the speech muxed in."""
    if not args.output:
        return None
    from fixtalk.io import VideoWriter, probe

    kw: dict = {}
    if wav is not None:
        kw = {"audio": wav, "sample_rate": SAMPLE_RATE}
    elif not camera and probe(args.driving).audio_codec:
        kw = {"audio_from": args.driving}
    return VideoWriter(args.output, fps, **kw)


def _feed(stream: Any, frames: Iterator[np.ndarray] | None, feed: np.ndarray | None, max_frames: int | None,
          emit: Callable[[list[np.ndarray]], None]) -> None:
    """Push the driver frames (each with its 40 ms of audio) or, without frames, the audio alone."""
    from fixtalk.config import SAMPLES_PER_FRAME

    pushed = 0
    if frames is not None:
        for frame in frames:
            chunk = None
            if feed is not None:  # the 40 ms of audio that belong to this frame
                chunk = feed[pushed * SAMPLES_PER_FRAME:(pushed + 1) * SAMPLES_PER_FRAME]
            emit(stream.push(frame, chunk if chunk is not None and len(chunk) else None))
            pushed += 1
        if feed is not None and max_frames is None:  # the audio outlasts the driver: feed the rest
            emit(stream.push(audio=feed[pushed * SAMPLES_PER_FRAME:]))
    elif feed is not None:
        limit = len(feed) if max_frames is None else max_frames * SAMPLES_PER_FRAME
        for start in range(0, min(len(feed), limit), SAMPLES_PER_FRAME):
            emit(stream.push(audio=feed[start:start + SAMPLES_PER_FRAME]))


def _inputs(args: argparse.Namespace) -> tuple[bool, np.ndarray | None, Iterator[np.ndarray], float]:
    """(driver is a camera, the --audio samples, the driver frames, their frame rate)."""
    from fixtalk.config import FPS

    camera = args.driving.isdigit() and not Path(args.driving).exists()
    wav = None
    if args.audio:
        from fixtalk.audio import load_audio

        wav = load_audio(args.audio)
    if camera:
        frames, fps = _camera(int(args.driving), args.max_frames)
    else:
        frames, fps = _video(args.driving, args.max_frames, args.realtime), float(FPS)
    return camera, wav, frames, fps
