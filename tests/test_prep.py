"""fixtalk.prep: tube selection and crop geometry, naming/identity/split rules, and `fixtalk prep` end to end on
short dev clips (face tracking, 25 fps, landmarks, mel windows, manifest, report, resume, bad input)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import FACES, needs_dlib, needs_faces

from fixtalk import cli
from fixtalk import prep as P
from fixtalk.io import VideoWriter, probe

MEAD = "dreamtalk__M030_front_angry_level3_001"   # 256x256 MEAD crop, no audio track (manifest: MEAD_M030)
PAIRED = "edtalk__mouth_source"                    # 256x256, no audio track, speech in audio/<same name>.wav


# ----------------------------------------------------------------------------------------------- geometry

def test_longest_tube_follows_fomm_rules() -> None:
    sq = (100.0, 100.0, 50.0)
    moved = (300.0, 100.0, 50.0)  # IoU 0 with the first box: starts a new tube
    seq: list = [None, sq, sq, None, sq, moved, moved, moved, moved, moved, None]
    assert P.longest_tube(seq) == (5, 10)
    assert P.longest_tube(seq[:9]) == (1, 5)  # a tie keeps the first tube
    assert P.longest_tube([None] * 4) == (0, 0)
    gap_ok = [sq] * 3 + [None] * P.MAX_GAP + [sq] * 2
    assert P.longest_tube(gap_ok) == (0, len(gap_ok))  # bridged; the gap frames stay in (landmarks NaN)
    gap_long = [sq] * 3 + [None] * (P.MAX_GAP + 1) + [sq] * 2
    assert P.longest_tube(gap_long) == (0, 3)


def test_hold_last_fills_faceless_frames() -> None:
    a, b = np.eye(2, 3), 2 * np.eye(2, 3)
    held = P.hold_last([a, None, None, b, None])
    assert [h is a for h in held[:3]] == [True] * 3 and held[3] is b and held[4] is b


def test_names_identities_emotions_and_split() -> None:
    assert P.clip_name(Path("M003/video front/angry.mp4")) == "M003__video_front__angry"
    from fixtalk.naming import emotion_from_name, guess_identity, normalise_emotion

    # prep takes the first folder as the identity when the path names no MEAD actor (by_folder=True)
    assert guess_identity(Path("M003#angry#level_1#001.mp4"), by_folder=True) == "M003"
    assert guess_identity(Path("W015/video/front/sad/level_3/001.mp4"), by_folder=True) == "W015"
    assert guess_identity(Path("id10001/abc/00001.mp4"), by_folder=True) == "id10001"
    assert guess_identity(Path("id10001/abc/00001.mp4")) == "00001"
    assert guess_identity(Path("WDA_KatieHill_000.mp4"), by_folder=True) == "WDA_KatieHill"
    assert emotion_from_name("M003#angry#level_1#001.mp4") == "angry"
    assert emotion_from_name("M030/video/front/surprised/level_2/003.mp4") == "surprised"
    assert emotion_from_name("WDA_KatieHill_000.mp4") is None
    assert normalise_emotion("Disgust") == "disgusted" and normalise_emotion("expressive") is None
    ids = [f"id{i}" for i in range(400)]
    at = {f: [P.split_of(i, f) for i in ids] for f in (0.0, 0.1, 0.3, 1.0)}
    assert set(at[0.0]) == {"train"} and set(at[1.0]) == {"test"}
    assert 0.2 < at[0.3].count("test") / len(ids) < 0.4 and at[0.1].count("test") < at[0.3].count("test")
    # Monotone: an identity in the test split stays there when the fraction grows.
    assert all(b == "test" for a, b in zip(at[0.1], at[0.3]) if a == "test")


def test_split_is_the_same_in_every_process() -> None:
    """The split must not depend on Python's per-process string hash: two interpreters with different hash seeds
    (and this one) put every identity on the same side."""
    import subprocess
    import sys

    ids = [f"id{i}" for i in range(40)] + ["MEAD_M030", "W009", "WDA_KatieHill"]
    code = ("import json, sys; from fixtalk.prep import split_of; "
            "print(json.dumps([split_of(i, 0.5) for i in sys.argv[1:]]))")
    repo = Path(__file__).resolve().parents[1]
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", code, *ids], env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout))
    assert runs[0] == runs[1] == [P.split_of(i, 0.5) for i in ids]
    assert {"train", "test"} <= set(runs[0])  # both sides occur, so a constant split would fail


# ----------------------------------------------------------------------------------------------- end to end

@needs_faces
@needs_dlib
def test_prep_dev_clips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    (src / "videos").mkdir(parents=True)
    (src / "audio").mkdir()
    for name in (MEAD, PAIRED):  # symlinks: the research-use data is read in place, never copied
        (src / "videos" / f"{name}.mp4").symlink_to(FACES / "videos" / f"{name}.mp4")
    (src / "audio" / f"{PAIRED}.wav").symlink_to(FACES / "audio" / f"{PAIRED}.wav")
    (src / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    with VideoWriter(src / "videos" / "wall.mp4", fps=25) as w:  # no face anywhere
        for _ in range(12):
            w.write(np.full((96, 96, 3), 128, np.uint8))
    out = tmp_path / "out"
    args = ["prep", str(src), str(out), "--size", "64", "--max-frames", "12", "--min-frames", "8",
            "--workers", "2", "--manifest", str(FACES / "manifest.csv"), "--test-fraction", "0", "--quiet"]
    assert cli.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["clips_in"], report["kept"], report["dropped"]) == (4, 2, 2)
    assert report["drop_reasons"] == {"unreadable": 1, "no face found": 1}
    assert report["frames"] == 24 and report["minutes"] == round(24 / 25 / 60, 3)
    assert {d["clip"] for d in report["dropped_clips"]} == {"videos__corrupt", "videos__wall"}
    rows = {r["clip"]: r for r in csv.DictReader(open(out / "manifest.csv"))}
    mead, paired = rows[f"videos__{MEAD}"], rows[f"videos__{PAIRED}"]
    assert (mead["identity"], mead["emotion"], mead["has_audio"]) == ("MEAD_M030", "angry", "0")
    assert (paired["identity"], paired["emotion"], paired["has_audio"]) == ("edtalk_mouth_woman", "", "1")
    assert mead["frames"] == paired["frames"] == "12" and {r["split"] for r in rows.values()} == {"train"}
    for row in rows.values():
        clip = out / "clips" / row["clip"]
        info = probe(clip.with_suffix(".mp4"))
        assert (info.width, info.height, info.frames, info.fps, info.codec) == (64, 64, 12, 25.0, "h264")
        with np.load(clip.with_suffix(".npz")) as z:
            lm, mel = z["landmarks"], z["mel"]
            assert int(z["fps"]) == 25 and int(z["size"]) == 64
        assert lm.shape == (12, 68, 2) and lm.dtype == np.float32
        inside = lm[~np.isnan(lm).any(axis=(1, 2))]
        assert len(inside) >= 10 and (inside > -2).all() and (inside < 66).all()
        # Eyes above the mouth, face roughly centred: landmarks are in crop pixels.
        assert (inside[:, 36:48, 1].mean() < inside[:, 48:68, 1].mean()) and 16 < inside[:, 30, 0].mean() < 48
        assert mel.shape == ((12, 1, 80, 16) if row["has_audio"] == "1" else (0, 1, 80, 16))
        assert mel.dtype == np.float16 and (np.abs(mel.astype(np.float32)) <= 4).all()
    assert probe(out / "clips" / f"videos__{PAIRED}.mp4").audio_codec == "aac"
    _assert_inference_framing(out / "clips" / f"videos__{MEAD}", FACES / "videos" / f"{MEAD}.mp4")
    # Re-running resumes: every clip (kept or dropped) has its result and is not processed again.
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "clips").iterdir()}
    capsys.readouterr()
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 2
    assert json.loads((out / "report.json").read_text())["skipped_done"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / "clips").iterdir()} == stamp
    # Other settings into the same folder are refused (one line, exit code 2).
    assert cli.main([*args[:4], "128", *args[5:]]) == 2
    assert "prepared with other settings" in capsys.readouterr().err


def _assert_inference_framing(clip: Path, video: Path) -> None:
    """Training crops are the Pipeline's crops: frame k of the clip equals `faces.crop` with the tracked transform
    (one framing for training, inference and eval), and a tube crop of the tight 256 px video would not."""
    import cv2

    from fixtalk.faces import FaceDetector, FaceTrack, crop
    from fixtalk.io import open_frames
    from fixtalk.train.clipstore import read_frames

    with np.load(clip.with_suffix(".npz")) as z:
        transforms, start = z["transforms"], int(z["start"])
    track = FaceTrack(FaceDetector(), fps=25)
    with open_frames(video, 25) as reader:
        for i, frame in enumerate(reader):
            face = track.update(frame)
            if i == start + 5:
                break
    assert face is not None and np.allclose(face.transform, transforms[5], atol=1e-3)
    ours = read_frames(clip.with_suffix(".mp4"), [5])[0].astype(float)
    assert np.abs(ours - crop(frame, face.transform, 64)).mean() < 4  # H.264 at crf 18 on a 64 px crop
    whole = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(ours - whole).mean() > 8  # negative control: the old tube crop (the whole tight frame)
