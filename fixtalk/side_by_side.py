"""The `--side-by-side` view: [source | each distinct driver | result], all at the result's height.

Driver thumbnails are kept JPEG-compressed while a video renders (`Thumbs`, a few KB a frame), so a long driver
costs little memory. The source panel is framed as the result is (`strip`): the whole portrait beside a result
pasted back into it, the aligned crop beside a bare crop. A loose crop beside the whole photo made the same face
look wider and larger in the result (docs/quality.md, "Sharp paste-back").
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from fixtalk.driving import pingpong


class Thumbs(Sequence[np.ndarray]):
    """Small RGB driver crops for --side-by-side, one per driver frame, kept as JPEG (~5 KB each);
    faceless frames share the previous face's (`slot`: driver frame -> stored crop)."""

    def __init__(self) -> None:
        self.jpeg: list[bytes] = []
        self.slot: list[int] = []

    def add(self, rgb: np.ndarray) -> None:
        self.jpeg.append(cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes())

    def __len__(self) -> int:
        return len(self.slot)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]  # by frame index only, no slices
        bgr = cv2.imdecode(np.frombuffer(self.jpeg[self.slot[i]], np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # type: ignore[arg-type]  # our own JPEG: never None


def strip(frame: np.ndarray, source: np.ndarray, drivers: Iterable[Sequence[np.ndarray] | None], i: int) -> np.ndarray:
    """[source | each distinct driver's frame i (ping-pong) | frame], each scaled to the frame's height."""
    h = frame.shape[0]
    panels = [cv2.resize(source, (round(source.shape[1] * h / source.shape[0]), h), interpolation=cv2.INTER_AREA)]
    shown: set[int] = set()
    for thumbs in drivers:
        if thumbs and id(thumbs) not in shown:  # --driving: one panel, not three
            shown.add(id(thumbs))
            panels.append(cv2.resize(thumbs[pingpong(i, len(thumbs))], (h, h)))
    panels.append(frame)
    return np.concatenate([cv2.resize(p, (round(p.shape[1] * h / p.shape[0]), h)) for p in panels], axis=1)
