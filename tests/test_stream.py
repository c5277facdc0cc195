"""fixtalk.stream and `fixtalk live`: streamed frames equal the batch Pipeline's, causally.

A fixtalk-small (128 px) checkpoint with random weights stands in for a trained model: equality of the
two paths does not depend on the weights. Random generators are chaotic (README, "Parity"), so 1e-7
differences of the bank weights (a head applied to 1 row instead of 50) can move single pixels by a few
levels; the comparisons bound the mean and the share of pixels off by more than 3 levels instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import FACES, needs_dlib, tiny_checkpoint

from fixtalk.errors import InputError
from fixtalk.io import VideoWriter, open_frames, probe
from fixtalk.pipeline import Pipeline, PreparedSource
from fixtalk.stream import SAMPLES_PER_FRAME, Stream, audio_frames_needed

PORTRAIT = "images/edtalk__identity_source.jpg"          # 256x256, one face
CLIP = "videos/styletalk__furious_talk2_clip1.mp4"       # 2.0 s, 30 fps talking head
SPEECH = "audio/edtalk__mouth_source.wav"
# Every test here aligns the dev portrait (the `src` fixture) or runs `fixtalk live`. One torch thread: the
# side-by-side tests compare frames rendered inline on this thread with frames of one-thread workers, and a
# different intra-op thread count changes the rounding (1-level differences, seen on an idle machine).
pytestmark = [needs_dlib, pytest.mark.usefixtures("one_thread")]


def read_frames(path: Path | str, limit: int | None = None) -> list[np.ndarray]:
    reader = open_frames(path)
    with reader:
        return [f for _, f in zip(range(limit or 10**9), reader)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, faces: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("stream")
    # Short drivers keep the module fast: 12 frames of video, 15.5 frames (0.62 s) of speech.
    with VideoWriter(tmp / "clip.mp4", 25) as writer:
        for frame in read_frames(faces / CLIP, 12):
            writer.write(frame)
    from fixtalk.audio import load_audio

    sf.write(tmp / "speech.wav", load_audio(faces / SPEECH)[:9933], 16000)
    return {"ckpt": tiny_checkpoint(tmp / "ckpt"), "clip": tmp / "clip.mp4", "speech": tmp / "speech.wav"}


@pytest.fixture(scope="module")
def pipe(data: dict[str, Path]) -> Pipeline:
    return Pipeline.from_pretrained(data["ckpt"], batch_size=1, progress=False)


@pytest.fixture(scope="module")
def src(pipe: Pipeline, faces: Path) -> PreparedSource:
    return pipe.prepare_source(faces / PORTRAIT)


def assert_frames_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    diff = np.abs(np.stack(got).astype(np.int16) - np.stack(want).astype(np.int16))
    assert diff.mean() < 0.05, diff.mean()
    assert (diff > 3).mean() < 1e-3, (diff > 3).mean()


def assert_frames_differ(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    """Negative control: `assert_frames_close` does tell these frames apart."""
    with pytest.raises(AssertionError):
        assert_frames_close(got, want)


def test_video_stream_equals_batch(pipe: Pipeline, src: PreparedSource, data: dict[str, Path]) -> None:
    strength = (1.0, 0.7, 1.3)
    clip = str(data["clip"])
    want = list(pipe.frames(src, pipe.drive(src, mouth=clip, pose=clip, expression=clip), strength))
    stream = Stream(pipe, src, mouth="driver", pose="driver", expression="driver", strength=strength)
    got = []
    for frame in read_frames(clip):
        out = stream.push(frame)
        assert len(out) == 1  # video-driven: no lookahead, each frame comes straight back
        got += out
    assert stream.flush() == []
    assert_frames_close(got, want)
    assert got[0].shape == src.image.shape  # pasted back into the portrait
    assert len(stream.latencies) == len(got) and all(t > 0 for t in stream.latencies)
    # Negative controls: the comparison fails for the neighbouring driver frames, and for another strength.
    assert_frames_differ(got[1:], want[:-1])
    other = Stream(pipe, src, mouth="driver", pose="driver", expression="driver", strength=(1.0, 0.7, 1.0))
    assert_frames_differ([out for frame in read_frames(clip) for out in other.push(frame)], want)


def test_audio_stream_equals_batch_with_one_frame_lookahead(pipe: Pipeline, src: PreparedSource,
                                                            data: dict[str, Path]) -> None:
    from fixtalk.audio import load_audio

    wav = load_audio(data["speech"])
    drive = pipe.drive(src, mouth="audio", audio=data["speech"], pose="source", expression="happy")
    want = list(pipe.frames(src, drive))
    stream = Stream(pipe, src, mouth="audio", pose="source", expression="happy")
    rng = np.random.default_rng(1)
    got: list[np.ndarray] = []
    pos = 0
    while pos < len(wav):  # ragged chunks, as a microphone delivers them
        chunk = wav[pos:pos + int(rng.integers(1, 1500))]
        pos += len(chunk)
        got += stream.push(audio=chunk)
        complete = pos // SAMPLES_PER_FRAME
        # Causal with a fixed delay: frame i is out exactly when its mel window and frame i + 1's are in.
        assert len(got) == sum(audio_frames_needed(i) <= complete for i in range(complete))
    assert [audio_frames_needed(i) for i in (0, 1, 10)] == [5, 6, 15]  # 160 ms after the frame's own audio
    got += stream.flush()
    assert len(got) == drive.frames == len(wav) // SAMPLES_PER_FRAME
    assert_frames_close(got, want)
    # Negative controls: one frame early or late, or another expression, would be caught.
    assert_frames_differ(got[1:], want[:-1])
    sad = Stream(pipe, src, mouth="audio", pose="source", expression="sad")
    assert_frames_differ(sad.push(audio=wav) + sad.flush(), want)


def test_frames_rendered_side_by_side_equal_one_at_a_time(pipe: Pipeline, src: PreparedSource,
                                                          data: dict[str, Path]) -> None:
    """workers=2 (fixtalk.frame_pool) gives the same frames, in the same order, as workers=1."""
    from fixtalk.audio import load_audio

    frames = read_frames(data["clip"])
    wav = load_audio(data["speech"])
    runs = []
    for workers in (1, 2):
        stream = Stream(pipe, src, mouth="audio", pose="driver", expression="driver", workers=workers)
        got: list[np.ndarray] = []
        for i, frame in enumerate(frames):
            got += stream.push(frame, wav[i * SAMPLES_PER_FRAME:(i + 1) * SAMPLES_PER_FRAME])
        got += stream.flush()
        assert len(stream.latencies) == len(got) == len(frames)
        runs.append(got)
    np.testing.assert_array_equal(np.stack(runs[1]), np.stack(runs[0]))
    assert_frames_differ(runs[1][1:], runs[0][:-1])  # negative control: order matters


def test_batch_frames_rendered_side_by_side_equal_one_at_a_time(pipe: Pipeline, src: PreparedSource,
                                                                data: dict[str, Path]) -> None:
    clip = str(data["clip"])
    drive = pipe.drive(src, mouth=clip, pose=clip, expression=clip)
    runs = []
    for workers in (1, 3):
        pipe.runtime.workers = workers
        try:
            runs.append(np.stack(list(pipe.frames(src, drive))))
        finally:
            pipe.runtime.workers = 1
    np.testing.assert_array_equal(runs[1], runs[0])
    assert len(runs[0]) == drive.frames and not np.array_equal(runs[0][1:], runs[0][:-1])


def test_audio_mouth_with_shorter_driver_pingpongs_like_batch(pipe: Pipeline, src: PreparedSource,
                                                              data: dict[str, Path]) -> None:
    from fixtalk.audio import load_audio

    clip = str(data["clip"])
    wav = load_audio(data["speech"])  # 15 frames of audio, 12 of video: the pose plays back and forth
    drive = pipe.drive(src, mouth="audio", audio=data["speech"], pose=clip, expression="source")
    want = list(pipe.frames(src, drive))
    stream = Stream(pipe, src, mouth="audio", pose="driver", expression="source")
    got: list[np.ndarray] = []
    for i, frame in enumerate(read_frames(clip)):
        got += stream.push(frame, wav[i * SAMPLES_PER_FRAME:(i + 1) * SAMPLES_PER_FRAME])
    got += stream.push(audio=wav[12 * SAMPLES_PER_FRAME:])
    got += stream.flush()
    assert_frames_close(got, want)


def test_frames_before_the_first_face_hold_the_portrait(pipe: Pipeline, src: PreparedSource,
                                                        data: dict[str, Path]) -> None:
    blank = np.full((256, 256, 3), 127, np.uint8)
    held = Stream(pipe, src, strength=(0, 0, 0))  # strength 0 = the portrait's own motion
    first = read_frames(data["clip"], 1)[0]
    want = held.push(first)[0]
    stream = Stream(pipe, src)
    np.testing.assert_array_equal(stream.push(blank)[0], want)
    assert len(stream.push(first)) == 1


def test_bad_settings_are_input_errors(pipe: Pipeline, src: PreparedSource) -> None:
    with pytest.raises(InputError, match="mouth only"):
        Stream(pipe, src, pose="audio")
    with pytest.raises(InputError, match="nothing drives"):
        Stream(pipe, src, mouth="source", pose="source", expression="happy")
    with pytest.raises(InputError, match="expression source 'cheerful'"):
        Stream(pipe, src, expression="cheerful")
    stream = Stream(pipe, src)
    with pytest.raises(ValueError, match="not set to 'audio'"):
        stream.push(audio=np.zeros(640, np.float32))
    stream.flush()
    with pytest.raises(RuntimeError, match="flushed"):
        stream.push(np.zeros((8, 8, 3), np.uint8))


def test_live_cli_prints_latency_and_writes_video(data: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from fixtalk.cli import main

    out = tmp_path / "live.mp4"
    rc = main(["live", "--source", str(FACES / PORTRAIT), "--driving", str(data["clip"]), "--checkpoint",
               str(data["ckpt"]), "--output", str(out), "--max-frames", "8", "--expression", "sad", "--parallel", "2"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert printed.count(" latency ") == 8
    assert "latency per frame: median" in printed and "p95" in printed
    assert "2 frames at once" in printed.splitlines()[0]
    info = probe(out)
    assert (info.frames, info.codec, info.width) == (8, "h264", 256)


def test_live_cli_errors_are_one_line(data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from fixtalk.cli import main

    rc = main(["live", "--source", str(FACES / PORTRAIT), "--driving", "97", "--checkpoint", str(data["ckpt"])])
    assert rc == 2
    assert "camera 97: cannot be opened" in capsys.readouterr().err
