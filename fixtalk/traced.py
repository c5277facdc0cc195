"""The per-frame renderer as a TorchScript trace on CPUs (issue #11, docs/performance.md).

Why: at 128 px one `FixTalk.render` call dispatches about 2,000 small kernels from Python. Traced once per
source and batch size, the same kernels run from C++ (no Python between them), which made a frame ~15-30%
cheaper on the 2-core machines, and frames rendered side by side (fixtalk.frame_pool) no longer wait for
each other's Python. The trace records exactly the eager kernels, including autocast's casts (traced under
autocast with the JIT's own autocast pass off), so its frames equal eager frames bit for bit
(tests/test_traced.py).

A trace bakes in one source (its cached state is a constant of the graph) and one batch size; `TracedRender`
keeps one per batch size. Only `FixTalk` models on the CPU are traced; anything else, or a non-finite result
under bf16, goes through `Runtime.run` as before.
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


def traceable(runtime: Runtime, model: Any) -> bool:
    """Trace only what was checked to trace exactly: FixTalk models on the CPU with the torch backend."""
    from fixtalk.models.fixtalk import FixTalk

    return runtime.trace and runtime.device.type == "cpu" and isinstance(model, FixTalk)


class TracedRender:
    """Callable motion -> frames (B x 3 x S x S, float32) of one model and source; thread-safe."""

    def __init__(self, runtime: Runtime, model: Any, state: SourceState) -> None:
        self.runtime, self.model, self.state = runtime, model, state
        self._graphs: dict[tuple[int, bool], Any] = {}
        self._lock = threading.Lock()

    def __call__(self, motion: Motion) -> Tensor:
        args = tuple(t for t in (motion.lip, motion.pose, motion.exp) if t is not None)
        graph = self._graph((motion.lip.shape[0], motion.exp is not None), args)
        with torch.inference_mode():
            out = graph(*args)
        if torch.isfinite(out).all() or self.runtime.dtype is torch.float32:
            return out
        return self.runtime.recompute_fp32(self.model.render, self.state, motion)

    def _graph(self, key: tuple[int, bool], args: tuple[Tensor, ...]) -> Any:
        with self._lock:  # two frames side by side must not trace the same batch size twice
            if key not in self._graphs:
                torch._C._jit_set_autocast_mode(False)  # the casts are recorded from eager autocast instead
                with torch.inference_mode(), self.runtime.autocast(), warnings.catch_warnings():
                    # "converting a tensor to a Python boolean": shape checks, fixed for a given batch size
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    # torch 2.13 deprecates jit.trace for torch.compile/export; compile took 61 s to warm up
                    # here and rendered no faster (docs/performance.md), so the trace stays until export does.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._graphs[key] = torch.jit.trace(_Render(self.model, self.state), args, check_trace=False)
            return self._graphs[key]
