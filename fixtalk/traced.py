"""The per-frame renderer and driver encoder as TorchScript traces on CPUs (issue #11, docs/performance.md).

Why: at 128 px one `FixTalk.render` call dispatches about 2,000 small kernels from Python. Traced once per source
and batch size (the encoder once per batch size), the same kernels run from C++ with no Python between them:
a render took 44-46 ms instead of 49-51 on one thread of the 2-core machines, and 42 ms once the trace is
frozen. The trace records exactly the eager kernels, autocast's casts included (traced under autocast with the
JIT's own autocast pass off), so its frames equal eager frames bit for bit (tests/test_traced.py).

A trace bakes in its input shapes and, for the renderer, one source (its cached state is a constant of the
graph); `Traced` keeps one trace per shape. Only `FixTalk` models on the CPU are traced; anything else goes
through `Runtime.run` as before, and a non-finite result under bf16 is recomputed eagerly in float32.
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fixtalk.models.fdm import Motion

if TYPE_CHECKING:
    from fixtalk.models.fixtalk import SourceState
    from fixtalk.runtime import Runtime


class _Render(nn.Module):
    """render(state, Motion(lip, pose, exp)) with the source's state held: the function that is traced."""

    def __init__(self, model: Any, state: SourceState) -> None:
        super().__init__()
        self.model, self.state = model, state

    def forward(self, lip: Tensor, pose: Tensor, exp: Tensor | None = None) -> Tensor:
        return self.model.render(self.state, Motion(lip, pose, exp)).float()


class _Features(nn.Module):
    """driving_features(frames): the per-frame encoder pass (E, and EMI where the model has it)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor) -> Tensor:
        return self.model.driving_features(frames).float()


def traceable(runtime: Runtime, model: Any) -> bool:
    """Trace only what was checked to trace exactly: FixTalk models on the CPU with the torch backend."""
    from fixtalk.models.fixtalk import FixTalk

    return runtime.trace and runtime.device.type == "cpu" and isinstance(model, FixTalk)


class Traced:
    """A module's forward as TorchScript traces, one per input shape; callable, thread-safe, float32 out."""

    def __init__(self, runtime: Runtime, module: nn.Module) -> None:
        self.runtime, self.module = runtime, module
        self._graphs: dict[tuple[tuple[int, ...] | None, ...], Any] = {}
        self._lock = threading.Lock()

    def __call__(self, *inputs: Tensor | None) -> Tensor:
        args = tuple(self.runtime.move(t) for t in inputs if t is not None)
        graph = self._graph(tuple(None if t is None else tuple(t.shape) for t in inputs), args)
        with torch.inference_mode():
            out = graph(*args)
        if torch.isfinite(out).all() or self.runtime.dtype is torch.float32:
            return out
        return self.runtime.recompute_fp32(self.module, *inputs)

    def _graph(self, key: tuple[tuple[int, ...] | None, ...], args: tuple[Tensor, ...]) -> Any:
        with self._lock:  # two frames side by side must not trace the same shapes twice
            if key not in self._graphs:
                # Freezing makes the weights and the source's cached state constants of the graph, so what
                # depends on them alone is computed once: above all autocast's bf16 copies of the weights,
                # which eager autocast remakes every call (its cast cache skips tensors without grad).
                # optimize_numerics=False keeps the kernels as traced (no conv-add folding): the frames stay
                # equal to eager ones bit for bit. One thread, bf16: render 45.0 -> 42.4 ms, encoder
                # 17.0 -> 16.1 ms (docs/performance.md).
                graph = trace(self.runtime, self.module, args)
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # as jit.trace's, in `trace`
                    self._graphs[key] = torch.jit.freeze(graph.eval(), optimize_numerics=False)
            return self._graphs[key]


def trace(runtime: Runtime, module: nn.Module, args: tuple[Tensor, ...]) -> Any:
    """`module` traced on `args` under the runtime's autocast, casts recorded; not yet frozen."""
    torch._C._jit_set_autocast_mode(False)  # the casts are recorded from eager autocast instead
    with torch.inference_mode(), runtime.autocast(), warnings.catch_warnings():
        # "converting a tensor to a Python boolean": shape checks, fixed for given shapes
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 deprecates jit.trace for torch.compile/export; compile took 61 s to warm up
        # here and rendered no faster (docs/performance.md), so the trace stays until export does.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(module, args, check_trace=False)


def traced_render(runtime: Runtime, model: Any, state: SourceState) -> Traced:
    return Traced(runtime, _Render(model, state))


def traced_features(runtime: Runtime, model: Any) -> Traced:
    return Traced(runtime, _Features(model))
