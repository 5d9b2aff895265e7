"""The speed layer: the ops of :mod:`minimlp.functional` and :mod:`minimlp.loss`, fast where it pays.

Skip this package on first reading.  Every op here has the name, the arguments and the
results of its plain twin, and the layers call it instead of the twin.  Each op looks at
its arrays and picks one of three paths:

* float32 NumPy arrays (C-contiguous): the fused CPU kernels of :mod:`.cpu`, which tile
  the work over all cores and read each input once;
* float32 or float16 CuPy arrays: the CUDA kernels of :mod:`.cuda`;
* anything else (float64: the gradient checks): the plain op itself.

Ops without a fast version (dropout, the token and pooling ops, attention ...) are the
plain ones, marked for the benchmark's time breakdown (:mod:`.timing`).  Two arguments
exist only here, because only speed needs them: ``linear_gelu_forward(need_grad=False)``
(evaluation) keeps GELU's input instead of computing its derivative, and
``linear_gelu_backward(owns_dh=True)`` lets the kernel write the gradient over ``dh``.

``MINIMLP_FUSED=0`` in the environment, or :func:`set_enabled`, sends every op to its plain
twin: the tests compare both paths that way.  The rest of the package: :mod:`.threads`
(threads, BLAS, memory), :mod:`.amp` (mixed precision), :mod:`.gpu` (TF32, batch uploads).
Lesson 11 walks through the kernels.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from minimlp import functional as F
from minimlp import loss as L
from minimlp.backend import Array, array_module
from minimlp.functional import (
    AttentionCache,
    GeluCache,
    LayerNormCache,
    LinearCache,
    MaskCache,
    PatchEmbedCache,
    ResizeCache,
    SoftmaxCache,
    attention_backward,
    attention_forward,
    bilinear_weights,
    mean_pool_backward,
    mean_pool_forward,
    merge_heads_backward,
    merge_heads_forward,
    softmax_backward,
    softmax_forward,
    split_heads_backward,
    split_heads_forward,
)
from minimlp.kernels import cpu
from minimlp.kernels.threads import num_threads
from minimlp.kernels.timing import timed
from minimlp.loss import CrossEntropyCache, target_distribution

__all__ = [
    "AttentionCache",
    "CrossEntropyCache",
    "GeluCache",
    "LayerNormCache",
    "LazyGeluCache",
    "LinearCache",
    "MaskCache",
    "PatchEmbedCache",
    "ResizeCache",
    "SoftmaxCache",
    "add_inplace",
    "applies",
    "applies_matmul",
    "attention_backward",
    "attention_forward",
    "bilinear_weights",
    "cls_pool_backward",
    "cls_pool_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "drop_path_backward",
    "drop_path_forward",
    "dropout_backward",
    "dropout_forward",
    "gelu_backward",
    "gelu_forward",
    "layernorm_backward",
    "layernorm_forward",
    "linear_backward",
    "linear_forward",
    "linear_gelu_backward",
    "linear_gelu_forward",
    "mask_backward",
    "mean_pool_backward",
    "mean_pool_forward",
    "merge_heads_backward",
    "merge_heads_forward",
    "patch_embed_backward",
    "patch_embed_forward",
    "patchify",
    "resize_bilinear_backward",
    "resize_bilinear_forward",
    "set_enabled",
    "softmax_backward",
    "softmax_forward",
    "split_heads_backward",
    "split_heads_forward",
    "target_distribution",
    "tokens_backward",
    "tokens_forward",
    "transpose_backward",
    "transpose_forward",
    "unpatchify",
]

_enabled = os.environ.get("MINIMLP_FUSED", "1") != "0"


def set_enabled(flag: bool) -> bool:
    """Turn the fast kernels on or off; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


def applies(x: Any) -> bool:
    """Whether a fused kernel exists for ``x``: float32 on NumPy, or float32/float16 on CuPy."""
    if not _enabled:
        return False
    if array_module(x) is np:
        return x.dtype == np.float32 and x.flags.c_contiguous
    return x.dtype in (np.float32, np.float16) and x.flags.c_contiguous


def applies_matmul(a: Any, b: Any) -> bool:
    """Whether :func:`cpu.matmul` takes a product: float32 NumPy matrices, with threads to spread over."""
    return (
        _enabled
        and isinstance(a, np.ndarray)
        and isinstance(b, np.ndarray)
        and a.ndim == b.ndim == 2
        and a.dtype == b.dtype == np.float32
        and num_threads() > 1
    )


def _on_cpu(x: Any) -> bool:
    """A CPU kernel applies to ``x``."""
    return array_module(x) is np and applies(x)


def _kernels(x: Any) -> ModuleType:
    """The module whose kernels take ``x``, once :func:`applies` said one does: cpu or cuda."""
    if array_module(x) is np:
        return cpu
    from minimlp.kernels import cuda  # imports CuPy; only reached with CuPy arrays

    return cuda


# --------------------------------------------------------------------------------------
# Linear: products and bias sums spread over the cores (CPU float32); otherwise the plain op.
# --------------------------------------------------------------------------------------
def _matmul(a: Array, b: Array) -> Array:
    return cpu.matmul(a, b) if applies_matmul(a, b) else a @ b


