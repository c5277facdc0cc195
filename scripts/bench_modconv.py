"""Per-frame time before/after a change of issue #11: one process, interleaved paired repeats.

"before" swaps the code a change replaced back in; "after" is the code as it is. `--change`:
  modconv  the fused ModulatedConv2d forward (per-sample B x O x C x k x k weights, one grouped conv with
           groups = B) and Blur padding with F.pad before its depthwise conv;
  bias     fused_leaky_relu adding its float32 bias as it is (under bf16 autocast the activations become
           float32 again) instead of in the activation's dtype; only --dtype bf16 differs.
Both run the same model on the same inputs with the source cached (`prepare_source`), timing
  render  `model.render` of B frames from predicted motion: G, where every modulated conv runs (and EDI);
  frame   the whole per-frame path: E + EMI on the B driver frames, FDM, then render.
Times are CPU seconds of this process (`time.process_time`, one thread: other jobs on a shared machine inflate
them less than wall time), per frame; the ratio is the median over repeats of after / before, each repeat
running both variants back to back in alternating order.

    python scripts/bench_modconv.py                          # the shipped fixtalk-small, 128 px, batch 1, fp32
    python scripts/bench_modconv.py --batch 8 --dtype bf16
    python scripts/bench_modconv.py --preset fixtalk-256     # random weights
    python scripts/bench_modconv.py --change bias --batch 8 --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn.functional as F

from fixtalk.config import get_preset
from fixtalk.models import layers
from fixtalk.models.fixtalk import FixTalk
from fixtalk.runtime import Runtime


def fused_forward(self: layers.ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The fused ModulatedConv2d.forward as it was before the change (kept here only for the comparison)."""
    b, c, h, w = x.shape
    k, o = self.kernel_size, self.out_channels
    s = self.modulation(style).view(b, 1, c, 1, 1)
    weight = self.scale * self.weight * s  # B x O x C x k x k
    if self.demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, o, 1, 1, 1)
    x = x.reshape(1, b * c, h, w)
    if self.upsample:
        weight = weight.transpose(1, 2).reshape(b * c, o, k, k)
        out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=b)
        return self.blur(out.view(b, o, out.shape[-2], out.shape[-1]))
    out = F.conv2d(x, weight.reshape(b * o, c, k, k), padding=self.padding, groups=b)
    return out.view(b, o, out.shape[-2], out.shape[-1])


def padded_blur(self: layers.Blur, x: torch.Tensor) -> torch.Tensor:
    """Blur.forward as it was: F.pad, then the depthwise conv."""
    p0, p1 = self.pad
    c = x.shape[1]
    return F.conv2d(F.pad(x, (p0, p1, p0, p1)), layers.fir_weight(self.kernel, c, x.dtype), groups=c)


@contextmanager
def before() -> Iterator[None]:
    saved = layers.ModulatedConv2d.forward, layers.Blur.forward
    layers.ModulatedConv2d.forward, layers.Blur.forward = fused_forward, padded_blur  # type: ignore[method-assign]
    try:
        yield
    finally:
        layers.ModulatedConv2d.forward, layers.Blur.forward = saved  # type: ignore[method-assign]


def float32_bias(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2,
                 scale: float = 2**0.5) -> torch.Tensor:
    """fused_leaky_relu as it was: the bias as it is stored (float32)."""
    if bias.ndim == 1 and x.ndim > 2:
        bias = bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x + bias, negative_slope) * scale


@contextmanager
def before_bias() -> Iterator[None]:
    saved = layers.fused_leaky_relu
    layers.fused_leaky_relu = float32_bias
    try:
        yield
    finally:
        layers.fused_leaky_relu = saved


BEFORE: dict[str, Callable[[], AbstractContextManager[None]]] = {"modconv": before, "bias": before_bias}


def load(preset: str | None) -> FixTalk:
    if preset is None:
        from fixtalk.checkpoint import load_bundle
        from fixtalk.pipeline import SHIPPED

        return load_bundle(SHIPPED).model
    torch.manual_seed(0)
    return FixTalk(get_preset(preset))


def workloads(model: FixTalk, rt: Runtime, batch: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The two timed calls, on fixed random inputs in [-1, 1], the source state computed once."""
    s = model.cfg.size
    g = torch.Generator().manual_seed(0)
    source, drivers = (torch.rand(n, 3, s, s, generator=g) * 2 - 1 for n in (1, batch))
    state = rt.run(model.prepare_source, source)
    feat = rt.run(model.driving_features, drivers)
    motion = rt.run(model.predict_motion, feat, feat, feat)

    def frame() -> torch.Tensor:
        f = rt.run(model.driving_features, drivers)
        return rt.run(model.render, state, rt.run(model.predict_motion, f, f, f))

    return {"render": lambda: rt.run(model.render, state, motion), "frame": frame}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", help="random weights of this preset (default: the shipped model)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--change", choices=sorted(BEFORE), default="modconv")
    args = ap.parse_args()
    variants = {"before": BEFORE[args.change], "after": nullcontext}
    torch.set_num_threads(1)
    rt = Runtime("cpu", args.dtype)
    model = rt.prepare(load(args.preset))
    work = workloads(model, rt, args.batch)
    cpu: dict[tuple[str, str], list[float]] = {(w, v): [] for w in work for v in variants}
    out = {}
    for v, variant in variants.items():
        with variant():
            out[v] = work["render"]()  # also the warm-up
            work["frame"]()
    for i in range(args.repeats):
        for w, fn in work.items():
            for v in sorted(variants, reverse=i % 2 == 1):  # alternate the order: drifts cancel in the ratio
                with variants[v]():
                    t = time.process_time()
                    fn()
                    cpu[w, v].append(1000 * (time.process_time() - t) / args.batch)
    diff = (out["after"] - out["before"]).abs().max().item()
    print(f"change {args.change}: {model.cfg.name} {model.cfg.size}px, batch {args.batch}, {args.dtype}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread, {args.repeats} repeats; "
          f"max |after - before| of a render = {diff:.1e}")
    for w in work:
        b, a = cpu[w, "before"], cpu[w, "after"]
        ratio = statistics.median(x / y for x, y in zip(a, b))
        print(f"  {w:6s} cpu ms/frame, median (min): before {statistics.median(b):7.1f} ({min(b):6.1f})   "
              f"after {statistics.median(a):7.1f} ({min(a):6.1f})   after/before {ratio:.3f}")


if __name__ == "__main__":
    main()
