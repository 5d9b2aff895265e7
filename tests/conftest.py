"""Shared fixtures: every test that takes ``xp`` runs on NumPy and, where a GPU is
present, on CuPy too (those runs are marked ``gpu`` and skip cleanly elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest

from minimlp import fused


def _cupy_or_none():
    try:
        import cupy

        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:
        return None


CUPY = _cupy_or_none()


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    if request.param == "numpy":
        return np
    if CUPY is None:
        pytest.skip("CuPy with a GPU is not available")
    return CUPY


@pytest.fixture
def device(xp):
    return "cpu" if xp is np else "gpu"


@pytest.fixture
def plain_kernels():
    """Run a test on the reference (unfused) ops, restoring the setting afterwards."""
    previous = fused.set_enabled(False)
    yield
    fused.set_enabled(previous)


def to_np(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)
