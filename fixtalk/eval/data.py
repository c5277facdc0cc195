"""What the evaluation runs on: clips, portraits, identities, emotion labels, paired audio, splits, shards.

A clip's identity comes from the dataset's manifest.csv (`identity=...` in the notes column, as in
shared/data/faces), else from a MEAD actor id in the name (`M030`, `W009`), else from the file stem without
a trailing chunk number (HDTF `WDA_KatieHill_000` -> `WDA_KatieHill`). The emotion label comes from MEAD's
naming (`M030_front_angry_level3_001`), else from an `emotion:<class>` tag in the manifest notes when the
class is one of MEAD's eight. Audio is the clip's own track, else a same-named file in --audio DIR, next
to the clip, or in a sibling `audio/` folder.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

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

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class EvalClip:
    """One real talking-head video of the evaluation set."""

    name: str                 # unique key: path relative to --videos, '/' joined
    path: str
    identity: str
    emotion: str | None       # MEAD class, None when unlabelled
    audio: str | None         # file whose audio drives the audio-driven protocol (may be `path` itself)


@dataclass(frozen=True)
class Portrait:
    """A cross-identity source: an image from --portraits, or the first frame of another clip."""

    name: str
    path: str
    identity: str
    is_video: bool = False    # True: the first frame of a video


def find_audio(video: Path, audio_dir: Path | None) -> str | None:
    """A same-named audio file (--audio DIR, beside it, ../audio), else the clip's own audio track."""
    from fixtalk.io import has_audio  # lazily: PyAV only when clips are discovered

    paired = paired_audio(video, first=audio_dir)
    if paired is not None:
        return str(paired)
    return str(video) if has_audio(video) else None


def _files(root: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts
                  and not p.name.startswith("."))


def discover_clips(videos: str | Path, audio_dir: str | Path | None = None,
                   manifest: str | Path | None = None) -> list[EvalClip]:
    """Every video under `videos` (recursive, sorted by path) with its identity, emotion and audio."""
    root = Path(videos)
    if not root.is_dir():
        raise InputError(root, "--videos must be a folder of talking-head clips")
    mpath = Path(manifest) if manifest else find_manifest(root)
    meta = read_manifest(mpath) if mpath is not None else {}
    adir = Path(audio_dir) if audio_dir else None
    if adir is not None and not adir.is_dir():
        raise InputError(adir, "--audio must be a folder")
    clips = []
    for p in _files(root, VIDEO_EXTS):
        rel = p.relative_to(root).as_posix()
        info = meta.get(p.resolve(), ManifestEntry("", ""))
        emotion = emotion_from_name(rel) or normalise_emotion(info.emotion)
        clips.append(EvalClip(rel, str(p), info.identity or guess_identity(rel), emotion, find_audio(p, adir)))
    if not clips:
        raise InputError(root, f"no videos ({', '.join(VIDEO_EXTS)}) found")
    return clips


def discover_portraits(folder: str | Path, manifest: str | Path | None = None) -> list[Portrait]:
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "--portraits must be a folder of images")
    mpath = Path(manifest) if manifest else find_manifest(root)
    meta = read_manifest(mpath) if mpath is not None else {}
    out = []
    for p in _files(root, IMAGE_EXTS):
        rel = p.relative_to(root).as_posix()
        ident = meta.get(p.resolve(), ManifestEntry("", "")).identity or guess_identity(rel)
        out.append(Portrait(rel, str(p), ident))
    if not out:
        raise InputError(root, f"no images ({', '.join(IMAGE_EXTS)}) found")
    return out


def first_frame_portraits(clips: list[EvalClip]) -> list[Portrait]:
    """Without --portraits, the sources of the cross-identity protocol are the clips' first frames."""
    return [Portrait(c.name, c.path, c.identity, is_video=True) for c in clips]


def read_split(path: str | Path) -> list[str]:
    """Test identities from a split file: a CSV with `identity` and `split` columns (`fixtalk prep`'s
    manifest.csv: rows with split == test) or plain text, one identity per line (# comments)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "split manifest not found")
    text = p.read_text()
    first = text.splitlines()[0] if text.strip() else ""
    if "," in first and "identity" in first.split(","):
        rows = list(csv.DictReader(text.splitlines()))
        if "split" not in first.split(","):
            raise InputError(p, "split CSV needs `identity` and `split` columns")
        ids = sorted({r["identity"] for r in rows if (r.get("split") or "").strip() == "test"})
    else:
        ids = [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]
    if not ids:
        raise InputError(p, "no test identities in the split file")
    return ids


def select(clips: list[EvalClip], identities: list[str] | None, max_clips: int | None) -> list[EvalClip]:
    """Clips of the test identities (all when None), then the first `max_clips` of them."""
    if identities is not None:
        wanted = set(identities)
        clips = [c for c in clips if c.identity in wanted]
        if not clips:
            raise InputError(None, f"no clip belongs to the test identities {sorted(wanted)[:8]}")
    return clips[:max_clips] if max_clips else clips


def cross_pairs(clips: list[EvalClip], portraits: list[Portrait], per_clip: int) -> dict[str, list[Portrait]]:
    """For each clip, up to `per_clip` portraits of *other* identities, chosen deterministically: clip k
    starts its search at portrait k, so every portrait gets used about equally."""
    out: dict[str, list[Portrait]] = {}
    n = len(portraits)
    for k, clip in enumerate(clips):
        order = [portraits[(k + j) % n] for j in range(n)] if n else []
        out[clip.name] = [p for p in order if p.identity != clip.identity][:per_clip]
    return out


def neutral_sources(clips: list[EvalClip]) -> dict[str, EvalClip]:
    """identity -> its neutral clip (the emotion protocol's source, so the copy baseline is not handed the
    target emotion by its own first frame)."""
    out: dict[str, EvalClip] = {}
    for c in clips:
        if c.emotion == "neutral" and c.identity not in out:
            out[c.identity] = c
    return out


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if not spec:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise InputError(None, f"--shard must be i/n with 0 <= i < n, got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def shard(clips: list[EvalClip], index: int, count: int) -> list[EvalClip]:
    """Round-robin share of the clips (balanced when lengths vary smoothly along the sorted list)."""
    return clips[index::count]
