"""CuPy kernels for the fused ops of :mod:`minimlp.fused`, each next to the plain op it replaces.

The plain ``functional`` ops run on CuPy as they are, but each NumPy-style expression is a
kernel launch and a trip through GPU memory: the plain LayerNorm forward is about eight
kernels and backward about twelve.  The kernels here do the same math in one to five
launches, reading each input once.  They are written with CuPy's own kernel tools
(``ElementwiseKernel``, ``ReductionKernel``), which handle broadcasting, strides and the
float16 type, and compile on first use (NVRTC; cached in ~/.cupy/kernel_cache).

Inputs may be float32 or float16; all arithmetic is done in float32 (the statistics of
LayerNorm and the sums of the bias gradients too), and results are written back in the
input's type.  Lesson 11 shows how each kernel maps onto the plain version.

This module imports CuPy at the top: only :mod:`minimlp.fused` imports it, and only
once it holds CuPy arrays.
"""

from __future__ import annotations

import functools
from typing import Any

import cupy

Array = Any

# --------------------------------------------------------------------------------------
# GELU, exact: h = z Φ(z), g = Φ(z) + z φ(z), with Φ(z) = erfc(-z/√2)/2 (CUDA's erfcf).
# --------------------------------------------------------------------------------------
_GELU_BODY = """
    const float cdf = 0.5f * erfcf(-z * 0.70710678118654752f);
    const float pdf = expf(-0.5f * z * z) * 0.39894228040143268f;
    h = (T)(z * cdf);
    g = (T)(cdf + z * pdf);
"""


@functools.cache
def _gelu_kernel() -> cupy.ElementwiseKernel:
    return cupy.ElementwiseKernel("T x", "T h, T g", "const float z = (float)x;" + _GELU_BODY, "minimlp_gelu")


@functools.cache
def _bias_gelu_kernel() -> cupy.ElementwiseKernel:
    return cupy.ElementwiseKernel("T y, T b", "T h, T g", "const float z = (float)y + (float)b;" + _GELU_BODY,
                                  "minimlp_bias_gelu")


@functools.cache
def _bias_gelu_value_kernel() -> cupy.ElementwiseKernel:
    return cupy.ElementwiseKernel(
        "T y, T b", "T zout, T h",
        """
        const float z = (float)y + (float)b;
        zout = (T)z;
        h = (T)(0.5f * z * erfcf(-z * 0.70710678118654752f));
        """, "minimlp_bias_gelu_value")


def gelu(x: Array) -> tuple[Array, Array]:
    return _gelu_kernel()(x)


def _bias_along(b: Array, axis: int) -> Array:
    return b if axis == -1 else b[:, None]


def _as_2d(x: Array, axis: int) -> Array:
    return x.reshape(-1, x.shape[-1]) if axis == -1 else x.reshape(x.shape[0], -1)


def bias_gelu(y: Array, b: Array, axis: int) -> tuple[Array, Array]:
    """GELU(y + b) over y in place, and GELU'(y + b) as a new array."""
    y2 = _as_2d(y, axis)
    g2 = cupy.empty_like(y2)
    _bias_gelu_kernel()(y2, _bias_along(b, axis), y2, g2)  # the output h is y itself
    return y, g2.reshape(y.shape)


def bias_gelu_inference(y: Array, b: Array, axis: int) -> tuple[Array, Array]:
    """(GELU(y + b), y + b), with y + b written over y and no derivative."""
    y2 = _as_2d(y, axis)
    h2 = cupy.empty_like(y2)
    _bias_gelu_value_kernel()(y2, _bias_along(b, axis), y2, h2)
    return h2.reshape(y.shape), y


@functools.cache
def _mul_sum_kernel() -> cupy.ReductionKernel:
    return cupy.ReductionKernel("T u, T v", "float32 s", "(float)u * (float)v", "a + b", "s = a", "0",
                                "minimlp_mul_sum")


def bias_gelu_backward(dout: Array, dgelu: Array, db: Array, axis: int) -> Array:
    """dout *= GELU'(x) in place; db += its sum over every axis but ``axis``."""
    cupy.multiply(dout, dgelu, out=dout)
    d2 = _as_2d(dout, axis)
    db += d2.sum(axis=0 if axis == -1 else 1, dtype=cupy.float32).astype(db.dtype, copy=False)
    return dout


