"""`fixtalk animate` on bad input: exit code 2, one line on stderr naming the file and the problem, and no
output file (nor a hidden temporary one) left behind. Then inputs that are unusual but fine: grayscale,
RGBA, CMYK, 16-bit and huge portraits.

Cheap checks run before the model loads, so most of these fail in milliseconds. A fixtalk-small
checkpoint with random weights stands in for a trained model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FACES, needs_dlib, tiny_checkpoint
from PIL import Image

from fixtalk.checkpoint import EMOTIONS
from fixtalk.cli import main
from fixtalk.errors import InputError
from fixtalk.io import VideoWriter, load_image, open_frames, probe
from fixtalk.pipeline import Pipeline

PORTRAIT = "images/edtalk__identity_source.jpg"       # 256x256, one face
BIG_PORTRAIT = "images/edtalk__uncrop_face.jpg"       # 840x1024
CLIP = "videos/sadtalker__WDA_KatieHill_000.mp4"      # 25 fps, 512x512, with audio
STILL = "images/liveportrait__d12.jpg"
SPEECH = "audio/edtalk__mouth_source.wav"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, faces: Path) -> dict[str, Path]:
    """Bad and good inputs, made from the dev faces (every test here uses them)."""
    tmp = tmp_path_factory.mktemp("animate_errors")
    ckpt = tiny_checkpoint(tmp / "ckpt")
    clip = tmp / "clip.mp4"
    with open_frames(faces / CLIP, fps=None) as reader, VideoWriter(clip, 25, preset="ultrafast") as writer:
        for _, frame in zip(range(30), reader):
            writer.write(frame)
    data = clip.read_bytes()
    (tmp / "truncated.mp4").write_bytes(data[:len(data) // 2])  # moov is in front (faststart): frames cut off
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "fake.png").write_text("this is not an image\n")
    (tmp / "notes.wav").write_text("this is not audio either\n")
    Image.new("RGB", (320, 320), (128, 128, 128)).save(tmp / "grey.png")
    shutil.copy(faces / SPEECH, tmp / "speech.wav")
    return {"ckpt": ckpt, "clip": clip, "truncated": tmp / "truncated.mp4", "empty": tmp / "empty.mp4",
            "fake": tmp / "fake.png", "notes": tmp / "notes.wav", "grey": tmp / "grey.png",
            "speech": tmp / "speech.wav", "tmp": tmp}


def fails(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str,
          ckpt: Path | None = None) -> str:
    """Run `fixtalk animate` expecting exit 2; return its one stderr line; check nothing was written."""
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    code = main(["animate", "--checkpoint", str(ckpt or files["ckpt"]), "--quiet", "--output",
                 str(out / "result.mp4"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("fixtalk: "), err
    assert list(out.iterdir()) == []  # no result.mp4, no .result.mp4.*.part
    return err.strip()


def src(name: str = PORTRAIT) -> list[str]:
    return ["--source", str(FACES / name)]


# --- errors ------------------------------------------------------------------------------------------------
def test_missing_source(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nobody.jpg"
    err = fails(files, tmp_path, capsys, "--source", str(missing), "--driving", str(files["clip"]))
    assert err == f"fixtalk: {missing}: file not found"


def test_fake_image(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(files, tmp_path, capsys, "--source", str(files["fake"]), "--driving", str(files["clip"]))
    assert err.startswith(f"fixtalk: {files['fake']}: not a readable image")


@needs_dlib  # the driver is read after the portrait is aligned
def test_empty_video(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(files, tmp_path, capsys, *src(), "--driving", str(files["empty"]))
    assert err == f"fixtalk: {files['empty']}: empty file (0 bytes)"


@needs_dlib  # the driver is read after the portrait is aligned
def test_truncated_video(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(files, tmp_path, capsys, *src(), "--driving", str(files["truncated"]))
    assert err.startswith(f"fixtalk: {files['truncated']}: ") and "truncated" in err


@needs_dlib  # the driver is read after the portrait is aligned
def test_wav_as_driving_video(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(files, tmp_path, capsys, *src(), "--driving", str(files["speech"]))
    assert err == f"fixtalk: {files['speech']}: no video stream"


@needs_dlib
def test_no_face_in_source(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(files, tmp_path, capsys, "--source", str(files["grey"]), "--driving", str(files["clip"]))
    assert err == f"fixtalk: {files['grey']}: no face found"


@pytest.mark.parametrize("bad", ["notes", "fake"])
def test_audio_that_is_not_audio(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 bad: str) -> None:
    err = fails(files, tmp_path, capsys, *src(), "--audio", str(files[bad]))
    assert err.startswith(f"fixtalk: {files[bad]}: not audio")


def test_unknown_emotion(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(files, tmp_path, capsys, *src(), "--audio", str(files["speech"]), "--expression", "joyful")
    assert "unknown expression 'joyful'" in err and ", ".join(EMOTIONS) in err


def test_audio_for_the_pose(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(files, tmp_path, capsys, *src(), "--audio", str(files["speech"]), "--pose", "audio")
    assert err == "fixtalk: 'audio' can drive the mouth only, not the pose"


def test_unknown_flag(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(SystemExit) as exit_:
        main(["animate", *src(), "--driving", str(files["clip"]), "--output", str(out), "--checkpoint",
              str(files["ckpt"]), "--mouth-strenght", "2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(" error: unrecognized arguments: --mouth-strenght 2")  # after argparse's usage
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_checkpoint(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(files, tmp_path, capsys, *src(), "--driving", str(files["clip"]), ckpt=tmp_path / "no-ckpt")
    assert err.startswith(f"fixtalk: {tmp_path / 'no-ckpt'}: not a fixtalk checkpoint")


def test_checkpoint_of_another_size(files: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(files["ckpt"], ckpt)
    meta = json.loads((ckpt / "config.json").read_text())
    meta["model"]["size"] = 256  # the weights are for 128 px
    (ckpt / "config.json").write_text(json.dumps(meta))
    err = fails(files, tmp_path, capsys, *src(), "--driving", str(files["clip"]), ckpt=ckpt)
    assert err.startswith(f"fixtalk: {ckpt / 'model.safetensors'}: weights do not match the model in config.json")


@needs_dlib
def test_failure_while_rendering_leaves_no_file(files: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An error after the writer has started (frames in the encoder) still leaves nothing behind."""
    real = Pipeline.frames

    def frames(self: Pipeline, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for k, frame in enumerate(real(self, *args, **kwargs)):  # type: ignore[arg-type]
            if k == 2:
                raise InputError(files["clip"], "stopped on purpose")
            yield frame

    monkeypatch.setattr(Pipeline, "frames", frames)
    err = fails(files, tmp_path, capsys, *src(), "--driving", str(files["clip"]), "--max-frames", "4")
    assert err == f"fixtalk: {files['clip']}: stopped on purpose"


# --- unusual but fine ----------------------------------------------------------------------------------------
def _portrait(kind: str, path: Path) -> tuple[int, int]:
    """Write the dev portrait as `kind`; return the (width, height) the output must have."""
    rgb = load_image(FACES / PORTRAIT)
    if kind == "gray":
        Image.fromarray(rgb).convert("L").save(path)
    elif kind == "rgba":  # a transparent border around an opaque face
        a = np.zeros((*rgb.shape[:2], 1), np.uint8)
        a[16:-16, 16:-16] = 255
        Image.fromarray(np.concatenate([rgb, a], 2), "RGBA").save(path)
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    elif kind == "16bit":
        grey = np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257
        Image.fromarray(grey).save(path)
        assert Image.open(path).mode.startswith("I")
    elif kind == "huge":  # 6000x4000: the portrait upscaled to 4000 px high on a wider canvas
        big = load_image(FACES / BIG_PORTRAIT)
        w = round(big.shape[1] * 4000 / big.shape[0])
        canvas = np.full((4000, 6000, 3), 200, np.uint8)
        canvas[:, 1000:1000 + w] = cv2.resize(big, (w, 4000), interpolation=cv2.INTER_CUBIC)
        Image.fromarray(canvas).save(path, quality=90)
    img = Image.open(path)
    return img.width, img.height


@needs_dlib
@pytest.mark.parametrize("kind,ext", [("gray", "png"), ("rgba", "png"), ("cmyk", "jpg"), ("16bit", "png"),
                                      ("huge", "jpg")])
def test_unusual_sources_are_fine(files: dict[str, Path], tmp_path: Path, kind: str, ext: str) -> None:
    path = tmp_path / f"portrait-{kind}.{ext}"
    w, h = _portrait(kind, path)
    out = tmp_path / "out" / "result.mp4"
    assert main(["animate", "--checkpoint", str(files["ckpt"]), "--quiet", "--source", str(path),
                 "--driving", str(FACES / STILL), "--output", str(out)]) == 0
    info = probe(out)
    assert (info.frames, info.width, info.height, info.codec) == (1, w + w % 2, h + h % 2, "h264")
    assert [p.name for p in out.parent.iterdir()] == ["result.mp4"]


def test_render_size_below_the_model(files: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(files, tmp_path, capsys, *src(), "--audio", str(files["speech"]), "--render-size", "64")
    assert err == "fixtalk: --render-size must be at least the model's size 128, got 64"
