"""Threads, BLAS and memory settings for the CPU kernels.  Skip on first reading.

NumPy's ufuncs run on one core; :func:`parallel_for` spreads large elementwise work over a
small thread pool (NumPy releases the GIL inside ufuncs).  :func:`blas_threads` and
:func:`single_threaded_blas` steer the OpenBLAS that NumPy uses, and
:func:`keep_freed_memory` keeps glibc from handing large freed blocks back to the kernel.
The fused CPU kernels (:mod:`minimlp.kernels.cpu`) and the benchmark use them.  Lesson 11
says why each pays.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "CHUNK",
    "num_threads",
    "parallel_for",
    "parallel_chunks",
    "set_num_threads",
    "blas_threads",
    "single_threaded_blas",
    "keep_freed_memory",
]


# --------------------------------------------------------------------------------------
# Threads for elementwise work.  BLAS already uses every core for matrix products, but a
# NumPy ufunc runs on one.  Large elementwise kernels are cut into cache-sized pieces that
# a small pool works through; NumPy releases the GIL inside ufuncs, so they run in parallel.
# --------------------------------------------------------------------------------------
_pool: ThreadPoolExecutor | None = None


def num_threads() -> int:
    """Threads for elementwise work: $MINIMLP_NUM_THREADS, else the usable CPU count."""
    env = os.environ.get("MINIMLP_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="minimlp")
    return _pool


# Elements per piece (1 MiB of float32).  Each NumPy call on a piece costs one to two
# microseconds of Python and ufunc dispatch, and holds the GIL meanwhile, so with two
# threads the pieces must be long: the GELU kernel (30 calls per piece) measured 6.5 ns
# per element at 64K elements and 4.5 at 256K on two cores (whole ff_tiny and ff_fmnist
# steps 5-9% faster), even though its five arrays then sit in L3 rather than L2.
CHUNK = 262144


def parallel_for(body: Callable[[int, int], None], n: int, grain: int = 1) -> None:
    """Run ``body(lo, hi)`` over ``[0, n)`` in pieces of ``grain`` items, on all threads.

    The threads (the calling one included) take pieces in turn from a shared counter
    until none are left, so a thread that the operating system pauses, on a machine
    busy with other work, does not hold the others up: they take over its share.
    Exceptions from any piece are re-raised here.
    """
    pieces = -(-n // grain)
    threads = min(num_threads(), pieces)
    counter = itertools.count()  # next() on it is atomic under the GIL
    failed: list[BaseException] = []

    def work() -> None:
        while not failed:
            p = next(counter)
            if p >= pieces:
                return
            try:
                body(p * grain, min((p + 1) * grain, n))
            except BaseException as exc:
                failed.append(exc)
                raise

    if threads <= 1:
        work()
        return
    futures = [_get_pool().submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        for f in futures:
            f.result()  # wait for every thread; re-raises a piece's exception here


def parallel_chunks(kernel: Callable[..., None], *arrays: np.ndarray, chunk: int = CHUNK) -> None:
    """Run ``kernel(*pieces)`` over matching 1-D pieces of same-sized contiguous arrays.

    ``kernel`` writes its results into some of the pieces (they are views), so the
    arrays hold the answer when this returns.
    """
    flat = [a.reshape(-1) for a in arrays]  # views: the arrays are C-contiguous
    parallel_for(lambda lo, hi: kernel(*(f[lo:hi] for f in flat)), flat[0].size, chunk)


def set_num_threads(n: int | None) -> None:
    """Use ``n`` threads for elementwise work from now on (None: back to the default)."""
    global _pool
    if n is None:
        os.environ.pop("MINIMLP_NUM_THREADS", None)
    else:
        os.environ["MINIMLP_NUM_THREADS"] = str(max(1, int(n)))
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None


# --------------------------------------------------------------------------------------
# The BLAS that NumPy uses.  NumPy's wheels bundle OpenBLAS, which starts one thread per
# core.  Its C API can report and change that number at run time; we call it directly
# (found in the process's memory map), which works for the bundled library and for a
# system OpenBLAS alike, and report None where the BLAS is something else.
# --------------------------------------------------------------------------------------
_OPENBLAS_PREFIXES = ("scipy_openblas", "openblas")
_OPENBLAS_SUFFIXES = ("64_", "_64_", "")


def _openblas() -> Any:
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:  # not Linux
        return None
    for path in sorted(paths, key=lambda p: "numpy" not in p):  # NumPy's own copy first
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _OPENBLAS_PREFIXES:
            for suffix in _OPENBLAS_SUFFIXES:
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype = ctypes.c_int
                    put.argtypes = [ctypes.c_int]
                    return get, put
    return None


_blas_api: Any = ()  # () until looked up, then (get, set) or None


def _openblas_api() -> Any:
    global _blas_api
    if _blas_api == ():
        _blas_api = _openblas()
    return _blas_api


def blas_threads(n: int | None = None) -> int | None:
    """The number of OpenBLAS threads NumPy's matrix products use; with ``n``, set it first.

    Returns None when NumPy's BLAS is not OpenBLAS (or cannot be found).
    """
    api = _openblas_api()
    if api is None:
        return None
    get, put = api
    if n is not None:
        put(max(1, int(n)))
    return int(get())


@contextmanager
def single_threaded_blas() -> Iterator[bool]:
    """Within the block, each BLAS call runs on the thread that makes it.

    Yields False (and changes nothing) when the BLAS cannot be controlled; then a caller
    should not run BLAS calls on several threads of its own.
    """
    api = _openblas_api()
    if api is None:
        yield False
        return
    get, put = api
    previous = int(get())
    if previous != 1:
        put(1)
    try:
        yield True
    finally:
        if previous != 1:
            put(previous)


# --------------------------------------------------------------------------------------
# Memory.  A training step allocates the same large activation arrays every step and
# frees them again.  glibc hands large freed blocks back to the kernel (munmap, or by
# trimming the top of the heap), so the next step page-faults them in again, zero-filled:
# about 24,000 page faults per ff_fmnist step (batch 128) on our machine, and about 7% of
# the step's time.  Raising glibc's thresholds keeps freed blocks in the process for reuse.
# --------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS.

    Process-wide: the process then holds on to its peak memory.  The commands (e.g.
    ``minimlp.bench``) call it; a library user can.  ``MINIMLP_KEEP_MEMORY=0`` turns it
    off.  Returns True when applied (Linux with glibc), False elsewhere.
    """
    if os.environ.get("MINIMLP_KEEP_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    # Some glibc versions refuse an mmap threshold above 32 MiB; then 32 MiB it is.
    mmap_ok = any(mallopt(_M_MMAP_THRESHOLD, size) for size in (1 << 30, 32 << 20))
    trim_ok = bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return mmap_ok and trim_ok
