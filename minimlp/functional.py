"""The math: every operation of the model as a ``<op>_forward`` / ``<op>_backward`` pair.

A forward takes arrays and returns ``(out, cache)``; the cache holds only what the
backward needs.  A backward takes the upstream gradient ``dout`` and the cache and returns
the gradient of its input; parameter gradients are *added* into the arrays it is given
(``dw += ...``), so gradients accumulate until the trainer zeroes them.  Nothing here
keeps state, so finite differences can call a forward as often as they like.

All functions work on NumPy and CuPy arrays alike (``xp`` is taken from the inputs).
Shape letters: B batch, T tokens (with the class token), N patches, D features,
H hidden, P patch size, C channels, K classes, M rows of a flattened matrix.

Activation layout.  The paper's block works on (B, T, D) and transposes to (B, D, T)
for the patch feed-forward.  minimlp keeps activations as (T, B, D) instead: the feature
feed-forward then acts on the last axis of a (T·B, D) matrix and the patch feed-forward
on the first axis of a (T, B·D) matrix, so both are single 2-D matrix products on the
data where it lies, with no transpose and no copy (lesson 7).  ``linear_*`` and
``layernorm_*`` therefore take an ``axis``: -1 (features) or 0 (tokens).

Speed.  Each op is written plainly, once, for NumPy and CuPy alike, and nothing here is
about speed.  The layers call the same ops through :mod:`minimlp.kernels`, which runs a
fused kernel where one computes the same thing faster (float32 on the CPU, CuPy on the
GPU) and the op below otherwise; the gradient checks prove the ops below and the tests
compare every kernel with them.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from minimlp.backend import Array, array_module, erfc


# --------------------------------------------------------------------------------------
# Linear: y = W x + b along one axis.  Lesson 2.
# --------------------------------------------------------------------------------------
class LinearCache(NamedTuple):
    x: Array
    axis: int


def linear_forward(x: Array, w: Array, b: Array | None, axis: int = -1) -> tuple[Array, LinearCache]:
    """Apply a linear map with weight ``w`` (O, I) (PyTorch layout) along ``axis``.

    axis=-1: x (..., I) -> (..., O), each row mixed: y = x Wᵀ + b.
    axis=0:  x (I, ...) -> (O, ...), each column mixed: y = W x + b.
    """
    if axis == -1:
        x2 = x.reshape(-1, x.shape[-1])  # (M, I)
        y = x2 @ w.T  # (M, O); w.T is a view, which BLAS reads as a transposed matrix
        if b is not None:
            y += b
        return y.reshape(*x.shape[:-1], w.shape[0]), LinearCache(x, axis)
    if axis == 0:
        x2 = x.reshape(x.shape[0], -1)  # (I, M)
        y = w @ x2  # (O, M)
        if b is not None:
            y += b[:, None]
        return y.reshape(w.shape[0], *x.shape[1:]), LinearCache(x, axis)
    raise ValueError(f"linear acts on axis -1 or 0, got {axis}")


def linear_backward(
    dy: Array, cache: LinearCache, w: Array, dw: Array, db: Array | None, input_grad: bool = True
) -> Array | None:
    """Add dL/dW into ``dw`` and dL/db into ``db``; return dL/dx, or None with
    ``input_grad=False`` (the image under the patch embedding needs none)."""
    x = cache.x
    if cache.axis == -1:
        dy2 = dy.reshape(-1, dy.shape[-1])  # (M, O)
        x2 = x.reshape(-1, x.shape[-1])  # (M, I)
        dw += dy2.T @ x2  # (O, I)
        if db is not None:
            db += dy2.sum(axis=0)  # summed over the M positions
        return (dy2 @ w).reshape(x.shape) if input_grad else None  # (M, I)
    dy2 = dy.reshape(dy.shape[0], -1)  # (O, M)
    x2 = x.reshape(x.shape[0], -1)  # (I, M)
    dw += dy2 @ x2.T  # (O, I)
    if db is not None:
        db += dy2.sum(axis=1)
    return (w.T @ dy2).reshape(x.shape) if input_grad else None  # (I, M)


# --------------------------------------------------------------------------------------
# GELU, exact: GELU(x) = x Φ(x), Φ the standard normal CDF.  Lesson 3.
# --------------------------------------------------------------------------------------
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class GeluCache(NamedTuple):
    dgelu: Array  # GELU'(x) = Φ(x) + x φ(x); computed in forward, where Φ is at hand


def gelu_forward(x: Array) -> tuple[Array, GeluCache]:
    xp = array_module(x)
    cdf = 0.5 * erfc(-x * _INV_SQRT2)  # Φ(x), through erfc: accurate for x << 0 too
    pdf = xp.exp(-0.5 * x * x) * _INV_SQRT_2PI  # φ(x)
    return x * cdf, GeluCache(cdf + x * pdf)


def gelu_backward(dout: Array, cache: GeluCache) -> Array:
    """dL/dx = dout * GELU'(x)."""
    return dout * cache.dgelu


