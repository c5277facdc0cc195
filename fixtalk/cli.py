"""The `fixtalk` command: a thin layer over the library; every subcommand lives in its own module.

Bad input is reported as one line on stderr ("fixtalk: <file>: <problem>") with exit code 2, never a
traceback (fixtalk.errors.InputError).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

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


if __name__ == "__main__":
    sys.exit(main())
