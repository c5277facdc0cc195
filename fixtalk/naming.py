"""Clip identities, emotion labels, paired audio and dataset manifests, shared by prep, train and eval.

A dataset's manifest.csv (columns `file` and `notes`, as in shared/data/faces) may name a file's identity
(`identity=...`) and emotion (`emotion:<class>`). Without one, names follow MEAD (`M030_front_angry_level3_001`,
`M003#angry#level_1#001`, `W015/video/front/sad/level_3/001.mp4`): the actor id is the identity and the one
MEAD class among the name's tokens is the emotion. No torch here: prep workers and `--help` import it.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from fixtalk.config import EMOTIONS
from fixtalk.errors import InputError

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg")
# FER2013 spellings of MEAD's classes.
_ALIASES = {"disgust": "disgusted", "surprise": "surprised", "fearful": "fear"}
# A MEAD actor id between separators (start, end, _ # - /): M030_, W009#, /M003/.
_MEAD_ID = re.compile(r"(?:^|[_#\-/])([MW]\d{3})(?=$|[_#\-/])")


@dataclass(frozen=True)
class ManifestEntry:
    identity: str  # '' when the notes name none
    emotion: str   # the raw `emotion:` tag ('' when none); `normalise_emotion` maps it onto MEAD's classes


def read_manifest(path: str | Path) -> dict[Path, ManifestEntry]:
    """A dataset manifest.csv -> {resolved file path: entry}."""
    p = Path(path)
    out: dict[Path, ManifestEntry] = {}
    try:
        with open(p, newline="") as f:
            for row in csv.DictReader(f):
                notes = row.get("notes") or ""
                ident = re.search(r"identity=([^;,\s]+)", notes)
                emo = re.search(r"emotion:(\w+)", notes)
                out[(p.parent / (row.get("file") or "")).resolve()] = ManifestEntry(
                    ident.group(1) if ident else "", emo.group(1) if emo else "")
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise InputError(p, f"unreadable manifest ({err})") from None
    return out


def find_manifest(folder: Path) -> Path | None:
    """manifest.csv in the folder or its parent (a dataset's clips often sit in a subfolder)."""
    for cand in (folder / "manifest.csv", folder.parent / "manifest.csv"):
        if cand.is_file():
            return cand
    return None


def normalise_emotion(label: str | None) -> str | None:
    """A MEAD class from a label (FER spellings accepted); None for anything else ("expressive", "smile")."""
    if not label:
        return None
    e = _ALIASES.get(label.lower(), label.lower())
    return e if e in EMOTIONS else None


def emotion_from_name(name: str) -> str | None:
    """The one MEAD class among a path's tokens (`M003#angry#level_1#001`, `.../angry/level_1/001.mp4`);
    None when there is none or more than one."""
    tokens = set(re.split(r"[_#/\-. ]+", name.lower()))
    found = [e for e in EMOTIONS if e in tokens]
    return found[0] if len(found) == 1 else None


def mead_speaker(name: str) -> str | None:
    """The MEAD actor id (M030, W009) in a path or clip name, None when there is none."""
    m = _MEAD_ID.search(name)
    return m.group(1) if m else None


def guess_identity(rel: str | Path, by_folder: bool = False) -> str:
    """Identity without a manifest entry: a MEAD actor id, else (`by_folder`) the first folder of a relative
    path, else the file stem without a trailing chunk number (HDTF `WDA_KatieHill_000` -> `WDA_KatieHill`)."""
    rel = Path(rel)
    speaker = mead_speaker(rel.as_posix())
    if speaker:
        return speaker
    if by_folder and len(rel.parts) > 1:
        return rel.parts[0]
    return re.sub(r"([_#\-]\d+)+$", "", rel.stem) or rel.stem


def paired_audio(video: Path, first: Path | None = None, last: Path | None = None) -> Path | None:
    """A same-named audio file in `first`, beside the video, in a sibling `audio/` folder, or in `last`."""
    folders = [f for f in (first, video.parent, video.parent.parent / "audio", last) if f is not None]
    for folder in folders:
        for ext in AUDIO_EXTS:
            cand = folder / (video.stem + ext)
            if cand.is_file():
                return cand
    return None
