"""Audio2Lip's regression targets, computed once per run (EDTalk Sec. 3.4; docs/architecture.md 5, stage 4).

The audio2lip stage regresses the frozen generator's mouth-bank weights of every frame. The generator does not
change during the stage, so the weights are computed once, for every frame of every clip with audio, and kept in
RUN/lip_targets.npz: a step then decodes no video and runs no encoder (on a 2-core CPU a batch of 8 windows
took ~3-4 s with them; the mel encoder alone is a fraction of that), and a resumed run reads the file back.

With `ModelConfig.relative_to_speaker` Audio2Lip learns each clip's weights minus that clip's mean, the
change that speech explains (fixtalk.driving.audio_mouth); `AudioDataset` hands out that mean with them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fixtalk.models.fixtalk import FixTalk
from fixtalk.train.clipstore import Clip
from fixtalk.train.setup import frame_motion

FILE = "lip_targets.npz"
_CHUNK = 64  # frames decoded and encoded at a time (bounded memory on long clips)


def fingerprint(model: FixTalk) -> float:
    """A number that changes when any weight does: the cache belongs to one generator."""
    return float(sum(float(p.detach().double().sum()) for p in model.parameters()))


@torch.no_grad()
def compute(model: FixTalk, clips: list[Clip], size: int, device: torch.device,
            say: bool = True) -> dict[str, np.ndarray]:
    """{clip name: frames x lip_dim} mouth-bank weights of every frame (the motion prediction of inference)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    out: dict[str, np.ndarray] = {}
    bar = tqdm(total=sum(c.frames for c in clips), unit="frame", desc="lip targets", disable=not say)
    for clip in clips:
        rows = []
        for i in range(0, clip.frames, _CHUNK):
            idx = list(range(i, min(i + _CHUNK, clip.frames)))
            rows.append(frame_motion(model, clip, idx, size, device).lip.float().cpu())
            bar.update(len(idx))
        out[clip.name] = torch.cat(rows).numpy()
    bar.close()
    model.train(was_training)
    return out


def load_or_compute(run: Path, model: FixTalk, clips: list[Clip], size: int, device: torch.device,
                    main: bool, barrier: Callable[[], None]) -> dict[str, np.ndarray]:
    """RUN/lip_targets.npz when it was made by this generator for these clips, else computed (by rank 0) and
    written atomically; every rank then reads the same file (`barrier` waits for all ranks)."""
    path = run / FILE
    key = fingerprint(model)
    if main and not _valid(path, key, clips):
        targets = compute(model, clips, size, device)
        fd, tmp = tempfile.mkstemp(prefix=".lip_targets.", suffix=".npz", dir=run)
        os.close(fd)
        arrays: dict[str, Any] = {"__fingerprint__": np.float64(key), **targets}
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    barrier()
    with np.load(path) as z:
        return {c.name: z[c.name] for c in clips}


def _valid(path: Path, key: float, clips: list[Clip]) -> bool:
    if not path.is_file():
        return False
    with np.load(path) as z:
        if "__fingerprint__" not in z.files or not np.isclose(float(z["__fingerprint__"]), key, rtol=0, atol=1e-6):
            return False
        return all(c.name in z.files and len(z[c.name]) == c.frames for c in clips)

