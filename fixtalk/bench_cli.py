"""`fixtalk bench`: the parser, apart from fixtalk.bench so that `fixtalk --help` builds it without torch."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from fixtalk.options import add_runtime_args


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    p = sub.add_parser("bench", help="per-module timings and speed-up over the EDTalk (or LIA) demo loop")
    p.add_argument("--preset", default="fixtalk-256")
    p.add_argument("--size", type=int, help="override the preset's resolution")
    add_runtime_args(p, dtype="fp32")
    p.add_argument("--no-backends", action="store_true",
                   help="skip the torch fp32 / torch bf16 / onnx model-only comparison")
    p.add_argument("--source", help="portrait for the file-to-file measurement")
    p.add_argument("--clip", help="driving clip for the file-to-file measurement")
    p.add_argument("--frames", type=int, default=24, help="frames of the clip to use")
    handlers["bench"] = _bench


def _bench(args: argparse.Namespace) -> int:
    from fixtalk.bench import run

    return run(args)
