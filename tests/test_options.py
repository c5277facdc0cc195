"""RuntimeOptions: one set of runtime flags for every command, the thread choice under load, dtype auto."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fixtalk import options, runtime
from fixtalk.cli import build_parser
from fixtalk.errors import InputError
from fixtalk.options import RuntimeOptions, choose_threads
from tests.conftest import needs_dlib


@pytest.mark.parametrize("command", ["animate", "live", "serve", "eval", "bench"])
def test_every_command_takes_the_runtime_flags(command: str) -> None:
    parser, _ = build_parser()
    required = {"animate": ["--source", "s.png", "--output", "o.mp4"], "eval": ["--videos", "v", "--out", "o.json"],
                "live": ["--source", "s.png", "--driving", "x.mp4"]}.get(command, [])
    args = parser.parse_args([command, *required, "--device", "cpu", "--dtype", "fp32", "--threads", "1"])
    opts = RuntimeOptions.from_args(args)
    assert (opts.device, opts.dtype, opts.threads) == ("cpu", "fp32", 1)


def test_bad_counts_are_one_line_errors() -> None:
    with pytest.raises(InputError, match="--threads must be >= 1"):
        RuntimeOptions(threads=0)
    with pytest.raises(InputError, match="--batch must be >= 1"):
        RuntimeOptions(batch=0)


def test_threads_leave_busy_cores_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = len(os.sched_getaffinity(0))
    assert choose_threads(3) == 3  # asked for: taken as is
    for busy, want in ((0.0, cores), (float(cores), 1), (max(cores - 1.2, 0.0), max(1, min(cores, round(1.2))))):
        monkeypatch.setattr(options, "busy_cores", lambda b=busy: b)
        assert choose_threads() == want  # every core busy: one thread, never zero


def test_busy_cores_from_cpu_times_or_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = os.cpu_count() or 1
    samples = iter([(100.0, 1000.0), (150.0, 1100.0)])  # 50 of 100 jiffies busy in the window
    monkeypatch.setattr(options, "_cpu_times", lambda: next(samples))
    assert options.busy_cores(0.0) == pytest.approx(cpus * 0.5)
    monkeypatch.setattr(options, "_cpu_times", lambda: None)  # no /proc/stat: the load average
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 0.0, 0.0))
    assert options.busy_cores(0.0) == 1.5


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_busy_cores_sees_a_busy_process() -> None:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert options.busy_cores(0.3) > 0.5
    finally:
        spin.kill()
        spin.wait()


def test_runtime_applies_the_threads() -> None:
    before = torch.get_num_threads()
    try:
        rt = RuntimeOptions(device="cpu", dtype="fp32", threads=1).runtime()
        assert torch.get_num_threads() == 1 and rt.dtype is torch.float32
        assert "fp32, 1 threads" in rt.describe()
    finally:
        torch.set_num_threads(before)


def test_parallel_frames_share_the_threads() -> None:
    """--parallel (fixtalk.frame_pool): by default one frame per thread on a CPU, each on threads // parallel."""
    before = torch.get_num_threads()
    try:
        cases = {(2, None): (2, 1), (2, 1): (1, 2), (4, 2): (2, 2), (1, None): (1, 1)}
        for (threads, parallel), (workers, each) in cases.items():
            rt = RuntimeOptions(device="cpu", dtype="fp32", threads=threads, parallel=parallel).runtime()
            assert (rt.workers, rt.threads_each, torch.get_num_threads()) == (workers, each, each)
        line = RuntimeOptions(device="cpu", dtype="fp32", threads=2).runtime().describe()
        assert re.search(r"fp32, 2 frames at once x 1 thread($|,)", line), line
        with pytest.raises(InputError, match="--parallel must be >= 1"):
            RuntimeOptions(parallel=0)
    finally:
        torch.set_num_threads(before)


