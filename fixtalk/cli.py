"""The `fixtalk` command: a thin layer over the library; every subcommand lives in its own module.

Bad input is reported as one line on stderr ("fixtalk: <file>: <problem>") with exit code 2, never a
traceback (fixtalk.errors.InputError).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from fixtalk.errors import InputError


def _cmd_info(args: argparse.Namespace) -> int:
    from fixtalk.config import get_preset
    from fixtalk.info import report

    try:
        cfg = get_preset(args.preset)
    except KeyError as err:
        raise InputError(None, str(err.args[0])) from None
    print(report(cfg, with_macs=not args.no_macs))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fixtalk.checkpoint import EMOTIONS, Bundle, convert_edtalk, load_bundle, load_expression_npy, save_bundle

    out = Path(args.outdir)
    kind, module = convert_edtalk(args.file)
    presets = {}
    if args.expressions:
        for name in EMOTIONS:
            f = Path(args.expressions) / f"{name}.npy"
            if f.is_file():
                presets[name] = load_expression_npy(f)
    if kind == "audio2lip":
        # Audio2Lip goes into an existing generator checkpoint (it shares the generator's lip bank).
        if not (out / "config.json").is_file():
            raise InputError(out, "convert EDTalk.pt or EDTalk_lip_pose.pt into this directory first; "
                                  "Audio2Lip.pt is added to an existing checkpoint")
        bundle = load_bundle(out)
        bundle.audio2lip = module  # type: ignore[assignment]  # kind "audio2lip": an Audio2Lip
        bundle.expression_presets.update(presets)
    else:
        bundle = Bundle(module, None, presets)  # type: ignore[arg-type]  # not "audio2lip": a FixTalk
        if (out / "config.json").is_file():
            old = load_bundle(out)
            bundle.audio2lip = old.audio2lip
            bundle.expression_presets = {**old.expression_presets, **presets}
    save_bundle(bundle, out)
    print(f"imported {args.file} as {kind} -> {out}"
          + (f" ({len(presets)} expression presets)" if presets else ""))
    return 0


def _cmd_convert_lia(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fixtalk.checkpoint import Bundle, convert_lia, save_bundle

    out = Path(args.outdir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    model = convert_lia(args.file)
    save_bundle(Bundle(model), out)  # a LIA model has no Audio2Lip or expression presets to keep
    print(f"imported {args.file} as {model.cfg.name} -> {out}")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    parser = argparse.ArgumentParser(prog="fixtalk", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}

    p = sub.add_parser("info", help="parameter counts and GMAC per frame of a preset")
    p.add_argument("preset", help="edtalk-256, edtalk-256-lip-pose, fixtalk-256, fixtalk-512, fixtalk-small, "
                                  "lia-256, fixtalk-lia, lia-small, fixtalk-lia-small")
    p.add_argument("--no-macs", action="store_true", help="skip the MAC count (faster)")
    handlers["info"] = _cmd_info

    p = sub.add_parser("convert-edtalk", help="import EDTalk.pt / EDTalk_lip_pose.pt / Audio2Lip.pt")
    p.add_argument("file", help="official EDTalk checkpoint (.pt)")
    p.add_argument("outdir", help="fixtalk checkpoint directory to write (or add Audio2Lip to)")
    p.add_argument("--expressions", metavar="DIR",
                   help="folder with EDTalk's predefined_exp_weights/*.npy to store as presets")
    handlers["convert-edtalk"] = _cmd_convert

    p = sub.add_parser("convert-lia", help="import an official LIA generator (vox.pt / taichi.pt / ted.pt)")
    p.add_argument("file", help="official LIA checkpoint (.pt, dict key 'gen')")
    p.add_argument("outdir", help="fixtalk checkpoint directory to write (preset lia-256)")
    handlers["convert-lia"] = _cmd_convert_lia

    for register in _extensions():
        register(sub, handlers)
    return parser, handlers


def _extensions() -> list[Callable]:
    """Subcommands defined next to their features (animate, train, eval, ...), when present."""
    import importlib

    found = []
    for mod in ("fixtalk.pipeline_cli", "fixtalk.live", "fixtalk.bench_cli", "fixtalk.train.cli", "fixtalk.eval.cli",
                "fixtalk.serve", "fixtalk.onnx_cli"):
        try:
            found.append(importlib.import_module(mod).register)
        except ModuleNotFoundError as err:
            if err.name is None or not mod.startswith(err.name):
                raise
    return found


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch is imported (it reads this once): OpenMP threads that finish a parallel region sleep instead
    # of spinning, so they give the core back to whatever else runs on the machine (fixtalk.runtime.choose_threads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        return handlers[args.command](args)
    except InputError as err:
        print(f"fixtalk: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fixtalk: interrupted", file=sys.stderr)
        return 130


# glibc's malloc hands every block over 128 KiB (a threshold that only grows as such blocks are freed) to mmap
# and trims its heap eagerly, so each fresh mid-sized tensor comes back as zeroed pages and a page fault per 4 KiB:
# on CPU that was much of the elementwise time. These tunables keep blocks up to 32 MiB on the heap and the
# heap's freed memory in the process for reuse (docs/performance.md: `fixtalk live` 4-21% more fps). glibc reads
# them once at start-up, so the console command re-executes itself with them (`entry`).
MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold=33554432", "glibc.malloc.trim_threshold=4294967296")
MALLOC_ENV = "FIXTALK_MALLOC"  # "default": keep glibc's allocator as it is; "tuned": set by the re-execution


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")  # type: ignore[union-attr]  # None: no libc
    except (AttributeError, ValueError, OSError):  # not a POSIX libc that names itself (macOS, Windows, musl)
        return False


def malloc_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, tunables added; None to run in this process as it is: opted out
    (FIXTALK_MALLOC set, which the re-executed process also has), not Linux with glibc, or every one of the
    tunables already in GLIBC_TUNABLES (with the user's own values, if set)."""
    if environ.get(MALLOC_ENV) or not sys.platform.startswith("linux") or not _glibc():
        return None
    given = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
    names = {t.split("=", 1)[0] for t in given}
    missing = [t for t in MALLOC_TUNABLES if t.split("=", 1)[0] not in names]
    if not missing:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join([*given, *missing]), MALLOC_ENV: "tuned"}


def entry() -> int:
    """The `fixtalk` console command (and `python -m fixtalk.cli`): `main` with sys.argv, in a process whose
    allocator has MALLOC_TUNABLES. Without them in the environment, the command re-executes itself once with
    them added, as `python -m fixtalk.cli ARGS` (same interpreter, same process id); FIXTALK_MALLOC=default
    opts out. Help needs no allocator, so `fixtalk --help` starts once. Tests call `main` and never re-execute."""
    argv = sys.argv[1:]
    env = malloc_env(os.environ)
    if env is not None and sys.executable and argv and not {"-h", "--help"} & set(argv):
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, [sys.executable, "-m", "fixtalk.cli", *argv], env)
        except OSError:
            pass  # could not re-execute: run here with the allocator as it is
    return main(argv)


if __name__ == "__main__":
    sys.exit(entry())
