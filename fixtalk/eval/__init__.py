"""Evaluation suite of FixTalk Sec. 5: self-driven reconstruction, cross-identity driving (identity leakage),
audio-driven lip sync and emotion accuracy, for a copy-the-source baseline and any number of checkpoints.

    from fixtalk.eval import EvalOptions, run
    res = run(EvalOptions(videos="test_clips/", checkpoints=["full=runs/a", "no-edi=runs/b"], max_frames=100),
              "results.json", markdown="results.md")
    res["results"]["self_driven"]["full"]["psnr"]     # {"value": 27.1, "n": 1980, "skipped": 0}

Modules: `data` (clips, identities, emotions, audio, splits, shards), `align` (tracked aligned crops),
`methods` (rows), `scoring` (per-frame metrics, reasons), `suite` (the protocols per clip), `report`
(results.json schema, markdown), `runner` (shards and merge), `cli` (`fixtalk eval`).
"""


from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fixtalk.eval.report import FORMAT, METRICS, PROTOCOLS, markdown
    from fixtalk.eval.runner import evaluate, finish, run
    from fixtalk.eval.suite import EvalOptions

__all__ = ["FORMAT", "METRICS", "PROTOCOLS", "EvalOptions", "evaluate", "finish", "markdown", "run"]
# Imported on first use (PEP 562), so that `fixtalk.eval.cli` (imported by `fixtalk --help`) loads no torch.
_HOME = {"FORMAT": "report", "METRICS": "report", "PROTOCOLS": "report", "markdown": "report",
         "evaluate": "runner", "finish": "runner", "run": "runner", "EvalOptions": "suite"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"fixtalk.eval.{_HOME[name]}"), name)
    raise AttributeError(f"module 'fixtalk.eval' has no attribute {name!r}")
