"""The prepared-data format shared by `fixtalk prep` (writer) and the training datasets (reader).

    DATA/clips/<clip>.mp4   H.264, S x S, 25 fps, a keyframe every GOP = 10 frames (random access: seek to the
                            keyframe, decode at most 9 more), AAC 16 kHz mono audio when the clip has audio
    DATA/clips/<clip>.npz   landmarks (N, 68, 2) float32 in crop pixels, NaN for frames without a face (rows stay
                            aligned with the frames, never dropped); mel (N, 1, 80, 16) float16 Wav2Lip windows
                            (docs/architecture.md 6.1; 0 rows without audio); fps; size; start (first source frame at
                            25 fps); transforms (N, 2, 3): image -> template transform of each crop (faces.py)
    DATA/clips/<clip>.json  per-clip result of prep: kept, or dropped with the reason
    DATA/manifest.csv       clip, identity, emotion, frames, split (train/test by identity), has_audio, source
    DATA/report.json        clips in, kept, drop reasons, frames, minutes

Every file is written to a temporary sibling and renamed, so an interrupted prep never leaves a partial file.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from fixtalk.config import FPS, SAMPLE_RATE
from fixtalk.errors import InputError

GOP = 10
MANIFEST_FIELDS = ("clip", "identity", "emotion", "frames", "split", "has_audio", "source")


def write_clip(path: Path, frames: Iterable[np.ndarray], size: int, crf: int,
               audio: np.ndarray | None = None) -> int:
    """Encode frames (size x size RGB uint8) as H.264 with a keyframe every GOP frames, + AAC 16 kHz mono audio.

    Written to a temporary sibling and renamed (atomic). Returns the number of frames.
    """
    import av

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    n = 0
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            v = out.add_stream("libx264", rate=FPS)
            v.width = v.height = size
            v.pix_fmt = "yuv420p"
            v.options = {"crf": str(crf), "preset": "medium", "g": str(GOP), "keyint_min": str(GOP)}
            a = out.add_stream("aac", rate=SAMPLE_RATE) if audio is not None and audio.size else None
            if a is not None:
                a.layout = "mono"
            for frame in frames:
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                vf.pts = n
                n += 1
                for p in v.encode(vf):
                    out.mux(p)
            for p in v.encode():
                out.mux(p)
            if a is not None and audio is not None:
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None], np.float32), format="fltp",
                                                layout="mono")
                af.sample_rate, af.pts, af.time_base = SAMPLE_RATE, 0, Fraction(1, SAMPLE_RATE)
                for p in [*a.encode(af), *a.encode()]:
                    out.mux(p)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def save_npz(path: Path, **arrays: Any) -> None:
    """np.savez through a temporary sibling and a rename (atomic)."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """JSON through a temporary sibling and a rename (atomic)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def write_manifest(root: Path, rows: list[dict[str, Any]]) -> None:
    """DATA/manifest.csv with MANIFEST_FIELDS columns (atomic)."""
    tmp = root / f".manifest.{uuid.uuid4().hex[:8]}.csv"
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, root / "manifest.csv")
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Clip:
    name: str
    identity: str
    emotion: str
    frames: int
    has_audio: bool
    mp4: Path
    npz: Path


def read_clips(data: str | Path, split: str = "train") -> tuple[list[Clip], list[str]]:
    """Clips of `split` ("train", "test" or "all") listed in DATA/manifest.csv, and one problem line per
    listed clip whose files are missing (those are skipped)."""
    root = Path(data)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise InputError(root, "no manifest.csv: not a `fixtalk prep` output folder")
    clips, problems = [], []
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            if split != "all" and row.get("split") != split:
                continue
            mp4, npz = root / "clips" / f"{row['clip']}.mp4", root / "clips" / f"{row['clip']}.npz"
            missing = [p.name for p in (mp4, npz) if not p.is_file()]
            if missing:
                problems.append(f"{row['clip']}: missing {', '.join(missing)}")
                continue
            clips.append(Clip(row["clip"], row.get("identity", ""), row.get("emotion", ""), int(row["frames"]),
                              row.get("has_audio", "0") in ("1", "True", "true"), mp4, npz))
    return clips, problems


def read_frames(path: Path, indices: list[int]) -> list[np.ndarray]:
    """Frames (H x W x 3 uint8 RGB) at the given 25-fps indices: seek to the keyframe before, decode on."""
    import av

    want = sorted(set(indices))
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            time_base = stream.time_base or Fraction(1, 12800)  # mp4 always has one; PyAV types it optional
            frames: Iterator[Any] | None = None
            cur = -1
            for t in want:
                if frames is None or t - cur > GOP:
                    container.seek(int(t / FPS / time_base), stream=stream, backward=True)
                    frames = container.decode(stream)
                for fr in frames:
                    cur = round(fr.time * FPS)
                    if cur >= t:
                        break
                else:
                    raise InputError(path, f"frame {t} is past the end of the clip")
                if cur != t:
                    raise InputError(path, f"frame {t} is missing (the decoder went from {t - 1} to {cur})")
                got[t] = fr.to_ndarray(format="rgb24")
    except av.error.FFmpegError as err:
        raise InputError(path, f"corrupt clip ({err})") from err
    return [got[i] for i in indices]


