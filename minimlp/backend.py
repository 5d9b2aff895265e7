"""The array backend: NumPy by default, CuPy on request.

All math in minimlp is written once against an array module called ``xp``.  On the CPU
``xp`` is NumPy; with ``device="gpu"`` it is CuPy, when CuPy and a GPU are both there.
CuPy is never imported at module level: it is imported the first time a GPU is asked
for, and code that only sees arrays finds their module with :func:`array_module`.

This module also holds the numerical helper that NumPy lacks and every backend needs:
the error function (W. J. Cody's rational approximations, accurate to float64 rounding),
and ``Array``, the type every module writes for "a NumPy or CuPy ndarray".  Lesson 3
explains erf and GELU; lesson 11 the GPU.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "Array",
    "Backend",
    "get_backend",
    "array_module",
    "is_gpu_array",
    "to_numpy",
    "host_syncs",
    "erf",
    "erfc",
]

Array = Any  # a NumPy or CuPy ndarray: the one name every module uses for it


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
CUPY_INSTALL = (
    'pip install "cupy-cuda12x[ctk]" for CUDA 12 (or cupy-cuda12x with nvidia-cuda-nvrtc-cu12, '
    "nvidia-cuda-runtime-cu12, nvidia-cublas-cu12 and nvidia-curand-cu12), "
    'pip install "cupy-cuda13x[ctk]" for CUDA 13'
)
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
_A = (
    3.16112374387056560e00,
    1.13864154151050156e02,
    3.77485237685302021e02,
    3.20937758913846947e03,
    1.85777706184603153e-1,
)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
_C = (
    5.64188496988670089e-1,
    8.88314979438837594e00,
    6.61191906371416295e01,
    2.98635138197400131e02,
    8.81952221241769090e02,
    1.71204761263407058e03,
    2.05107837782607147e03,
    1.23033935479799725e03,
    2.15311535474403846e-8,
)
_D = (
    1.57449261107098347e01,
    1.17693950891312499e02,
    5.37181101862009858e02,
    1.62138957456669019e03,
    3.29079923573345963e03,
    4.36261909014324716e03,
    3.43936767414372164e03,
    1.23033935480374942e03,
)
_P = (
    3.05326634961232344e-1,
    3.60344899949804439e-1,
    1.25781726111229246e-1,
    1.60837851487422766e-2,
    6.58749161529837803e-4,
    1.63153871373020978e-2,
)
_Q = (
    2.56852019228982242e00,
    1.87295284992346047e00,
    5.27905102951428412e-1,
    6.05183413124413191e-2,
    2.33520497626869185e-3,
)
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
