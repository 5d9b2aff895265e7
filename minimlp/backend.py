"""The array backend: NumPy by default, CuPy on request.

All math in minimlp is written once against an array module called ``xp``.  On the CPU
``xp`` is NumPy; with ``device="gpu"`` it is CuPy, when CuPy and a GPU are both there.
CuPy is never imported at module level: it is imported the first time a GPU is asked
for, and code that only sees arrays finds their module with :func:`array_module`.

This module also holds the two numerical helpers that NumPy lacks and every backend
needs: the error function (W. J. Cody's rational approximations, accurate to float64
rounding) and a small thread pool that spreads large elementwise work over the CPU
cores (NumPy's ufuncs run on one core and release the GIL).  Lesson 3 explains erf and
GELU; lesson 11 the GPU.
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "Backend",
    "get_backend",
    "array_module",
    "is_gpu_array",
    "to_numpy",
    "host_syncs",
    "erf",
    "erfc",
    "num_threads",
    "parallel_for",
    "parallel_chunks",
    "set_num_threads",
    "blas_threads",
    "single_threaded_blas",
    "keep_freed_memory",
]


@dataclass(frozen=True)
class Backend:
    """Which array library runs the math, and why it was chosen."""

    name: str  # "numpy" or "cupy"
    xp: ModuleType
    reason: str  # one line for logs: what was asked for and what we got

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# The CuPy wheels bring neither NVRTC (which compiles every kernel), cuBLAS, cuRAND nor
# CUDA's headers: the [ctk] extra installs NVIDIA's wheels of them (the cuda-toolkit package).
CUPY_INSTALL = ('pip install "cupy-cuda12x[ctk]" for CUDA 12 (or cupy-cuda12x with nvidia-cuda-nvrtc-cu12, '
                'nvidia-cuda-runtime-cu12, nvidia-cublas-cu12 and nvidia-curand-cu12), '
                'pip install "cupy-cuda13x[ctk]" for CUDA 13')
NCCL_INSTALL = "pip install nvidia-nccl-cu12 (CUDA 12) or nvidia-nccl-cu13 (CUDA 13)"


def _cupy_or_reason() -> tuple[ModuleType | None, str]:
    """Import CuPy and check for a usable GPU; on failure say why, in words."""
    try:
        import cupy
    except ImportError:
        return None, f"CuPy is not installed ({CUPY_INSTALL})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError and friends differ between CuPy versions
        return None, f"CuPy is installed but CUDA is unusable ({exc})"
    if count == 0:
        return None, "CuPy is installed but no GPU is visible"
    return cupy, f"CuPy {cupy.__version__} on {count} GPU(s)"


def get_backend(device: str = "cpu") -> Backend:
    """Return the backend for ``device`` ("cpu", "gpu", "cuda" or "cuda:N").

    Asking for the GPU when CuPy or a GPU is missing falls back to NumPy with one
    warning that says why, so a script written for a GPU still runs on a laptop.
    """
    device = (device or "cpu").lower()
    if device in ("cpu", "numpy"):
        return Backend("numpy", np, "NumPy on the CPU (asked for the CPU)")
    if not (device in ("gpu", "cuda", "cupy") or device.startswith("cuda:")):
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'gpu' or 'cuda:N'")
    cupy, reason = _cupy_or_reason()
    if cupy is None:
        _warn_once(f"GPU requested but {reason}; falling back to NumPy on the CPU")
        return Backend("numpy", np, f"NumPy on the CPU (GPU requested, but {reason})")
    if device.startswith("cuda:"):
        cupy.cuda.Device(int(device.split(":", 1)[1])).use()
    return Backend("cupy", cupy, reason)


def array_module(*arrays: Any) -> ModuleType:
    """NumPy or CuPy, whichever owns ``arrays`` (the ``cupy.get_array_module`` pattern)."""
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    return np


def is_gpu_array(x: Any) -> bool:
    return array_module(x) is not np


_host_syncs = 0


def to_numpy(x: Any) -> np.ndarray:
    """A host NumPy copy (or the array itself, when it already is one).

    Every device -> host read in minimlp goes through here, so that :func:`host_syncs`
    counts them: each one waits for all the GPU work queued before it.
    """
    global _host_syncs
    if is_gpu_array(x):
        _host_syncs += 1
        return x.get()
    return np.asarray(x)


def host_syncs() -> int:
    """Device -> host reads made by :func:`to_numpy` in this process so far."""
    return _host_syncs


# --------------------------------------------------------------------------------------
# erf and erfc.  NumPy has neither, and SciPy is not a dependency.  Cody's rational
# Chebyshev approximations (Math. Comp. 23, 1969; netlib SPECFUN CALERF) are accurate to
# a few float64 ulps over the whole line, in three intervals of |x|.
# --------------------------------------------------------------------------------------
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)
_INV_SQRT_PI = 5.6418958354775628695e-1


def _erf_small(x: np.ndarray) -> np.ndarray:
    """erf(x) for |x| <= 0.46875, where erf is an odd function close to its Taylor series."""
    z = x * x
    num, den = _A[4] * z, z
    for i in range(3):
        num, den = (num + _A[i]) * z, (den + _B[i]) * z
    return x * (num + _A[3]) / (den + _B[3])


def _exp_minus_square(y: np.ndarray) -> np.ndarray:
    """exp(-y*y) without the rounding error of y*y, which exp would magnify by y*y.

    For y = 10, y*y = 100 is rounded by about 1e-14, and exp(-y*y) then carries a relative
    error of 100 times that.  Cody splits y = a + b with a = y rounded down to 1/16, so that
    a*a is exact and b = y - a is tiny: exp(-y*y) = exp(-a*a) * exp(-b*(y + a)).
    """
    a = np.trunc(y * 16.0) / 16.0
    return np.exp(-a * a) * np.exp(-(y - a) * (y + a))


def _erfc_positive(y: np.ndarray) -> np.ndarray:
    """erfc(y) for y > 0.46875, accurate relative to erfc itself (good far-tail accuracy)."""
    out = np.empty_like(y)
    mid = y <= 4.0
    ym = y[mid]
    num, den = _C[8] * ym, ym
    for i in range(7):
        num, den = (num + _C[i]) * ym, (den + _D[i]) * ym
    out[mid] = _exp_minus_square(ym) * (num + _C[7]) / (den + _D[7])
    yt = y[~mid]
    z = 1.0 / (yt * yt)
    num, den = _P[5] * z, z
    for i in range(4):
        num, den = (num + _P[i]) * z, (den + _Q[i]) * z
    r = z * (num + _P[4]) / (den + _Q[4])
    out[~mid] = _exp_minus_square(yt) * (_INV_SQRT_PI - r) / yt
    return out


def _erf_erfc_numpy(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    x64 = x.astype(np.float64, copy=False)
    erf_, erfc_ = np.empty_like(x64), np.empty_like(x64)
    ax = np.abs(x64)
    small = ax <= 0.46875
    erf_[small] = _erf_small(x64[small])
    erfc_[small] = 1.0 - erf_[small]
    big = ~small
    tail = _erfc_positive(ax[big])  # erfc(|x|)
    neg = x64[big] < 0
    erfc_[big] = np.where(neg, 2.0 - tail, tail)
    erf_[big] = np.where(neg, tail - 1.0, 1.0 - tail)
    return erf_.astype(dtype, copy=False), erfc_.astype(dtype, copy=False)


def _on_device(name: str, x: Any) -> Any:
    """CuPy's erf or erfc of ``x``, in the type of ``x``."""
    import cupyx.scipy.special

    f = getattr(cupyx.scipy.special, name)
    if x.dtype == np.float16:  # CuPy's float16 loop returns float64: compute in float32 instead
        return f(x.astype(np.float32)).astype(np.float16)
    return f(x)


def erf(x: Any) -> Any:
    """The error function, elementwise, on NumPy or CuPy arrays, in the type of ``x``."""
    if array_module(x) is not np:
        return _on_device("erf", x)
    return _erf_erfc_numpy(x)[0]


def erfc(x: Any) -> Any:
    """The complementary error function 1 - erf(x), accurate far into both tails."""
    if array_module(x) is not np:
        return _on_device("erfc", x)
    return _erf_erfc_numpy(x)[1]


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
