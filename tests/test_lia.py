"""LIA as a second baseline (issue 13): `fixtalk convert-lia`, the relative motion mode and the one-motion
rule in the Pipeline, and the LIA presets in training. Numeric parity is tests/test_lia_parity.py."""

from __future__ import annotations

import argparse
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
    with pytest.raises(InputError, match="file not found"):
        convert_lia(tmp_path / "missing.pt")
