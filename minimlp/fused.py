"""Fused kernels: faster versions of a few ``functional`` ops, each tested against it.

The plain versions in :mod:`minimlp.functional` are the reference: short, written once
against ``xp``, and what the lessons derive.  The kernels here compute the same numbers
(to float32 rounding) with less memory traffic:

* on the CPU, float32 only: the work is cut into cache-sized pieces that all cores work
  through (:func:`minimlp.backend.parallel_chunks`), with every intermediate written into
  a reused buffer;
* on the GPU: CuPy ``ElementwiseKernel``\\ s that read each input once.

``MINIMLP_FUSED=0`` in the environment (or :func:`set_enabled`) turns them off, which the
tests use to compare both paths.  Lesson 11 walks through why each one pays.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from minimlp.backend import array_module, parallel_chunks

_enabled = os.environ.get("MINIMLP_FUSED", "1") != "0"


def set_enabled(flag: bool) -> bool:
    """Turn the fused kernels on or off; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


def applies(x: Any) -> bool:
    """Whether a fused kernel exists for ``x``: float32 on NumPy, or any float on CuPy."""
    if not _enabled:
        return False
    if array_module(x) is np:
        return x.dtype == np.float32 and x.flags.c_contiguous
    return x.dtype.kind == "f"


# --------------------------------------------------------------------------------------
# GELU: h = x Φ(x) and its derivative g = Φ(x) + x φ(x), in one pass.
#
# CPU: Φ comes from the upper tail q(a) = Φ(-a) for a = |x|, written as
#     q(a) = φ(a) R(a),      φ(a) = exp(-a²/2) / √(2π),
# where R(a) = √(2π) exp(a²/2) Φ(-a) is smooth and slowly varying (it falls like 1/a).
# R is replaced by a (4, 4) rational function fitted by iteratively reweighted least
# squares for the smallest worst-case *relative* error on 0 ≤ a ≤ 14 (1.4e-7; beyond
# a = 14, φ underflows float32 anyway).  Computing through the tail keeps Φ(x) accurate
# relative to itself for negative x, where 1 + erf(x/√2) would cancel to zero.
# The same φ gives the derivative for free, so backward is a single multiply.
# --------------------------------------------------------------------------------------
_R_NUM = tuple(np.float32(c) for c in (
    1.253313958e00, 8.565245606e-01, 2.721625096e-01, 3.653923491e-02, 5.305875045e-07))
_R_DEN = tuple(np.float32(c) for c in (
    1.0, 1.481284609e00, 8.991144310e-01, 2.716374143e-01, 3.656494075e-02))
_LOG_INV_SQRT_2PI = np.float32(-0.5 * np.log(2.0 * np.pi))
_MINUS_HALF = np.float32(-0.5)


def _horner(a: np.ndarray, coeffs: tuple, out: np.ndarray) -> np.ndarray:
    """out = c0 + a (c1 + a (c2 + ...)), in place."""
    np.multiply(a, coeffs[-1], out=out)
    for c in coeffs[-2:0:-1]:
        np.add(out, c, out=out)
        np.multiply(out, a, out=out)
    np.add(out, coeffs[0], out=out)
    return out


def _gelu_piece(x: np.ndarray, h: np.ndarray, g: np.ndarray) -> None:
    """One cache-sized piece of float32 GELU: writes h = GELU(x) and g = GELU'(x)."""
    a = np.abs(x)
    pdf = np.empty_like(x)
    _horner(a, _R_NUM, h)
    _horner(a, _R_DEN, g)
    np.divide(h, g, out=h)  # R(a)
    np.multiply(a, a, out=pdf)
    np.multiply(pdf, _MINUS_HALF, out=pdf)
    np.add(pdf, _LOG_INV_SQRT_2PI, out=pdf)
    np.exp(pdf, out=pdf)  # φ(x) = exp(-x²/2 - log √(2π))
    np.multiply(h, pdf, out=h)  # q = Φ(-|x|)
    np.sign(x, out=a)
    np.multiply(h, a, out=h)  # sign(x) q
    np.heaviside(x, np.float32(0.5), out=a)
    np.subtract(a, h, out=a)  # Φ(x) = step(x) - sign(x) q: 1 - q for x > 0, q for x < 0
    np.multiply(x, pdf, out=pdf)
    np.add(a, pdf, out=g)  # GELU'(x) = Φ(x) + x φ(x)
    np.multiply(x, a, out=h)  # GELU(x) = x Φ(x)


@functools.cache
def _gelu_cupy_kernel():
    import cupy

    return cupy.ElementwiseKernel(
        "T x",
        "T h, T g",
        """
        const T cdf = (T)0.5 * erfc(-x * (T)0.70710678118654752440);
        const T pdf = exp((T)-0.5 * x * x) * (T)0.39894228040143267794;
        h = x * cdf;
        g = cdf + x * pdf;
        """,
        "minimlp_gelu_fwd",
    )


def gelu(x: Any) -> tuple[Any, Any]:
    """(GELU(x), GELU'(x)) with the exact erf-based GELU, as one fused pass."""
    xp = array_module(x)
    if xp is np:
        h, g = np.empty_like(x), np.empty_like(x)
        parallel_chunks(_gelu_piece, x, h, g)
        return h, g
    return _gelu_cupy_kernel()(x)
