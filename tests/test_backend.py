"""The backend: erf/erfc accuracy, the GPU fallback; the fused float32 GELU against the
plain version, and the thread, BLAS and memory settings of the speed layer."""

from __future__ import annotations

import importlib.metadata
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from minimlp import backend, kernels
from minimlp import functional as F
from minimlp.backend import erf, erfc, get_backend
from minimlp.kernels import cpu, threads


def test_erf_matches_math_to_float64_rounding():
    x = np.concatenate(
        [np.linspace(-6, 6, 4001), np.linspace(6, 26.5, 2001), [-0.46875, 0.46875, -4.0, 4.0, 0.0, 1e-300, -27.0, 27.0]]
    )
    ref_erf = np.array([math.erf(v) for v in x])
    ref_erfc = np.array([math.erfc(v) for v in x])
    assert np.abs(erf(x) - ref_erf).max() < 4e-16
    tail = ref_erfc > 0
    assert (np.abs(erfc(x) - ref_erfc)[tail] / ref_erfc[tail]).max() < 2e-15  # relative, into the far tail


def test_erf_keeps_float32():
    assert erf(np.zeros(3, np.float32)).dtype == np.float32


class _DeviceArray(np.ndarray):
    """Stands in for a CuPy array: NumPy's arithmetic, but array_module answers CuPy."""


def _cupy_with_its_erf(monkeypatch) -> None:
    """A CuPy stand-in whose erf and erfc type their results as CuPy 14's do: float16
    in, float64 out (the loops are e->d, f->f, d->d)."""
    import types

    cupy = types.ModuleType("cupy")
    cupy.__getattr__ = lambda name: getattr(np, name)  # exp, multiply, ...: NumPy's
    cupy.get_array_module = lambda *arrays: cupy if any(isinstance(a, _DeviceArray) for a in arrays) else np

    def ufunc(which):
        def f(x):
            loop = np.float64 if x.dtype == np.float16 else x.dtype
            return backend._erf_erfc_numpy(np.asarray(x, loop))[which].view(_DeviceArray)

        return f

    special = types.ModuleType("cupyx.scipy.special")
    special.erf, special.erfc = ufunc(0), ufunc(1)
    scipy = types.ModuleType("cupyx.scipy")
    scipy.special = special
    cupyx = types.ModuleType("cupyx")
    cupyx.scipy = scipy
    for name, module in (("cupy", cupy), ("cupyx", cupyx), ("cupyx.scipy", scipy), ("cupyx.scipy.special", special)):
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_erf_and_plain_gelu_keep_the_dtype_on_cupy(monkeypatch, plain_kernels, dtype):
    _cupy_with_its_erf(monkeypatch)
    x_host = np.linspace(-5, 5, 41).astype(dtype)
    x = x_host.copy().view(_DeviceArray)
    for f in (erf, erfc):
        y = f(x)
        assert isinstance(y, _DeviceArray) and y.dtype == dtype, f"{f.__name__}: {dtype.__name__} in, {y.dtype} out"
        if dtype != np.float16:  # float32 and float64 go through CuPy's own loop, untouched
            assert np.array_equal(np.asarray(y), f(x_host))
        else:
            assert np.abs(np.asarray(y, np.float64) - f(x_host.astype(np.float64))).max() < 1e-3
    h, cache = F.gelu_forward(x)
    dx = F.gelu_backward(x, cache)
    assert (h.dtype, cache.dgelu.dtype, dx.dtype) == (dtype,) * 3


def test_cpu_backend():
    b = get_backend("cpu")
    assert b.xp is np and b.name == "numpy" and not b.is_gpu


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        get_backend("tpu")