# --------------------------------------------------------------------------------------
# LayerNorm.  Forward: two reductions (mean, then the variance around it, which also
# yields 1/std) and one elementwise kernel.  Backward: the four sums it needs and one
# elementwise kernel.  ``red`` is the axis of the 2-D view being normalised.
# --------------------------------------------------------------------------------------
@functools.cache
def _ln_kernels(eps: float) -> dict[str, Any]:
    n = "((float)(_in_ind.size() / _out_ind.size()))"  # elements per normalisation group
    return {
        "mean": cupy.ReductionKernel("T x", "float32 m", "(float)x", "a + b", f"m = a / {n}", "0",
                                     "minimlp_ln_mean"),
        "rstd": cupy.ReductionKernel("T x, float32 m", "float32 r", "((float)x - m) * ((float)x - m)", "a + b",
                                     f"r = rsqrtf(a / {n} + {eps!r}f)", "0", "minimlp_ln_rstd"),
        "normalise": cupy.ElementwiseKernel(
            "T x, float32 m, float32 r, T w, T b", "T y, T xhat",
            "const float xh = ((float)x - m) * r; xhat = (T)xh; y = (T)(xh * (float)w + (float)b);",
            "minimlp_ln_normalise"),
        "mean_of_product": cupy.ReductionKernel("T u, T w", "float32 m", "(float)u * (float)w", "a + b",
                                                f"m = a / {n}", "0", "minimlp_ln_mean_prod"),
        "mean_of_product3": cupy.ReductionKernel("T u, T w, T v", "float32 m", "(float)u * (float)w * (float)v",
                                                 "a + b", f"m = a / {n}", "0", "minimlp_ln_mean_prod3"),
        "dx": cupy.ElementwiseKernel(
            "T dy, T w, T xhat, float32 m1, float32 m2, float32 r", "T dx",
            "dx = (T)(((float)dy * (float)w - m1 - (float)xhat * m2) * r);", "minimlp_ln_dx"),
    }


def layernorm(x: Array, w: Array, b: Array, axis: int, eps: float) -> tuple[Array, Array, Array]:
    x2 = _as_2d(x, axis)
    red = 1 if axis == -1 else 0
    k = _ln_kernels(float(eps))
    w2, b2 = (w, b) if red == 1 else (w[:, None], b[:, None])
    mean = k["mean"](x2, axis=red, keepdims=True)  # (M, 1) or (1, M), float32
    rstd = k["rstd"](x2, mean, axis=red, keepdims=True)
    y2, xhat2 = k["normalise"](x2, mean, rstd, w2, b2)
    rstd_shape = (*x.shape[:-1], 1) if axis == -1 else (1, *x.shape[1:])
    return y2.reshape(x.shape), xhat2.reshape(x.shape), rstd.reshape(rstd_shape)


def layernorm_backward(dy: Array, xhat: Array, rstd: Array, w: Array, dw: Array, db: Array, axis: int) -> Array:
    dy2, xhat2 = _as_2d(dy, axis), _as_2d(xhat, axis)
    red = 1 if axis == -1 else 0
    k = _ln_kernels(1e-6)  # the kernels below do not use eps
    rstd2 = (rstd.reshape(-1, 1) if red == 1 else rstd.reshape(1, -1)).astype(cupy.float32, copy=False)
    w2 = w if red == 1 else w[:, None]
    dw += _mul_sum_kernel()(dy2, xhat2, axis=1 - red).astype(dw.dtype, copy=False)
    db += dy2.sum(axis=1 - red, dtype=cupy.float32).astype(db.dtype, copy=False)
    mean_dxhat = k["mean_of_product"](dy2, w2, axis=red, keepdims=True)
    mean_dxhat_xhat = k["mean_of_product3"](dy2, w2, xhat2, axis=red, keepdims=True)
    return k["dx"](dy2, w2, xhat2, mean_dxhat, mean_dxhat_xhat, rstd2).reshape(dy.shape)


# --------------------------------------------------------------------------------------
# Softmax cross-entropy on (B, K) logits against a (B, K) target distribution q.
# --------------------------------------------------------------------------------------
@functools.cache
def _ce_kernels() -> dict[str, Any]:
    # A reduction's final expression sees only the reduced value, not the inputs; so the
    # row sums s = sum exp(z - zmax) are returned as they are, and log(s) + zmax (the
    # log-sum-exp) is formed inside the kernels that use it.
    return {
        "sumexp": cupy.ReductionKernel("T z, T zmax", "T s", "exp(z - zmax)", "a + b", "s = a", "0",
                                       "minimlp_ce_sumexp"),
        "loss": cupy.ReductionKernel("T q, T z, T zmax, T s", "T loss", "q * (log(s) + zmax - z)", "a + b",
                                     "loss = a", "0", "minimlp_ce_loss"),
        "probs": cupy.ElementwiseKernel("T z, T zmax, T s", "T p", "p = exp(z - zmax) / s", "minimlp_ce_probs"),
        "grad": cupy.ElementwiseKernel("T p, T q, T scale", "T d", "d = (p - q) * scale", "minimlp_ce_grad"),
    }


def cross_entropy(logits: Array, q: Array) -> tuple[Array, Array]:
    """(mean loss, softmax probabilities), as ``loss.cross_entropy_forward`` computes them."""
    k = _ce_kernels()
    zmax = logits.max(axis=1, keepdims=True)  # (B, 1): the largest logit becomes 0, as in the plain version
    s = k["sumexp"](logits, zmax, axis=1, keepdims=True)  # (B, 1)
    loss = k["loss"](q, logits, zmax, s) / logits.shape[0]
    return loss, k["probs"](logits, zmax, s)


def cross_entropy_grad(probs: Array, q: Array, scale: float) -> Array:
    """(probs - q) * scale in one kernel."""
    return _ce_kernels()["grad"](probs, q, probs.dtype.type(scale))
