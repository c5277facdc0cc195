"""`fixtalk bench`: where the time goes, and the speed-up over the EDTalk (or LIA) demo's per-frame loop.

Random weights (speed does not depend on them). Three measurements in one run, same model and inputs:

* per module (batch B): E on a driver batch, EMI, FDM (heads + composition), EDI recall, G;
* model only, per frame: fixtalk's render path (source cached, one encoder pass per driver frame, banks
  cached, EEM's dead branch skipped, B frames per call: by default 1 on a CPU and 8 on a GPU, as the Pipeline)
  run as the runtime runs it (frozen traces; on a CPU `workers` frames at once, fixtalk.frame_pool) vs the
  reference loop of EDTalk's demo_EDTalk_V.py (per frame: encode the source and the three driver images, QR
  the banks, run EEM with its dead branch, batch 1, fp32, NCHW, with all of the runtime's threads as torch's
  intra-op threads, as the reference code would use them); then the same cached path by backend: torch fp32,
  torch bf16 (autocast) and onnxruntime fp32 on the CPU (`fixtalk.onnx_backend`, graphs exported for the run,
  frames side by side as with torch);
* file to file: a real clip through the Pipeline (decode, face tracking, crop, animate, paste back, H.264)
  vs the reference demo's file loop (decode, resize to S, the reference model call, encode).
"""

from __future__ import annotations

import argparse
import copy
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from fixtalk.config import get_preset
from fixtalk.frame_pool import FramePool
from fixtalk.models.fixtalk import FixTalk, motion_delta
from fixtalk.models.generator import EEM
from fixtalk.models.lmd import LMD
from fixtalk.options import RuntimeOptions
from fixtalk.runtime import Runtime, cpu_description


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, iters: int = 3, warmup: int = 1) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


@torch.inference_mode()
def reference_frame(model: FixTalk, source: torch.Tensor, lip: torch.Tensor, pose: torch.Tensor,
                    exp: torch.Tensor) -> torch.Tensor:
    """One frame the way EDTalk's demo computes it (Generator.forward per frame, batch 1); for a LIA model
    (one motion, `lip` drives it) the way LIA's run_demo.py does without h_start (its absolute mode)."""
    wa, feats = model.enc(source)
    fdm = model.fdm
    if isinstance(fdm, LMD):
        alpha = fdm.fc(model.enc(lip)[0])
        q, _ = torch.linalg.qr(fdm.direction.weight + 1e-8)  # recomputed every frame in the reference
        latent = wa + torch.sum(torch.diag_embed(alpha) @ q.T, dim=1)
        # The pixel path (rgb_warp, not in the reference code) gets the source's magnitudes, recomputed per frame.
        return _reference_decoder(model, latent, feats, None, source, alpha - fdm.fc(wa))
    lat = {k: model.enc(x)[0] for k, x in (("lip", lip), ("pose", pose), ("exp", exp))}
    alpha = [fdm.lip_fc(fdm.fc(lat["lip"])), fdm.pose_fc(fdm.fc(lat["pose"]))]
    w: torch.Tensor = fdm.direction_lipnonlip.weight
    if fdm.exp_dim:
        alpha.append(fdm.exp_fc(fdm.fc(lat["exp"])))
        w = torch.cat([w, fdm.direction_exp.weight], 1)
    q, _ = torch.linalg.qr(w + 1e-8)  # recomputed every frame in the reference
    a = torch.cat(alpha, -1)
    m = torch.sum(torch.diag_embed(a) @ q.T, dim=1)
    e = torch.sum(torch.diag_embed(a[:, fdm.lip_dim + fdm.pose_dim:]) @ q[:, fdm.lip_dim + fdm.pose_dim:].T, 1) \
        if fdm.exp_dim else None
    # The pixel path (rgb_warp, not in the reference code) costs the same in both loops: the source's own bank
    # weights are recomputed per frame here, as everything else is.
    heads = [fdm.lip_fc, fdm.pose_fc] + ([fdm.exp_fc] if fdm.exp_dim else [])
    delta = a - torch.cat([h(fdm.fc(wa)) for h in heads], -1)
    return _reference_decoder(model, wa + m, feats, e, source, delta)