# --------------------------------------------------------------------------------------
# A linear layer followed by GELU: the first half of every feed-forward layer, and the
# one pair that :mod:`minimlp.kernels` fuses (the bias goes inside the GELU pass there).
# --------------------------------------------------------------------------------------
def linear_gelu_forward(x: Array, w: Array, b: Array, axis: int = -1) -> tuple[Array, tuple[LinearCache, GeluCache]]:
    """GELU(linear(x)): returns (h, (linear cache, GELU cache))."""
    y, c_lin = linear_forward(x, w, b, axis)
    h, c_act = gelu_forward(y)
    return h, (c_lin, c_act)


def linear_gelu_backward(
    dh: Array, cache: tuple[LinearCache, GeluCache], w: Array, dw: Array, db: Array, input_grad: bool = True
) -> Array | None:
    """Backward of :func:`linear_gelu_forward`."""
    c_lin, c_act = cache
    dy = gelu_backward(dh, c_act)
    return linear_backward(dy, c_lin, w, dw, db, input_grad)


# --------------------------------------------------------------------------------------
# LayerNorm over one axis.  Lesson 4.
# --------------------------------------------------------------------------------------
class LayerNormCache(NamedTuple):
    xhat: Array  # (x - mean) / std
    rstd: Array  # 1 / sqrt(var + eps), with the normalised axis kept as size 1
    axis: int


def _along(v: Array, axis: int, ndim: int) -> Array:
    """Reshape a 1-D parameter so that it broadcasts along ``axis`` of an ndim array."""
    if axis in (-1, ndim - 1):
        return v
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))


def layernorm_forward(x: Array, w: Array, b: Array, axis: int = -1, eps: float = 1e-6) -> tuple[Array, LayerNormCache]:
    """Normalise x to zero mean and unit variance along ``axis``, then scale and shift.

    axis=-1 normalises each token over its D features (the usual LayerNorm); axis=0
    normalises each feature channel over the T tokens (the patch branch of this model).
    eps sits inside the square root, as in PyTorch.
    """
    xp = array_module(x)
    mean = x.mean(axis=axis, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=axis, keepdims=True)  # biased variance, as PyTorch
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = xc * rstd
    y = xhat * _along(w, axis, x.ndim) + _along(b, axis, x.ndim)
    return y, LayerNormCache(xhat, rstd, axis)


def layernorm_backward(dy: Array, cache: LayerNormCache, w: Array, dw: Array, db: Array) -> Array:
    xhat, rstd, axis = cache
    other = tuple(i for i in range(dy.ndim) if i != axis % dy.ndim)  # axes summed for dw, db
    dw += (dy * xhat).sum(axis=other)
    db += dy.sum(axis=other)
    dxhat = dy * _along(w, axis, dy.ndim)
    # d/dx of (x - mean) * rstd, through both the mean and the variance:
    return (dxhat - dxhat.mean(axis=axis, keepdims=True) - xhat * (dxhat * xhat).mean(axis=axis, keepdims=True)) * rstd


# --------------------------------------------------------------------------------------
# Residual connections: out = out + x, in place.  The caller passes as ``out`` an array it
# owns (a branch's fresh output), so the sum needs no new memory.
# --------------------------------------------------------------------------------------
def add_inplace(out: Array, x: Array) -> Array:
    """out += x; returns out."""
    out += x
    return out


# --------------------------------------------------------------------------------------
# Dropout and drop path (stochastic depth).  Lesson 7.
# --------------------------------------------------------------------------------------
class MaskCache(NamedTuple):
    mask: Array | None  # kept / keep-probability, or None when nothing was dropped


def _uniform_dtype(dtype: Any) -> Any:
    """The dtype to draw uniform numbers in for ``dtype`` data: generators (NumPy's and CuPy's) draw
    float32 or float64 only, so float16 data takes float32 draws."""
    return "float32" if dtype == "float16" else dtype


