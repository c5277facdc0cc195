"""Checkpoints: safetensors weights + config.json, and the import of official EDTalk and LIA .pt files.

A fixtalk checkpoint is a directory:

    config.json           {"format": "fixtalk/1", "model": ModelConfig, "expression_presets": {...},
                           "files": {"model.safetensors": sha256, "audio2lip.safetensors": sha256}}
    model.safetensors     FixTalk state dict (E, FDM, G, EMI, EDI)
    audio2lip.safetensors optional Audio2Lip state dict

Loading rebuilds the network from config.json alone, checks each file's sha256 (a tampered file is
refused) and loads strictly. Nothing is ever unpickled: legacy .pt files go through
`torch.load(weights_only=True)`, and a file that needs more than tensors and plain containers is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fixtalk.config import EMOTIONS as EMOTIONS  # defined there (no torch), imported from here too
from fixtalk.config import ModelConfig, get_preset
from fixtalk.errors import InputError
from fixtalk.models.audio2lip import Audio2Lip
from fixtalk.models.fixtalk import FixTalk
from fixtalk.weights import read_weights

FORMAT = "fixtalk/1"
# Official EDTalk keys that live in our FDM submodule; encoder/decoder keys are identical.
_FDM_PREFIXES = ("fc.", "lip_fc.", "pose_fc.", "exp_fc.", "direction_lipnonlip.", "direction_exp.")
# Official LIA keys of its motion network (encoder MLP, decoder directions) -> our `fdm` (models/lmd.py).
_LIA_RENAMES = (("enc.fc.", "fdm.fc."), ("dec.direction.", "fdm.direction."))


@dataclass
class Bundle:
    """A loaded checkpoint: the generator, optional Audio2Lip and the expression presets."""

    model: FixTalk
    audio2lip: Audio2Lip | None = None
    expression_presets: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state(module: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def save_bundle(bundle: Bundle, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a checkpoint directory atomically (a temporary sibling directory renamed at the end)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    files = {"model.safetensors": _state(bundle.model, dtype)}
    if bundle.audio2lip is not None:
        files["audio2lip.safetensors"] = _state(bundle.audio2lip, dtype)
    digests = {}
    for name, state in files.items():
        save_file(state, str(tmp / name))
        digests[name] = _sha256(tmp / name)
    meta = {
        "format": FORMAT,
        "model": bundle.model.cfg.to_dict(),
        "expression_presets": {k: np.asarray(v, np.float32).reshape(-1).tolist()
                               for k, v in bundle.expression_presets.items()},
        "files": digests,
    }
    (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    replace_dir(tmp, out)
    return out


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished directory `tmp` at `out` by renames, so a reader never sees a half-written one; an
    existing `out` (a flat directory of files) is moved aside first and removed after."""
    if out.exists():
        backup = out.with_name(f".{out.name}.old")
        os.replace(out, backup)
        os.replace(tmp, out)
        for p in backup.iterdir():
            p.unlink()
        backup.rmdir()
    else:
        os.replace(tmp, out)


