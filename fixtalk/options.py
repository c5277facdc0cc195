"""Options shared by every command, parsed once (no torch import: `fixtalk --help` stays fast).

`RuntimeOptions` holds the runtime flags (`add_runtime_args` declares them in one place for animate, live,
serve, eval and bench) and builds the `fixtalk.runtime.Runtime` that applies them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fixtalk.runtime import Runtime

DTYPE_NAMES = ("fp32", "bf16", "fp16")


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat's first line; None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window: float = 0.1) -> float:
    """Cores other processes keep busy now: the machine's busy share over `window` seconds (this process sleeps
    meanwhile) times its CPUs, from /proc/stat; the 1-minute load average where that file does not exist.

    Why not the load average everywhere: it lags a minute behind, so a render started right after another
    finished saw the last one's load and took one thread (the README demo: 13.6 s, then 19.4 s on an idle
    machine)."""
    first = _cpu_times()
    if first is not None:
        time.sleep(window)
        second = _cpu_times()
        if second is not None and second[1] > first[1]:
            cpus = os.cpu_count() or 1
            return cpus * (second[0] - first[0]) / (second[1] - first[1])
    try:
        return os.getloadavg()[0]
    except OSError:  # not on this platform
        return 0.0


def choose_threads(requested: int | None = None) -> int:
    """torch's intra-op threads: `requested`, else the cores this process may use minus those others keep busy
    (`busy_cores`).

    Why: on a machine another CPU-bound process shares, every thread beyond the idle cores waits at each
    parallel region for a core; a 50-frame render took 83 s with torch's default 2 threads next to one busy
    process and 8.9 s with 1 (the performance issue).
    """
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, round(cores - busy_cores())))


def choose_parallel(requested: int | None, threads: int, device: str) -> int:
    """Frames rendered at once, each on threads // parallel intra-op threads (fixtalk.frame_pool): `requested`,
    else one per thread on a CPU and 1 on a GPU. Why: at 128 px torch's intra-op threads do not pay (`fixtalk
    live` ran 12.9 fps on one thread, 9.4 on two), while two frames side by side on one thread each reach
    ~23 fps (docs/performance.md)."""
    if requested is not None:
        return requested
    return threads if device == "cpu" else 1


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """The runtime flags every command shares (`add_runtime_args`), as one typed object."""

    device: str = "auto"        # auto (CUDA when present), cpu, cuda, cuda:1, ...
    dtype: str = "auto"         # auto (resolve_dtype), fp32, bf16, fp16
    threads: int | None = None  # torch intra-op threads; None: choose_threads()
    parallel: int | None = None  # frames rendered at once (fixtalk.frame_pool); None: choose_parallel()
    trace: bool = True          # on CPUs, render through a TorchScript trace (fixtalk.traced)
    compile: bool = False       # torch.compile the generator
    batch: int | None = None    # frames per generator call; None: the command's default
    backend: str = "torch"      # torch, or onnx (fixtalk.onnx_backend: onnxruntime, CPU, fp32)
    onnx: str | None = None     # graphs from `fixtalk export-onnx` for the onnx backend; None: exported and cached

    def __post_init__(self) -> None:
        from fixtalk.errors import InputError

        for name in ("threads", "batch", "parallel"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(None, f"--{name} must be >= 1")
        if self.backend not in ("torch", "onnx"):
            raise InputError(None, f"--backend must be torch or onnx, got {self.backend!r}")
        if self.backend == "torch" and self.onnx:
            raise InputError(None, "--onnx DIR needs --backend onnx")
        if self.backend == "onnx":
            if self.device not in ("auto", "cpu"):
                raise InputError(None, f"--backend onnx runs on the CPU; got --device {self.device}")
            if self.dtype not in ("auto", "fp32") or self.compile:
                raise InputError(None, "--backend onnx runs in fp32 without --compile (--dtype bf16/fp16 and "
                                       "--compile are torch's)")

    def runtime(self) -> Runtime:
        """Set torch's threads (process-wide, as torch does; the onnx backend uses as many) and build the Runtime."""
        import torch

        from fixtalk.runtime import Runtime

        threads = choose_threads(self.threads)
        torch.set_num_threads(threads)
        if self.backend == "onnx":
            from fixtalk.onnx_backend import OnnxRuntime

            # Frames side by side as with torch: onnxruntime's small convolutions scale no better over threads
            # (shipped model, 2 cores: 32.8 ms/frame two at once on one thread each, 41.0 one at a time on two).
            workers = choose_parallel(self.parallel, threads, "cpu")
            rt: Runtime = OnnxRuntime(self.onnx, threads=max(1, threads // workers))
        else:
            rt = Runtime(self.device, self.dtype, self.compile)
            rt.trace = self.trace and not self.compile
            workers = choose_parallel(self.parallel, threads, rt.device.type)
        rt.workers, rt.threads_each = workers, max(1, threads // workers)
        torch.set_num_threads(rt.threads_each)  # this thread (tracking, encoding) and each worker alike
        return rt

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RuntimeOptions:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(args, n) for n in names if getattr(args, n, None) is not None})


def add_runtime_args(parser: argparse.ArgumentParser, batch: int | None | bool = None, compile: bool = True,
                     dtype: str = "auto") -> argparse._ArgumentGroup:
    """Declare --device/--dtype/--threads (+ --compile, + --batch unless batch=False) in one "runtime" group.

    `batch` is the command's default frames per call (None: decided later, e.g. by device); `dtype` its default
    precision (eval and bench measure in fp32 unless asked)."""
    r = parser.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    r.add_argument("--dtype", default=dtype, choices=["auto", *DTYPE_NAMES],
                   help=f"default {dtype}; auto: bf16 on GPUs and on CPUs with bf16 units, else fp32; reduced "
                        "precision falls back to fp32 for any non-finite result")
    r.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads (default: the cores other processes leave idle, at least 1)")
    r.add_argument("--no-trace", dest="trace", action="store_false", default=None,
                   help="on a CPU, render eagerly instead of through a TorchScript trace of the renderer")
    r.add_argument("--parallel", type=int, metavar="N",
                   help="frames rendered at once, sharing the threads (default: one per thread on a CPU, "
                        "1 on a GPU)")
    if compile:
        r.add_argument("--compile", action="store_true", help="torch.compile the generator")
    if batch is not False:
        r.add_argument("--batch", type=int, default=batch, metavar="N",
                       help="frames per generator call" + (f" (default {batch})" if batch else
                                                           " (default: 8 on CUDA, 1 on CPU)"))
    return r
