"""`fixtalk animate` end to end on the dev faces (issue #3), and the Pipeline's plumbing piece by piece.

A fixtalk-small (128 px) checkpoint with random weights stands in for a trained model: these tests check
plumbing (lengths, rates, sizes, codecs, muxed audio, held motion, memory, the fp32 fallback), not looks.
Drivers are short clips cut from ../shared/data/faces into tmp (never into the repo), and torch runs on
one thread (on 2 shared cores, two OpenMP threads fighting other jobs are several times slower).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import cv2
import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FACES, needs_dlib, tiny_checkpoint

from fixtalk.checkpoint import load_bundle
from fixtalk.cli import main
from fixtalk.io import VideoWriter, load_image, open_frames, probe
from fixtalk.models.fdm import Motion
from fixtalk.models.fixtalk import FixTalk
from fixtalk.pipeline import Drive, FactorTrack, Pipeline, pingpong
from fixtalk.runtime import Runtime
from fixtalk.side_by_side import Thumbs

PORTRAIT = "images/edtalk__identity_source.jpg"               # 256x256, one face
ODD_PORTRAIT = "images/sadtalker__happy1.png"                  # 221x226: paste-back output is 222x226
LARGE_PORTRAIT = "images/edtalk__uncrop_face.jpg"               # 840x1024, the face ~800 px
CLIP30 = "videos/vexpress__RD_Radio10_0_clip_0.mp4"            # 29.97 fps, 512x512, with audio
CLIP25 = "videos/sadtalker__WDA_KatieHill_000.mp4"             # 25 fps, 512x512, with audio
EXPRESSION = "videos/dreamtalk__M030_front_happy_level3_001.mp4"  # 25 fps, 256x256, no audio
STILL = "images/liveportrait__d12.jpg"                         # 720x720, head turned
SPEECH_44K = "audio/videoretalking__audio_1.wav"               # 44.1 kHz stereo
SPEECH_16K = "audio/edtalk__mouth_source.wav"                  # 16 kHz mono


def even(w: int, h: int) -> tuple[int, int]:
    return w + w % 2, h + h % 2


def cut(src: Path, dst: Path, frames: int, fps: float, audio: bool = True, grey: tuple[int, ...] = ()) -> Path:
    """The first `frames` native frames of `src` (those in `grey` flat grey), with its audio trimmed to them."""
    with open_frames(src, fps=None) as reader, \
            VideoWriter(dst, fps, preset="ultrafast", audio_from=src if audio else None) as writer:
        for k, frame in zip(range(frames), reader):
            writer.write(np.full_like(frame, 128) if k in grey else frame)
    return dst


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("pipeline_ckpt") / "ckpt")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, faces: Path, ckpt: Path) -> dict[str, Path]:
    """Short drivers cut from the dev faces (the tests that take this fixture skip without them)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    stereo44, rate = sf.read(faces / SPEECH_44K, dtype="float32")
    assert rate == 44100 and stereo44.shape[1] == 2
    sf.write(tmp / "speech44k.wav", stereo44[:round(0.43 * rate)], rate)        # 10 frames and 0.03 s more
    mono = librosa.resample(sf.read(faces / SPEECH_16K, dtype="float32")[0][:8000], orig_sr=16000, target_sr=48000)
    sf.write(tmp / "speech48k.wav", np.stack([mono, mono], 1)[:round(0.25 * 48000)], 48000)  # 6 frames
    return {
        "ckpt": ckpt,
        "clip30": cut(faces / CLIP30, tmp / "clip30.mp4", 12, 30),       # 12 frames at 30 fps = 10 at 25
        "clip25": cut(faces / CLIP25, tmp / "clip25.mp4", 8, 25),
        "expr5": cut(faces / EXPRESSION, tmp / "expr5.mp4", 5, 25, audio=False),
        "grey": cut(faces / CLIP25, tmp / "grey.mp4", 8, 25, audio=False, grey=(2, 3, 4)),
        "speech44k": tmp / "speech44k.wav",
        "speech48k": tmp / "speech48k.wav",
    }


@pytest.fixture(scope="module")
def pipe(ckpt: Path) -> Pipeline:
    return Pipeline(load_bundle(ckpt), Runtime("cpu"), batch_size=4, progress=False)


