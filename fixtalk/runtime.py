"""Device, dtype, threads, autocast, no-grad and compile: the one runtime layer between models and interfaces.

Models never choose a device or dtype (docs/architecture.md). Every command's runtime flags parse into one
`fixtalk.options.RuntimeOptions`, which builds the `Runtime`. `Runtime.run` evaluates
a model call in inference mode under autocast for bf16/fp16 and, when a tensor comes out non-finite (fp16
overflow on older GPUs: "black frames"), warns once and recomputes that call in float32 (`fallbacks` counts them).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
M = TypeVar("M", bound=nn.Module)


@functools.cache  # read once: --dtype auto and the first printed line both ask
def cpu_description() -> tuple[str, list[str]]:
    """(CPU model name, its bf16 units among amx_bf16 / avx512_bf16) from /proc/cpuinfo ("?" elsewhere)."""
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.is_file() else ""
    lines = text.splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return name, [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if hasattr(obj, "__dataclass_fields__"):
        return [t for f in obj.__dataclass_fields__ for t in _tensors(getattr(obj, f))]
    return []


def _float32(obj: Any) -> Any:
    """Outputs leave the runtime in float32, so cached state mixes freely with an fp32 fallback."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, list):
        return [_float32(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_float32(o) for o in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return type(obj)(**{f: _float32(getattr(obj, f)) for f in obj.__dataclass_fields__})
    return obj


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """`auto`: bf16 on a CUDA GPU that has it (fp16 on older ones); on a CPU, bf16 where it has bf16 units (AMX
    or AVX512-BF16: oneDNN's bf16 kernels beat fp32 there; docs/performance.md has the numbers), else fp32.
    Renders in bf16 stay within 40 dB of fp32 (tests/test_options.py)."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_description()[1] else "fp32"
    return "fp32"


def channels_last(module: nn.Module) -> None:
    """Lay the module's 4-D weights out channels_last, in place (`Runtime.prepare`, bf16 on CPUs): oneDNN's bf16
    convolutions then keep the activations NHWC. Not in fp32: the parity tests' rounding."""
    for p in module.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)


class Runtime:
    # `prepare` hands back the torch module itself (fixtalk.onnx_backend's stand-in serves graphs instead): what
    # needs torch weights (--tune) checks this before loading.
    serves_torch = True

    def __init__(self, device: str = "auto", dtype: str = "fp32", compile: bool = False) -> None:
        from fixtalk.errors import InputError

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype not in (*DTYPES, "auto"):
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise InputError(None, f"unknown device {device!r}: use auto, cpu, cuda, cuda:1, mps, ...") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(None, f"device {device!r}: CUDA is not available here (use --device cpu)")
        self.dtype_name = resolve_dtype(dtype, self.device)
        self.dtype = DTYPES[self.dtype_name]
        self.compile = compile
        self._lock = threading.Lock()
        self.fallbacks = 0  # calls recomputed in float32 after a non-finite reduced-precision result
        self.trace = False  # render through fixtalk.traced on CPUs (RuntimeOptions.runtime sets it)
        self._traces: OrderedDict[tuple[Any, ...], Any] = OrderedDict()  # fixtalk.traced, oldest first
        self.render_size: int | None = None  # side of the frames drawn (the Pipeline sets it; onnx exports at it)
        self.workers = 1  # frames rendered at once (fixtalk.frame_pool; RuntimeOptions.runtime sets it)
        self.threads_each = 1  # torch threads of each of them
        self._warned = False

    def prepare(self, module: M) -> M:
        module = module.to(self.device).eval().requires_grad_(False)
        # NHWC end to end where frozen traces run the model: the modulated convs lay their weights out like their
        # input (`ModulatedConv2d._conv`), a constant in the trace; frames 8-13% faster at 128 and 256 px
        # (docs/performance.md, "channels_last end to end"). Eagerly that layout would be remade every call (G
        # 9-25% slower at 256 px), so without traces only the encoder, whose weights are plain: E ~20% faster.
        from fixtalk.traced import traceable

        enc = getattr(module, "enc", None)
        if self.channels_last and traceable(self, module):
            channels_last(module)
        elif self.device.type == "cpu" and self.dtype is torch.bfloat16 and isinstance(enc, nn.Module):
            channels_last(enc)
        if self.compile:
            # The decoder is where the time goes; compiling it alone keeps warm-up short.
            dec = getattr(module, "dec", None)
            if dec is not None:
                module.dec = torch.compile(dec, dynamic=False)  # type: ignore[assignment]  # a callable Module wrapper
        return module

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """torch.autocast at this runtime's reduced precision; nothing in float32."""
        if self.dtype is torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def render(self, model: Any, state: Any, motion: Any) -> torch.Tensor:
        """model.render(state, motion) in float32: through a TorchScript trace per source where `trace` is on
        (fixtalk.traced; the last few sources' traces are kept), else `run`."""
        from fixtalk.traced import traceable, traced_render

        if not traceable(self, model):
            return self.run(model.render, state, motion)
        fn = self._traced(("render", id(model), id(state)), lambda: traced_render(self, model, state))
        return fn(motion.lip, motion.pose, motion.exp)

    def features(self, model: Any, frames: torch.Tensor) -> torch.Tensor:
        """model.driving_features(frames) in float32, traced like `render` where `trace` is on."""
        from fixtalk.traced import traceable, traced_features

        if not traceable(self, model):
            return _float32(self.run(model.driving_features, frames))
        return self._traced(("features", id(model)), lambda: traced_features(self, model))(frames)

    def _traced(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        with self._lock:
            fn = self._traces.pop(key, None) or make()
            self._traces[key] = fn  # most recent last; the oldest beyond 8 dropped
            while len(self._traces) > 8:
                self._traces.popitem(last=False)
        return fn

    @property
    def channels_last(self) -> bool:
        """Whether the model runs NHWC end to end (`prepare`): bf16 on a CPU, through frozen traces."""
        return self.device.type == "cpu" and self.dtype is torch.bfloat16 and self.trace

    def move(self, obj: Any) -> Any:
        """A tensor on this runtime's device; images and maps (4-D, floating) channels_last where the model runs
        so. The encoder's first conv is 1x1, whose weight is NCHW and NHWC at once, so its output, the finest
        source map, takes the image's layout: an NCHW finest map cost ~10 ms a frame in grid_sample at 256 px."""
        if not isinstance(obj, torch.Tensor):
            return obj
        obj = obj.to(self.device)
        if self.channels_last and obj.dim() == 4 and obj.is_floating_point():
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        args = tuple(self.move(a) for a in args)
        with torch.inference_mode():
            if self.dtype is torch.float32:
                return fn(*args)
            with torch.autocast(self.device.type, dtype=self.dtype):
                out = fn(*args)
            if all(torch.isfinite(t).all() for t in _tensors(out) if t.is_floating_point()):
                return _float32(out)
            return self.recompute_fp32(fn, *args)

    def recompute_fp32(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A reduced-precision result was not finite: count it, warn once, and run fn in float32."""
        self.fallbacks += 1
        if not self._warned:
            log.warning("non-finite values in %s; recomputing in float32 (use --dtype fp32 to skip %s)",
                        self.dtype, self.dtype)
            self._warned = True
        with torch.inference_mode():
            return fn(*args)


    def describe(self) -> str:
        """What was chosen, for the commands' first line: device, dtype, threads (and glibc's mmap threshold when
        set, fixtalk.cli.entry)."""
        where = cpu_description()[0] if self.device.type == "cpu" else str(self.device)
        threads = f"{torch.get_num_threads()} threads"
        if self.workers > 1:
            threads = f"{self.workers} frames at once x {self.threads_each} thread{'s' * (self.threads_each > 1)}"
        return f"{self.device.type} ({where}), {self.dtype_name}, {threads}{malloc_note()}"


def malloc_note() -> str:
    """", malloc mmap_threshold=32 MiB" (the tunable's value) when GLIBC_TUNABLES sets glibc's mmap threshold,
    as the `fixtalk` command does (fixtalk.cli.entry); "" otherwise."""
    for item in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = item.partition("=")
        if name == "glibc.malloc.mmap_threshold":
            try:
                return f", malloc mmap_threshold={int(value, 0) / 2**20:g} MiB"  # glibc reads it with strtoul(.., 0)
            except ValueError:
                return f", malloc mmap_threshold={value}"
    return ""

