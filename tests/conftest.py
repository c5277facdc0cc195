"""Shared test helpers: a tiny random checkpoint and a one-thread torch scope."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtalk.checkpoint import EMOTIONS, Bundle, save_bundle
from fixtalk.config import get_preset
from fixtalk.models.audio2lip import Audio2Lip
from fixtalk.models.fixtalk import FixTalk


def tiny_checkpoint(path: Path) -> Path:
    """fixtalk-small (128 px) with seeded random weights, Audio2Lip and 8 random emotion presets."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    presets = {e: rng.standard_normal((1, 10)).astype(np.float32) for e in EMOTIONS}
    return save_bundle(Bundle(FixTalk(get_preset("fixtalk-small")), Audio2Lip(), presets), path)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Two torch threads on a shared 2-core machine run several times slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