def animate(data: dict[str, Path], out: Path, *args: str) -> Path:
    assert main(["animate", "--checkpoint", str(data["ckpt"]), "--batch", "4", "--quiet",
                 "--output", str(out), *args]) == 0
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary files left behind
    return out


def check(path: Path, frames: int, size: tuple[int, int], audio_s: float | None) -> None:
    info = probe(path)
    assert (info.frames, info.fps, info.codec, info.pix_fmt) == (frames, 25.0, "h264", "yuv420p")
    assert (info.width, info.height) == size
    if audio_s is None:
        assert info.audio_codec is None
    else:
        assert info.audio_codec == "aac" and info.audio_duration is not None
        assert abs(info.audio_duration - audio_s) <= 0.1, (info.audio_duration, audio_s)


def audio_seconds(path: Path) -> float:
    """Duration of the driving audio: a wav, or the audio track of a driving video."""
    if path.suffix == ".wav":
        return float(sf.info(str(path)).duration)
    seconds = probe(path).audio_duration
    assert seconds is not None
    return seconds


# --- end to end through the CLI --------------------------------------------------------------------------
@needs_dlib
def test_one_driving_video_30fps_resampled_to_25(data: dict[str, Path], tmp_path: Path) -> None:
    out = animate(data, tmp_path / "out" / "a.mp4", "--source", str(FACES / PORTRAIT), "--driving", str(data["clip30"]))
    assert probe(data["clip30"]).fps == 30.0
    check(out, 10, (256, 256), audio_seconds(data["clip30"]))  # 12 frames at 30 fps -> 10 at 25


@needs_dlib
def test_mouth_pose_expression_from_three_sources(data: dict[str, Path], tmp_path: Path) -> None:
    # Mouth: a video with audio (sets the length); pose: a photo; expression: a shorter video (ping-pong).
    out = animate(data, tmp_path / "out" / "b.mp4", "--source", str(FACES / ODD_PORTRAIT),
                  "--mouth", str(data["clip25"]), "--pose", str(FACES / STILL), "--expression", str(data["expr5"]))
    assert load_image(FACES / ODD_PORTRAIT).shape[:2] == (226, 221)
    check(out, 8, even(221, 226), audio_seconds(data["clip25"]))


@needs_dlib
def test_audio_mouth_preset_emotion_held_pose(data: dict[str, Path], tmp_path: Path) -> None:
    out = animate(data, tmp_path / "out" / "c.mp4", "--source", str(FACES / PORTRAIT), "--audio",
                  str(data["speech44k"]), "--expression", "happy", "--pose", "source")
    check(out, 10, (256, 256), audio_seconds(data["speech44k"]))  # 0.43 s of speech: 10 whole frames
    info = probe(out)
    assert info.audio_sample_rate == 44100  # the file's own audio is muxed, not the 16 kHz model input


@needs_dlib
def test_no_paste_back_48k_stereo(data: dict[str, Path], tmp_path: Path) -> None:
    out = animate(data, tmp_path / "out" / "d.mp4", "--source", str(FACES / ODD_PORTRAIT), "--audio",
                  str(data["speech48k"]), "--no-paste-back")
    # The face the model draws: twice the model's 128 px by default (the pixel path warps the 256 crop).
    check(out, 6, (256, 256), audio_seconds(data["speech48k"]))


def test_render_size_follows_the_portrait(ckpt: Path) -> None:
    """No --render-size: the face's side in the portrait's own pixels, rounded up to 32, from 2 S to 4 S."""
    def scaled(s: float) -> np.ndarray:  # image -> template transform of a face at 256 / s portrait px
        return np.array([[s, 0.0, 0.0], [0.0, s, 0.0]])

    pipe = Pipeline(load_bundle(ckpt), Runtime("cpu"), progress=False)
    assert [pipe.source_render_size(scaled(s)) for s in (2.0, 1.0, 0.8, 0.55, 0.25)] == [256, 256, 320, 480, 512]
    fixed = Pipeline(load_bundle(ckpt), Runtime("cpu"), progress=False, render_size=256)
    live = Pipeline(load_bundle(ckpt), Runtime("cpu"), progress=False, auto_render_size=False)
    assert fixed.source_render_size(scaled(0.5)) == live.source_render_size(scaled(0.5)) == 256


