"""`fixtalk --help` and every `fixtalk COMMAND --help` build their parsers without torch, numpy, cv2 & co.

Each subcommand's module is imported to build the parser, so a module-level `import torch` in any of them
costs every call of the CLI seconds of start-up. Checked in a fresh interpreter through `sys.modules`, not by
timing (a loaded machine makes timings flaky).

The console command (`fixtalk.cli.entry`) re-executes itself once with glibc malloc tunables (docs/performance.md);
that is checked with os.execve mocked, as tests call `main` in-process and must never re-execute.
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


def test_glibc_is_detected_as_python_sees_it() -> None:
    import platform

    from fixtalk.cli import _glibc

    assert _glibc() == (platform.libc_ver()[0] == "glibc")


class _Replaced(Exception):
    """Stands for os.execve replacing the process."""


def _entry(monkeypatch, argv: list[str], env: dict[str, str] | None = None) -> tuple[list, list]:
    """Run fixtalk.cli.entry with `argv` in the environment `env` (GLIBC_TUNABLES / FIXTALK_MALLOC), on a glibc
    Linux; returns (the os.execve calls, the main calls). os.execve raises instead of replacing the process."""
    from fixtalk import cli

    for key in ("GLIBC_TUNABLES", cli.MALLOC_ENV):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    execs: list = []
    mains: list = []

    def execve(path: str, args: list[str], environ: dict[str, str]) -> None:
        execs.append((path, args, environ))
        raise _Replaced

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(cli, "_glibc", lambda: True)
    monkeypatch.setattr(cli.os, "execve", execve)
    monkeypatch.setattr(cli, "main", lambda a: mains.append(a) or 0)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/fixtalk", *argv])
    try:
        assert cli.entry() == 0
    except _Replaced:
        pass
    return execs, mains


def test_entry_reexecutes_once_with_malloc_tunables(monkeypatch) -> None:
    from fixtalk.cli import MALLOC_TUNABLES

    argv = ["live", "--source", "me.jpg", "--driving", "0"]
    execs, mains = _entry(monkeypatch, argv)
    assert mains == [] and len(execs) == 1
    path, args, env = execs[0]
    assert path == sys.executable and args == [sys.executable, "-m", "fixtalk.cli", *argv]
    assert env["GLIBC_TUNABLES"].split(":") == list(MALLOC_TUNABLES) and env["FIXTALK_MALLOC"] == "tuned"
    assert env["PATH"] == os.environ["PATH"]  # the rest of the environment is passed on
    # The re-executed process runs the command itself (no loop), even if it were to lose FIXTALK_MALLOC.
    again = {k: env[k] for k in ("GLIBC_TUNABLES", "FIXTALK_MALLOC")}
    assert _entry(monkeypatch, argv, again) == ([], [argv])
    assert _entry(monkeypatch, argv, {"GLIBC_TUNABLES": env["GLIBC_TUNABLES"]}) == ([], [argv])


def test_entry_opt_out_help_and_other_platforms(monkeypatch) -> None:
    from fixtalk import cli

    argv = ["animate", "--source", "me.jpg", "--output", "out.mp4"]
    assert _entry(monkeypatch, argv, {"FIXTALK_MALLOC": "default"}) == ([], [argv])
    assert _entry(monkeypatch, ["live", "--help"]) == ([], [["live", "--help"]])  # help starts once
    assert _entry(monkeypatch, []) == ([], [[]])
    # The user's own tunables stay, their own value of a setting included; the missing one is added.
    execs, _ = _entry(monkeypatch, argv, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536:glibc.cpu.x86_ibt=on"})
    assert execs[0][2]["GLIBC_TUNABLES"] == ("glibc.malloc.mmap_threshold=65536:glibc.cpu.x86_ibt=on:"
                                             "glibc.malloc.trim_threshold=4294967296")
    monkeypatch.setattr(cli, "_glibc", lambda: False)  # musl, or no libc that names itself
    assert cli.malloc_env({"PATH": "/bin"}) is None
    monkeypatch.setattr(cli, "_glibc", lambda: True)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cli.malloc_env({"PATH": "/bin"}) is None


def test_runtime_line_names_the_malloc_setting(monkeypatch) -> None:
    from fixtalk.cli import MALLOC_TUNABLES
    from fixtalk.runtime import Runtime

    monkeypatch.setenv("GLIBC_TUNABLES", ":".join(MALLOC_TUNABLES))
    assert Runtime("cpu", "fp32").describe().endswith("threads, malloc mmap_threshold=32 MiB")
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert Runtime("cpu", "fp32").describe().endswith(" threads")
