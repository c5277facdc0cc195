"""Training-step benchmark: fp32 vs bf16 autocast (channels_last) on the same batch, with a profile of the step.

    python scripts/bench_train_step.py [--data DATA] [--preset fixtalk-small] [--batch 8] [--steps 5] [--threads 2]

Prints the CPU's name and its bf16 flags (AMX, AVX512-BF16), then for each precision the seconds per step
(median of `--steps` after one warm-up) of a recon step: forward_train, L1 + MobileNetV2 perceptual pyramid
(+ the landmark flow term), backward, Adam. The profile splits one fp32 step into data loading (with --data:
one batch from the PairDataset), generator forward, perceptual forward, backward and optimiser. Run it alone:
another torch process on the same cores distorts every number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

from fixtalk import losses as L
from fixtalk.config import get_preset
from fixtalk.models.backbones import load_backbone
from fixtalk.models.fixtalk import FixTalk
from fixtalk.runtime import cpu_description


def cpu_info() -> dict[str, object]:
    name, units = cpu_description()
    return {"cpu": name, "bf16_units": units, "threads": torch.get_num_threads()}


def make_batch(args: argparse.Namespace, size: int) -> tuple[dict[str, torch.Tensor], float | None]:
    """A real batch from --data (and the seconds it took to load), else random images and landmarks."""
    if args.data:
        from fixtalk.train.clipstore import read_clips
        from fixtalk.train.data import PairDataset

        ds = PairDataset(read_clips(args.data, "train")[0], size)
        t0 = time.perf_counter()
        items = [ds[i] for i in range(args.batch)]
        load = time.perf_counter() - t0
        return {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "bad"}, load
    g = torch.Generator().manual_seed(0)
    img = lambda: torch.rand(args.batch, 3, size, size, generator=g) * 2 - 1  # noqa: E731
    lm = torch.rand(args.batch, 68, 2, generator=g) * (size - 20) + 10
    return {"source": img(), "driver": img(), "source_landmarks": lm, "driver_landmarks": lm + 1}, None


def step_fn(model: FixTalk, backbone: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
            bf16: bool, times: dict[str, float] | None = None):  # type: ignore[no-untyped-def]
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    t = [time.perf_counter()]
    with ctx:
        out = model.forward_train(batch["source"], batch["driver"], use_source_address=True)
        t.append(time.perf_counter())
        loss = L.reconstruction_l1(out.image.float(), batch["driver"])
        loss = loss + L.perceptual_pyramid(out.image.float(), batch["driver"], backbone)
        if out.grid is not None:
            loss = loss + 10 * L.landmark_flow_loss(out.grid, batch["driver_landmarks"], batch["source_landmarks"])
        t.append(time.perf_counter())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t.append(time.perf_counter())
    opt.step()
    t.append(time.perf_counter())
    if times is not None:
        for k, a, b in zip(("generator", "losses (perceptual)", "backward", "optimiser"), t, t[1:]):
            times[k] = round(b - a, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a `fixtalk prep` folder (real batch + data-loading time); else random")
    ap.add_argument("--preset", default="fixtalk-small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    print(json.dumps(cpu_info()))
    batch, load = make_batch(args, cfg.size)
    backbone = load_backbone("mobilenet_v2")
    results = {}
    for name, bf16, channels_last in (("fp32", False, False), ("bf16+channels_last", True, True)):
        model = FixTalk(cfg).train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for prm in model.parameters():  # 4-D weights only: the modulated convs keep 5-D per-sample weights
            if prm.ndim == 4:
                prm.data = prm.data.contiguous(memory_format=fmt)
        b = {k: v.contiguous(memory_format=fmt) if v.ndim == 4 else v for k, v in batch.items()}
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        step_fn(model, backbone, opt, b, bf16)  # warm-up (oneDNN primitive creation)
        secs = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step_fn(model, backbone, opt, b, bf16)
            secs.append(time.perf_counter() - t0)
        results[name] = statistics.median(secs)
        print(json.dumps({"precision": name, "batch": args.batch, "s_per_step": round(results[name], 3)}))
    times: dict[str, float] = {} if load is None else {"data loading (one batch, 1 process)": round(load, 3)}
    model = FixTalk(cfg).train()
    step_fn(model, backbone, torch.optim.Adam(model.parameters(), lr=1e-4), batch, False, times)
    print(json.dumps({"profile_fp32_s": times}))
    print(json.dumps({"bf16_speedup": round(results["fp32"] / results["bf16+channels_last"], 2),
                      "faster": min(results, key=results.__getitem__)}))


if __name__ == "__main__":
    main()
