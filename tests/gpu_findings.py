"""Known faults of the GPU path that the code in this tree may still have, probed on the
CuPy stand-in when the tests are collected.

Each probe runs the smallest call that meets the fault.  A test that meets an open fault
is expected to fail (strictly: an unexpected pass is an error), and once the fault is
fixed the mark lifts itself and the test runs as usual.

* ``layernorm``: LayerNorm's mean kernel does not compile on CuPy's CUB path (D >= 128);
* ``gelu16``: the plain GELU returns float64 for float16 device arrays;
* ``loss_syncs``: the loss reads the labels' range back to the host (an implicit sync);
* ``amp_syncs``: mixed precision reads its finiteness check back implicitly.
"""

from __future__ import annotations

import fake_cupy
import numpy as np
import pytest

from minimlp import fused
from minimlp import functional as F


def _probe() -> set[str]:
    saved = fake_cupy.install()
    found = set()
    try:
        import cupy

        from minimlp.amp import MixedPrecision
        from minimlp.loss import cross_entropy_forward
        from minimlp.models import create_model

        try:
            fused.layernorm(cupy.ones((2, 192), np.float32), cupy.ones(192, np.float32),
                            cupy.zeros(192, np.float32), -1, 1e-6)
        except fake_cupy.CompileException:
            found.add("layernorm")
        previous = fused.set_enabled(False)
        try:
            if F.gelu_forward(cupy.ones(4, np.float16))[0].dtype != np.float16:
                found.add("gelu16")
        finally:
            fused.set_enabled(previous)
        try:
            cross_entropy_forward(cupy.zeros((2, 3), np.float32), cupy.asarray(np.array([0, 1])))
        except TypeError:
            found.add("loss_syncs")
        model = create_model("ff_fmnist", device="gpu", depth=1, embed_dim=16)
        try:
            MixedPrecision(model).forward_backward(cupy.zeros((2, 1, 28, 28), np.float32),
                                                   cupy.full((2, 10), 0.1, np.float32))
        except TypeError:
            found.add("amp_syncs")
    finally:
        fake_cupy.uninstall(saved)
    return found


OPEN = _probe()


def expect_failure(*findings: str, raises: type[BaseException] | tuple = Exception) -> pytest.MarkDecorator:
    """Expected to fail (strictly) while any of ``findings`` is open."""
    still = [f for f in findings if f in OPEN]
    return pytest.mark.xfail(bool(still), reason=f"open: {', '.join(still)}", raises=raises, strict=True)


LAYERNORM_CUB = expect_failure("layernorm")
GELU_FLOAT16 = expect_failure("gelu16", raises=AssertionError)
