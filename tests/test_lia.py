"""LIA as a second baseline (issue 13): `fixtalk convert-lia`, the relative motion mode and the one-motion
rule in the Pipeline, and the LIA presets in training. Numeric parity is tests/test_lia_parity.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from parity_utils import lia_fixture_dir, lia_synthetic_state, load_image

from fixtalk.checkpoint import convert_lia, lia_to_fixtalk_keys, load_bundle
from fixtalk.cli import main
from fixtalk.config import get_preset
from fixtalk.errors import InputError
from fixtalk.models.fixtalk import FixTalk


def _official_file(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A file shaped like LIA's released checkpoints: {'gen': ..., 'args': Namespace(...)}."""
    torch.save({"gen": state, "args": argparse.Namespace(size=256, latent_dim_motion=20)}, path)
    return path


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    return lia_synthetic_state()


@torch.no_grad()
def test_convert_lia_renders_like_the_directly_built_model(tmp_path: Path, official_state, one_thread,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    pt = _official_file(tmp_path / "vox.pt", official_state)
    assert main(["convert-lia", str(pt), str(tmp_path / "ckpt")]) == 0
    assert "as lia-256" in capsys.readouterr().out
    bundle = load_bundle(tmp_path / "ckpt")
    assert bundle.model.cfg == get_preset("lia-256") and bundle.audio2lip is None
    direct = FixTalk(get_preset("lia-256"))
    direct.load_state_dict(lia_to_fixtalk_keys(official_state))
    direct.eval()
    d = lia_fixture_dir()
    src, drv = load_image("source.png", d), load_image("drive.png", d)
    assert torch.equal(bundle.model(src, drv), direct(src, drv))


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fixtalk: ")
    return err


def test_convert_lia_refuses_a_wrong_layout_naming_the_first_bad_key(tmp_path: Path, official_state,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    # Only keys and shapes matter here: zero-stride views keep the files a few KB.
    official_state = {k: torch.zeros(()).expand(v.shape) for k, v in official_state.items()}
    short = {k: v for k, v in official_state.items() if k != "dec.direction.weight"}
    err = _error_line(capsys, ["convert-lia", str(_official_file(tmp_path / "a.pt", short)), out])
    assert "not an official LIA (lia-256) layout: missing key 'dec.direction.weight'" in err
    resized = {**official_state, "enc.fc.4.weight": torch.zeros(10, 512)}
    err = _error_line(capsys, ["convert-lia", str(_official_file(tmp_path / "b.pt", resized)), out])
    assert "shape of 'enc.fc.4.weight' is (10, 512), expected (20, 512)" in err
    edtalk_like = {("fc.0.weight" if k == "enc.fc.0.weight" else k): v for k, v in official_state.items()}
    err = _error_line(capsys, ["convert-lia", str(_official_file(tmp_path / "c.pt", edtalk_like)), out])
    assert "missing key 'enc.fc.0.weight'" in err
    extra = {**official_state, "dec.extra.weight": torch.zeros(1)}
    err = _error_line(capsys, ["convert-lia", str(_official_file(tmp_path / "d.pt", extra)), out])
    assert "unexpected key 'dec.extra.weight'" in err
    torch.save({"disc": {}}, tmp_path / "e.pt")
    assert "no 'gen' entry" in _error_line(capsys, ["convert-lia", str(tmp_path / "e.pt"), out])
    assert not (tmp_path / "out").exists()


def test_convert_edtalk_points_lia_files_to_convert_lia(tmp_path: Path, official_state) -> None:
    from fixtalk.checkpoint import convert_edtalk

    with pytest.raises(InputError, match="convert-lia"):
        layout_only = {k: torch.zeros(()).expand(v.shape) for k, v in official_state.items()}
        convert_edtalk(_official_file(tmp_path / "vox.pt", layout_only))
    with pytest.raises(InputError, match="not found"):
        convert_lia(tmp_path / "missing.pt")


# --- training ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_train import make_synthetic_data

    return make_synthetic_data(tmp_path_factory.mktemp("lia_data"), [
        ("p1_neutral", "p1", "neutral", False), ("p2_talk", "p2", "", True), ("p3_talk", "p3", "happy", True)])


def _tiny_lia(tmp: Path, emi_edi: bool) -> Path:
    """fixtalk-lia-small / lia-small shrunk to 64 px (the synthetic data's size)."""
    from fixtalk.config import EDIConfig, EMIConfig

    cfg = get_preset("fixtalk-lia-small" if emi_edi else "lia-small").replace(
        name="tiny-lia", size=64, style_dim=64, max_channels=32, channel_base=1024,
        emi=EMIConfig(layers=1, heads=2, queries=4, ffn_mult=1),
        edi=EDIConfig(slots=32, decompress_channels=16, heads=2, ffn_mult=1))
    path = tmp / f"tiny-lia-{int(emi_edi)}.json"
    path.write_text(cfg.to_json())
    return path


def _train_opts(stage: str, data: Path, out: Path, preset: str, **kw: object):  # type: ignore[no-untyped-def]
    from fixtalk.train.options import TrainOptions

    base: dict = dict(stage=stage, data=str(data), out=str(out), preset=preset, max_steps=2, batch=2, workers=0,
                      save_every=1, log_every=1, sample_every=2)
    return TrainOptions(**{**base, **kw})


def test_recon_then_fixtalk_stage_on_a_lia_model(train_data: Path, tmp_path: Path, one_thread) -> None:
    """recon trains the plain LIA model; fixtalk starts from it with EMI and EDI added (the Fig. 8 setting)."""
    from fixtalk.train.loop import train

    lia, fixtalk_lia = _tiny_lia(tmp_path, False), _tiny_lia(tmp_path, True)
    assert train(_train_opts("recon", train_data, tmp_path / "recon", str(lia))) == 0
    recon = load_bundle(tmp_path / "recon" / "final")
    assert not recon.model.cfg.decoupled and recon.model.emi is None and recon.audio2lip is None
    init = str(tmp_path / "recon" / "final")
    assert train(_train_opts("fixtalk", train_data, tmp_path / "fix", str(fixtalk_lia), init=init)) == 0
    final = load_bundle(tmp_path / "fix" / "final")
    assert final.model.emi is not None and final.model.edi is not None and not final.expression_presets
    # Everything of the LIA model was carried over (enc, LMD, dec), EMI and EDI are new.
    started = json.loads((tmp_path / "fix" / "config.json").read_text())["init"]["model"]
    assert started.startswith(f"loaded {len(recon.model.state_dict())}/"), started


@pytest.mark.parametrize("stage", ["mouth-pose", "expression", "audio2lip"])
def test_fdm_stages_refuse_lia_models(stage: str, train_data: Path, tmp_path: Path) -> None:
    from fixtalk.train.loop import train

    with pytest.raises(InputError, match=f"stage {stage} needs EDTalk's FDM"):
        train(_train_opts(stage, train_data, tmp_path / "run", str(_tiny_lia(tmp_path, False))))
