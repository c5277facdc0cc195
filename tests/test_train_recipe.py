"""The optional recipe parts of issue #10 (fixtalk/train/recipe.py): EMA of G (train/ema.py), the Projected GAN
discriminator (models/projected_discriminator.py) and lazy R1, as units and through 2-step training runs on the
tiny synthetic data of test_train.py. (R1's formula itself: tests/test_losses.py.)"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from test_train import SIZE, make_synthetic_data, write_tiny_cfg
from torch import nn

from fixtalk.checkpoint import load_bundle
from fixtalk.errors import InputError
from fixtalk.models.backbones import MobileNetV2Features
from fixtalk.models.projected_discriminator import ProjectedDiscriminator
from fixtalk.train.ema import Ema
from fixtalk.train.loop import train
from fixtalk.train.options import TrainOptions, parse_loss_weights
from fixtalk.train.recipe import d_parameters, r1_scale

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread on the shared cores


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_data(tmp_path_factory.mktemp("data"), [
        ("p1_neutral", "p1", "neutral", False), ("p1_angry", "p1", "angry", True), ("p2_talk", "p2", "", True)])


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cfg(tmp_path_factory.mktemp("cfg"))


def _opts(data: Path, out: Path, cfg: Path, **kw: object) -> TrainOptions:
    base: dict = dict(stage="recon", data=str(data), out=str(out), preset=str(cfg), max_steps=2, batch=2,
                      workers=0, save_every=1, log_every=1, sample_every=100)
    return TrainOptions(**{**base, **kw})


def _ck(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


# ----------------------------------------------------------------------------------------------- EMA

class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)
        self.bn = nn.BatchNorm1d(2)


def test_ema_matches_the_closed_form() -> None:
    """k updates towards a constant target T from s0: shadow = T + (s0 - T) * 0.5 ** (k / halflife)."""
    torch.manual_seed(0)
    net = _Net()
    s0 = net.lin.weight.detach().clone()
    ema = Ema(net, halflife_steps=2.0)
    target = torch.randn(2, 3)
    with torch.no_grad():
        net.lin.weight.copy_(target)
        net.bn.running_mean.fill_(3.0)
    for _ in range(5):
        ema.update()
    want = target + (s0 - target) * 0.5 ** (5 / 2)
    torch.testing.assert_close(ema.params["lin.weight"], want)
    assert ema.updates == 5 and ema.decay == pytest.approx(2 ** -0.5)
    avg = ema.averaged()
    torch.testing.assert_close(avg.lin.weight, want)
    assert torch.equal(avg.bn.running_mean, torch.full((2,), 3.0))  # buffers copied as they are
    assert torch.equal(net.lin.weight, target)  # the live module is untouched
    assert torch.equal(avg.frozen.weight, net.frozen.weight)
    with pytest.raises(ValueError):
        Ema(net, 0)


def test_ema_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _Net()
    ema = Ema(net, 3.0)
    with torch.no_grad():
        net.lin.weight.add_(1.0)
    ema.update()
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    again = Ema(net, 3.0)  # starts from the current weights: different until loaded
    assert not torch.equal(again.params["lin.weight"], ema.params["lin.weight"])
    again.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert again.updates == 1
    for e in (ema, again):
        e.update()
    for name in ema.params:
        assert torch.equal(ema.params[name], again.params[name]), name
    with pytest.raises(ValueError, match="does not match"):
        Ema(nn.Linear(3, 2), 3.0).load_state_dict(ema.state_dict())


def test_ema_run_writes_final_from_ema_and_final_raw(data: Path, tiny_cfg: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "ema"
    opts = _opts(data, run, tiny_cfg, ema_halflife=1.0, weights=parse_loss_weights(["gan=0"]))
    assert train(opts) == 0
    out = capsys.readouterr().out
    assert "final (EMA weights)" in out and "final_raw (raw weights)" in out
    ck = _ck(run)
    assert ck["ema"]["updates"] == 2
    ema_sd = load_bundle(run / "final").model.state_dict()
    raw_sd = load_bundle(run / "final_raw").model.state_dict()
    for k, v in ck["model"].items():  # final_raw/ = the trained weights, final/ = their average
        assert torch.equal(raw_sd[k], v), k
    for k, v in ck["ema"]["params"].items():
        assert torch.equal(ema_sd[k.removeprefix("model.")], v), k
    moved = [k for k in raw_sd if raw_sd[k].is_floating_point() and not torch.equal(raw_sd[k], ema_sd[k])]
    assert moved and all(k.startswith(("enc.", "fdm.", "dec.", "emi.")) for k in moved)
    assert train(dataclasses.replace(opts, max_steps=3)) == 0  # resume continues the average
    assert _ck(run)["ema"]["updates"] == 3


def test_without_ema_no_final_raw(data: Path, tiny_cfg: Path, tmp_path: Path) -> None:
    run = tmp_path / "plain"
    assert train(_opts(data, run, tiny_cfg, max_steps=1, weights=parse_loss_weights(["gan=0"]))) == 0
    assert (run / "final").is_dir() and not (run / "final_raw").exists()
    assert "ema" not in _ck(run)


# ----------------------------------------------------------------------------------------------- projected D

def _projected(seed: int = 0) -> ProjectedDiscriminator:
    return ProjectedDiscriminator(MobileNetV2Features(), SIZE, seed=seed)  # random backbone: no file needed


def test_projected_d_shapes_gradients_and_frozen_parts() -> None:
    torch.manual_seed(0)
    d = _projected()
    x = (torch.rand(3, 3, SIZE, SIZE) * 2 - 1).requires_grad_(True)
    out = d(x)
    assert out.shape == (3, 4 * d.grid ** 2) and d.grid == SIZE // 32
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # through the frozen backbone
    assert all(p.grad is None and not p.requires_grad for p in d.backbone.parameters())
    assert all(p.grad is not None for p in d.heads.parameters())
    d.requires_grad_(False)
    assert not any(p.requires_grad for p in d.parameters())
    d.requires_grad_(True)  # what the loop does before the D step: must not unfreeze the backbone
    trained = {id(p) for p in d_parameters(d)}
    assert trained == {id(p) for p in d.heads.parameters()}
    assert not any(name.startswith("ccm") for name, _ in d.named_parameters())
    d.train()
    assert not d.backbone.training  # BatchNorm statistics of the ImageNet net stay as they are
    with pytest.raises(ValueError, match="expects"):
        d(torch.zeros(1, 3, SIZE * 2, SIZE * 2))


def test_projected_d_state_dict_and_seeded_ccm() -> None:
    torch.manual_seed(0)
    a = _projected(seed=1)
    state = a.state_dict()
    assert state and not any("backbone" in k for k in state) and "ccm0" in state
    torch.manual_seed(1)
    b = _projected(seed=2)
    assert not torch.equal(b.ccm0, a.ccm0)
    assert torch.equal(_projected(seed=1).ccm0, a.ccm0)
    b.backbone.load_state_dict(a.backbone.state_dict())
    b.load_state_dict(state)  # strict: the missing backbone keys are expected
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x))


def test_r1_scale_is_lazy() -> None:
    opts = TrainOptions(stage="recon", data="d", out="o", max_steps=1, r1=2.0, r1_every=4)
    assert [r1_scale(opts, s) for s in range(6)] == [4.0, 0.0, 0.0, 0.0, 4.0, 0.0]
    assert r1_scale(dataclasses.replace(opts, r1=0.0), 0) == 0.0
    for bad in (dict(r1=-1.0), dict(r1_every=0), dict(ema_halflife=-1.0), dict(discriminator="x")):
        with pytest.raises(InputError):
            dataclasses.replace(opts, **bad)


def test_projected_d_with_r1_trains(data: Path, tiny_cfg: Path, tmp_path: Path) -> None:
    run = tmp_path / "projected"
    opts = _opts(data, run, tiny_cfg, max_steps=1, discriminator="projected", r1=1.0, r1_every=1,
                 weights=parse_loss_weights(["gan=0.1"]))
    assert train(opts) == 0
    first = _ck(run)
    assert train(dataclasses.replace(opts, max_steps=2)) == 0
    second = _ck(run)
    heads = [k for k in first["d"] if k.startswith("heads.")]
    assert heads and not any("backbone" in k for k in first["d"])
    assert any(not torch.equal(first["d"][k], second["d"][k]) for k in heads if "original" in k)
    assert torch.equal(first["d"]["ccm0"], second["d"]["ccm0"])  # fixed projection
    n_trained = sum(1 for k in heads if k.endswith(("bias", "original")))
    assert len(second["opt_d"]["param_groups"][0]["params"]) == n_trained  # heads only in D's Adam
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss/r1" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss/r1"]) for r in steps)
    assert all(r["loss/r1"] > 0 and "loss/gan_d" in r and "loss/gan_g" in r for r in steps)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["options"]["discriminator"] == "projected" and cfg["options"]["r1"] == 1.0
    assert cfg["params"]["discriminator"] == sum(first["d"][k].numel() for k in heads if k.endswith(("bias",
                                                                                                      "original")))


def test_cli_flags_reach_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import fixtalk.train.loop as loop
    from fixtalk.cli import build_parser

    seen: list[TrainOptions] = []
    monkeypatch.setattr(loop, "train", lambda opts, dry_run=False: seen.append(opts) or 0)
    parser, handlers = build_parser()
    base = ["train", "--stage", "recon", "--data", "d", "--out", "o", "--max-steps", "1"]
    for argv in (base, base + ["--ema-halflife", "500", "--discriminator", "projected", "--r1", "0.5",
                               "--r1-every", "8"]):
        args = parser.parse_args(argv)
        assert handlers["train"](args) == 0
    off, on = seen
    assert (off.ema_halflife, off.discriminator, off.r1, off.r1_every) == (0.0, "stylegan", 0.0, 16)
    assert (on.ema_halflife, on.discriminator, on.r1, on.r1_every) == (500.0, "projected", 0.5, 8)
