"""Pipeline frames/s against the EDTalk demo's per-frame loop: same clip, same model, one run.

The naive loop has the structure of EDTalk's demo_EDTalk_*.py: for every output frame it encodes the
source again, encodes the mouth, pose and expression driver crops separately (three encoder passes),
runs the heads, QR-orthogonalises the banks again and decodes, one frame at a time. The Pipeline encodes
the source once and each driver frame once (B frames per call), keeps Q, and draws B frames per call.
Here one clip drives all three factors, as with `fixtalk animate --driving`.

Two measurements, each for both:
  file to file  decode + face tracking + crop + model + paste-back + H.264 (what a user waits for);
  model only    the same model calls on crops cut beforehand (no decode, tracking, paste-back or encode).

    python scripts/bench_pipeline.py --preset fixtalk-small --frames 24
    python scripts/bench_pipeline.py --preset edtalk-256 --frames 16
    python scripts/bench_pipeline.py --preset fixtalk-512 --device cuda --dtype bf16 --batch 16 --frames 96

Random weights unless --checkpoint (speed does not depend on them). Dev data: ../shared/data/faces
(FIXTALK_FACES_DIR overrides), or pass --source and --clip.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from fixtalk.bench import reference_frame
from fixtalk.checkpoint import Bundle, load_bundle
from fixtalk.config import get_preset
from fixtalk.faces import FaceTrack, crop, paste_back
from fixtalk.io import VideoWriter, has_audio, load_image, open_frames
from fixtalk.models.fixtalk import FixTalk
from fixtalk.pipeline import FPS, Pipeline, to_tensor, to_uint8
from fixtalk.runtime import Runtime

FACES = Path(os.environ.get("FIXTALK_FACES_DIR", Path(__file__).resolve().parents[2] / "shared/data/faces"))
SOURCE = "images/edtalk__identity_source.jpg"  # 256x256 portrait
CLIP = "videos/eamm__disgusted.mp4"             # 25 fps, 256x256, talking, with audio


def naive_frame(model: FixTalk, source: torch.Tensor, lip: torch.Tensor, pose: torch.Tensor,
                exp: torch.Tensor) -> torch.Tensor:
    """One frame the EDTalk-demo way (fixtalk.bench.reference_frame: nothing cached, QR and EEM's dead branch)."""
    return reference_frame(model, source, lip, pose, exp)


def sync(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


# --- model only ---------------------------------------------------------------------------------------------
def model_only_pipeline(pipe: Pipeline, source: torch.Tensor, crops: list[torch.Tensor]) -> float:
    """Seconds for all frames: the source encoded once, then B driver crops per encoder and generator call."""
    rt, model, b = pipe.runtime, pipe.model, pipe.batch_size
    sync(rt)
    t = time.perf_counter()
    state = rt.run(model.prepare_source, source)
    for i in range(0, len(crops), b):
        feat = rt.run(model.driving_features, torch.cat(crops[i:i + b]))
        to_uint8(rt.run(model.render, state, rt.run(model.predict_motion, feat, feat, feat)))
    sync(rt)
    return time.perf_counter() - t


def model_only_naive(model: FixTalk, rt: Runtime, source: torch.Tensor, crops: list[torch.Tensor]) -> float:
    sync(rt)
    t = time.perf_counter()
    for x in crops:
        to_uint8(rt.run(naive_frame, model, source, x, x, x))
    sync(rt)
    return time.perf_counter() - t


# --- file to file -------------------------------------------------------------------------------------------
def file_pipeline(pipe: Pipeline, source: Path, clip: Path, frames: int, out: Path,
                  paste: bool) -> tuple[float, dict[str, float]]:
    """Seconds from the files to the finished mp4, and the split by stage."""
    has_exp = pipe.cfg.has_expression
    t0 = time.perf_counter()
    src = pipe.prepare_source(source)
    t1 = time.perf_counter()
    drive = pipe.drive(src, mouth=str(clip), pose=str(clip), expression=str(clip) if has_exp else None,
                       max_frames=frames)
    t2 = time.perf_counter()
    pipe.render(src, drive, out, paste_back=paste)
    t3 = time.perf_counter()
    assert drive.frames == frames, f"the clip has only {drive.frames} frames at {FPS} fps"
    return t3 - t0, {"source": t1 - t0, "drivers (decode, track, E)": t2 - t1,
                     "render (G, paste-back, H.264)": t3 - t2}


def file_naive(pipe: Pipeline, source: Path, clip: Path, frames: int, out: Path, paste: bool) -> float:
    """The naive loop with the same I/O: decode, track, crop, the per-frame model call, paste-back, encode."""
    model, rt, size = pipe.model, pipe.runtime, pipe.cfg.size
    t = time.perf_counter()
    image = load_image(source)
    face = pipe.detector.align(image, path=str(source))
    src = to_tensor(crop(image, face.transform, size))
    track = FaceTrack(pipe.detector, fps=FPS, path=clip)
    last = src  # before the first driver face: the source's own motion
    reader = open_frames(clip, FPS)
    with reader, VideoWriter(out, FPS, audio_from=clip if has_audio(clip) else None) as writer:
        for _, frame in zip(range(frames), reader):
            f = track.update(frame)
            if f is not None:
                last = to_tensor(crop(frame, f.transform, size))
            img = to_uint8(rt.run(naive_frame, model, src, last, last, last))[0]
            writer.write(paste_back(image, img, face.transform) if paste else img)
    return time.perf_counter() - t


def driver_crops(pipe: Pipeline, clip: Path, frames: int) -> list[torch.Tensor]:
    track = FaceTrack(pipe.detector, fps=FPS, path=clip)
    crops, last = [], None
    reader = open_frames(clip, FPS)
    with reader:
        for _, frame in zip(range(frames), reader):
            f = track.update(frame)
            if f is not None:
                last = to_tensor(crop(frame, f.transform, pipe.cfg.size))
            if last is not None:
                crops.append(last)
    if len(crops) < frames:
        raise SystemExit(f"{clip}: only {len(crops)} frames with a face at {FPS} fps; need {frames}")
    return crops


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fixtalk-small", help="model preset (random weights)")
    ap.add_argument("--checkpoint", help="a checkpoint directory instead of --preset")
    ap.add_argument("--size", type=int, help="override the preset's resolution")
    ap.add_argument("--frames", type=int, default=24, help="frames of the clip (at 25 fps) to animate")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=8, help="Pipeline frames per call (the naive loop: 1)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=1, help="measure N times, interleaved, and keep the best")
    ap.add_argument("--no-paste-back", action="store_true", help="write the face crops in both file loops")
    ap.add_argument("--source", type=Path, default=FACES / SOURCE)
    ap.add_argument("--clip", type=Path, default=FACES / CLIP)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rt = Runtime(args.device, args.dtype)
    if args.checkpoint:
        bundle = load_bundle(args.checkpoint)
    else:
        cfg = get_preset(args.preset)
        cfg = cfg.replace(size=args.size) if args.size else cfg
        torch.manual_seed(0)
        bundle = Bundle(FixTalk(cfg))
    pipe = Pipeline(bundle, rt, batch_size=args.batch, progress=False)
    model, cfg, paste = pipe.model, pipe.cfg, not args.no_paste_back
    print(f"bench_pipeline: {cfg.name} at {cfg.size} px, {args.frames} frames of {args.clip.name} driving "
          f"{args.source.name}; device {rt.device}, {args.dtype}, batch {args.batch}, paste-back {paste}, "
          f"best of {args.repeat}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up outside the timings: dlib's models, and each batch shape once for both loops.
        crops = driver_crops(pipe, args.clip, args.frames)
        portrait = load_image(args.source)
        source = to_tensor(crop(portrait, pipe.detector.align(portrait, path=str(args.source)).transform, cfg.size))
        tail = args.frames % args.batch or args.batch
        model_only_pipeline(pipe, source, crops[:args.batch] + crops[:tail])
        model_only_naive(model, rt, source, crops[:1])

        runs: list[tuple[float, float, float, float]] = []  # interleaved; other jobs only ever add time
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            t, stages = file_pipeline(pipe, args.source, args.clip, args.frames, Path(tmp) / "p.mp4", paste)
            best = stages if not runs or t < min(r[0] for r in runs) else best
            runs.append((t, file_naive(pipe, args.source, args.clip, args.frames, Path(tmp) / "n.mp4", paste),
                         model_only_pipeline(pipe, source, crops), model_only_naive(model, rt, source, crops)))
        t_pipe, t_naive, m_pipe, m_naive = (min(r[i] for r in runs) for i in range(4))

    n = args.frames
    print(f"{'':24}{'pipeline':>12}{'naive loop':>12}{'speed-up':>10}")
    print(f"{'file to file, frames/s':24}{n / t_pipe:12.2f}{n / t_naive:12.2f}{t_naive / t_pipe:9.2f}x")
    print(f"{'model only, frames/s':24}{n / m_pipe:12.2f}{n / m_naive:12.2f}{m_naive / m_pipe:9.2f}x")
    print(f"{'model only, ms/frame':24}{1000 * m_pipe / n:12.1f}{1000 * m_naive / n:12.1f}")
    print(f"{'not model, ms/frame':24}{1000 * (t_pipe - m_pipe) / n:12.1f}{1000 * (t_naive - m_naive) / n:12.1f}"
          "   (file to file minus model only: decode, tracking, crops, paste-back, H.264)")
    print("pipeline stages, s: " + ", ".join(f"{k} {v:.2f}" for k, v in best.items()))
    if rt.device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(rt.device) / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
