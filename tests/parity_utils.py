"""The synthetic-weight rule of ../shared/fixtures/edtalk_parity (README, "The synthetic weights"), which
../shared/fixtures/lia_parity uses too."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def fixture_dir() -> Path:
    """FIXTALK_PARITY_FIXTURE, default ../shared/fixtures/edtalk_parity relative to the repo root."""
    return Path(os.environ.get("FIXTALK_PARITY_FIXTURE", REPO.parent / "shared" / "fixtures" / "edtalk_parity"))


def lia_fixture_dir() -> Path:
    """FIXTALK_LIA_FIXTURE, default ../shared/fixtures/lia_parity relative to the repo root."""
    return Path(os.environ.get("FIXTALK_LIA_FIXTURE", REPO.parent / "shared" / "fixtures" / "lia_parity"))


def lia_layout() -> dict[str, list[int]]:
    """Keys and shapes of the official LIA generator state dict ('gen' of vox.pt), from the LIA fixture."""
    path = lia_fixture_dir() / "lia_state_dict_layout.json"
    assert path.is_file(), f"LIA parity fixture missing: {path} (set FIXTALK_LIA_FIXTURE)"
    return json.loads(path.read_text())["gen"]


def lia_synthetic_state() -> dict[str, torch.Tensor]:
    """The LIA fixture's 'gen' state dict in LIA's own key names: the README's rule for every trainable
    tensor, the constructed FIR kernels ([1, 3, 3, 1] outer product / 64, x4 for upsampling) for the buffers."""
    from fixtalk.checkpoint import fixtalk_to_lia_keys
    from fixtalk.config import get_preset
    from fixtalk.models.fixtalk import FixTalk

    rules = json.loads((lia_fixture_dir() / "weight_rule_keys.json").read_text())
    layout, buffers = lia_layout(), set(rules["buffer_keys"])
    state = synthetic_state_dict(layout, set(layout) - buffers, set(rules["plain_weight_keys"]))
    own = fixtalk_to_lia_keys(FixTalk(get_preset("lia-256")).state_dict())
    assert {k for k in own if k.endswith("kernel")} == buffers  # our buffers are exactly the reference's
    return {**{k: own[k] for k in buffers}, **state}


def plain_weight_keys(checkpoint: str) -> set[str]:
    """checkpoint: 'EDTalk.pt:gen', 'EDTalk_lip_pose.pt:gen' or 'Audio2Lip.pt:audio2lip'."""
    data = json.loads((fixture_dir() / "weight_rule_keys.json").read_text())
    return set(data["plain_weight_keys"][checkpoint])


def synthetic_tensor(key: str, shape: tuple[int, ...], plain: set[str]) -> torch.Tensor:
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    a = rng.standard_normal(shape, dtype=np.float32)
    if a.ndim == 1:
        a = a * np.float32(0.1)
    elif key in plain:
        # Literally the README's expression: numpy 2 promotes to float64 here; the cast is on load.
        a = (a / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(a))


def synthetic_state_dict(reference_keys_shapes: dict[str, list[int]], trainable: set[str],
                         plain: set[str]) -> dict[str, torch.Tensor]:
    """Synthetic values for every trainable entry (keys as in the official checkpoint)."""
    return {k: synthetic_tensor(k, tuple(s), plain) for k, s in reference_keys_shapes.items() if k in trainable}


def load_image(name: str, directory: Path | None = None) -> torch.Tensor:
    """A fixture PNG (of `directory`, default the EDTalk fixture) as a 1x3xHxW tensor in [-1, 1] (x / 127.5 - 1)."""
    from PIL import Image

    arr = np.asarray(Image.open((directory or fixture_dir()) / name).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1)[None].contiguous()
