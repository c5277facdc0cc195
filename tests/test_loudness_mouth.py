"""The loudness mouth (fixtalk.models.loudness_mouth) and its fit (fixtalk.train.loudness_fit): silence adds
nothing, loud speech adds the gain along the direction, Audio2Lip's learned part is untouched, the buffers
survive a checkpoint, the fit finds a planted opening direction and caps the gain, and the audio2lip stage
ends with a fit (or says why there is none)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import make_synthetic_data, write_tiny_cfg

from fixtalk.checkpoint import Bundle, load_bundle, save_bundle
from fixtalk.config import get_preset
from fixtalk.metrics.landmarks import mouth_opening
from fixtalk.models.audio2lip import Audio2Lip
from fixtalk.models.fixtalk import FixTalk
from fixtalk.models.loudness_mouth import LoudnessMouth
from fixtalk.train import loudness_fit
from fixtalk.train.clipstore import read_clips
from fixtalk.train.loop import train
from fixtalk.train.options import TrainOptions


def _mel(level: float, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, 1, 80, 16), level)


def _fitted(gain: float = 0.5) -> LoudnessMouth:
    m = LoudnessMouth(4)
    m.set(torch.tensor([3.0, 0.0, 4.0, 0.0]), quiet=-3.0, loud=-1.0, gain=gain)
    return m


def test_silence_adds_nothing_and_loud_speech_the_gain() -> None:
    m = _fitted()
    assert torch.allclose(m.direction, torch.tensor([0.6, 0.0, 0.8, 0.0]))      # stored unit length
    assert torch.equal(m(_mel(-4.0)), torch.zeros(1, 4))                          # below quiet
    assert torch.allclose(m(_mel(0.0)), 0.5 * m.direction[None])                  # above loud: the gain
    assert torch.allclose(m(_mel(-2.0)), 0.25 * m.direction[None])               # half way
    # the level is read from the window's late frames only (the mouth leads its sound)
    early_loud = _mel(-4.0)
    early_loud[..., :8] = 0.0
    assert torch.equal(m(early_loud), torch.zeros(1, 4))
    assert LoudnessMouth(4)(_mel(0.0)).abs().sum() == 0                          # unfitted: zero gain
    centred = LoudnessMouth(4)
    centred.set(torch.tensor([3.0, 0.0, 4.0, 0.0]), quiet=-3.0, loud=-1.0, gain=0.5, center=0.4)
    assert torch.allclose(centred(_mel(-4.0)), -0.2 * m.direction[None])         # silence closes a little
    assert torch.allclose(centred(_mel(0.0)), 0.3 * m.direction[None])
    with pytest.raises(ValueError, match="above the quiet"):
        LoudnessMouth(4).set(torch.ones(4), quiet=-1.0, loud=-1.0, gain=1.0)


def test_audio2lip_adds_the_offset_to_its_learned_output() -> None:
    torch.manual_seed(0)
    plain, loud = Audio2Lip(4).eval(), Audio2Lip(4, loudness=True).eval()
    loud.load_state_dict(plain.state_dict(), strict=False)
    assert set(plain.state_dict()) == {k for k in loud.state_dict() if not k.startswith("loudness.")}
    assert loud.loudness is not None
    loud.loudness.set(torch.tensor([1.0, 0.0, 0.0, 0.0]), quiet=-3.0, loud=-1.0, gain=0.3)
    mel = torch.randn(2, 5, 1, 80, 16)
    mel[0, :, :, :, 8:] = 1.0                                                     # loud late frames
    with torch.no_grad():
        assert torch.equal(plain(mel), loud.learned(mel)) and torch.equal(plain(mel), plain.learned(mel))
        diff = loud(mel) - loud.learned(mel)
    assert torch.allclose(diff[0], torch.tensor([0.3, 0.0, 0.0, 0.0]).expand(5, 4))


def test_checkpoint_keeps_the_fit(tmp_path: Path) -> None:
    cfg = get_preset("fixtalk-small").replace(size=64, style_dim=64, max_channels=32, channel_base=1024,
                                               use_emi=False, use_edi=False)
    a2l = Audio2Lip(cfg.lip_dim, loudness=True)
    assert a2l.loudness is not None
    a2l.loudness.set(torch.arange(cfg.lip_dim).float(), quiet=-3.5, loud=-0.5, gain=0.2)
    save_bundle(Bundle(FixTalk(cfg), a2l), tmp_path / "ck")
    back = load_bundle(tmp_path / "ck").audio2lip
    assert back is not None and back.loudness is not None
    for k, v in a2l.loudness.state_dict().items():
        assert torch.equal(back.loudness.state_dict()[k], v), k
    save_bundle(Bundle(FixTalk(cfg), Audio2Lip(cfg.lip_dim)), tmp_path / "plain")  # EDTalk's: none
    plain = load_bundle(tmp_path / "plain").audio2lip
    assert plain is not None and plain.loudness is None


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_data(tmp_path_factory.mktemp("data"), [
        ("p1_talk", "p1", "", True), ("p2_talk", "p2", "", True), ("p3_talk", "p3", "", True)])


def _planted(data: Path, lip_dim: int = 20) -> tuple[list, dict[str, np.ndarray], np.ndarray]:
    """Mouth weights that move along a known direction with the landmarks' opening, plus noise."""
    clips = read_clips(data, "train")[0]
    rng = np.random.default_rng(1)
    true = rng.normal(size=lip_dim)
    true /= np.linalg.norm(true)
    targets = {}
    for c in clips:
        lms = np.load(c.npz)["landmarks"]
        o = np.array([mouth_opening(lm) if np.isfinite(lm).all() else 0.0 for lm in lms])
        targets[c.name] = (o[:, None] * true * 2 + rng.normal(0, 0.01, (len(o), lip_dim)) + rng.normal(size=lip_dim)
                           ).astype(np.float32)
    return clips, targets, true


