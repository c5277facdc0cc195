"""Run logs: TensorBoard scalars and sample grids, plus RUN/log.jsonl (always written; the only log when
tensorboard is not installed) and RUN/samples/*.png. Only rank 0 logs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def make_grid(columns: list[torch.Tensor], max_rows: int = 4) -> torch.Tensor:
    """Columns of B x 3 x S x S images in [-1, 1] (e.g. source | driver | output) -> 3 x H x W in [0, 1],
    one row per sample (at most `max_rows`). Columns of another size are resized to the first's."""
    s = columns[0].shape[-1]
    cols = []
    for c in columns:
        c = c[:max_rows].detach().float().cpu()
        if c.shape[-1] != s:
            c = torch.nn.functional.interpolate(c, size=(s, s), mode="bilinear", align_corners=False)
        cols.append(torch.cat(list(c), dim=1))                   # 3 x (rows*S) x S
    return torch.cat(cols, dim=2).add(1).div(2).clamp(0, 1)


class RunLogger:
    """Scalars/images to TensorBoard (torch.utils.tensorboard) and log.jsonl; a no-op on ranks > 0."""

    def __init__(self, run: Path, enabled: bool) -> None:
        self.enabled, self.run, self.tb = enabled, run, None
        if not enabled:
            return
        self._jsonl = open(run / "log.jsonl", "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"))
        except ImportError:
            print("fixtalk train: tensorboard is not installed; logging to RUN/log.jsonl only "
                  "(pip install tensorboard)", file=sys.stderr)

    def event(self, step: int, kind: str, **fields: Any) -> None:
        if self.enabled:
            self._jsonl.write(json.dumps({"step": step, "event": kind, "wall": round(time.time(), 3), **fields}) + "\n")

    def scalars(self, step: int, values: dict[str, float], elapsed: float) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "elapsed": round(elapsed, 2),
                                      **{k: round(v, 6) for k, v in values.items()}}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def images(self, step: int, columns: list[torch.Tensor]) -> None:
        if not self.enabled or not columns:  # nothing drawn (audio2lip without image losses)
            return
        grid = make_grid(columns)
        folder = self.run / "samples"
        folder.mkdir(exist_ok=True)
        arr = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"step_{step:08d}.png")
        if self.tb is not None:
            self.tb.add_image("samples", grid, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self.tb is not None:
                self.tb.close()
