"""The one reader of torch files (.pt/.pth): training checkpoints, official EDTalk weights, backbone and
metric networks. Always `weights_only=True`: tensors and plain containers only, so a file cannot run code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fixtalk.errors import InputError


def read_weights(path: str | Path, what: str, allowed: Sequence[type] = ()) -> dict[str, Any]:
    """The dict stored in a torch file, loaded on the CPU; `allowed`: classes the file may hold besides tensors
    and containers (EDTalk's argparse.Namespace). One-line InputError for a missing, unreadable or non-dict file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, f"{what} not found")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, classes beyond `allowed`
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(p, f"refused: cannot read {what} as plain tensors ({line})") from None
    if not isinstance(obj, dict):
        raise InputError(p, f"refused: {what}: expected a dict, got {type(obj).__name__}")
    return obj