@needs_dlib
def test_large_portrait_is_drawn_at_its_own_resolution(pipe: Pipeline) -> None:
    """An 840x1024 photo (face ~800 px): drawn at 512, its face survives paste-back far better than at 256."""
    from fixtalk.faces import crop, paste_back

    src = pipe.prepare_source(FACES / LARGE_PORTRAIT)
    assert src.full.shape == (512, 512, 3)
    hull = np.zeros(src.image.shape[:2], np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(pipe.detector.align(src.image).landmarks.astype(np.int32)), 1)

    def round_trip_psnr(face: np.ndarray) -> float:
        mse = ((paste_back(src.image, face, src.transform).astype(float) - src.image) ** 2)[hull > 0].mean()
        return float(10 * np.log10(255 ** 2 / mse))

    assert round_trip_psnr(src.full) > round_trip_psnr(crop(src.image, src.transform, 256)) + 3  # 37.4 vs 32.5


@needs_dlib
def test_side_by_side_with_strengths(data: dict[str, Path], tmp_path: Path) -> None:
    out = animate(data, tmp_path / "out" / "e.mp4", "--source", str(FACES / PORTRAIT), "--driving",
                  str(data["clip25"]), "--side-by-side", "--max-frames", "3", "--mouth-strength", "0.5",
                  "--pose-strength", "0", "--expression-strength", "1.5")
    # [source | the one driver | result], all 256 high (the 256 px portrait, the result drawn into it): one driving
    # video is shown once, not thrice.
    check(out, 3, (3 * 256, 256), 3 / 25)


@needs_dlib
def test_side_by_side_shows_the_source_framed_as_the_result(data: dict[str, Path], pipe: Pipeline) -> None:
    """Pasted back, the first panel is the portrait itself (the result is drawn into it); else the aligned crop."""
    src = pipe.prepare_source(FACES / ODD_PORTRAIT)
    drive = pipe.drive(src, mouth=str(data["clip25"]), side_by_side=True, max_frames=1)
    pasted = next(pipe.frames(src, drive, side_by_side=True))
    h, w = src.image.shape[:2]
    assert pasted.shape[0] == h and src.image.shape[:2] != src.full.shape[:2]
    np.testing.assert_array_equal(pasted[:, :w], src.image)
    crop = next(pipe.frames(src, drive, paste_back=False, side_by_side=True))
    np.testing.assert_array_equal(crop[:, :crop.shape[0]], src.full)


