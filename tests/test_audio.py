"""Audio loading, Audio2Lip layout and smoothing (the numeric parity lives in test_edtalk_parity.py)."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from fixtalk.audio import load_audio
from fixtalk.errors import InputError
from fixtalk.models.audio2lip import Audio2Lip, smooth_lip_weights

CKPT = "Audio2Lip.pt:audio2lip"
FRAMES = [0, 10, 50]


def test_audio2lip_size() -> None:
    model = Audio2Lip()
    n_params = sum(p.numel() for p in model.parameters())
    n_state = sum(t.numel() for t in model.state_dict().values())
    assert (n_params, n_state, len(model.state_dict())) == (2_822_932, 2_827_361, 93)


def test_smooth_lip_weights_kernel() -> None:
    impulse = torch.zeros(5, 20)
    impulse[2] = 1.0
    out = smooth_lip_weights(impulse)
    torch.testing.assert_close(out[1:4, 0], torch.tensor([0.274069, 0.451863, 0.274069]), atol=1e-6, rtol=0)
    assert float(out[1:4].sum(0).sub(1).abs().max()) < 1e-6  # normalised
    ones = smooth_lip_weights(torch.ones(4, 20))  # zero padding: the end frames lose one side tap
    torch.testing.assert_close(ones[:, 3], torch.tensor([0.725931, 1.0, 1.0, 0.725931]), atol=1e-6, rtol=0)


def test_stereo_44k_matches_librosa(tmp_path) -> None:
    t = np.arange(int(44100 * 0.5)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo.astype(np.float32), 44100, subtype="PCM_16")
    y = load_audio(path)
    ref, sr = librosa.load(path, sr=16000)
    assert y.dtype == np.float32 and y.ndim == 1 and sr == 16000
    np.testing.assert_array_equal(y, ref)


def test_video_container_audio_track(tmp_path) -> None:
    # m4a (AAC) is not readable by libsndfile: exercises the PyAV branch; stereo 44.1 kHz in, 16 kHz mono out.
    av = pytest.importorskip("av")
    path = tmp_path / "tone.m4a"
    sr_in, n = 44100, 44100 // 2
    tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(n) / sr_in)).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=sr_in, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = sr_in
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - n * 16000 / sr_in) < 0.1 * 16000  # codec priming/padding adds a few ms at most
    assert 0.15 < float(np.sqrt(np.mean(y[2000:-2000] ** 2))) < 0.25  # the tone survived (RMS 0.212)


@pytest.mark.parametrize("case", ["missing", "not_audio", "empty"])
def test_bad_inputs_raise_input_error(tmp_path, case: str) -> None:
    path = tmp_path / {"missing": "nope.wav", "not_audio": "notes.wav", "empty": "silence.wav"}[case]
    if case == "not_audio":
        path.write_text("this is not audio\n" * 50)
    elif case == "empty":
        sf.write(path, np.zeros((0,), dtype=np.float32), 16000)
    with pytest.raises(InputError) as info:
        load_audio(path)
    assert info.value.path == str(path) and str(path) in str(info.value)
    assert "\n" not in str(info.value)