def _add_bias(y2: Array, b: Array, axis: int) -> None:
    """y2 += b, for the (M, O) (axis -1) or (O, M) (axis 0) matrix of a linear layer."""
    if _on_cpu(y2):
        cpu.add_bias(y2, b, axis)
    else:
        y2 += b if axis == -1 else b[:, None]


def _add_bias_grad(dy2: Array, db: Array, axis: int) -> None:
    """db += dy2 summed over the positions: its rows (axis -1) or its columns (axis 0)."""
    if _on_cpu(dy2):
        cpu.bias_backward(dy2, db, axis)
    else:
        db += dy2.sum(axis=0 if axis == -1 else 1)


@timed("matmul")
def linear_forward(x: Array, w: Array, b: Array | None, axis: int = -1) -> tuple[Array, LinearCache]:
    if not applies(w) or axis not in (-1, 0):
        return F.linear_forward(x, w, b, axis)
    x2 = x.reshape(-1, x.shape[-1]) if axis == -1 else x.reshape(x.shape[0], -1)  # (M, I) or (I, M)
    y = _matmul(x2, w.T) if axis == -1 else _matmul(w, x2)  # (M, O) or (O, M)
    if b is not None:
        _add_bias(y, b, axis)
    shape = (*x.shape[:-1], w.shape[0]) if axis == -1 else (w.shape[0], *x.shape[1:])
    return y.reshape(shape), LinearCache(x, axis)


@timed("matmul")
def linear_backward(
    dy: Array, cache: LinearCache, w: Array, dw: Array, db: Array | None, input_grad: bool = True
) -> Array | None:
    if not applies(w):
        return F.linear_backward(dy, cache, w, dw, db, input_grad)
    x, axis = cache
    if axis == -1:
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])  # (M, O), (M, I)
        dw += _matmul(dy2.T, x2)  # (O, I)
        if db is not None:
            _add_bias_grad(dy2, db, -1)
        return _matmul(dy2, w).reshape(x.shape) if input_grad else None  # (M, I)
    dy2, x2 = dy.reshape(dy.shape[0], -1), x.reshape(x.shape[0], -1)  # (O, M), (I, M)
    dw += _matmul(dy2, x2.T)  # (O, I)
    if db is not None:
        _add_bias_grad(dy2, db, 0)
    return _matmul(w.T, dy2).reshape(x.shape) if input_grad else None  # (I, M)


# --------------------------------------------------------------------------------------
# GELU, and a linear layer followed by GELU.  The fused pair adds the bias inside the GELU
# pass, so the largest activation of the model is read and written once instead of three times.
# --------------------------------------------------------------------------------------
class LazyGeluCache(NamedTuple):
    z: Array  # GELU's input, kept by an evaluation forward that skipped the derivative


@timed("gelu")
def gelu_forward(x: Array) -> tuple[Array, GeluCache]:
    if not applies(x):
        return F.gelu_forward(x)
    h, g = _kernels(x).gelu(x)
    return h, GeluCache(g)


@timed("gelu")
def gelu_backward(dout: Array, cache: GeluCache) -> Array:
    if _on_cpu(dout):
        return cpu.gelu_backward(dout, cache.dgelu)
    return F.gelu_backward(dout, cache)


@timed("gelu")
def _bias_gelu(y: Array, b: Array, axis: int, need_grad: bool) -> tuple[Array, GeluCache | LazyGeluCache]:
    if need_grad:
        h, dgelu = _kernels(y).bias_gelu(y, b, axis)
        return h, GeluCache(dgelu)
    h, z = _kernels(y).bias_gelu_inference(y, b, axis)
    return h, LazyGeluCache(z)


@timed("gelu")
def _bias_gelu_backward(dh: Array, dgelu: Array, db: Array, axis: int) -> Array:
    return _kernels(dh).bias_gelu_backward(dh, dgelu, db, axis)


def linear_gelu_forward(
    x: Array, w: Array, b: Array, axis: int = -1, need_grad: bool = True
) -> tuple[Array, tuple[LinearCache, GeluCache | LazyGeluCache]]:
    """GELU(linear(x)), as :func:`minimlp.functional.linear_gelu_forward`.

    ``need_grad=False`` (evaluation) lets the fused path keep GELU's input instead of its
    derivative, which it then skips; a backward pass still works, computing it then.
    """
    if not (applies(x) and b is not None):
        y, c_lin = linear_forward(x, w, b, axis)
        h, c_act = gelu_forward(y)
        return h, (c_lin, c_act)
    y, c_lin = linear_forward(x, w, None, axis)  # the product alone; the bias goes into the GELU pass
    h, c_act = _bias_gelu(y, b, axis, need_grad)
    return h, (c_lin, c_act)