@needs_dlib
def test_faceless_driver_frames_hold_the_last_motion(data: dict[str, Path], pipe: Pipeline, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        out = animate(data, tmp_path / "out" / "f.mp4", "--source", str(FACES / PORTRAIT), "--driving",
                      str(data["grey"]), "--no-paste-back", "--render-size", "128")
    check(out, 8, (128, 128), None)
    warnings = [r.getMessage() for r in caplog.records if "no face" in r.getMessage()]
    assert warnings == [f"{data['grey']}: no face in 3 of 8 frames; holding the last motion there"]
    feats, thumbs = pipe.video_features(data["grey"], thumbs=True)
    assert feats.shape == (8, pipe.cfg.style_dim)
    assert all(torch.equal(feats[k], feats[1]) for k in (2, 3, 4)) and not torch.equal(feats[5], feats[1])
    assert thumbs is not None and len(thumbs) == 8 and thumbs[4].shape == (128, 128, 3)
    assert np.array_equal(thumbs[3], thumbs[1]) and thumbs[3].std() > 10  # the last face, not grey


@needs_dlib
def test_bf16_runs_and_falls_back_to_fp32(data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    # bf16 is emulated (slow) on CPUs without AVX512-BF16, so one frame; the first render comes out NaN,
    # as fp16 overflow does on old GPUs, and must be recomputed in float32.
    real, calls = FixTalk.render, []

    def flaky(self: FixTalk, *args: object) -> torch.Tensor:
        calls.append(torch.is_autocast_enabled("cpu"))
        out = real(self, *args)  # type: ignore[arg-type]
        return out.clone().fill_(float("nan")) if len(calls) == 1 else out

    monkeypatch.setattr(FixTalk, "render", flaky)
    with caplog.at_level(logging.WARNING):
        out = animate(data, tmp_path / "out" / "g.mp4", "--source", str(FACES / PORTRAIT), "--driving",
                      str(FACES / STILL), "--dtype", "bf16", "--no-paste-back")
    assert calls == [True, False]  # bf16 under autocast, then once more in float32
    assert sum("recomputing in float32" in r.getMessage() for r in caplog.records) == 1
    check(out, 1, (256, 256), None)
    frame = next(iter(open_frames(out)))
    assert frame.std() > 5  # a picture, not the black frame NaN would become


# --- pieces -----------------------------------------------------------------------------------------------
def test_pingpong() -> None:
    assert [pingpong(i, 4) for i in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [pingpong(i, 2) for i in range(5)] == [0, 1, 0, 1, 0]
    assert [pingpong(i, 1) for i in range(3)] == [0, 0, 0]
    assert all(pingpong(i, n) == i for n in (5, 50) for i in range(n))  # no change within the driver


def test_motions_pingpong_and_strength(pipe: Pipeline) -> None:
    own = Motion(torch.zeros(1, 20), torch.ones(1, 6), torch.zeros(1, 10))
    src = SimpleNamespace(state=SimpleNamespace(motion=own))
    lip = torch.arange(7.0)[:, None].expand(7, 20)          # 7-frame mouth driver: sets the length
    pose = torch.arange(3.0)[:, None].expand(3, 6) + 10     # 3-frame pose driver: ping-pongs
    drive = Drive(FactorTrack(lip, "m"), FactorTrack(pose, "p"), FactorTrack(torch.full((1, 10), 4.0), "happy"), 7)
    out = list(pipe.motions(src, drive, strength=(1.0, 0.5, 0.0)))  # type: ignore[arg-type]
    assert [s for s, _ in out] == [0, 4]
    m = Motion(*(torch.cat([getattr(x, f) for _, x in out]) for f in ("lip", "pose", "exp")))
    assert torch.equal(m.lip[:, 0], torch.arange(7.0))
    want_pose = torch.tensor([10.0, 11, 12, 11, 10, 11, 12])
    assert torch.allclose(m.pose[:, 0], 1 + 0.5 * (want_pose - 1))  # own + s * (driver - own)
    assert torch.equal(m.exp, torch.zeros(7, 10))                    # strength 0 holds the source


@needs_dlib
def test_output_streams_batch_by_batch(data: dict[str, Path], pipe: Pipeline, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch is encoded before the next is drawn: output frames are never all in memory."""
    src = pipe.prepare_source(FACES / PORTRAIT)
    drive = pipe.drive(src, mouth=str(data["clip30"]), side_by_side=True)
    assert drive.frames == 10 and isinstance(drive.lip.thumbs, Thumbs)
    assert sum(map(len, drive.lip.thumbs.jpeg)) / 10 < 10_000  # side-by-side thumbnails: a few KB a frame
    renders: list[int] = []
    real_render = pipe.model.render
    monkeypatch.setattr(pipe.model, "render", lambda *a: renders.append(1) or real_render(*a))
    real_write = VideoWriter.write

    def write(self: VideoWriter, frame: np.ndarray) -> None:
        assert len(renders) == self.frames_written // pipe.batch_size + 1
        real_write(self, frame)

    monkeypatch.setattr(VideoWriter, "write", write)
    pipe.render(src, drive, tmp_path / "s.mp4", side_by_side=True)
    assert len(renders) == 3
    check(tmp_path / "s.mp4", 10, (3 * 256, 256), 0.4)


def test_runtime_fallback_unit(caplog: pytest.LogCaptureFixture) -> None:
    rt = Runtime("cpu", "bf16")
    seen: list[torch.dtype] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(x, torch.eye(4))
        seen.append(y.dtype)
        return y * float("inf") if y.dtype == torch.bfloat16 and len(seen) == 1 else y

    with caplog.at_level(logging.WARNING):
        out = rt.run(fn, torch.ones(2, 4))
        out2 = rt.run(fn, torch.ones(2, 4))
    assert seen == [torch.bfloat16, torch.float32, torch.bfloat16]
    assert out.dtype == out2.dtype == torch.float32 and torch.isfinite(out).all()
    assert rt.fallbacks == 1 and sum("recomputing" in r.getMessage() for r in caplog.records) == 1