def dropout_forward(x: Array, p: float, rng: Any, train: bool) -> tuple[Array, MaskCache]:
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout)."""
    if not train or p == 0.0:
        return x, MaskCache(None)
    keep = rng.random(x.shape, dtype=_uniform_dtype(x.dtype)) >= p
    mask = keep.astype(x.dtype) * (1.0 / (1.0 - p))
    return x * mask, MaskCache(mask)


def drop_path_forward(x: Array, p: float, rng: Any, train: bool, batch_axis: int = 1) -> tuple[Array, MaskCache]:
    """Drop a whole residual branch for a random subset of samples (stochastic depth).

    The same keep/drop decision covers every element of one sample, so the mask has
    size B along ``batch_axis`` and 1 elsewhere; kept samples are scaled by 1/(1-p).
    """
    if not train or p == 0.0:
        return x, MaskCache(None)
    shape = [1] * x.ndim
    shape[batch_axis] = x.shape[batch_axis]
    keep = rng.random(tuple(shape), dtype=_uniform_dtype(x.dtype)) >= p
    mask = keep.astype(x.dtype) * (1.0 / (1.0 - p))
    return x * mask, MaskCache(mask)


def mask_backward(dout: Array, cache: MaskCache) -> Array:
    """Backward of dropout and of drop path: the same mask, applied to the gradient."""
    return dout if cache.mask is None else dout * cache.mask


dropout_backward = drop_path_backward = mask_backward


# --------------------------------------------------------------------------------------
# Transpose: a permutation of axes; its backward is the inverse permutation.
# In the (T, B, D) layout the model needs none; this is the paper's view of the block,
# used to hand features to users as (B, T, D) and by the lessons.
# --------------------------------------------------------------------------------------
def transpose_forward(x: Array, axes: tuple[int, ...]) -> tuple[Array, tuple[int, ...]]:
    return x.transpose(axes), axes


def transpose_backward(dout: Array, axes: tuple[int, ...]) -> Array:
    inverse = tuple(sorted(range(len(axes)), key=axes.__getitem__))
    return dout.transpose(inverse)


# --------------------------------------------------------------------------------------
# Patch embedding: a P×P convolution with stride P is a linear map on flattened patches.
# Lesson 1.
# --------------------------------------------------------------------------------------
def patchify(x: Array, patch_size: int) -> Array:
    """(B, C, H, W) -> (N, B, C·P·P): patches in row-major grid order, each flattened in
    (C, P, P) order, which is how a (D, C, P, P) convolution weight flattens."""
    B, C, H, W = x.shape
    P = patch_size
    x = x.reshape(B, C, H // P, P, W // P, P)  # (B, C, Hp, P, Wp, P)
    x = x.transpose(2, 4, 0, 1, 3, 5)  # (Hp, Wp, B, C, P, P)
    return x.reshape((H // P) * (W // P), B, C * P * P)  # copies: the one im2col copy


def unpatchify(patches: Array, image_shape: tuple[int, int, int, int], patch_size: int) -> Array:
    """The inverse of :func:`patchify`: (N, B, C·P·P) -> (B, C, H, W)."""
    B, C, H, W = image_shape
    P = patch_size
    x = patches.reshape(H // P, W // P, B, C, P, P)  # (Hp, Wp, B, C, P, P)
    x = x.transpose(2, 3, 0, 4, 1, 5)  # (B, C, Hp, P, Wp, P)
    return x.reshape(B, C, H, W)


class PatchEmbedCache(NamedTuple):
    linear: LinearCache
    image_shape: tuple[int, int, int, int]


def patch_embed_forward(x: Array, w: Array, b: Array) -> tuple[Array, PatchEmbedCache]:
    """x (B, C, H, W), conv weight w (D, C, P, P), bias (D,) -> tokens (N, B, D)."""
    D, P = w.shape[0], w.shape[-1]
    patches = patchify(x, P)  # (N, B, C·P·P)
    y, lin = linear_forward(patches, w.reshape(D, -1), b)  # (N, B, D)
    return y, PatchEmbedCache(lin, x.shape)


def patch_embed_backward(
    dy: Array, cache: PatchEmbedCache, w: Array, dw: Array, db: Array, input_grad: bool = True
) -> Array | None:
    D, P = w.shape[0], w.shape[-1]
    # dw.reshape is a view, so the gradient lands in dw.  The image needs no gradient
    # when training, which saves the largest matrix product of this layer.
    dpatches = linear_backward(dy, cache.linear, w.reshape(D, -1), dw.reshape(D, -1), db, input_grad)
    return None if dpatches is None else unpatchify(dpatches, cache.image_shape, P)


# --------------------------------------------------------------------------------------
# Class token and learned positional embedding.
# --------------------------------------------------------------------------------------
def tokens_forward(
    patch_tokens: Array, cls_token: Array, pos_embed: Array, cls_pos_embed: Array | None = None
) -> Array:
    """Prepend the class token and add positional embeddings.

    patch_tokens (N, B, D); cls_token (1, 1, D).  Two ways to store the positions:
    the released FF checkpoints keep a grid pos_embed (1, D, Hp, Wp) in channels-first
    layout plus a separate cls_pos_embed (1, 1, D); timm's ViT keeps one table
    pos_embed (1, T, D) whose row 0 is the class token's (pass cls_pos_embed=None).
    Returns (T, B, D) with T = N + 1.  Nothing needs caching: the map is affine.
    """
    xp = array_module(patch_tokens)
    N, B, D = patch_tokens.shape
    if cls_pos_embed is None:
        cls_pos, patch_pos = pos_embed[0, 0], pos_embed[0, 1:]  # (D,), (N, D)
    else:
        cls_pos, patch_pos = cls_pos_embed[0, 0], pos_embed.reshape(D, N).T  # grid flattened row-major
    x = xp.empty((N + 1, B, D), dtype=patch_tokens.dtype)
    x[0] = cls_token[0, 0] + cls_pos  # the same vector for every sample
    x[1:] = patch_tokens + patch_pos[:, None, :]
    return x


def tokens_backward(dx: Array, dcls_token: Array, dpos_embed: Array, dcls_pos_embed: Array | None = None) -> Array:
    """Add the embedding gradients; return the gradient of the patch tokens (N, B, D).

    The position arguments are laid out as in :func:`tokens_forward`.
    """
    D = dx.shape[2]
    dcls = dx[0].sum(axis=0)  # (D,)
    dpatch_pos = dx[1:].sum(axis=1)  # (N, D)
    dcls_token[0, 0] += dcls
    if dcls_pos_embed is None:
        dpos_embed[0, 0] += dcls
        dpos_embed[0, 1:] += dpatch_pos
    else:
        dcls_pos_embed[0, 0] += dcls
        dpos_embed += dpatch_pos.T.reshape(dpos_embed.shape[0], D, *dpos_embed.shape[2:])
    return dx[1:]


# --------------------------------------------------------------------------------------
# Bilinear resize of a grid, as torch.nn.functional.interpolate(mode="bilinear",
# align_corners=False).  The released model keeps a 14×14 position grid for every size and
# resizes it to the patch grid (7×7 for ff_large).  Lesson 1.
# --------------------------------------------------------------------------------------
def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64: the linear map that resizes one axis from n_in to n_out values.

    align_corners=False takes each value as the centre of a cell: output o sits at input
    coordinate s = (o + ½)·n_in/n_out − ½, moved up to 0 when below it (PyTorch's rule),
    and takes 1 − f of input i = ⌊s⌋ and f = s − i of input i + 1 (of i again at the last
    input).  Every row sums to 1; at n_in == n_out the map is the identity.
    """
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        s = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i = min(int(s), n_in - 1)
        f = s - i
        w[o, i] += 1.0 - f
        w[o, min(i + 1, n_in - 1)] += f
    return w


