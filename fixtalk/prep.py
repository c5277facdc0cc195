"""`fixtalk prep`: talking-head videos -> 25-fps face tubes with landmarks and mel windows (docs/architecture.md 7).

Per clip (one worker process each, `multiprocessing` spawn pool):

1. decode at 25 fps (`VideoReader` resamples by timestamp; MEAD's 30 fps becomes 25 like EDTalk's `-r 25`);
2. track one face (`FaceTrack`: dlib HOG + 68 landmarks, re-detection on failure, One-Euro smoothing): the
   tracker the Pipeline and `fixtalk eval` use, so each frame gets exactly the transform inference would give it;
3. FOMM "tubes": consecutive face frames whose square keeps IoU > 0.25 with the tube's first square, gaps of
   up to `MAX_GAP` faceless frames allowed (their landmarks are NaN, never dropped); the longest tube is kept;
4. crop every frame with its tracked transform (`fixtalk.faces.crop`: template framing, edge pixels repeated
   outside the frame); a faceless frame inside the tube holds the last transform;
5. 16 kHz mono audio (the clip's own track, else a same-named .wav next to it or in an `audio/` folder) ->
   Wav2Lip mel (docs/architecture.md 6.1) -> one 1x80x16 window per kept frame.

Why per-frame aligned crops and not a fixed tube crop (FOMM): one framing everywhere. The Pipeline aligns
the source and every driver frame to the template, and `fixtalk eval` scores aligned crops; a model trained
on tube crops (here mostly the whole, tightly framed video: face larger, forehead cut) renders at inference a
framing it never saw. Training on the very crops inference makes removes that gap (docs/quality.md).

Output (resumable: a clip with its OUT/clips/<clip>.json result is skipped on re-runs): H.264 clips, npz with
landmarks and mel windows, manifest.csv and report.json; the format is described in `fixtalk.train.clipstore`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import re
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fixtalk.config import FPS, SAMPLES_PER_FRAME
from fixtalk.errors import InputError
from fixtalk.naming import (
    ManifestEntry,
    emotion_from_name,
    find_manifest,
    guess_identity,
    normalise_emotion,
    paired_audio,
    read_manifest,
)
from fixtalk.train.clipstore import save_npz, write_clip, write_json, write_manifest

if TYPE_CHECKING:  # imported lazily at run time: workers pay for cv2/dlib/PyAV only when they process clips
    from fixtalk.io import VideoReader

MAX_GAP = 5                        # faceless frames a tube may bridge (their landmarks stay NaN)
TUBE_IOU = 0.25                    # FOMM: a box joins the tube when IoU with the tube's first box > 0.25
VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepOptions:
    """Everything that changes the output of one clip (stored in OUT/prep.json; a change needs a new OUT)."""

    size: int = 256                # output crop side (128, 256 or 512)
    min_frames: int = 25           # shortest tube kept (1 s)
    max_frames: int | None = None  # read at most this many 25-fps frames per clip (quick tests)
    crf: int = 18


@dataclass
class Job:
    path: str
    clip: str
    out_dir: str
    identity: str
    emotion: str
    opts: PrepOptions
    audio: str | None = None       # paired audio file when the video has no track


@dataclass
class ClipResult:
    clip: str
    source: str
    status: str                    # "kept" | "dropped"
    identity: str = ""
    emotion: str = ""
    reason: str = ""
    frames: int = 0                # frames written
    frames_in: int = 0             # 25-fps frames read
    has_audio: bool = False
    note: str = ""                 # e.g. an unreadable audio track (the clip is kept without audio)


# ----------------------------------------------------------------------------------------------- discovery

def clip_name(rel: Path) -> str:
    """Relative path -> flat clip name: folders joined by '__', suffix dropped, odd characters replaced."""
    return re.sub(r"[^A-Za-z0-9_.#+-]", "_", "__".join(rel.with_suffix("").parts))


def split_of(identity: str, test_fraction: float) -> str:
    """Deterministic identity split: sha1(identity) mapped to [0, 1) below `test_fraction` -> test."""
    h = int(hashlib.sha1(identity.encode()).hexdigest()[:8], 16) / 2**32
    return "test" if h < test_fraction else "train"


# ----------------------------------------------------------------------------------------------- one clip

def _square(transform: np.ndarray) -> tuple[float, float, float]:
    """The inference crop square of a face (template frame mapped to the image): (cx, cy, side) in px."""
    from fixtalk.faces import TEMPLATE_SIZE, apply

    inv = np.vstack([transform, [0, 0, 1]])
    inv = np.linalg.inv(inv)[:2]
    cx, cy = apply(inv, np.array([[TEMPLATE_SIZE / 2 - 0.5] * 2]))[0]
    return float(cx), float(cy), float(TEMPLATE_SIZE * np.hypot(*inv[:, 0]))


def _iou(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    ax0, ay0, bx0, by0 = a[0] - a[2] / 2, a[1] - a[2] / 2, b[0] - b[2] / 2, b[1] - b[2] / 2
    iw = max(0.0, min(ax0 + a[2], bx0 + b[2]) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + a[2], by0 + b[2]) - max(ay0, by0))
    inter = iw * ih
    return inter / (a[2] ** 2 + b[2] ** 2 - inter)


def longest_tube(squares: list[tuple[float, float, float] | None]) -> tuple[int, int]:
    """[start, end) of the longest FOMM tube: faces with IoU > 0.25 to the tube's first face, gaps <= MAX_GAP.

    A tube starts and ends on a face frame; (0, 0) when no frame has a face.
    """
    best, start, first, last = (0, 0), -1, (0.0, 0.0, 0.0), -1

    def close() -> None:
        nonlocal best, start
        if start >= 0 and last + 1 - start > best[1] - best[0]:
            best = (start, last + 1)
        start = -1

    for i, sq in enumerate(squares):
        if sq is None:
            if start >= 0 and i - last > MAX_GAP:
                close()
            continue
        if start >= 0 and _iou(sq, first) <= TUBE_IOU:
            close()
        if start < 0:
            start, first = i, sq
        last = i
    close()
    return best


def _frames(reader: VideoReader, limit: int | None) -> Iterator[np.ndarray]:
    """The reader's 25-fps frames, at most `limit`; closes the reader."""
    try:
        for i, frame in enumerate(reader):
            if limit is not None and i >= limit:
                return
            yield frame
    finally:
        reader.close()


