"""A/B in one process: the traced bf16 model NHWC end to end (now) vs NHWC encoder only (before), issue #11.

Both variants are built from the same random weights and timed in alternating rounds on one thread, batch 1
(`Runtime.features` + `Runtime.render`, the frozen traces); the ratio is the median of the paired rounds, so the
shared machine's drift cancels (docs/performance.md, "channels_last end to end").

    python scripts/bench_nhwc.py --preset fixtalk-small --rounds 40
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from fixtalk.config import get_preset
from fixtalk.models.fixtalk import FixTalk
from fixtalk.runtime import Runtime


class EncoderOnly(Runtime):
    """The runtime before: frozen traces, but only the encoder's weights channels_last and NCHW inputs."""

    @property
    def channels_last(self) -> bool:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="fixtalk-small")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = FixTalk(get_preset(args.preset)).eval()
    s = base.cfg.size
    drv, img = (torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(k)) * 2 - 1 for k in (1, 2))
    variants = {}
    for name, cls in (("before", EncoderOnly), ("now", Runtime)):
        rt = cls("cpu", "bf16")
        rt.trace = True
        model = rt.prepare(copy.deepcopy(base))
        src = rt.run(model.prepare_source, img)
        feat = rt.features(model, drv)
        motion = rt.run(model.predict_motion, feat, feat, feat)
        variants[name] = (rt, model, src, motion, rt.render(model, src, motion))
    diff = (variants["now"][4] - variants["before"][4]).abs().max().item()
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in variants}
    for _ in range(args.rounds):
        for name, (rt, model, src, motion, _) in variants.items():
            t0 = time.perf_counter()
            rt.features(model, drv)
            t1 = time.perf_counter()
            rt.render(model, src, motion)
            times[name].append((1000 * (t1 - t0), 1000 * (time.perf_counter() - t1)))
    for name, ts in times.items():
        enc, ren = (statistics.median(t[k] for t in ts) for k in (0, 1))
        frame_ms = statistics.median(sum(t) for t in ts)
        print(f"{name}: encoder {enc:.1f} ms, render {ren:.1f} ms, frame {frame_ms:.1f} ms")
    frame = statistics.median(sum(a) / sum(b) for a, b in zip(times["now"], times["before"]))
    render = statistics.median(a[1] / b[1] for a, b in zip(times["now"], times["before"]))
    print(f"now/before, median of {args.rounds} paired rounds: frame {frame:.3f}, render {render:.3f}; "
          f"max |difference| of the frames {diff:.3g} (bf16 rounding in another layout)")


if __name__ == "__main__":
    main()