class ResizeCache(NamedTuple):
    wh: Array  # (Hout, Hin): the map along the rows
    ww: Array  # (Wout, Win): the map along the columns


def resize_bilinear_forward(x: Array, size: tuple[int, int]) -> tuple[Array, ResizeCache]:
    """x (..., Hin, Win) -> (..., Hout, Wout), resized bilinearly over its last two axes.

    Bilinear interpolation is separable: each output is a weighted sum of the 2×2 inputs
    around it, with weights that are products of one row weight and one column weight.  So
    y = Wh x Wwᵀ with the two small matrices of :func:`bilinear_weights`.
    """
    xp = array_module(x)
    Hout, Wout = size
    wh = xp.asarray(bilinear_weights(x.shape[-2], Hout), dtype=x.dtype)  # (Hout, Hin)
    ww = xp.asarray(bilinear_weights(x.shape[-1], Wout), dtype=x.dtype)  # (Wout, Win)
    y = wh @ (x @ ww.T)  # (..., Hin, Wout), then (..., Hout, Wout)
    return y, ResizeCache(wh, ww)


def resize_bilinear_backward(dy: Array, cache: ResizeCache) -> Array:
    """dy (..., Hout, Wout) -> dx (..., Hin, Win): y = Wh x Wwᵀ is linear, so dx = Whᵀ dy Ww.

    Each input value receives the gradients of the outputs it was mixed into, scaled by the
    same weights (PyTorch's backward adds them up the same way).
    """
    return cache.wh.T @ dy @ cache.ww  # (..., Hin, Wout), then (..., Hin, Win)