def process_clip(job: Job) -> ClipResult:
    """Prepare one clip; never raises: failures come back as a dropped result with the reason."""
    res = ClipResult(job.clip, job.path, "dropped", job.identity, job.emotion)
    try:
        _process(job, res)
    except InputError as err:
        res.reason = f"unreadable: {err.problem}"
    except Exception as err:  # reported per clip (report.json), never silently swallowed
        res.reason = f"error: {type(err).__name__}: {err}"
        log.debug("%s", traceback.format_exc())
    out = Path(job.out_dir)
    if res.status != "kept":
        for suffix in (".mp4", ".npz"):
            (out / f"{job.clip}{suffix}").unlink(missing_ok=True)
    write_json(out / f"{job.clip}.json", asdict(res))
    return res


def hold_last(transforms: list[np.ndarray | None]) -> list[np.ndarray]:
    """Fill faceless frames with the last tracked transform (the first entry must have a face)."""
    held: list[np.ndarray] = []
    for t in transforms:
        held.append(t if t is not None else held[-1])
    return held


def _process(job: Job, res: ClipResult) -> None:
    from fixtalk.audio import load_audio, mel_windows, melspectrogram
    from fixtalk.faces import FaceDetector, FaceTrack, apply, at_size, crop
    from fixtalk.io import VideoReader

    opts, out = job.opts, Path(job.out_dir)
    track = FaceTrack(FaceDetector(), fps=FPS, path=job.path)
    squares: list[tuple[float, float, float] | None] = []
    raw_lms: list[np.ndarray | None] = []
    transforms: list[np.ndarray | None] = []
    reader = VideoReader(job.path, fps=FPS)
    has_track = reader.has_audio
    for frame in _frames(reader, opts.max_frames):
        face = track.update(frame)
        squares.append(None if face is None else _square(face.transform))
        raw_lms.append(None if face is None else face.landmarks)
        transforms.append(None if face is None else face.transform)
    res.frames_in = len(squares)
    start, end = longest_tube(squares)
    if end == start:
        res.reason = "no face found"
        return
    if end - start < opts.min_frames:
        res.reason = f"no stable face: longest face tube {end - start} frames < {opts.min_frames}"
        return
    held = hold_last(transforms[start:end])
    lms = np.full((end - start, 68, 2), np.nan, np.float32)
    for i, lm in enumerate(raw_lms[start:end]):
        if lm is not None:  # into crop pixels (pixel centres at integers), by the frame's own transform
            lms[i] = apply(at_size(held[i], opts.size), lm)
    audio_source = job.path if has_track else job.audio
    wav = None
    try:
        wav = load_audio(audio_source) if audio_source else None
    except InputError as err:  # the frames are still good training data for the visual stages
        res.note = f"audio unreadable, kept without audio: {err}"
    mel = np.zeros((0, 1, 80, 16), np.float16)
    clip_audio = None
    if wav is not None:
        # Cut or pad to the frames read (EDTalk cuts the wav to the video's frames before the mel).
        n_samples = len(squares) * SAMPLES_PER_FRAME
        wav = np.pad(wav[:n_samples], (0, max(0, n_samples - len(wav))))
        mel = mel_windows(melspectrogram(wav), len(squares))[start:end].astype(np.float16)
        clip_audio = wav[start * SAMPLES_PER_FRAME:end * SAMPLES_PER_FRAME]
        res.has_audio = True

    def crops() -> Iterator[np.ndarray]:
        for i, frame in enumerate(_frames(VideoReader(job.path, fps=FPS), end)):
            if i >= start:
                yield crop(frame, held[i - start], opts.size)

    n = write_clip(out / f"{job.clip}.mp4", crops(), opts.size, opts.crf, clip_audio)
    if n != end - start:
        raise RuntimeError(f"decoded {n} frames on the second pass, {end - start} on the first")
    save_npz(out / f"{job.clip}.npz", landmarks=lms, mel=mel, fps=np.int32(FPS), size=np.int32(opts.size),
              start=np.int32(start), transforms=np.stack(held).astype(np.float32))
    res.status, res.frames = "kept", n


