"""fixtalk.driving: factor specs parsed once (kinds and one-line errors), the model's own motion prediction
through the Runtime, and the one strength mix. No faces or media needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fixtalk.config import EMOTIONS, ModelConfig
from fixtalk.driving import (
    audio_mouth,
    choices,
    emotion_expression,
    mix,
    mix_motion,
    parse_factor,
    parse_factors,
    predict_weights,
    require_audio,
)
from fixtalk.errors import InputError
from fixtalk.models.fdm import Motion
from fixtalk.runtime import Runtime


def test_kinds(tmp_path: Path) -> None:
    clip, npy = tmp_path / "clip.mp4", tmp_path / "smile.npy"
    clip.write_bytes(b"x")
    np.save(npy, np.zeros((1, 10), np.float32))
    assert parse_factor("source", "pose").kind == "source"
    assert parse_factor("audio", "lip").kind == "audio"
    assert (parse_factor("Happy", "exp").kind, parse_factor("Happy", "exp").value) == ("emotion", "happy")
    assert parse_factor(str(clip), "lip").kind == "video" and parse_factor(str(clip), "lip").label == "clip.mp4"
    assert parse_factor(str(npy), "exp").kind == "npy"
    assert parse_factor(str(npy), "pose").kind == "video"  # only the expression reads EDTalk weights
    assert parse_factor("driver", "pose", stream=True).kind == "driver"
    specs = parse_factors("audio", str(clip), None)
    assert [s.kind for s in specs.values()] == ["audio", "video", "source"]


@pytest.mark.parametrize(("spec", "factor", "stream", "message"), [
    ("audio", "pose", False, "'audio' can drive the mouth only, not the pose"),
    ("audio", "exp", True, "'audio' can drive the mouth only, not the expression"),
    ("happy", "pose", False, "file not found (the pose takes a video or image path, 'source')"),
    ("joyful", "exp", False, "unknown expression 'joyful'"),
    ("nope.mp4", "lip", False, "file not found (the mouth takes a video or image path, 'source', 'audio')"),
    ("cheerful", "exp", True, "expression source 'cheerful': expected 'driver', 'source' or an emotion"),
    ("clip.mp4", "lip", True, "mouth source 'clip.mp4': expected 'driver', 'source', 'audio'"),
])
def test_errors_are_one_line(spec: str, factor: str, stream: bool, message: str) -> None:
    with pytest.raises(InputError) as err:
        parse_factor(spec, factor, stream)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_directory_and_audio_check(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        parse_factor(str(tmp_path), "lip")
    with pytest.raises(InputError, match="--mouth audio needs --audio FILE"):
        require_audio("audio", None)
    require_audio("audio", "speech.wav")
    require_audio(str(tmp_path), None)  # a video mouth needs no audio file


def test_mix() -> None:
    own, driven = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 2.0]])
    assert torch.equal(mix(own, driven, 0.0), own)
    assert torch.equal(mix(own, driven, 1.0), driven)
    assert torch.equal(mix(own, driven, 2.0), torch.tensor([[5.0, 6.0]]))  # exaggerates away from own
    m = mix_motion(Motion(own, own, None), Motion(driven, driven, driven), (0.0, 1.0, 1.0))
    assert torch.equal(m.lip, own) and torch.equal(m.pose, driven) and m.exp is None


def test_predict_weights_is_the_models_own_prediction() -> None:
    torch.manual_seed(0)
    calls = []

    class Model:
        def predict_motion(self, lip: torch.Tensor, pose: torch.Tensor, exp: torch.Tensor) -> Motion:
            calls.append(lip.shape[0])
            return Motion(lip[:, :2] * 2, pose[:, 2:3], exp[:, :1] - 1)

    feats = torch.randn(300, 4)
    w = predict_weights(Runtime("cpu"), Model(), feats, ["lip", "exp"])
    assert calls == [256, 44]  # chunked: bounded memory on long drivers
    assert sorted(w) == ["exp", "lip"]
    torch.testing.assert_close(w["lip"], feats[:, :2] * 2)
    torch.testing.assert_close(w["exp"], feats[:, :1] - 1)


def test_choices() -> None:
    cfg = ModelConfig()  # EDTalk's: decoupled, with an expression
    got = choices(cfg, has_audio2lip=True, presets=["sad", "happy"])
    assert got["lip"] == ["video", "audio", "source"] and got["pose"] == ["video", "source"]
    assert got["exp"] == ["video", "source", *[e for e in EMOTIONS if e in ("sad", "happy")]]
    assert "audio" not in choices(None, has_audio2lip=False, presets=[])["lip"]


def test_audio_mouth_relative_puts_the_change_on_the_portrait() -> None:
    """ModelConfig.relative_to_speaker: Audio2Lip's output and a preset are added to the portrait's own weights;
    EDTalk's (absolute) are used as they are."""
    pred, own = torch.randn(7, 20), torch.randn(1, 20)
    rel, ab = ModelConfig(relative_to_speaker=True), ModelConfig()
    for fn in (audio_mouth, emotion_expression):
        torch.testing.assert_close(fn(rel, pred, own), pred + own)
        torch.testing.assert_close(fn(ab, pred, own), pred)
        assert not torch.allclose(fn(rel, pred, own), fn(ab, pred, own))