# --------------------------------------------------------------------------------------
# Class-token pooling: the classifier reads token 0 only.
# --------------------------------------------------------------------------------------
def cls_pool_forward(x: Array) -> tuple[Array, tuple[int, ...]]:
    """(T, B, D) -> (B, D)."""
    return x[0], x.shape


def cls_pool_backward(dout: Array, shape: tuple[int, ...]) -> Array:
    xp = array_module(dout)
    dx = xp.zeros(shape, dtype=dout.dtype)
    dx[0] = dout
    return dx


# --------------------------------------------------------------------------------------
# Global average pooling over tokens: the MLP-Mixer's classifier reads the mean token.
# --------------------------------------------------------------------------------------
def mean_pool_forward(x: Array) -> tuple[Array, tuple[int, ...]]:
    """(T, B, D) -> (B, D), the mean over the T tokens."""
    return x.mean(axis=0), x.shape


def mean_pool_backward(dout: Array, shape: tuple[int, ...]) -> Array:
    xp = array_module(dout)
    dx = xp.empty(shape, dtype=dout.dtype)
    dx[...] = dout * (1.0 / shape[0])  # every token receives 1/T of the gradient
    return dx


# --------------------------------------------------------------------------------------
# Softmax over the last axis.  The comparison lesson (attention).
# --------------------------------------------------------------------------------------
class SoftmaxCache(NamedTuple):
    probs: Array  # the output: its Jacobian is diag(p) - p pᵀ, so p is all backward needs


def softmax_forward(x: Array) -> tuple[Array, SoftmaxCache]:
    """exp(x) / sum(exp(x)) along the last axis; each row sums to 1."""
    xp = array_module(x)
    p = x - x.max(axis=-1, keepdims=True)  # the largest entry becomes 0: exp cannot overflow
    xp.exp(p, out=p)
    p /= p.sum(axis=-1, keepdims=True)
    return p, SoftmaxCache(p)