# ----------------------------------------------------------------------------------------------- the run

def _jobs(src: Path, clips_dir: Path, opts: PrepOptions, manifest: Path | None) -> list[Job]:
    videos = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file()
                    and clips_dir.parent.resolve() not in p.resolve().parents)
    manifest = manifest or find_manifest(src)
    meta = read_manifest(manifest) if manifest is not None else {}
    jobs, seen = [], set()
    for v in videos:
        rel = v.relative_to(src)
        name = clip_name(rel)
        if name in seen:
            name = f"{name}_{hashlib.sha1(str(rel).encode()).hexdigest()[:6]}"
        seen.add(name)
        m = meta.get(v.resolve(), ManifestEntry("", ""))
        audio = paired_audio(v, last=src / "audio")
        emotion = normalise_emotion(m.emotion) or emotion_from_name(str(rel)) or ""
        jobs.append(Job(str(v), name, str(clips_dir), m.identity or guess_identity(rel, by_folder=True), emotion,
                        opts, None if audio is None else str(audio)))
    return jobs


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one clip per process: no oversubscription
    logging.getLogger("fixtalk").setLevel(logging.ERROR)


def prep(src: str | Path, out: str | Path, opts: PrepOptions = PrepOptions(), workers: int = 1,
         test_fraction: float = 0.1, test_ids: list[str] | None = None, manifest: str | Path | None = None,
         retry_dropped: bool = False, progress: bool = True) -> dict[str, Any]:
    """Prepare every video under `src` into `out`; returns the report (also written to out/report.json)."""
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(src, "not a folder")
    if opts.size not in (64, 128, 256, 512):
        raise InputError(None, f"--size must be 128, 256 or 512 (64 for tests), got {opts.size}")
    clips_dir = out / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    settings = {"size": opts.size, "framing": "aligned", "fps": FPS, "max_frames": opts.max_frames,
                "min_frames": opts.min_frames}
    prev = out / "prep.json"
    if prev.is_file() and json.loads(prev.read_text()) != settings:
        raise InputError(out, f"prepared with other settings ({prev.read_text().strip()}); use a new OUT folder")
    write_json(prev, settings)
    jobs = _jobs(src, clips_dir, opts, Path(manifest) if manifest else None)
    if not jobs:
        raise InputError(src, "no videos found")
    results: dict[str, ClipResult] = {}
    todo = []
    for job in jobs:
        done = clips_dir / f"{job.clip}.json"
        if done.is_file():
            r = ClipResult(**json.loads(done.read_text()))
            kept_ok = r.status == "kept" and (clips_dir / f"{job.clip}.npz").is_file()
            if kept_ok or (r.status == "dropped" and not retry_dropped):
                r.identity, r.emotion = job.identity, job.emotion
                results[job.clip] = r
                continue
        todo.append(job)
    bar = tqdm(total=len(todo), desc="prep", unit="clip", disable=not progress or not todo)
    if workers > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(todo)), initializer=_init_worker) as pool:
            for r in pool.imap_unordered(process_clip, todo):
                results[r.clip] = r
                bar.update()
    else:
        for job in todo:
            r = process_clip(job)
            results[r.clip] = r
            bar.update()
    bar.close()
    return _finish(out, [results[j.clip] for j in jobs], len(jobs) - len(todo), test_fraction, test_ids)