def linear_gelu_backward(
    dh: Array,
    cache: tuple[LinearCache, GeluCache | LazyGeluCache],
    w: Array,
    dw: Array,
    db: Array,
    input_grad: bool = True,
    owns_dh: bool = False,
) -> Array | None:
    """Backward of :func:`linear_gelu_forward`.  ``owns_dh=True`` lets it overwrite ``dh``."""
    c_lin, c_act = cache
    if isinstance(c_act, LazyGeluCache):  # the derivative the evaluation forward skipped
        c_act = gelu_forward(c_act.z)[1]
    elif owns_dh and applies(dh) and db is not None:
        dy = _bias_gelu_backward(dh, c_act.dgelu, db, c_lin.axis)  # also adds the bias gradient
        return linear_backward(dy, c_lin, w, dw, None, input_grad)
    dy = gelu_backward(dh, c_act)
    return linear_backward(dy, c_lin, w, dw, db, input_grad)


# --------------------------------------------------------------------------------------
# LayerNorm along the features (axis -1) or the tokens (axis 0), and the residual sum.
# --------------------------------------------------------------------------------------
@timed("layernorm")
def layernorm_forward(x: Array, w: Array, b: Array, axis: int = -1, eps: float = 1e-6) -> tuple[Array, LayerNormCache]:
    if not (applies(x) and x.ndim >= 2 and axis in (-1, 0, x.ndim - 1)):
        return F.layernorm_forward(x, w, b, axis, eps)
    y, xhat, rstd = _kernels(x).layernorm(x, w, b, 0 if axis == 0 else -1, eps)
    return y, LayerNormCache(xhat, rstd, axis)


@timed("layernorm")
def layernorm_backward(dy: Array, cache: LayerNormCache, w: Array, dw: Array, db: Array) -> Array:
    xhat, rstd, axis = cache
    if not (applies(dy) and applies(xhat) and dy.ndim >= 2 and axis in (-1, 0, dy.ndim - 1)):
        return F.layernorm_backward(dy, cache, w, dw, db)
    return _kernels(dy).layernorm_backward(dy, xhat, rstd, w, dw, db, 0 if axis == 0 else -1)


@timed("residual")
def add_inplace(out: Array, x: Array) -> Array:
    if _on_cpu(out) and applies(x) and out.shape == x.shape:
        return cpu.add_(out, x)
    return F.add_inplace(out, x)


# --------------------------------------------------------------------------------------
# The patch embedding, on the fast linear op.
# --------------------------------------------------------------------------------------
patchify = timed("copies")(F.patchify)
unpatchify = timed("copies")(F.unpatchify)


def patch_embed_forward(x: Array, w: Array, b: Array) -> tuple[Array, PatchEmbedCache]:
    D, P = w.shape[0], w.shape[-1]
    y, lin = linear_forward(patchify(x, P), w.reshape(D, -1), b)  # (N, B, D)
    return y, PatchEmbedCache(lin, x.shape)


def patch_embed_backward(
    dy: Array, cache: PatchEmbedCache, w: Array, dw: Array, db: Array, input_grad: bool = True
) -> Array | None:
    D, P = w.shape[0], w.shape[-1]
    dpatches = linear_backward(dy, cache.linear, w.reshape(D, -1), dw.reshape(D, -1), db, input_grad)
    return None if dpatches is None else unpatchify(dpatches, cache.image_shape, P)


# --------------------------------------------------------------------------------------
# Softmax cross-entropy: fused on the GPU only, where the plain version's ten small kernels
# cost more launches than arithmetic.  On the CPU the (B, K) logits are tiny.
# --------------------------------------------------------------------------------------
def _on_gpu_float32(x: Any) -> bool:
    return array_module(x) is not np and applies(x) and x.dtype == np.float32


@timed("loss")
def cross_entropy_forward(logits: Array, target: Array, smoothing: float = 0.0) -> tuple[Array, CrossEntropyCache]:
    if not _on_gpu_float32(logits):
        return L.cross_entropy_forward(logits, target, smoothing)
    q = target_distribution(target, logits.shape[1], smoothing, logits.dtype, array_module(logits))
    loss, probs = _kernels(logits).cross_entropy(logits, q)  # four kernels instead of ten
    return loss, CrossEntropyCache(probs, q)


@timed("loss")
def cross_entropy_backward(cache: CrossEntropyCache, dloss: float = 1.0) -> Array:
    probs, q = cache
    if not _on_gpu_float32(probs):
        return L.cross_entropy_backward(cache, dloss)
    return _kernels(probs).cross_entropy_grad(probs, q, dloss / probs.shape[0])


# --------------------------------------------------------------------------------------
# The plain ops, marked for the time breakdown.
# --------------------------------------------------------------------------------------
dropout_forward = timed("dropout")(F.dropout_forward)
drop_path_forward = timed("dropout")(F.drop_path_forward)
mask_backward = dropout_backward = drop_path_backward = timed("dropout")(F.mask_backward)
transpose_forward = timed("copies")(F.transpose_forward)
transpose_backward = timed("copies")(F.transpose_backward)
tokens_forward = timed("copies")(F.tokens_forward)
tokens_backward = timed("copies")(F.tokens_backward)
resize_bilinear_forward = timed("copies")(F.resize_bilinear_forward)
resize_bilinear_backward = timed("copies")(F.resize_bilinear_backward)
cls_pool_forward = timed("copies")(F.cls_pool_forward)
cls_pool_backward = timed("copies")(F.cls_pool_backward)