def softmax_backward(dp: Array, cache: SoftmaxCache) -> Array:
    """dx = p * (dp - sum(dp * p)): the Jacobian diag(p) - p pᵀ applied to dp, row by row."""
    p = cache.probs
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------------------
# Multi-head self-attention.  The comparison lesson (attention).
#
# Layout of the heads.  Activations stay (T, B, D) everywhere else, but the two products
# of attention, q kᵀ and softmax(·) v, are one (S, d) × (d, S) and one (S, S) × (S, d)
# matrix product per sample and head.  With q, k and v laid out as (B, h, S, d) every
# one of those B·h matrices is a contiguous block, so ``q @ kᵀ`` over the leading
# (B, h) axes is a single batched GEMM (NumPy's matmul loop calls BLAS once per matrix
# with unit strides; CuPy calls cuBLAS's strided-batched GEMM once).  Left in (T, B, D),
# each head would be a strided slice and every product would go through slow, copying
# paths.  Getting there costs one copy of the qkv activations (3·S·B·D numbers) and one
# copy back after the products, which is small next to the O(S²·D) work of attention.
#
# ``axis`` says which axis holds the embedding the heads split, as for ``linear_*``:
# axis=-1 attends over tokens (x (T, B, D), S = T; the usual attention), axis=0 attends
# over features (the embedding of each "feature token" is its column of T values,
# x (T, B, D) read as (E, B, S) with E = T, S = D; the paper's attention-only ablation).
# --------------------------------------------------------------------------------------
def split_heads_forward(qkv: Array, num_heads: int, axis: int = -1) -> tuple[Array, Array, Array]:
    """The output of the qkv projection -> q, k, v, each (B, h, S, d) and contiguous.

    axis=-1: qkv (S, B, 3E), its last axis ordered (3, h, d) as timm's qkv weight rows.
    axis=0:  qkv (3E, B, S), its first axis ordered (3, h, d).
    """
    xp = array_module(qkv)
    if axis == -1:
        S, B, E3 = qkv.shape
        heads = qkv.reshape(S, B, 3, num_heads, E3 // (3 * num_heads))  # (S, B, 3, h, d)
        heads = heads.transpose(2, 1, 3, 0, 4)  # (3, B, h, S, d)
    elif axis == 0:
        E3, B, S = qkv.shape
        heads = qkv.reshape(3, num_heads, E3 // (3 * num_heads), B, S)  # (3, h, d, B, S)
        heads = heads.transpose(0, 3, 1, 4, 2)  # (3, B, h, S, d)
    else:
        raise ValueError(f"attention splits heads along axis -1 or 0, got {axis}")
    heads = xp.ascontiguousarray(heads)  # the one copy: each (S, d) matrix now contiguous
    return heads[0], heads[1], heads[2]


def split_heads_backward(dq: Array, dk: Array, dv: Array, axis: int = -1) -> Array:
    """The inverse layout change: dq, dk, dv (B, h, S, d) -> dqkv shaped as qkv."""
    xp = array_module(dq)
    B, h, S, d = dq.shape
    if axis == -1:
        dqkv = xp.empty((S, B, 3, h, d), dtype=dq.dtype)
        for i, g in enumerate((dq, dk, dv)):
            dqkv[:, :, i] = g.transpose(2, 0, 1, 3)  # (S, B, h, d)
        return dqkv.reshape(S, B, 3 * h * d)
    dqkv = xp.empty((3, h, d, B, S), dtype=dq.dtype)
    for i, g in enumerate((dq, dk, dv)):
        dqkv[i] = g.transpose(1, 3, 0, 2)  # (h, d, B, S)
    return dqkv.reshape(3 * h * d, B, S)


def merge_heads_forward(ctx: Array, axis: int = -1) -> Array:
    """Concatenate the heads back into the activation layout: (B, h, S, d) ->
    (S, B, h·d) for axis=-1, (h·d, B, S) for axis=0.  The reshape makes the copy."""
    B, h, S, d = ctx.shape
    if axis == -1:
        return ctx.transpose(2, 0, 1, 3).reshape(S, B, h * d)
    return ctx.transpose(1, 3, 0, 2).reshape(h * d, B, S)


def merge_heads_backward(dy: Array, num_heads: int, axis: int = -1) -> Array:
    """(S, B, E) or (E, B, S) -> (B, h, S, d), contiguous for the batched products."""
    xp = array_module(dy)
    if axis == -1:
        S, B, E = dy.shape
        d = dy.reshape(S, B, num_heads, E // num_heads).transpose(1, 2, 0, 3)
    else:
        E, B, S = dy.shape
        d = dy.reshape(num_heads, E // num_heads, B, S).transpose(2, 0, 3, 1)
    return xp.ascontiguousarray(d)


class AttentionCache(NamedTuple):
    q: Array  # q * scale, (B, h, S, d): scaling q costs S·d per head, the scores S·S
    k: Array
    v: Array
    softmax: SoftmaxCache  # the attention probabilities (B, h, S, S)
    drop: MaskCache  # attention dropout on the probabilities
    scale: float


def attention_forward(
    q: Array,
    k: Array,
    v: Array,
    scale: float | None = None,
    attn_drop: float = 0.0,
    rng: Any = None,
    train: bool = False,
) -> tuple[Array, AttentionCache]:
    """Scaled dot-product attention, softmax(q kᵀ · scale) v, batched over leading axes.

    q, k, v (..., S, d) -> (..., S, d); scale defaults to 1/sqrt(d).  Row i of the
    probabilities says how much query i reads from each key; they sum to 1 over keys.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q = q * scale  # (..., S, d)
    scores = q @ k.swapaxes(-1, -2)  # (..., S, S): query rows, key columns
    probs, c_softmax = softmax_forward(scores)  # over keys
    probs, c_drop = dropout_forward(probs, attn_drop, rng, train)
    return probs @ v, AttentionCache(q, k, v, c_softmax, c_drop, scale)  # (..., S, d)


def attention_backward(dout: Array, cache: AttentionCache) -> tuple[Array, Array, Array]:
    """dout (..., S, d) -> (dq, dk, dv), each (..., S, d)."""
    q, k, v, c_softmax, c_drop, scale = cache
    probs = mask_backward(c_softmax.probs, c_drop)  # the (dropped-out) matrix that met v
    dv = probs.swapaxes(-1, -2) @ dout  # (..., S, d)
    dprobs = dout @ v.swapaxes(-1, -2)  # (..., S, S)
    dprobs = mask_backward(dprobs, c_drop)
    dscores = softmax_backward(dprobs, c_softmax)
    dk = dscores.swapaxes(-1, -2) @ q  # (..., S, d); q here is already scaled
    dq = dscores @ k
    dq *= scale
    return dq, dk, dv
