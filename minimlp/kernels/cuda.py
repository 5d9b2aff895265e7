"""CuPy kernels for the fused ops of :mod:`minimlp.kernels`, each next to the plain op it replaces.

The plain ``functional`` ops run on CuPy as they are, but each NumPy-style expression is a
kernel launch and a trip through GPU memory: the plain LayerNorm forward is about eight
kernels and backward about twelve.  The kernels here do the same math in one to five
launches, reading each input once.  They are written with CuPy's own kernel tools
(``ElementwiseKernel``, ``ReductionKernel``), which handle broadcasting, strides and the
float16 type, and compile on first use (NVRTC; cached in ~/.cupy/kernel_cache).

Inputs may be float32 or float16; all arithmetic is done in float32 (the statistics of
LayerNorm and the sums of the bias gradients too), and results are written back in the
input's type.  Lesson 11 shows how each kernel maps onto the plain version.

Parameter names follow one rule: each is a word found nowhere else in its kernel's code
(``x_in``, ``mean_out``), and none of CuPy's own names (``in0``, ``out0``, ``a``, ``b``,
``i``, ``_*``).  A reduction with one input over the last, contiguous axis of 128 or more
elements goes through CuPy's CUB block reduction, which rewrites the expressions by plain
text replacement: ``_in_ind.size()`` becomes the segment size (only in kernels whose name
contains "mean", so such a reduction that divides by the group size needs that word), then
the input's name becomes ``in0`` and the output's ``out0`` wherever the letters occur, so
an output named ``m`` would turn ``_segment_size`` into ``_segout0ent_size``.  (Naming the
parameters ``in0``/``out0`` skips the renaming and with it the type names the CUB kernel
needs.)  ``tests/test_cuda_sources.py`` checks the rule and compiles every kernel, on every
path CuPy can give it, with CuPy's own code generators.

This module imports CuPy at the top: only :mod:`minimlp.kernels` imports it, and only
once it holds CuPy arrays.
"""

from __future__ import annotations

import functools
from typing import Any

import cupy

from minimlp.backend import Array

# --------------------------------------------------------------------------------------
# GELU, exact: h = z Φ(z), g = Φ(z) + z φ(z), with Φ(z) = erfc(-z/√2)/2 (CUDA's erfcf).
# --------------------------------------------------------------------------------------
_GELU_BODY = """
    const float cdf = 0.5f * erfcf(-z * 0.70710678118654752f);
    const float pdf = expf(-0.5f * z * z) * 0.39894228040143268f;
    h_out = (T)(z * cdf);
    g_out = (T)(cdf + z * pdf);
"""


@functools.cache
def _gelu_kernel() -> cupy.ElementwiseKernel:
    return cupy.ElementwiseKernel(
        "T x_in", "T h_out, T g_out", "const float z = (float)x_in;" + _GELU_BODY, "minimlp_gelu"
    )


@functools.cache
def _bias_gelu_kernel() -> cupy.ElementwiseKernel:
    return cupy.ElementwiseKernel(
        "T y_in, T b_in",
        "T h_out, T g_out",
        "const float z = (float)y_in + (float)b_in;" + _GELU_BODY,
        "minimlp_bias_gelu",
    )


@functools.cache
def _bias_gelu_value_kernel() -> cupy.ElementwiseKernel:
    return cupy.ElementwiseKernel(
        "T y_in, T b_in",
        "T z_out, T h_out",
        """
        const float z = (float)y_in + (float)b_in;
        z_out = (T)z;
        h_out = (T)(0.5f * z * erfcf(-z * 0.70710678118654752f));
        """,
        "minimlp_bias_gelu_value",
    )


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
    return cupy.ReductionKernel(
        "T u_in, T v_in", "float32 sum_out", "(float)u_in * (float)v_in", "a + b", "sum_out = a", "0", "minimlp_mul_sum"
    )


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
        "mean": cupy.ReductionKernel(
            "T x_in", "float32 mean_out", "(float)x_in", "a + b", f"mean_out = a / {n}", "0", "minimlp_ln_mean"
        ),
        "rstd": cupy.ReductionKernel(
            "T x_in, float32 mean_in",
            "float32 rstd_out",
            "((float)x_in - mean_in) * ((float)x_in - mean_in)",
            "a + b",
            f"rstd_out = rsqrtf(a / {n} + {eps!r}f)",
            "0",
            "minimlp_ln_rstd",
        ),
        "normalise": cupy.ElementwiseKernel(
            "T x_in, float32 mean_in, float32 rstd_in, T w_in, T b_in",
            "T y_out, T xhat_out",
            """
            const float xh = ((float)x_in - mean_in) * rstd_in;
            xhat_out = (T)xh;
            y_out = (T)(xh * (float)w_in + (float)b_in);
            """,
            "minimlp_ln_normalise",
        ),
        "mean_of_product": cupy.ReductionKernel(
            "T u_in, T w_in",
            "float32 mean_out",
            "(float)u_in * (float)w_in",
            "a + b",
            f"mean_out = a / {n}",
            "0",
            "minimlp_ln_mean_prod",
        ),
        "mean_of_product3": cupy.ReductionKernel(
            "T u_in, T w_in, T v_in",
            "float32 mean_out",
            "(float)u_in * (float)w_in * (float)v_in",
            "a + b",
            f"mean_out = a / {n}",
            "0",
            "minimlp_ln_mean_prod3",
        ),
        "dx": cupy.ElementwiseKernel(
            "T dy_in, T w_in, T xhat_in, float32 m1_in, float32 m2_in, float32 rstd_in",
            "T dx_out",
            "dx_out = (T)(((float)dy_in * (float)w_in - m1_in - (float)xhat_in * m2_in) * rstd_in);",
            "minimlp_ln_dx",
        ),
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
        "sumexp": cupy.ReductionKernel(
            "T z_in, T zmax_in", "T sum_out", "exp(z_in - zmax_in)", "a + b", "sum_out = a", "0", "minimlp_ce_sumexp"
        ),
        "loss": cupy.ReductionKernel(
            "T q_in, T z_in, T zmax_in, T sum_in",
            "T loss_out",
            "q_in * (log(sum_in) + zmax_in - z_in)",
            "a + b",
            "loss_out = a",
            "0",
            "minimlp_ce_loss",
        ),
        "probs": cupy.ElementwiseKernel(
            "T z_in, T zmax_in, T sum_in", "T p_out", "p_out = exp(z_in - zmax_in) / sum_in", "minimlp_ce_probs"
        ),
        "grad": cupy.ElementwiseKernel(
            "T p_in, T q_in, T scale_in", "T d_out", "d_out = (p_in - q_in) * scale_in", "minimlp_ce_grad"
        ),
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


def all_kernels() -> list[Any]:
    """Every kernel above (for the tests that compile them and check their parameter names)."""
    return [
        _gelu_kernel(),
        _bias_gelu_kernel(),
        _bias_gelu_value_kernel(),
        _mul_sum_kernel(),
        *_ln_kernels(1e-6).values(),
        *_ce_kernels().values(),
    ]
