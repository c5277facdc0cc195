"""`fixtalk --help` and every `fixtalk COMMAND --help` build their parsers without torch, numpy, cv2 & co.

Each subcommand's module is imported to build the parser, so a module-level `import torch` in any of them
costs every call of the CLI seconds of start-up. Checked in a fresh interpreter through `sys.modules`, not by
timing (a loaded machine makes timings flaky).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "cv2", "scipy", "librosa", "av", "gradio", "PIL", "safetensors", "dlib")

PROBE = """
import contextlib, io, json, sys
from fixtalk.cli import build_parser, main

def heavy():
    return sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))

_, handlers = build_parser()
report = {}
for argv in [["--help"], *([c, "--help"] for c in sorted(handlers))]:
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        main(argv)
    report[" ".join(argv)] = {"heavy": heavy(), "printed": len(out.getvalue())}
import fixtalk.checkpoint  # the negative control: a module that does import torch
report["after importing fixtalk.checkpoint"] = {"heavy": heavy(), "printed": 0}
print(json.dumps(report))
"""


def test_help_imports_no_heavy_module() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PROBE, *HEAVY], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    control = report.pop("after importing fixtalk.checkpoint")
    assert "torch" in control["heavy"]  # the probe does see a heavy import
    for argv in ("--help", "animate --help", "train --help", "eval --help", "serve --help", "live --help"):
        assert argv in report, sorted(report)
    for argv, seen in report.items():
        assert seen["printed"] > 100, argv  # the help text was printed
        assert seen["heavy"] == [], f"`fixtalk {argv}` imported {seen['heavy']}"
