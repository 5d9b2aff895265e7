"""Shared fixtures: every test that takes ``xp`` runs on NumPy and, where a GPU is
present, on CuPy too (those runs are marked ``gpu`` and skip cleanly elsewhere)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from minimlp import kernels


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
    previous = kernels.set_enabled(False)
    yield
    kernels.set_enabled(previous)


def to_np(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


# Fashion-MNIST: tests that need the real files skip where they are not installed, with a
# reason saying how to get them; with MINIMLP_REQUIRE_DATA=1 (set by CI) they fail instead.
REQUIRE_DATA = os.environ.get("MINIMLP_REQUIRE_DATA") == "1"


@pytest.fixture(scope="session")
def fmnist_dir():
    from minimlp.data.fmnist import find_data_dir

    directory = find_data_dir()
    if directory is None:
        message = (
            "the Fashion-MNIST files are not installed (apt-get install dataset-fashion-mnist, "
            "or python -m minimlp.train --download)"
        )
        if REQUIRE_DATA:
            pytest.fail(message + "; MINIMLP_REQUIRE_DATA=1 demands them")
        pytest.skip(message)
    return directory


# CuPy's kernel compiler, which needs no GPU: the compile tests (test_cuda_sources.py) skip
# where CuPy, NVRTC or CUDA's headers are missing, saying how to get them; with
# MINIMLP_REQUIRE_CUPY=1 (set by CI) they fail instead.
REQUIRE_CUPY = os.environ.get("MINIMLP_REQUIRE_CUPY") == "1"


@pytest.fixture
def fake_cupy(monkeypatch):
    """CuPy replaced by the strict NumPy-backed stand-in of tests/support/fake_cupy.py, with one "GPU".

    minimlp then takes every GPU code path (``get_backend("gpu")`` picks it); the fixture
    yields the stand-in module (its ``host_syncs()`` counts explicit device -> host reads)
    and restores whatever CuPy modules were imported before.
    """
    from support import fake_cupy as standin

    from minimlp import backend

    monkeypatch.delenv("CUPY_TF32", raising=False)
    monkeypatch.delenv("CUPY_ACCELERATORS", raising=False)
    monkeypatch.setattr(backend, "_warned", set())
    saved = standin.install()
    try:
        yield standin
    finally:
        standin.uninstall(saved)
