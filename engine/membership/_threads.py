"""Thread shares of the evidence pools run side by side (issue 13, branch spd9).

:func:`audit._pool_evidence` runs the target's and the dev sets' evidence pools on ``POOL_THREADS`` Python
threads.  Each pool's compiled kernels (Numba ``parallel=True``) and FFTs (pocketfft) would otherwise each start as
many worker threads as there are cores, so two pools on a 2-core machine run 2 x 2 compute threads on 2 cores:
a parallel region's halves wait for each other at its barrier while the other pool holds a core, and OpenMP's
workers spin there.  Inside a pool (:func:`pool_share`), a thread's Numba threads (``numba.set_num_threads``,
which is thread-local) and its FFT workers (:func:`fft_workers`) are the available threads divided by the pools
running now; :func:`rebalance`, called at the registration's chunk boundaries, gives the threads of a finished
pool to the pools still running.  Outside a pool nothing changes (FFT workers ``-1``, Numba's own setting).

The shares change how the work is split between threads, never a value: every kernel computes each row / pair /
image on one thread (no cross-thread reductions), and pocketfft computes each line on one thread
(tests/test_register_speed.py checks 1 and 2 pool threads bit for bit).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

#: Thread shares on (True) or off (False: each pool's kernels and FFTs use all threads, main's behaviour before
#: spd9).  Off by default: under load 16-22 the shares did not lower the judged case's CPU-s in 3 same-run rounds
#: (benchmarks/RESULTS.md, branch spd9); a quiet A/B is pending.  The outputs are the same either way.
SHARES = False

_local = threading.local()
_lock = threading.Lock()
_state = {"pending": 0, "slots": 1, "total": 1}


def fft_workers() -> int:
    """``workers`` for ``scipy.fft`` calls: this pool's share of the threads inside :func:`pool_share`, else -1
    (all cores, the behaviour outside the pools)."""
    return getattr(_local, "fft", -1)


def _share() -> int:
    running = min(_state["slots"], _state["pending"])
    return max(1, _state["total"] // max(1, running))


def _apply(n: int) -> None:
    if getattr(_local, "applied", None) == n:
        return
    import numba

    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    _local.fft = int(n)
    _local.applied = n


def rebalance() -> None:
    """In a pool thread, set this thread's Numba threads and FFT workers to the current share (the available
    threads over the pools running now: the pool threads, or fewer when fewer pools are left); elsewhere a no-op.
    Cheap: call it at chunk boundaries."""
    if getattr(_local, "in_pool", False):
        _apply(_share())


def total_threads() -> int:
    """Threads available to the pools: the calling thread's Numba thread count (``NUMBA_NUM_THREADS`` /
    ``numba.set_num_threads``, which default to the cores)."""
    import numba

    return int(numba.get_num_threads())


def start_pools(n_pools: int, slots: int, total: int) -> None:
    """Declare ``n_pools`` pools about to run on ``slots`` threads sharing ``total`` threads (before the first
    :func:`pool_share`)."""
    with _lock:
        _state.update(pending=int(n_pools), slots=max(1, int(slots)), total=max(1, int(total)))


@contextmanager
def pool_share():
    """Run one evidence pool in this thread with its share of the threads (see the module notes and
    :func:`start_pools`); on exit the thread's Numba threads and FFT workers are restored and the pool counts as
    finished, so its share goes to the pools still running at their next :func:`rebalance`."""
    import numba

    if not SHARES:
        yield
        return
    before = numba.get_num_threads()
    _local.in_pool = True
    try:
        rebalance()
        yield
    finally:
        with _lock:
            _state["pending"] = max(0, _state["pending"] - 1)
        _local.in_pool = False
        _local.applied = None
        _local.fft = -1
        numba.set_num_threads(before)