def _reference_decoder(model: FixTalk, latent: torch.Tensor, feats: list[torch.Tensor], e: torch.Tensor | None,
                       source: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """G as the reference runs it: EEM with its dead branch, then the pixel path when the model has one."""
    dec = model.dec
    x = dec.conv1(dec.input(1), latent)
    rgb = raw = x_half = None
    for k, feat in enumerate(feats):
        x = dec.convs[2 * k + 1](dec.convs[2 * k](x, latent), latent)
        if dec.fineadainresblock is not None:
            eem = cast(EEM, dec.fineadainresblock[k])
            F.leaky_relu(eem.norm1(eem.conv1(feat), e))  # the released code computes and discards this
            feat = eem(feat, e)
        warped, x, raw = dec.to_flows[k](x, latent, feat, raw)
        rgb = dec.to_rgbs[k](warped, rgb)
        x_half = x if k == len(feats) - 2 else x_half
    assert rgb is not None  # the generator has at least one level
    if dec.pixel_warp is None:
        return rgb
    f4 = feats[[f.shape[-1] for f in feats].index(32)]
    return dec.pixel_warp(x_half, latent, source, rgb, f4, delta)[0]


def module_times(model: FixTalk, batch: int, rt: Runtime) -> dict[str, float]:
    """Milliseconds per frame for each module at batch B (source cached), run eagerly on this thread. The model
    as an eager runtime lays it out (`Runtime.prepare`): NHWC is only for the frozen traces."""
    if rt.channels_last:
        eager = Runtime(str(rt.device), rt.dtype_name)
        model, rt = eager.prepare(nchw(model)), eager
    s = model.cfg.size
    x = torch.rand(batch, 3, s, s, device=rt.device) * 2 - 1
    src = rt.run(model.prepare_source, x[:1])
    enc = rt.run(model.encode, x)
    feat = rt.run(model.motion_feature, enc)
    motion = rt.run(model.predict_motion, feat, feat, feat)
    res = {"E (encoder)": timeit(lambda: rt.run(model.encode, x), rt.device)}
    if model.emi is not None:
        res["EMI"] = timeit(lambda: rt.run(model.motion_feature, enc), rt.device)
    res["FDM"] = timeit(lambda: rt.run(lambda: model.fdm.compose(model.predict_motion(feat, feat, feat))),
                        rt.device, iters=10)
    m, e = rt.run(model.fdm.compose, motion)
    st = src.expand(batch)
    maps = st.maps
    edi = model.edi
    if edi is not None:
        i = model.cfg.f4_index
        key = m - st.m
        res["EDI"] = timeit(lambda: rt.run(edi.forward_infer, maps[i], key, st.f_pi), rt.device)
        fused = rt.run(edi.forward_infer, maps[i], key, st.f_pi)
        maps = [*maps[:i], fused, *maps[i + 1:]]
    pixel = (st.image, motion_delta(motion, st.motion)) if model.cfg.rgb_warp else (None, None)
    res["G (generator)"] = timeit(lambda: rt.run(model.dec, st.latent + m, maps, e, st.eem, *pixel), rt.device)
    return {k: 1000 * v / batch for k, v in res.items()}


class CachedPath:
    """fixtalk's per-frame path with the source cached, as the runtime runs it: `step()` renders `frames`
    frames, each call one encoder pass per driver frame, then render, B frames per call. `model` is anything
    with FixTalk's inference methods (the ONNX backend's OnnxFixTalk too). Calls run `rt.workers` at a time,
    each on `rt.threads_each` threads (fixtalk.frame_pool), as animate and live run them."""

    def __init__(self, model: FixTalk, batch: int, rt: Runtime) -> None:
        s = model.cfg.size
        gen = torch.Generator(rt.device).manual_seed(0)
        x = torch.rand(batch, 3, s, s, device=rt.device, generator=gen) * 2 - 1
        src = rt.run(model.prepare_source, x[:1])

        def one() -> None:  # Runtime.features/render: the frozen traces (fixtalk.traced) where the runtime has them
            feat = rt.features(model, x)
            rt.render(model, src, rt.run(model.predict_motion, feat, feat, feat))

        self.pool = FramePool(rt.workers, rt.threads_each) if rt.workers > 1 else None
        # Two calls per worker, so that every worker is busy throughout a step.
        self.calls = 2 * rt.workers if rt.workers > 1 else 1
        self.frames = self.calls * batch
        self._one = one

    def step(self) -> None:
        if self.pool is None:
            self._one()
            return
        for _ in range(self.calls):
            self.pool.submit(self._one)
        self.pool.drain()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def cached_path_ms(model: FixTalk, batch: int, rt: Runtime) -> float:
    """fixtalk ms/frame at batch B with the source cached (`CachedPath`), median of three steps."""
    path = CachedPath(model, batch, rt)
    try:
        return 1000 * timeit(path.step, rt.device) / path.frames
    finally:
        path.close()


def nchw(model: FixTalk) -> FixTalk:
    """A copy of a model that `Runtime.prepare` laid out channels_last (bf16 on a CPU), with NCHW weights again:
    the layout the reference code and an fp32 runtime use."""
    out = copy.deepcopy(model)
    for p in out.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous()
    return out


def all_threads(rt: Runtime) -> int:
    """The threads the runtime was given: `workers` frames at once x `threads_each` threads."""
    return rt.workers * rt.threads_each


def reference_runner(model: FixTalk, rt: Runtime) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(source, driver) -> `reference_frame` run as the reference code runs: fp32 whatever `rt` chose, NCHW
    weights, all of the runtime's threads as torch's intra-op threads (the caller's thread count is restored)."""
    ref_rt = rt if rt.dtype is torch.float32 else Runtime(str(rt.device), "fp32")
    ref_model = nchw(model) if rt.channels_last else model
    threads = all_threads(rt)

    def run(source: torch.Tensor, driver: torch.Tensor) -> torch.Tensor:
        mine = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return cast(torch.Tensor, ref_rt.run(reference_frame, ref_model, source, driver, driver, driver))
        finally:
            torch.set_num_threads(mine)

    return run


def model_only(model: FixTalk, batch: int, rt: Runtime, rounds: int = 5) -> tuple[float, float, float]:
    """(fixtalk ms/frame at batch B with the source cached, reference loop ms/frame, speed-up), medians over
    `rounds` rounds that time one reference frame and one `CachedPath` step back to back; the speed-up is the
    median of the rounds' own ratios, so that a machine whose speed drifts (shared VMs) compares like with like.

    The reference loop runs as the reference code does: fp32 whatever `rt` chose (the speed-up counts fixtalk's
    precision too), NCHW, one frame at a time, with all of the runtime's threads as torch's intra-op threads."""
    one = torch.rand(1, 3, model.cfg.size, model.cfg.size, device=rt.device) * 2 - 1
    run_reference = reference_runner(model, rt)

    def reference() -> None:
        run_reference(one, one)

    path = CachedPath(model, batch, rt)
    try:
        reference()  # warm-up: traces, oneDNN's kernel choice
        path.step()
        ours, ref = [], []
        for _ in range(rounds):
            ref.append(timeit(reference, rt.device, iters=1, warmup=0))
            ours.append(timeit(path.step, rt.device, iters=1, warmup=0) / path.frames)
    finally:
        path.close()
    ratio = float(np.median([r / o for r, o in zip(ref, ours)]))
    return 1000 * float(np.median(ours)), 1000 * float(np.median(ref)), ratio


def backend_times(model: FixTalk, batch: int, rt: Runtime, done: float) -> dict[str, float | str]:
    """Model-only ms/frame of torch fp32, torch bf16 and onnxruntime fp32 on the CPU, same model and inputs
    (`done`: the cached-path time already measured with `rt`, reused for its own dtype)."""
    from fixtalk.runtime import DTYPES

    res: dict[str, float | str] = {}
    plain = None if rt.channels_last else model  # NCHW weights, for onnx: `model` itself, or the fp32 row's copy
    for name in ("fp32", "bf16"):
        if rt.dtype is DTYPES[name]:
            res[f"torch {name}"] = done
            continue
        other = Runtime(str(rt.device), name)
        other.trace, other.workers, other.threads_each = rt.trace, rt.workers, rt.threads_each
        prepared = other.prepare(nchw(model))  # prepare lays a bf16 copy out NHWC in place: never `model` itself
        plain = prepared if plain is None and not other.channels_last else plain
        res[f"torch {name}"] = cached_path_ms(prepared, batch, other)
    if rt.device.type != "cpu":
        res["onnx"] = "n/a (CPU backend)"
        return res
    try:
        from fixtalk.onnx_backend import OnnxRuntime
        from fixtalk.onnx_export import export_graphs
    except ModuleNotFoundError as err:
        res["onnx"] = f"n/a ({err.name} missing: pip install 'fixtalk[onnx]')"
        return res
    plain = nchw(model) if plain is None else plain
    with tempfile.TemporaryDirectory() as tmp:
        export_graphs(plain, Path(tmp) / "graphs", plain.cfg.size)  # model only: at S, as the torch rows draw
        ort_rt = OnnxRuntime(Path(tmp) / "graphs", threads=rt.threads_each)
        ort_rt.workers, ort_rt.threads_each = rt.workers, rt.threads_each
        res["onnx"] = cached_path_ms(ort_rt.prepare(plain), batch, ort_rt)
    return res


def file_to_file(model: FixTalk, rt: Runtime, source: Path, clip: Path, frames: int, batch: int) -> tuple[float, float]:
    """(pipeline frames/s, reference demo loop frames/s) on the same clip, `frames` frames."""
    from fixtalk.checkpoint import Bundle
    from fixtalk.io import VideoWriter, load_image, open_frames
    from fixtalk.pipeline import Pipeline, to_tensor, to_uint8

    pipe = Pipeline(Bundle(model), rt, batch_size=batch, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.prepare_source(source)  # warm-up: loads the dlib models outside the timed region
        drive_path = Path(tmp) / "drv.mp4"
        with VideoWriter(drive_path) as w:  # a clip of exactly `frames` frames for both loops
            with open_frames(clip) as r:
                for k, f in enumerate(r):
                    if k >= frames:
                        break
                    w.write(f)
        t = time.perf_counter()
        src = pipe.prepare_source(source)
        drive = pipe.drive(src, mouth=str(drive_path), pose=str(drive_path), expression=str(drive_path))
        pipe.render(src, drive, Path(tmp) / "ours.mp4")
        ours = drive.frames / (time.perf_counter() - t)

        import cv2

        run_reference = reference_runner(model, rt)
        t = time.perf_counter()
        s = model.cfg.size
        img = cv2.resize(load_image(source), (s, s), interpolation=cv2.INTER_AREA)
        with open_frames(drive_path) as r, VideoWriter(Path(tmp) / "ref.mp4") as w:
            n = 0
            for f in r:
                d = to_tensor(cv2.resize(f, (s, s), interpolation=cv2.INTER_AREA)).to(rt.device)
                out = run_reference(to_tensor(img).to(rt.device), d)
                w.write(to_uint8(out)[0])
                n += 1
        ref = n / (time.perf_counter() - t)
    return ours, ref


def peak_memory(rt: Runtime) -> str:
    if rt.device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(rt.device) / 2**30:.2f} GiB GPU (allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process RSS"


def run(args: argparse.Namespace) -> int:
    from fixtalk.errors import InputError

    try:
        cfg = get_preset(args.preset)
    except KeyError as err:
        raise InputError(None, str(err.args[0])) from None
    if args.size:
        cfg = cfg.replace(size=args.size)
    rt = RuntimeOptions.from_args(args).runtime()
    if args.batch is None:  # as the Pipeline: 8 frames per call on a GPU, 1 on a CPU (batching gains nothing there)
        args.batch = 8 if rt.device.type == "cuda" else 1
    torch.manual_seed(0)
    model = rt.prepare(FixTalk(cfg))
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    print(f"fixtalk bench: {cfg.name} at {cfg.size}px, batch {args.batch}{', compiled' if args.compile else ''}; "
          f"torch {torch.__version__}; {rt.describe()}")
    if rt.device.type == "cpu":
        name, units = cpu_description()
        print(f"CPU: {name}; bf16 units: {', '.join(units) or 'none'}")
    print("per module (eager), ms/frame:")
    for k, v in module_times(model, args.batch, rt).items():
        print(f"  {k:<16} {v:9.1f}")
    ours, ref, speedup = model_only(model, args.batch, rt)
    how = rt.dtype_name + (", traced" if rt.trace else "")
    if rt.workers > 1:
        how += f", {rt.workers} frames at once x {rt.threads_each} thread{'s' * (rt.threads_each > 1)}"
    n = all_threads(rt)
    print(f"model only, ms/frame: fixtalk ({how}) {ours:.1f} | reference loop (fp32, {n} thread{'s' * (n > 1)}) "
          f"{ref:.1f} | speed-up x{speedup:.2f} (median of 5 paired rounds)")
    if not args.no_backends:
        times = backend_times(model, args.batch, rt, ours)
        print("model only by backend, ms/frame (speed-up over the reference loop's median): " + " | ".join(
            f"{k} {v:.1f} (x{ref / v:.2f})" if isinstance(v, float) else f"{k} {v}" for k, v in times.items()))
    if args.clip and args.source:
        fo, fr = file_to_file(model, rt, Path(args.source), Path(args.clip), args.frames, args.batch)
        print(f"file to file ({args.frames} frames), frames/s: pipeline {fo:.2f} | reference demo loop {fr:.2f} "
              f"| speed-up x{fo / fr:.2f}")
    print(f"peak memory: {peak_memory(rt)}")
    return 0
