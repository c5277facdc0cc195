"""fixtalk.frame_pool: frames rendered side by side come back in order, bounded, on their own threads."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from fixtalk.frame_pool import FramePool


def test_results_keep_submission_order_when_jobs_finish_out_of_order() -> None:
    pool = FramePool(workers=3)
    delays = [0.05, 0.0, 0.03, 0.0, 0.02, 0.0]  # later jobs finish first

    def job(i: int) -> int:
        time.sleep(delays[i])
        return i

    got = []
    for i in range(len(delays)):
        got += pool.submit(job, i)
    got += pool.drain()
    pool.close()
    assert got == list(range(len(delays)))


def test_at_most_workers_in_flight_and_they_overlap() -> None:
    lock, running, peak = threading.Lock(), [0], [0]

    def job() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    pool = FramePool(workers=2)
    for _ in range(8):
        pool.submit(job)
        assert len(pool._pending) <= 2
    pool.drain()
    pool.close()
    assert peak[0] == 2  # two jobs did run at once, never three


def test_one_worker_runs_inline_and_workers_set_their_threads() -> None:
    inline = FramePool(workers=1)
    assert inline.submit(threading.get_ident) == [threading.get_ident()]
    pool = FramePool(workers=2, threads_each=1)
    pool.submit(lambda: (threading.get_ident(), torch.get_num_threads()))
    pool.submit(lambda: (threading.get_ident(), torch.get_num_threads()))
    done = pool.drain()
    pool.close()
    assert all(ident != threading.get_ident() and n == 1 for ident, n in done)


def test_a_failing_job_raises_in_the_caller() -> None:
    pool = FramePool(workers=2)

    def bad() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):  # from submit() if it already failed, else from drain()
        pool.submit(bad)
        pool.drain()
    pool.close()
    with pytest.raises(ValueError, match=">= 1"):
        FramePool(workers=0)


def test_switch_interval_lowered_while_pools_run_and_restored_by_the_last() -> None:
    import sys

    before = sys.getswitchinterval()
    a, b = FramePool(workers=2), FramePool(workers=2)
    assert sys.getswitchinterval() <= 5e-4 < before
    a.close()
    assert sys.getswitchinterval() <= 5e-4  # b still runs
    b.close()
    b.close()  # closing twice changes nothing
    assert sys.getswitchinterval() == before
