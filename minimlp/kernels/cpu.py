"""Fused CPU kernels: faster float32 NumPy versions of a few ``functional`` ops.

The plain versions in :mod:`minimlp.functional` are the reference: short, written once
against ``xp``, and what the lessons derive and the gradient checks prove.  The kernels
here compute the same numbers (to float32 rounding) with far less memory traffic: the
arrays are cut into cache-sized tiles that all cores work through
(:func:`minimlp.kernels.threads.parallel_for`); every intermediate lives in a small
per-thread scratch buffer, so each input is read from memory once and each output
written once, instead of once per NumPy operation.  Their CuPy twins are in
:mod:`minimlp.kernels.cuda`; :mod:`minimlp.kernels` chooses between them and the plain
ops.  Lesson 11 walks through why each one pays.

Arrays reach the kernels as 2-D views: a (T, B, D) activation is (T·B, D) for ops along
the features (axis -1) and (T, B·D) for ops along the tokens (axis 0), as in
``functional``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from minimlp.kernels.threads import CHUNK, num_threads, parallel_for, single_threaded_blas


def _as_2d(x: np.ndarray, axis: int) -> np.ndarray:
    """The (rows, columns) view the kernels work on: (M, D) for axis -1, (T, M) for axis 0."""
    return x.reshape(-1, x.shape[-1]) if axis == -1 else x.reshape(x.shape[0], -1)


# --------------------------------------------------------------------------------------
# Tiles and scratch memory.
# --------------------------------------------------------------------------------------
def _tiles(rows: int, cols: int, whole: str = "") -> list[tuple[slice, slice]]:
    """Cut a (rows, cols) array into tiles of about CHUNK elements.

    whole="cols": every tile spans all columns (a kernel that reduces along each row);
    whole="rows": every tile spans all rows (one that reduces along each column);
    otherwise tiles are runs of whole rows, or pieces of one row when a row is long.
    """
    if whole == "rows":
        # Columns of a row-major array are strided: keep each row's piece long (>= 4096
        # elements), so that memory is read in long runs, even when the tile gets large.
        step = max(4096, CHUNK // max(rows, 1))
        return [(slice(None), slice(c, min(c + step, cols))) for c in range(0, cols, step)]
    if whole == "cols" or cols <= 2 * CHUNK:
        step = max(1, CHUNK // max(cols, 1))
        return [(slice(r, min(r + step, rows)), slice(None)) for r in range(0, rows, step)]
    parts = -(-cols // CHUNK)
    width = -(-cols // parts)
    return [(slice(r, r + 1), slice(c, min(c + width, cols))) for r in range(rows) for c in range(0, cols, width)]


def _run(tiles: list, body) -> None:
    """Run ``body(index, rows, cols)`` for every tile, spread over the threads."""

    def span(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            body(i, *tiles[i])

    parallel_for(span, len(tiles), 1)


_local = threading.local()


def _scratch(count: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    """``count`` float32 work arrays of ``shape``, private to this thread and reused."""
    size = math.prod(shape)
    bufs = getattr(_local, "bufs", None)
    if bufs is None or bufs.shape[0] < count or bufs.shape[1] < size:
        bufs = _local.bufs = np.empty((max(count, 4), max(size, 3 * CHUNK)), np.float32)
    return [bufs[i, :size].reshape(shape) for i in range(count)]


# --------------------------------------------------------------------------------------
# Matrix products.  OpenBLAS threads its own products, but its threads wait for each
# other inside a product, spinning; on a machine whose cores are shared with other work a
# paused thread then stalls the product (we measured 1-11 GFLOP/s instead of 50-60 for
# the weight gradients).  Here a product is cut into independent pieces that the threads
# take in turn, each computed by a single-threaded BLAS call, so no thread waits on
# another until the last piece is done:
#
# * usually blocks of output rows (or columns, when the output is short and wide); each
#   piece re-reads the shared operand, a small cost for pieces of 64+ rows or columns;
# * for a long inner dimension (the weight gradients, which sum over all T·B positions),
#   blocks of that dimension instead: each piece reads its own share of both operands
#   and writes a small partial product, and the partials are summed at the end (measured
#   50-100% faster than splitting the output, which re-read the long operands).
# --------------------------------------------------------------------------------------
_MIN_PIECE = 64


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a @ b for float32 NumPy matrices (any strides BLAS accepts), on all cores."""
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    out = np.empty((m, n), np.result_type(a, b)) if out is None else out
    split_inner = k >= 4 * max(m, n)
    length = k if split_inner else max(m, n)
    pieces = min((2 if split_inner else 4) * num_threads(), length // _MIN_PIECE)
    if pieces < 2:
        return np.matmul(a, b, out=out)
    step = -(-length // pieces)
    partials = np.empty((-(-length // step), m, n), out.dtype) if split_inner else None

    def piece(lo: int, hi: int) -> None:
        if split_inner:
            np.matmul(a[:, lo:hi], b[lo:hi], out=partials[lo // step])
        elif m >= n:
            np.matmul(a[lo:hi], b, out=out[lo:hi])
        else:
            np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])

    with single_threaded_blas() as ours:
        if not ours:  # a BLAS we cannot steer keeps its own threads
            return np.matmul(a, b, out=out)
        parallel_for(piece, length, step)
    if split_inner:  # the partials' sum, on all cores (a serial sum cost ~1% of an ff_tiny step)
        rows = max(1, CHUNK // (n * partials.shape[0]))
        parallel_for(lambda lo, hi: np.add.reduce(partials[:, lo:hi], axis=0, out=out[lo:hi]), m, rows)
    return out


# --------------------------------------------------------------------------------------
# GELU: h = z Φ(z) and its derivative g = Φ(z) + z φ(z), in one pass over each tile.
#
# Φ comes from the upper tail q(a) = Φ(-a) for a = |z|, written as
#     q(a) = exp(-a²/2) R(a),
# where R(a) = exp(a²/2) Φ(-a) is smooth and slowly varying (R(0) = 1/2, R ~ 1/(a√2π)).
# R is a (3, 4) rational function fitted by iteratively reweighted least squares on
# 0 ≤ a ≤ 14 for the smallest worst-case error of q: 1.6e-8 absolute, 1.6e-6 relative
# (beyond a = 14, exp(-a²/2) underflows float32 anyway).  Going through the tail keeps
# GELU(z) = -a q accurate relative to itself far into the left tail, where
# z (1 + erf(z/√2)) / 2 would cancel to zero.  Then, with φ(a) = exp(-a²/2)/√(2π):
#     h = (z + a)/2 - a q                       (z Φ(z): z - a q for z > 0, -a q for z < 0)
#     g = 1/2 + sign(z) (1/2 - q + a φ)         (Φ(z) + z φ(z); the bracket is never < 0)
# 30 NumPy operations per element, all on a tile that stays in the core's cache.
# --------------------------------------------------------------------------------------
# Constants as 0-d float32 arrays: a NumPy call with a 0-d array operand costs about half
# a microsecond less than one with a scalar, which it would otherwise convert every time.
def _f32(value: float) -> np.ndarray:
    return np.array(value, np.float32)


_R_NUM = tuple(
    _f32(c) for c in (13.706913417598496, 9.43080780930002, 2.9904207335724253, 0.3988401852242123)
)  # c0 + c1 a + c2 a² + c3 a³
_R_DEN = tuple(
    _f32(c) for c in (27.413827709273654, 40.73461946864278, 24.7762218812428, 7.486590643221724)
)  # d0 + d1 a + d2 a² + d3 a³ + a⁴
_INV_SQRT_2PI = _f32(1.0 / math.sqrt(2.0 * math.pi))
_HALF = _f32(0.5)
_MINUS_HALF = _f32(-0.5)
_ONE = _f32(1.0)
_SIGN_BIT = np.array(-(2**31), np.int32)  # 0x80000000, the sign bit of a float32


def _gelu_tile(z: np.ndarray, h: np.ndarray, g: np.ndarray | None) -> None:
    """One tile of float32 GELU: writes h = GELU(z) and, unless g is None, g = GELU'(z).

    ``h`` may be ``z``.
    """
    a, num, t = _scratch(3, z.shape)
    np.abs(z, out=a)
    np.multiply(a, _R_NUM[3], out=num)  # numerator of R, by Horner's rule
    for i in (2, 1, 0):
        np.add(num, _R_NUM[i], out=num)
        if i:
            np.multiply(num, a, out=num)
    np.add(a, _R_DEN[3], out=t)  # denominator (monic)
    for i in (2, 1, 0):
        np.multiply(t, a, out=t)
        np.add(t, _R_DEN[i], out=t)
    np.divide(num, t, out=num)  # R(a)
    np.multiply(a, _MINUS_HALF, out=t)
    np.multiply(t, a, out=t)
    np.exp(t, out=t)  # exp(-a²/2)
    np.multiply(num, t, out=num)  # q = Φ(-a)
    if g is not None:
        np.multiply(t, a, out=t)
        np.multiply(t, _INV_SQRT_2PI, out=t)  # a φ(a)
        np.subtract(t, num, out=t)
        np.add(t, _HALF, out=t)  # 1/2 - q + a φ  (>= 0, up to rounding)
        # g = 1/2 + sign(z) t: t's bits with z's sign bit set into them.  Two integer
        # operations cost a third of np.copysign, which NumPy does not vectorise.
        g_bits = g.view(np.int32)
        np.bitwise_and(z.view(np.int32), _SIGN_BIT, out=g_bits)
        np.bitwise_or(g_bits, t.view(np.int32), out=g_bits)
        np.add(g, _HALF, out=g)  # g = Φ(z) + z φ(z)
    np.multiply(num, a, out=num)  # a q
    np.add(z, a, out=h)  # z is read for the last time here, so h may overwrite it
    np.multiply(h, _HALF, out=h)
    np.subtract(h, num, out=h)  # h = z Φ(z)


def gelu(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(GELU(x), GELU'(x)) with the exact erf-based GELU, as one fused pass."""
    h, g = np.empty_like(x), np.empty_like(x)
    xf, hf, gf = x.reshape(-1), h.reshape(-1), g.reshape(-1)
    parallel_for(lambda lo, hi: _gelu_tile(xf[lo:hi], hf[lo:hi], gf[lo:hi]), xf.size, CHUNK)
    return h, g


def bias_gelu(y: Any, b: Any, axis: int) -> tuple[Any, Any]:
    """(GELU(y + b), GELU'(y + b)) with ``b`` broadcast along ``axis`` (-1 or 0).

    This is a linear layer's bias add and the activation after it, in one pass.  The
    first output is written over ``y``, the matrix product's result, which nothing else
    holds; the second is a new array.
    """
    y2 = _as_2d(y, axis)
    g2 = np.empty_like(y2)
    b2 = b[None, :] if axis == -1 else b[:, None]

    def body(i: int, rs: slice, cs: slice) -> None:
        z = y2[rs, cs]
        np.add(z, b2[:, cs] if axis == -1 else b2[rs], out=z)
        _gelu_tile(z, z, g2[rs, cs])

    _run(_tiles(*y2.shape), body)
    return y, g2.reshape(y.shape)


def bias_gelu_inference(y: Any, b: Any, axis: int) -> tuple[Any, Any]:
    """(GELU(y + b), y + b): the activation without its derivative, for a forward pass
    that will probably not be followed by a backward one.  ``y`` becomes y + b in place
    (kept, so that a backward can still compute the derivative); the activation is new.
    Skips a fifth of the work and one output array.
    """
    y2 = _as_2d(y, axis)
    h2 = np.empty_like(y2)
    b2 = b[None, :] if axis == -1 else b[:, None]

    def body(i: int, rs: slice, cs: slice) -> None:
        z = y2[rs, cs]
        np.add(z, b2[:, cs] if axis == -1 else b2[rs], out=z)
        _gelu_tile(z, h2[rs, cs], None)

    _run(_tiles(*y2.shape), body)
    return h2.reshape(y.shape), y


def gelu_backward(dout: Any, dgelu: Any, out: Any = None) -> Any:
    """dout * GELU'(x), written into ``out`` (which may be ``dout``) or a new array."""
    out = np.empty_like(dout) if out is None else out
    d, g, o = dout.reshape(-1), dgelu.reshape(-1), out.reshape(-1)
    parallel_for(lambda lo, hi: np.multiply(d[lo:hi], g[lo:hi], out=o[lo:hi]), d.size, CHUNK)
    return out


def bias_gelu_backward(dout: Any, dgelu: Any, db: Any, axis: int) -> Any:
    """The gradient through GELU, dh = dout * GELU'(x), and the bias gradient db += Σ dh.

    ``dh`` is written over ``dout`` (the caller owns it); the sum runs over every axis
    but ``axis``, tile by tile while each tile is still in cache.
    """
    g2 = _as_2d(dgelu, axis)
    _bias_grad(dout, db, axis, lambda d, rs, cs: np.multiply(d, g2[rs, cs], out=d))
    return dout


def bias_backward(dout: np.ndarray, db: np.ndarray, axis: int) -> None:
    """db += Σ dout over every axis but ``axis``: a linear layer's bias gradient, on all cores."""
    _bias_grad(dout, db, axis)


def _bias_grad(
    dout: np.ndarray, db: np.ndarray, axis: int, first: Callable[[np.ndarray, slice, slice], Any] | None = None
) -> None:
    """db += the sum of dout's tiles along ``axis`` (after ``first(tile, rows, cols)``, if given)."""
    d2 = _as_2d(dout, axis)
    tiles = _tiles(*d2.shape)
    partial = np.zeros((len(tiles), db.shape[0]), np.float32)

    def body(i: int, rs: slice, cs: slice) -> None:
        d = d2[rs, cs]
        if first is not None:
            first(d, rs, cs)
        if axis == -1:
            d.sum(axis=0, out=partial[i, cs])
        else:
            d.sum(axis=1, out=partial[i, rs])

    _run(tiles, body)
    db += partial.sum(axis=0)


# --------------------------------------------------------------------------------------
# LayerNorm along the columns of each row (axis -1) or the rows of each column (axis 0),
# tile by tile: every tile holds whole normalisation groups, so its statistics are
# complete and it is read once from memory.
# --------------------------------------------------------------------------------------
def layernorm(x: Any, w: Any, b: Any, axis: int, eps: float) -> tuple[Any, Any, Any]:
    """(y, xhat, rstd) as ``functional.layernorm_forward`` computes them."""
    x2 = _as_2d(x, axis)
    red = 1 if axis == -1 else 0  # the axis of x2 that is normalised
    y2, xhat2 = np.empty_like(x2), np.empty_like(x2)
    rstd2 = np.empty((x2.shape[0], 1) if red == 1 else (1, x2.shape[1]), np.float32)
    w2, b2 = (w[None, :], b[None, :]) if red == 1 else (w[:, None], b[:, None])
    inv_n, eps = _f32(1.0 / x2.shape[red]), _f32(eps)

    def body(i: int, rs: slice, cs: slice) -> None:
        xt, xh, yt, r = x2[rs, cs], xhat2[rs, cs], y2[rs, cs], rstd2[rs, cs]
        mean = np.add.reduce(xt, axis=red, keepdims=True)
        np.multiply(mean, inv_n, out=mean)
        np.subtract(xt, mean, out=xh)
        np.multiply(xh, xh, out=yt)  # y holds the squares for a moment
        np.add.reduce(yt, axis=red, keepdims=True, out=r)
        np.multiply(r, inv_n, out=r)  # the biased variance, as PyTorch
        np.add(r, eps, out=r)
        np.sqrt(r, out=r)
        np.divide(_ONE, r, out=r)
        np.multiply(xh, r, out=xh)
        np.multiply(xh, w2, out=yt)
        np.add(yt, b2, out=yt)

    _run(_tiles(*x2.shape, whole="cols" if red == 1 else "rows"), body)
    rstd_shape = (*x.shape[:-1], 1) if axis == -1 else (1, *x.shape[1:])
    return y2.reshape(x.shape), xhat2.reshape(x.shape), rstd2.reshape(rstd_shape)


def layernorm_backward(dy: Any, xhat: Any, rstd: Any, w: Any, dw: Any, db: Any, axis: int) -> Any:
    """dx of LayerNorm, adding dw and db, as ``functional.layernorm_backward`` does."""
    dy2, xhat2 = _as_2d(dy, axis), _as_2d(xhat, axis)
    red = 1 if axis == -1 else 0
    rstd2 = rstd.reshape(-1, 1) if red == 1 else rstd.reshape(1, -1)
    w2 = w[None, :] if red == 1 else w[:, None]
    dx2 = np.empty_like(dy2)
    tiles = _tiles(*dy2.shape, whole="cols" if red == 1 else "rows")
    n = w.shape[0]
    inv_n = _f32(1.0 / n)
    partial_dw = np.zeros((len(tiles), n), np.float32)
    partial_db = np.zeros((len(tiles), n), np.float32)

    def body(i: int, rs: slice, cs: slice) -> None:
        d, xh, dx = dy2[rs, cs], xhat2[rs, cs], dx2[rs, cs]
        (t,) = _scratch(1, d.shape)
        np.multiply(d, xh, out=t)
        np.add.reduce(t, axis=1 - red, out=partial_dw[i])
        np.add.reduce(d, axis=1 - red, out=partial_db[i])
        np.multiply(d, w2, out=dx)  # dxhat
        mean_dxhat = np.add.reduce(dx, axis=red, keepdims=True)
        np.multiply(mean_dxhat, inv_n, out=mean_dxhat)
        np.multiply(t, w2, out=t)  # dxhat * xhat
        mean_dxhat_xhat = np.add.reduce(t, axis=red, keepdims=True)
        np.multiply(mean_dxhat_xhat, inv_n, out=mean_dxhat_xhat)
        np.multiply(xh, mean_dxhat_xhat, out=t)
        np.subtract(dx, t, out=dx)
        np.subtract(dx, mean_dxhat, out=dx)
        np.multiply(dx, rstd2[rs, cs], out=dx)

    _run(tiles, body)
    dw += np.add.reduce(partial_dw, axis=0)
    db += np.add.reduce(partial_db, axis=0)
    return dx2.reshape(dy.shape)


# --------------------------------------------------------------------------------------
# Small helpers: a bias added along an axis, and a threaded in-place add.
# --------------------------------------------------------------------------------------
def add_bias(y: Any, b: Any, axis: int) -> Any:
    """y += b along ``axis`` (in place), on all cores."""
    y2 = _as_2d(y, axis)
    b2 = b[None, :] if axis == -1 else b[:, None]

    def body(i: int, rs: slice, cs: slice) -> None:
        np.add(y2[rs, cs], b2[:, cs] if axis == -1 else b2[rs], out=y2[rs, cs])

    _run(_tiles(*y2.shape), body)
    return y


def add_(out: Any, x: Any) -> Any:
    """out += x (same shapes, contiguous), on all cores."""
    o, v = out.reshape(-1), x.reshape(-1)
    parallel_for(lambda lo, hi: np.add(o[lo:hi], v[lo:hi], out=o[lo:hi]), o.size, CHUNK)
    return out
