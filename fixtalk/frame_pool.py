"""Render several frames at once, each on its own core, and hand them back in order (issue #11, docs/performance.md).

Why: at 128 px the model's convolutions are too small for torch's intra-op threads to pay. On the 2-core
machines of this project `fixtalk live` ran at 12.8 fps on one thread and 9.4 fps on two, while two frames
rendered side by side on one thread each ran at 26-27 fps (model only). A frame's rendering depends on
nothing but its own motion and the cached source, so frames can be rendered independently; only tracking
and the stream's state stay on the caller's thread.

    pool = FramePool(workers=2)               # workers=1 runs every job inline, as before
    for job in jobs:
        encoded = pool.spawn(encode, job)     # a Future; jobs start in submission order
        done = pool.submit(render, encoded)   # finished results at the head of the queue, oldest first
    rest = pool.drain()                       # wait for the others

torch releases the GIL inside its kernels, so Python threads run the kernels in parallel. Between kernels a
thread needs the GIL back, and CPython lets a thread keep it up to its switch interval (5 ms) when another
asks: a render dispatches ~2,000 kernels, so the pool lowers the interval to 0.5 ms while it runs (two renders
side by side, with tracking on the caller's thread: 19-20 -> 23 fps on the 2-core machines). torch's
intra-op thread count is read per OS thread under OpenMP (a new thread starts from OMP_NUM_THREADS or the
core count), so every worker sets its own (`threads_each`) when it starts.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

SWITCH_INTERVAL = 5e-4  # seconds; CPython's default is 5e-3 (see the module docstring)
_open = {"pools": 0, "interval": 0.0}  # pools with threads now open, and the interval before the first
_open_lock = threading.Lock()


def _pool_opened() -> None:
    with _open_lock:
        if _open["pools"] == 0:
            _open["interval"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_open["interval"], SWITCH_INTERVAL))
        _open["pools"] += 1


def _pool_closed() -> None:
    """The last pool to close restores the interval (pools may overlap, e.g. two requests in `serve`)."""
    with _open_lock:
        _open["pools"] -= 1
        if _open["pools"] == 0:
            sys.setswitchinterval(_open["interval"])


class FramePool:
    """At most `workers` jobs in flight; results come back in submission order."""

    def __init__(self, workers: int = 1, threads_each: int = 1) -> None:
        if workers < 1 or threads_each < 1:
            raise ValueError(f"workers and threads_each must be >= 1, got {workers} and {threads_each}")
        self.workers = workers
        self._pending: deque[Future[Any]] = deque()
        if workers > 1:
            _pool_opened()
        self._executor = (None if workers == 1 else
                          ThreadPoolExecutor(workers, thread_name_prefix="fixtalk-frame",
                                             initializer=torch.set_num_threads, initargs=(threads_each,)))

    def submit(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """Queue fn(*args); return the results that are finished at the head of the queue, oldest first.

        Blocks while `workers` jobs are in flight, so a caller faster than the workers (a video file read
        as fast as possible) cannot queue without bound. With one worker, fn runs now, on this thread."""
        if self._executor is None:
            return [fn(*args)]
        out = []
        if len(self._pending) >= self.workers:
            out.append(self._pending.popleft().result())
        self._pending.append(self._executor.submit(fn, *args))
        return out + self.ready()

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Start fn(*args) without queuing its result (a stage whose output later jobs read). The threads take
        jobs in submission order, so a job may wait on the future of any job spawned or submitted before it
        (never after: that could deadlock). With one worker, fn runs now, on this thread."""
        if self._executor is None:
            done: Future[Any] = Future()
            done.set_result(fn(*args))
            return done
        return self._executor.submit(fn, *args)

    def ready(self) -> list[Any]:
        """Finished results at the head of the queue (never waits; an error in a job is raised here)."""
        out = []
        while self._pending and self._pending[0].done():
            out.append(self._pending.popleft().result())
        return out

    def drain(self) -> list[Any]:
        """Wait for every job in flight; their results, in order."""
        out = []
        while self._pending:
            out.append(self._pending.popleft().result())
        return out

    def close(self) -> None:
        """Wait for the jobs in flight and stop the threads (results not yet taken are dropped)."""
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
            _pool_closed()