def test_gpu_request_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(backend, "_cupy_or_reason", lambda: (None, "CuPy is not installed (test)"))
    monkeypatch.setattr(backend, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b1 = get_backend("gpu")
        b2 = get_backend("gpu")
    assert b1.xp is np and b2.xp is np
    assert "CuPy is not installed (test)" in b1.reason
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "falling back to NumPy" in messages[0]


def test_install_hints_name_every_wheel_cupy_needs(monkeypatch):
    """CuPy's wheels lack NVRTC, CUDA's headers, cuBLAS and cuRAND; the hints say how to add them."""
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy fails, as where it is not installed
    cupy, reason = backend._cupy_or_reason()
    assert cupy is None
    for wheel in (
        '"cupy-cuda12x[ctk]"',
        '"cupy-cuda13x[ctk]"',
        "nvidia-cuda-nvrtc-cu12",
        "nvidia-cuda-runtime-cu12",
        "nvidia-cublas-cu12",
        "nvidia-curand-cu12",
    ):
        assert wheel in reason
    assert "nvidia-nccl-cu12" in backend.NCCL_INSTALL and "nvidia-nccl-cu13" in backend.NCCL_INSTALL
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert 'gpu = ["cupy-cuda12x[ctk]' in pyproject and 'gpu-cuda13 = ["cupy-cuda13x[ctk]' in pyproject
    try:  # where CuPy is installed: its own metadata says what [ctk] brings
        requires = importlib.metadata.metadata("cupy-cuda12x").get_all("Requires-Dist")
    except importlib.metadata.PackageNotFoundError:
        return
    ctk = " ".join(r for r in requires if 'extra == "ctk"' in r)
    assert all(part in ctk for part in ("nvrtc", "cudart", "cublas", "curand"))


def test_cupy_is_not_imported_by_the_package():
    import subprocess
    import sys

    code = "import sys, minimlp, minimlp.functional, minimlp.loss; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def gelu_reference(x64):
    """GELU and its derivative in float64 through math.erfc (independent of minimlp)."""
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x64])
    pdf = np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    return x64 * cdf, cdf + x64 * pdf


def test_fused_gelu_float32_accuracy():
    x = np.concatenate(
        [np.linspace(-15, 15, 200_001), -np.geomspace(1e-20, 15, 2001), np.geomspace(1e-20, 15, 2001), [0.0, -0.0]]
    ).astype(np.float32)
    assert kernels.applies(x)
    h, g = cpu.gelu(x)
    assert h.dtype == g.dtype == np.float32
    x64 = x.astype(np.float64)
    h64, g64 = gelu_reference(x64)
    # Absolute error at the level of float32 rounding of x (what PyTorch's erf-based GELU has) ...
    assert (np.abs(h - h64) / np.maximum(np.abs(x64), 1.0)).max() < 3e-7
    assert np.abs(g - g64).max() < 3e-7
    # ... and, unlike 0.5 x (1 + erf(x/√2)) in float32, relative accuracy far into the left tail.
    tail = np.abs(h64) > 1e-30
    assert (np.abs(h - h64)[tail] / np.abs(h64[tail])).max() < 1e-5


def test_fused_gelu_matches_plain_version():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 70_000)) * 3).astype(np.float32)  # several pieces, several threads
    h_fast, c_fast = kernels.gelu_forward(x)
    h_ref, c_ref = F.gelu_forward(x)
    assert np.abs(h_fast - h_ref).max() < 1e-6 and np.abs(c_fast.dgelu - c_ref.dgelu).max() < 1e-6


def test_parallel_chunks_reraises_kernel_errors():
    def bad(a):
        raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError, match="kernel failed"):
        threads.parallel_chunks(bad, np.zeros(200_000, np.float32))


@pytest.mark.gpu
def test_fused_gelu_cupy_matches_float64(xp):
    if xp is np:
        pytest.skip("CuPy kernel")
    x = xp.linspace(-10, 10, 100_001, dtype=xp.float32)
    h, c = kernels.gelu_forward(x)
    g = c.dgelu
    h64, g64 = gelu_reference(x.get().astype(np.float64))
    assert np.abs(h.get() - h64).max() < 1e-5 and np.abs(g.get() - g64).max() < 1e-5


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("MINIMLP_KEEP_MEMORY", "0")
    assert threads.keep_freed_memory() is False
    monkeypatch.delenv("MINIMLP_KEEP_MEMORY")
    assert threads.keep_freed_memory() in (True, False)  # True on Linux with glibc


def test_blas_threads_reports_and_sets():
    before = threads.blas_threads()
    if before is None:
        pytest.skip("NumPy's BLAS is not OpenBLAS")
    try:
        assert threads.blas_threads(1) == 1
    finally:
        threads.blas_threads(before)
    assert threads.blas_threads() == before
