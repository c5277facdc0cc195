"""The one exception type that user-facing layers turn into a one-line message and exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: a missing file, an unreadable image, a video without frames, no face, ...

    `str(err)` is the one line the CLI prints: "<path>: <problem>".
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
