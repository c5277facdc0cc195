"""fixtalk.io: image edge cases, fps resampling of real clips, writer round trip, atomic writes, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FACES, needs_faces
from PIL import Image

from fixtalk import io
from fixtalk.errors import InputError
from fixtalk.io import VideoReader, VideoWriter, load_image, open_frames, probe

CLIP_30FPS = "videos/styletalk__furious_talk2_clip1.mp4"  # 2.0 s, 30 fps, 256x256 (manifest.csv)
CLIP_AUDIO = "videos/eamm__disgusted.mp4"  # 8.1 s, 25 fps, with audio


# ----------------------------------------------------------------------------------------------- images

def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert (img[..., 0] == np.arange(256).reshape(16, 16)).all()
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200
    a[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    a[2:, :, 3] = 0
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.shape == (4, 4, 3)
    assert (img[:2] == [200, 0, 0]).all() and (img[2:] == 255).all()


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    im.putpixel((0, 0), 1)
    im.save(tmp_path / "p.png", transparency=1)
    img = load_image(tmp_path / "p.png")
    assert (img[0, 0] == 255).all() and (img[1, 1] == [0, 0, 255]).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(tmp_path / "c.jpg")  # pure cyan
    img = load_image(tmp_path / "c.jpg").astype(int)
    assert img.shape == (16, 16, 3)
    r, g, b = img[8, 8]
    assert r < 60 and g > 180 and b > 180


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 256, 32768, 65535]], np.uint16)).save(tmp_path / "16.png")
    img = load_image(tmp_path / "16.png")
    assert img[0, :, 0].tolist() == [0, 1, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "o.jpg", exif=exif)
    assert load_image(tmp_path / "o.jpg").shape == (20, 10, 3)


def test_bigger_than_pil_bomb_limit_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL would refuse this as a "bomb"
    assert load_image(tmp_path / "big.png").shape == (200, 300, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # and the global is restored
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 1000)  # our own limit does apply
    with pytest.raises(InputError, match="too large"):
        load_image(tmp_path / "big.png")


def _write_bad(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"{kind}.png"
    if kind == "fake":
        p.write_text("this is not a png")
    elif kind == "empty":
        p.touch()
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(p)
        p.write_bytes(p.read_bytes()[:300])
    elif kind == "dir":
        p.mkdir()
    return p


@pytest.mark.parametrize("kind,problem", [("missing", "not found"), ("fake", "not a readable image"),
                                          ("empty", "empty"), ("truncated", "truncated"), ("dir", "directory")])
def test_bad_images_raise_input_error(tmp_path: Path, kind: str, problem: str) -> None:
    p = _write_bad(tmp_path, kind)
    with pytest.raises(InputError, match=problem) as err:
        load_image(p)
    assert err.value.path == str(p)


# ----------------------------------------------------------------------------------------------- reading

@needs_faces
def test_reader_resamples_30_to_25_fps_by_nearest_timestamp() -> None:
    native = list(VideoReader(FACES / CLIP_30FPS, fps=None))
    reader = VideoReader(FACES / CLIP_30FPS)
    assert reader.native_fps == pytest.approx(30.0) and reader.fps == 25.0
    assert reader.size == (256, 256) and not reader.has_audio and reader.frame_count == 50
    out = list(reader)
    assert len(native) == 60 and len(out) == 50
    # output frame k (t = k/25) is the source frame nearest in time: index round(k * 30/25)
    for k, frame in enumerate(out):
        assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
        assert np.array_equal(frame, native[round(k * 1.2)])


def test_reader_upsamples_10_to_25_fps_by_duplicating(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "v10.mp4", fps=10) as w:
        for i in range(10):
            w.write(np.full((32, 32, 3), 10 + 20 * i, np.uint8))
    frames = list(VideoReader(tmp_path / "v10.mp4"))
    assert len(frames) == 25
    levels = [round((f.mean() - 10) / 20) for f in frames]
    assert levels == [min(9, round(k * 10 / 25)) for k in range(25)]  # nearest source frame
    frames[0][:] = 255  # frames 0 and 1 show the same source frame, but are separate arrays
    assert abs(frames[1].mean() - 10) < 2


@needs_faces
def test_image_as_driver_is_one_frame_video() -> None:
    src = open_frames(FACES / "images/edtalk__identity_source.jpg")
    frames = list(src)
    assert len(frames) == 1 and src.frame_count == 1 and src.size == (256, 256) and not src.has_audio
    with open_frames(FACES / CLIP_30FPS) as video:
        assert isinstance(video, VideoReader) and video.fps == 25.0


@needs_faces
def test_wav_has_no_video_stream() -> None:
    with pytest.raises(InputError, match="no video stream"):
        VideoReader(FACES / "audio/edtalk__mouth_source.wav")


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        VideoReader(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(InputError, match="empty"):
        VideoReader(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 100)
    with pytest.raises(InputError, match="not a readable"):
        VideoReader(tmp_path / "text.mp4")


def _small_video(path: Path, n: int = 50, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    with VideoWriter(path) as w:
        for _ in range(n):
            w.write(rng.integers(0, 255, (size, size, 3), np.uint8))
    return path


def test_truncated_video_raises(tmp_path: Path) -> None:
    # Our writer puts the index first (faststart), so the cut file opens but runs out of frames.
    data = _small_video(tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        list(VideoReader(tmp_path / "cut.mp4"))


@needs_faces
def test_truncated_real_clip_raises(tmp_path: Path) -> None:
    data = (FACES / CLIP_30FPS).read_bytes()  # index at the end: the cut loses it
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        list(VideoReader(tmp_path / "cut.mp4"))


# ----------------------------------------------------------------------------------------------- writing

def test_writer_round_trip_pads_odd_size_and_trims_audio(tmp_path: Path) -> None:
    frames = [np.full((101, 67, 3), 40 + 3 * i, np.uint8) for i in range(50)]
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000)).astype(np.float32)  # 3 s
    out = tmp_path / "out.mp4"
    with VideoWriter(out, audio=tone, sample_rate=16000) as w:
        for f in frames:
            w.write(f)
    info = probe(out)
    assert (info.frames, info.fps, info.codec, info.pix_fmt) == (50, 25.0, "h264", "yuv420p")
    assert (info.width, info.height) == (68, 102)  # padded to even, not cropped
    assert info.audio_codec == "aac" and info.audio_duration == pytest.approx(2.0, abs=0.1)
    back = list(VideoReader(out))
    assert len(back) == 50 and back[0].shape == (102, 68, 3)
    for i in (0, 25, 49):
        assert np.abs(back[i].astype(int) - (40 + 3 * i)).mean() < 2


@needs_faces
def test_writer_copies_audio_from_file_trimmed(tmp_path: Path) -> None:
    out = tmp_path / "dub.mp4"
    with VideoWriter(out, audio_from=FACES / CLIP_AUDIO) as w:
        for frame, _ in zip(VideoReader(FACES / CLIP_30FPS), range(30)):
            w.write(frame)
    info = probe(out)
    assert info.frames == 30 and info.audio_duration == pytest.approx(1.2, abs=0.1)


@needs_faces
def test_audio_from_file_without_audio_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no audio stream"):
        VideoWriter(tmp_path / "x.mp4", audio_from=FACES / CLIP_30FPS)


def test_exception_inside_writer_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.mp4"
    with pytest.raises(RuntimeError, match="model exploded"):
        with VideoWriter(out) as w:
            for _ in range(10):
                w.write(np.zeros((64, 64, 3), np.uint8))
            raise RuntimeError("model exploded")
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_failed_rewrite_keeps_previous_output(tmp_path: Path) -> None:
    out = _small_video(tmp_path / "out.mp4", n=5)
    before = out.read_bytes()
    with pytest.raises(ValueError, match="uint8"):
        with VideoWriter(out) as w:
            w.write(np.zeros((64, 64, 3), np.uint8))
            w.write(np.zeros((64, 64, 3), np.float32))
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_zero_frames_is_an_error_and_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "none.mp4"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_size_change(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differs"):
        with VideoWriter(tmp_path / "x.mp4") as w:
            w.write(np.zeros((64, 64, 3), np.uint8))
            w.write(np.zeros((32, 32, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_probe_counts_frames_exactly(tmp_path: Path) -> None:
    info = probe(_small_video(tmp_path / "v.mp4", n=7))
    assert info.frames == 7 and info.audio_codec is None and info.duration == pytest.approx(7 / 25, abs=0.01)