def test_dtype_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_description", lambda: ("Intel Xeon", ["amx_bf16", "avx512_bf16"]))
    assert runtime.resolve_dtype("auto", cpu) == "bf16"
    monkeypatch.setattr(runtime, "cpu_description", lambda: ("AMD EPYC", ["avx512_bf16"]))
    assert runtime.resolve_dtype("auto", cpu) == "bf16"
    monkeypatch.setattr(runtime, "cpu_description", lambda: ("AMD EPYC 7B12", []))
    assert runtime.resolve_dtype("auto", cpu) == "fp32"
    assert runtime.resolve_dtype("bf16", cpu) == "bf16"  # asked for: taken as is
    assert runtime.Runtime("cpu", "auto").dtype is torch.float32


def test_cli_makes_openmp_threads_sleep_when_idle() -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os; from fixtalk.cli import main; main(['info', 'fixtalk-small', '--no-macs']); " \
           "print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().endswith("PASSIVE")


def test_bf16_renders_what_fp32_renders() -> None:
    """--dtype auto picks bf16 on CPUs with bf16 units: it must not cost quality (>= 40 dB to fp32)."""
    from fixtalk.checkpoint import load_bundle
    from fixtalk.metrics.image import psnr
    from fixtalk.pipeline import SHIPPED, to_uint8

    model = load_bundle(SHIPPED).model.eval()
    g = torch.Generator().manual_seed(0)
    # Smooth images (upsampled noise): the model's flows and masks react to them as to faces, not to static.
    imgs = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, size=128, mode="bicubic")
    src, drv = imgs[:1].clamp(-1, 1), imgs[1:].clamp(-1, 1)
    frames = {}
    for dtype in ("fp32", "bf16"):  # fp32 first: the bf16 runtime lays the encoder's weights out channels_last
        rt = runtime.Runtime("cpu", dtype)
        rt.prepare(model)
        convs = [p for p in model.enc.parameters() if p.dim() == 4 and p.shape[-1] > 1]  # 1x1: both layouts
        assert all(p.is_contiguous(memory_format=torch.channels_last) == (dtype == "bf16") for p in convs)
        state = rt.run(model.prepare_source, src)
        motion = rt.run(lambda: model.predict_motion(*[model.driving_features(drv)] * 3))
        frames[dtype] = to_uint8(rt.run(model.render, state, motion))
    same = min(psnr(a, b) for a, b in zip(frames["fp32"], frames["bf16"]))
    other = psnr(frames["fp32"][0], frames["bf16"][1])  # negative control: different drivers differ
    assert same >= 40.0 and other < same - 5


@needs_dlib
def test_bf16_renders_real_faces_as_fp32_does(faces: Path) -> None:
    """The runtime --dtype auto gives where the CPU has bf16 units (frozen traces, NHWC end to end), on a real
    portrait at the default 256 px render: >= 40 dB to fp32. Smooth noise (above) hides sharp detail moved by a
    pixel: with the pixel path's sampling grid in bf16, this scored 36.8 dB (docs/performance.md)."""
    from fixtalk.metrics.image import psnr
    from fixtalk.pipeline import Pipeline

    source, clip = faces / "images" / "edtalk__identity_source.jpg", str(faces / "videos" / "lia__vox_driving1.mp4")
    threads = torch.get_num_threads()
    frames = {}
    try:
        for dtype in ("bf16", "fp32"):
            pipe = Pipeline.from_pretrained(runtime=RuntimeOptions(dtype=dtype, threads=1).runtime(), progress=False)
            src = pipe.prepare_source(source)
            drive = pipe.drive(src, mouth=clip, pose=clip, expression=clip, max_frames=6)
            frames[dtype] = list(pipe.frames(src, drive, paste_back=False))
            assert pipe.runtime.channels_last == (dtype == "bf16") and pipe.render_size == 256
    finally:
        torch.set_num_threads(threads)
    assert frames["bf16"][0].shape == (256, 256, 3)
    same = min(psnr(a, b) for a, b in zip(frames["fp32"], frames["bf16"]))
    other = psnr(frames["fp32"][0], frames["bf16"][-1])  # negative control: another driver frame
    assert same >= 40.0 and other < same - 5
