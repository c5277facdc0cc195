"""The model shipped inside the package (issue #4): present, complete, small, documented, and the default.

`fixtalk animate` without `--checkpoint` must work on a fresh clone, so these tests use no fixture
checkpoint: they load fixtalk/assets/model exactly as a user's first command does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import FACES, needs_dlib, needs_faces

from fixtalk.checkpoint import EMOTIONS, load_bundle
from fixtalk.cli import main
from fixtalk.io import probe
from fixtalk.pipeline import SHIPPED

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shipped_checkpoint_is_complete_and_small() -> None:
    bundle = load_bundle(SHIPPED)  # verifies the sha256 of every weight file
    cfg = bundle.model.cfg
    assert cfg.use_emi and cfg.use_edi and cfg.has_expression, "the shipped model is a full FixTalk"
    assert bundle.audio2lip is not None, "audio-driven mouths need the shipped Audio2Lip"
    assert sorted(bundle.expression_presets) == sorted(EMOTIONS)
    for name, w in bundle.expression_presets.items():
        assert w.shape == (1, cfg.exp_dim) and np.isfinite(w).all(), name
    # the presets differ from each other (the mean of different clips), so --expression picks something
    vecs = np.stack([w.ravel() for w in bundle.expression_presets.values()])
    assert np.linalg.norm(vecs - vecs.mean(0), axis=1).min() > 1e-4
    size = sum(f.stat().st_size for f in SHIPPED.iterdir() if f.is_file())
    assert size <= 50e6, f"shipped model is {size / 1e6:.1f} MB (> 50 MB)"


def test_model_card_states_provenance() -> None:
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    for needed in ("research", "held out", "PSNR", "SSIM", "CSIM", "wall", "steps"):
        assert needed.lower() in card.lower(), needed
    meta = json.loads((SHIPPED / "config.json").read_text())
    assert meta["model"]["name"] in card


@needs_faces
@needs_dlib
def test_readme_demo_runs_on_the_shipped_model(tmp_path: Path) -> None:
    """The README's demo command (audio mouth, happy preset, source pose) on a 1.2 s cut of the speech."""
    audio, sr = sf.read(FACES / "audio/edtalk__mouth_source.wav")
    sf.write(tmp_path / "speech.wav", audio[: int(1.2 * sr)], sr)
    out = tmp_path / "demo.mp4"
    rc = main(["animate", "--source", str(FACES / "images/edtalk__identity_source.jpg"),
               "--audio", str(tmp_path / "speech.wav"), "--expression", "happy", "--pose", "source",
               "--output", str(out)])
    assert rc == 0
    info = probe(out)
    assert info.frames == 30 and info.codec == "h264" and abs(info.audio_duration - 1.2) < 0.1


@needs_faces
def test_shipped_mouth_opens_with_speech() -> None:
    """The shipped Audio2Lip has a fitted loudness mouth (docs/quality.md), so on the demo speech its mouth
    weights move along the opening direction with the waveform's own loudness, and stay in the reach."""
    from fixtalk.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(progress=False)
    a2l = pipe.audio2lip
    assert a2l is not None and a2l.loudness is not None and float(a2l.loudness.gain) > 0
    lip, wav = pipe.audio_lip(FACES / "audio/edtalk__mouth_source.wav", max_frames=150)
    opening = (lip.float() @ a2l.loudness.direction.float()).numpy()
    frames = wav[: len(lip) * 640].astype(np.float64).reshape(len(lip), 640)
    loudness = 20 * np.log10(np.sqrt((frames ** 2).mean(1)) + 1e-4)
    assert np.corrcoef(opening, loudness)[0, 1] > 0.5
    assert np.ptp(opening) <= 1.5 * float(a2l.loudness.gain) + 0.2  # gain plus what Audio2Lip itself moves