def test_fit_finds_the_planted_direction_and_caps_the_gain(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clips, targets, true = _planted(data)
    st = loudness_fit.statistics(clips, targets)
    assert float(st.direction @ true) > 0.99 and st.loud > st.quiet and st.swing > 0 and st.reach > 0
    assert 0 < st.center < 1
    assert st.frames == sum(c.frames - 1 for c in clips)                 # the frame without a face is left out
    swing, reach = st.swing, st.reach
    model = FixTalk(get_preset("fixtalk-small").replace(size=64, style_dim=64, max_channels=32,
                                                         channel_base=1024, use_emi=False, use_edi=False))
    device = torch.device("cpu")
    for slope, n, expect in ((swing / (reach / 2), 8, reach / 2), (swing / (reach * 10), 8, reach)):
        monkeypatch.setattr(loudness_fit, "rendered_slope", lambda *a, s=slope, k=n, **kw: (s, k))
        fit = loudness_fit.fit(model, clips, targets, 64, device)
        assert isinstance(fit, loudness_fit.LoudnessFit) and fit.gain == pytest.approx(expect)
        module = LoudnessMouth(20)
        fit.apply(module)
        assert float(module.gain) == pytest.approx(expect) and float(module.center) == pytest.approx(st.center)
    monkeypatch.setattr(loudness_fit, "rendered_slope", lambda *a, **kw: (-0.1, 8))
    assert "does not open" in str(loudness_fit.fit(model, clips, targets, 64, device))
    monkeypatch.setattr(loudness_fit, "rendered_slope", lambda *a, **kw: (float("nan"), 0))
    assert "no face" in str(loudness_fit.fit(model, clips, targets, 64, device))


def test_audio2lip_stage_ends_with_a_fit_or_says_why(data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_tiny_cfg(tmp_path)
    run = tmp_path / "run"
    opts = TrainOptions(stage="audio2lip", data=str(data), out=str(run), preset=str(cfg), max_steps=1, batch=2,
                        workers=0, save_every=1, log_every=1, sample_every=2, image_losses=False)
    assert train(opts) == 0
    a2l = load_bundle(run / "final").audio2lip
    assert a2l is not None and a2l.loudness is not None
    out = capsys.readouterr().out
    fitted = re.search(r"fixtalk train: loudness mouth: gain ([0-9.]+)", out)
    if fitted is None:  # dlib found no face in the tiny generator's cartoon renders: the module stays silent
        assert "fixtalk train: no loudness mouth: " in out and float(a2l.loudness.gain) == 0.0
    else:               # the exported module holds the printed fit
        assert float(a2l.loudness.gain) == pytest.approx(float(fitted.group(1)), abs=1e-3)
        assert float(a2l.loudness.gain) > 0
        assert float(a2l.loudness.direction.norm()) == pytest.approx(1.0)