def load_bundle(path: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """Rebuild from config.json and load the weights strictly; InputError on anything off."""
    root = Path(path)
    if root.is_file() and root.name == "config.json":
        root = root.parent
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        if root.suffix in (".pt", ".pth", ".ckpt"):
            raise InputError(root, "legacy .pt checkpoint: import it first with "
                                   "`fixtalk convert-edtalk FILE.pt OUTDIR` (EDTalk) or "
                                   "`fixtalk convert-lia FILE.pt OUTDIR` (LIA)")
        raise InputError(root, "not a fixtalk checkpoint (no config.json); "
                               "make one with `fixtalk convert-edtalk` or `fixtalk train`")
    try:
        meta = json.loads(cfg_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        cfg = ModelConfig.from_dict(meta["model"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(cfg_path, f"invalid checkpoint config: {err}") from None
    digests = meta.get("files", {})
    if "model.safetensors" not in digests:
        raise InputError(cfg_path, "config.json lists no model.safetensors")
    states = {}
    for name, digest in digests.items():
        f = root / name
        if not f.is_file():
            raise InputError(f, "missing checkpoint file")
        if _sha256(f) != digest:
            raise InputError(f, "checksum mismatch: the file was modified or is corrupt; refusing to load")
        try:
            states[name] = load_file(str(f))
        except Exception as err:  # safetensors raises several types for a bad header
            raise InputError(f, f"unreadable safetensors file ({err})") from None
    model = FixTalk(cfg)
    _load_strict(model, states["model.safetensors"], root / "model.safetensors")
    a2l = None
    if "audio2lip.safetensors" in states:
        # EDTalk's Audio2Lip.pt has no loudness mouth; ours has one once the audio2lip stage fitted it.
        a2l = Audio2Lip(cfg.lip_dim, loudness=any(k.startswith("loudness.") for k in states["audio2lip.safetensors"]))
        _load_strict(a2l, states["audio2lip.safetensors"], root / "audio2lip.safetensors")
        a2l.to(device).eval()
    presets = {k: np.asarray(v, np.float32).reshape(1, -1) for k, v in meta.get("expression_presets", {}).items()}
    return Bundle(model.to(device).eval(), a2l, presets, root)


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    first = first_mismatch(module.state_dict(), state)
    if first:
        raise InputError(path, f"weights do not match the model in config.json: {first}")
    own = module.state_dict()
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def first_mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str | None:
    """The first missing key, unexpected key or shape difference, in a readable line (or None)."""
    for k, v in expected.items():
        if k not in got:
            return f"missing key {k!r}"
        if tuple(got[k].shape) != tuple(v.shape):
            return f"shape of {k!r} is {tuple(got[k].shape)}, expected {tuple(v.shape)}"
    for k in got:
        if k not in expected:
            return f"unexpected key {k!r}"
    return None


# --- official EDTalk checkpoints ------------------------------------------------------------------
def read_legacy_pt(path: str | Path, what: str = "EDTalk checkpoint") -> dict:
    """torch.load with weights_only=True; argparse.Namespace (training args) is the one allowed class."""
    return read_weights(path, what, allowed=[argparse.Namespace])


def edtalk_to_fixtalk_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {("fdm." + k if k.startswith(_FDM_PREFIXES) else k): v for k, v in state.items()}


def convert_edtalk(path: str | Path) -> tuple[str, torch.nn.Module]:
    """Import EDTalk.pt / EDTalk_lip_pose.pt (key 'gen') or Audio2Lip.pt (key 'audio2lip').

    Returns (kind, module) with kind in {'edtalk-256', 'edtalk-256-lip-pose', 'audio2lip'}.
    A file whose keys or shapes differ from the official layout is refused, naming the first mismatch.
    """
    p = Path(path)
    obj = read_legacy_pt(p)
    if "audio2lip" in obj:
        module: torch.nn.Module = Audio2Lip()
        state, kind = obj["audio2lip"], "audio2lip"
    elif "gen" in obj:
        if any(isinstance(k, str) and k.startswith("dec.direction.") for k in obj["gen"]):
            raise InputError(p, "this is a LIA checkpoint (it has 'dec.direction.weight'): "
                                "import it with `fixtalk convert-lia FILE.pt OUTDIR`")
        state = edtalk_to_fixtalk_keys(obj["gen"])
        kind = "edtalk-256" if any(k.startswith("fdm.exp_fc.") for k in state) else "edtalk-256-lip-pose"
        module = FixTalk(get_preset(kind))
    else:
        raise InputError(p, f"no 'gen' or 'audio2lip' entry (keys: {sorted(obj)[:5]})")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(p, "state dict holds non-tensor entries")
    first = first_mismatch(module.state_dict(), state)
    if first:
        raise InputError(p, f"not an official {kind} layout: {first}")
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return kind, module.eval()


def lia_to_fixtalk_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official LIA generator keys -> fixtalk keys (only the motion network moves)."""
    return {_rename(k, _LIA_RENAMES): v for k, v in state.items()}


def fixtalk_to_lia_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_rename(k, tuple((b, a) for a, b in _LIA_RENAMES)): v for k, v in state.items()}


def _rename(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def convert_lia(path: str | Path, preset: str = "lia-256") -> FixTalk:
    """Import an official LIA generator (vox.pt, taichi.pt, ted.pt: dict key 'gen') as a `lia-256` model.

    The layout is checked in LIA's own key names, so a refusal names the first bad key as the file spells it.
    """
    p = Path(path)
    obj = read_legacy_pt(p, "LIA checkpoint")
    if "gen" not in obj:
        raise InputError(p, f"no 'gen' entry: not a LIA checkpoint (keys: {sorted(obj)[:5]})")
    state = obj["gen"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(p, "'gen' is not a state dict of tensors")
    model = FixTalk(get_preset(preset))
    first = first_mismatch(fixtalk_to_lia_keys(model.state_dict()), state)
    if first:
        raise InputError(p, f"not an official LIA ({preset}) layout: {first}")
    state = lia_to_fixtalk_keys(state)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def load_expression_npy(path: str | Path, dim: int = 10) -> np.ndarray:
    """An EDTalk-style preset: float array of shape (1, dim) (or (dim,)) -> (1, dim) float32."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file not found")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as err:
        raise InputError(p, f"not a .npy array ({type(err).__name__})") from None
    if arr.size != dim or not np.issubdtype(arr.dtype, np.floating):
        raise InputError(p, f"expected {dim} float expression weights, got shape {arr.shape} {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InputError(p, "expression weights are not finite")
    return arr.astype(np.float32).reshape(1, dim)
