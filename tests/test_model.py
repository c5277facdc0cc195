"""The assembled model: banks, shapes at 512, gradients into EMI/EDI, checkpoints, conversion, info."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtalk import losses
from fixtalk.checkpoint import Bundle, convert_edtalk, load_bundle, load_expression_npy, save_bundle
from fixtalk.config import EDIConfig, EMIConfig, ModelConfig, get_preset
from fixtalk.errors import InputError
from fixtalk.models.audio2lip import Audio2Lip
from fixtalk.models.fixtalk import FixTalk

TINY = ModelConfig(name="tiny", size=64, style_dim=64, max_channels=32, channel_base=1024, eem_hidden=16,
                   use_emi=True, use_edi=True, emi=EMIConfig(layers=1, heads=2, queries=4, ffn_mult=2),
                   edi=EDIConfig(slots=8, decompress_channels=16, heads=2, ffn_mult=2))


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give zero-initialised layers (EMI/EDI output projections) non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


def test_banks_are_orthonormal() -> None:
    for preset in ("edtalk-256", "edtalk-256-lip-pose"):
        fdm = FixTalk(get_preset(preset)).fdm.eval()
        q = fdm.basis()
        n = fdm.lip_dim + fdm.pose_dim + fdm.exp_dim
        assert q.shape == (512, n)
        torch.testing.assert_close(q.T @ q, torch.eye(n), atol=1e-5, rtol=0)
        assert fdm.basis() is q  # cached in eval mode
    # The first 26 columns of the full model's Q equal the lip/pose-only Q (QR orthogonalises in order).
    full = FixTalk(get_preset("edtalk-256")).fdm
    lp = FixTalk(get_preset("edtalk-256-lip-pose")).fdm
    lp.direction_lipnonlip.weight.data.copy_(full.direction_lipnonlip.weight.data)
    torch.testing.assert_close(full.basis()[:, :26], lp.basis(), atol=1e-5, rtol=0)


def test_bank_cache_follows_new_weights() -> None:
    fdm = FixTalk(get_preset("edtalk-256-lip-pose")).fdm.eval()
    q0 = fdm.basis().clone()
    fdm.load_state_dict({**fdm.state_dict(), "direction_lipnonlip.weight": torch.randn(512, 26)})
    assert not torch.allclose(fdm.basis(), q0)


@torch.no_grad()
def test_fixtalk_512_shapes() -> None:
    cfg = get_preset("fixtalk-512")
    model = FixTalk(cfg).eval()
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    enc = model.encode(x)
    assert [tuple(t.shape[1:]) for t in enc.maps][:3] == [(512, 8, 8), (512, 16, 16), (512, 32, 32)]
    assert tuple(enc.maps[cfg.f4_index].shape) == (1, 512, 32, 32)
    assert tuple(enc.maps[-1].shape) == (1, 32, 512, 512) and len(enc.maps) == 7
    out = model(x, x)
    assert tuple(out.shape) == (1, 3, 512, 512) and torch.isfinite(out).all()


def test_emi_edi_parameters_get_gradients() -> None:
    """Every trainable EMI/EDI parameter gets a non-zero gradient from the FixTalk training loss."""
    torch.manual_seed(0)
    model = _randomise(FixTalk(TINY)).train()
    src, drv = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    out = model.forward_train(src, drv, use_source_address=torch.tensor([True, False]))
    assert out.edi is not None
    loss = (losses.reconstruction_l1(out.image, drv)
            + losses.disentangle_loss(out.z_s, out.z_d, xi=-1.0)  # xi < -1 keeps the hinge active
            + losses.memory_recall_loss(out.edi.f_pi_d, out.edi.f_hat_d)
            + losses.memory_align_kl(out.edi.alpha_ms, out.edi.alpha_d))
    loss.backward()
    for prefix in ("emi.", "edi."):
        named = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix)]
        assert named
        dead = [n for n, p in named if p.grad is None or float(p.grad.abs().max()) == 0.0]
        assert not dead, f"no gradient: {dead}"


def test_ablation_switches_share_one_code_path() -> None:
    base = FixTalk(TINY.replace(use_emi=False, use_edi=False))
    assert base.emi is None and base.edi is None
    full = FixTalk(TINY)
    # The baseline's weights are a subset of FixTalk's: same names, same shapes.
    fs = full.state_dict()
    assert all(k in fs and fs[k].shape == v.shape for k, v in base.state_dict().items())


@torch.no_grad()
def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _randomise(FixTalk(TINY)).eval()
    a2l = Audio2Lip(TINY.lip_dim).eval()
    presets = {"happy": np.arange(10, dtype=np.float32).reshape(1, 10)}
    save_bundle(Bundle(model, a2l, presets), tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "audio2lip.safetensors", "config.json", "model.safetensors"]
    loaded = load_bundle(tmp_path / "ckpt")
    assert loaded.model.cfg == TINY
    x, y = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.equal(model(x, y), loaded.model(x, y))
    mel = torch.randn(2, 1, 80, 16)
    assert torch.equal(a2l(mel), loaded.audio2lip(mel))
    np.testing.assert_array_equal(loaded.expression_presets["happy"], presets["happy"])
    # Saving again over an existing checkpoint replaces it atomically.
    save_bundle(Bundle(model), tmp_path / "ckpt")
    assert load_bundle(tmp_path / "ckpt").audio2lip is None


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    save_bundle(Bundle(FixTalk(TINY.replace(use_emi=False, use_edi=False))), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum mismatch"):
        load_bundle(tmp_path / "ckpt")
    # A config whose architecture does not match the weights is refused too.
    save_bundle(Bundle(FixTalk(TINY.replace(use_emi=False, use_edi=False))), tmp_path / "c2")
    meta = json.loads((tmp_path / "c2" / "config.json").read_text())
    meta["model"]["exp_dim"] = 0
    (tmp_path / "c2" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="do not match"):
        load_bundle(tmp_path / "c2")


class _Evil:
    def __reduce__(self):  # pragma: no cover - must never run
        return (print, ("pickle code executed",))


def test_pickle_only_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "EDTalk.pt"
    torch.save({"gen": {"x": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(InputError, match="refused"):
        convert_edtalk(path)
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump({"gen": _Evil()}, f)
    with pytest.raises(InputError, match="refused"):
        convert_edtalk(tmp_path / "raw.pt")
    with pytest.raises(InputError, match="legacy .pt"):
        load_bundle(path)


def test_convert_edtalk_lip_pose_and_audio2lip(tmp_path: Path) -> None:
    """An official-layout file converts through the CLI and renders like the in-memory model."""
    ref = _randomise(FixTalk(get_preset("edtalk-256-lip-pose"))).eval()
    official = {k[4:] if k.startswith("fdm.") else k: v for k, v in ref.state_dict().items()}
    torch.save({"gen": official}, tmp_path / "EDTalk_lip_pose.pt")
    a2l = Audio2Lip().eval()
    torch.save({"audio2lip": a2l.state_dict()}, tmp_path / "Audio2Lip.pt")
    np.save(tmp_path / "happy.npy", np.ones((1, 10), np.float32))
    out = tmp_path / "converted"
    cli = [sys.executable, "-m", "fixtalk.cli", "convert-edtalk"]
    r = subprocess.run([*cli, str(tmp_path / "EDTalk_lip_pose.pt"), str(out), "--expressions", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cli, str(tmp_path / "Audio2Lip.pt"), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bundle = load_bundle(out)
    assert bundle.model.cfg.name == "edtalk-256-lip-pose" and bundle.audio2lip is not None
    assert set(bundle.expression_presets) == {"happy"}
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        assert torch.equal(bundle.model(x, x), ref(x, x))
    # A file with a wrong shape is refused, naming the first mismatch.
    official["pose_fc.2.weight"] = torch.zeros(7, 512)
    torch.save({"gen": official}, tmp_path / "bad.pt")
    r = subprocess.run([*cli, str(tmp_path / "bad.pt"), str(tmp_path / "o2")], capture_output=True, text=True)
    assert r.returncode == 2 and "pose_fc.2.weight" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "o2").exists()


def test_expression_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "ok.npy", np.zeros((1, 10), np.float32))
    assert load_expression_npy(tmp_path / "ok.npy").shape == (1, 10)
    np.save(tmp_path / "bad.npy", np.zeros((3,), np.float32))
    with pytest.raises(InputError, match="expected 10"):
        load_expression_npy(tmp_path / "bad.npy")


def test_info_counts() -> None:
    r = subprocess.run([sys.executable, "-m", "fixtalk.cli", "info", "edtalk-256-lip-pose", "--no-macs"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "46,173,571" in r.stdout and "2,827,361" in r.stdout
    from fixtalk.info import count_values

    assert count_values(FixTalk(get_preset("edtalk-256"))) == 64_228_877
    r = subprocess.run([sys.executable, "-m", "fixtalk.cli", "info", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown preset" in r.stderr


def test_small_preset_fits_budget() -> None:
    from fixtalk.info import count_values

    model = FixTalk(get_preset("fixtalk-small"))
    assert 2 * (count_values(model) + count_values(Audio2Lip())) < 50 * 2**20  # <= 50 MB in fp16


# ----------------------------------------------------------------------------------------------- pixel path

def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / (a.clamp(-1, 1) - b).pow(2).mean()))


@torch.no_grad()
def test_rgb_warp_untrained_returns_the_source() -> None:
    torch.manual_seed(0)
    src, drv = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    warp = FixTalk(TINY.replace(rgb_warp=True)).eval()
    assert _psnr(warp(src, drv), src) > 30  # zero flow, mask sigmoid(4): the copy-the-source baseline
    held = warp.prepare_source(src)
    assert _psnr(warp.render(held, held.motion), src) > 30  # holding the source's own motion
    plain = FixTalk(TINY).eval()
    assert _psnr(plain(src, drv), src) < 15  # negative control: without the pixel path G draws from scratch
    out = warp.forward_train(src, drv)
    assert out.grid is not None and out.grid.shape == (2, 64, 64, 2)
    # The pixel path is absent (not merely unused) without the switch: paper layouts keep their exact keys.
    assert not any("pixel_warp" in k for k in plain.state_dict())
    assert any("pixel_warp" in k for k in warp.state_dict())
    assert not any(get_preset(n).rgb_warp for n in ("edtalk-256", "edtalk-256-lip-pose", "fixtalk-256", "fixtalk-512"))
    assert get_preset("fixtalk-small").rgb_warp


def test_rgb_warp_flow_and_mask_learn() -> None:
    """The zero-initialised head gets gradients from the image loss, and a landmark term moves its flow."""
    torch.manual_seed(0)
    model = FixTalk(TINY.replace(rgb_warp=True))
    src, drv = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    out = model.forward_train(src, drv)
    lm_d = torch.rand(2, 68, 2) * 50 + 5
    loss = losses.reconstruction_l1(out.image, drv) + losses.landmark_flow_loss(out.grid, lm_d, lm_d + 2.0)
    loss.backward()
    head = model.dec.pixel_warp
    for p in (head.fields.weight, head.fields.bias, head.mask.weight, head.mask_bias):
        assert p.grad is not None and float(p.grad.abs().max()) > 0


@torch.no_grad()
def test_rgb_warp_inference_matches_training_path() -> None:
    model = _randomise(FixTalk(TINY.replace(rgb_warp=True))).eval()
    src, drv = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    a = model(src, drv)
    b = model.forward_train(src, drv, use_source_address=True).image
    assert torch.allclose(a, b, atol=1e-4)


@torch.no_grad()
def test_rgb_warp_renders_at_the_source_images_size() -> None:
    """A source image larger than S (the render size) comes out at its size, with its own detail: an untrained
    model returns the large image itself, and G's part is the S-size render upsampled."""
    torch.manual_seed(0)
    model = _randomise(FixTalk(TINY.replace(rgb_warp=True))).eval()
    src = torch.rand(1, 3, 64, 64) * 2 - 1
    large = torch.nn.functional.interpolate(src, size=(128, 128), mode="bicubic", align_corners=False)
    large = large + 0.2 * torch.randn_like(large)  # detail the 64 px crop does not have
    drv = model.driving_features(torch.rand(2, 3, 64, 64) * 2 - 1)
    motion = model.predict_motion(drv, drv, drv)
    small, big = model.prepare_source(src), model.prepare_source(src, large)
    assert torch.equal(big.latent, small.latent)  # the encoder still sees the S crop
    out_small, out_big = model.render(small, motion), model.render(big, motion)
    assert out_small.shape[-1] == 64 and out_big.shape[-1] == 128
    # Where the mask keeps G's pixels, the large render is the small one upsampled: down again, they agree
    # up to the warped source's own detail.
    down = torch.nn.functional.interpolate(out_big, size=(64, 64), mode="area")
    assert _psnr(down, out_small) > 18  # 21.1 dB; unrelated images score ~9
    untrained = FixTalk(TINY.replace(rgb_warp=True)).eval()
    held = untrained.prepare_source(src, large)
    assert _psnr(untrained.render(held, held.motion), large.clamp(-1, 1)) > 30


def test_render_size_choice() -> None:
    """Pipeline.render_size: 2 S by default with the pixel path, S without it; above S only with the pixel path."""
    from fixtalk.checkpoint import Bundle
    from fixtalk.errors import InputError
    from fixtalk.pipeline import Pipeline

    warp, plain = Bundle(FixTalk(TINY.replace(rgb_warp=True))), Bundle(FixTalk(TINY))
    assert Pipeline(warp, progress=False).render_size == 128
    assert Pipeline(warp, progress=False, render_size=64).render_size == 64
    assert Pipeline(plain, progress=False).render_size == 64
    with pytest.raises(InputError, match="needs a model with the pixel path"):
        Pipeline(plain, progress=False, render_size=128)
    with pytest.raises(InputError, match="at least the model's size 64"):
        Pipeline(warp, progress=False, render_size=32)
