"""Traced vs frozen traced renderer and encoder (fixtalk.traced), one process, variants alternating.

    python scripts/bench_traced.py [--dtype bf16] [--threads 1] [--rounds 15]

Shipped model, the dev portrait as the source, one frame per call. Prints per variant the median and best ms
per call, the median of the paired frozen/traced ratios, and the largest difference between the two outputs
(0: bit for bit). Run it alone on the machine (docs/performance.md, "Frozen traces").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from fixtalk.io import load_image
from fixtalk.options import RuntimeOptions
from fixtalk.pipeline import Pipeline
from fixtalk.traced import _Features, _Render, trace

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    rt = RuntimeOptions(dtype=args.dtype, threads=args.threads, parallel=1).runtime()
    pipe = Pipeline.from_pretrained(None, runtime=rt, progress=False)
    state = pipe.prepare_source(load_image(FACES / "images" / "edtalk__identity_source.jpg")).state
    m = state.motion
    print(rt.describe())
    jobs = (("render", _Render(pipe.model, state), (m.lip.float(), m.pose.float(), m.exp.float())),
            ("encoder", _Features(pipe.model), (torch.rand(1, 3, pipe.cfg.size, pipe.cfg.size) * 2 - 1,)))
    for name, module, inputs in jobs:
        traced = trace(rt, module, inputs)
        with torch.inference_mode():
            graphs = {"traced": traced, "frozen": torch.jit.freeze(traced.eval(), optimize_numerics=False)}
            diff = float((graphs["frozen"](*inputs) - graphs["traced"](*inputs)).abs().max())
            times: dict[str, list[float]] = {k: [] for k in graphs}
            for _ in range(args.rounds):
                for k, g in graphs.items():
                    t0 = time.perf_counter()
                    for _ in range(5):
                        g(*inputs)
                    times[k].append((time.perf_counter() - t0) / 5 * 1000)
        ratio = float(np.median(np.array(times["frozen"]) / np.array(times["traced"])))
        cells = ", ".join(f"{k} {np.median(v):.2f} ms (best {min(v):.2f})" for k, v in times.items())
        print(f"{name}: {cells}; frozen/traced {ratio:.3f}; max |difference| {diff:g}")


if __name__ == "__main__":
    main()