def _finish(out: Path, results: list[ClipResult], skipped: int, test_fraction: float,
            test_ids: list[str] | None) -> dict[str, Any]:
    kept = [r for r in results if r.status == "kept"]
    identities = sorted({r.identity for r in kept})
    if test_ids is not None:
        split = {i: "test" if i in test_ids else "train" for i in identities}
    else:
        split = {i: split_of(i, test_fraction) for i in identities}
        if test_fraction > 0 and len(identities) > 1 and "test" not in split.values():
            # Hash thresholds can leave a small set without a test identity: take the lowest hash.
            split[min(identities, key=lambda i: hashlib.sha1(i.encode()).hexdigest())] = "test"
    rows = [{"clip": r.clip, "identity": r.identity, "emotion": r.emotion, "frames": r.frames,
             "split": split[r.identity], "has_audio": int(r.has_audio), "source": r.source} for r in kept]
    write_manifest(out, rows)
    dropped = [r for r in results if r.status != "kept"]
    frames = sum(r.frames for r in kept)
    report = {
        "clips_in": len(results), "kept": len(kept), "dropped": len(dropped), "skipped_done": skipped,
        "drop_reasons": dict(Counter(r.reason.split(":")[0] for r in dropped)),
        "dropped_clips": [{"clip": r.clip, "source": r.source, "reason": r.reason} for r in dropped],
        "frames": frames, "minutes": round(frames / FPS / 60, 3), "frames_in": sum(r.frames_in for r in results),
        "identities": {s: sum(1 for v in split.values() if v == s) for s in ("train", "test")},
        "clips_with_audio": sum(r.has_audio for r in kept),
        "notes": [{"clip": r.clip, "note": r.note} for r in kept if r.note],
    }
    write_json(out / "report.json", report)
    return report
