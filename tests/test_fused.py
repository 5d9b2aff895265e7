"""Every op of the speed layer (:mod:`minimlp.kernels`) against its plain twin in ``functional``.

The plain ops are the ones the gradient checks prove; a fast op is right when it gives
the same numbers to float32 rounding, on shapes that exercise its tiling (rows split
into many tiles, rows longer than a tile, single rows and columns).  CPU kernels run
here; the CuPy kernels run where a GPU is present (marked gpu) and under the CuPy
stand-in (test_gpu_standin.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CUPY, to_np

import minimlp
from minimlp import functional as F
from minimlp import kernels
from minimlp import loss as L
from minimlp.gradcheck import rel_error
from minimlp.kernels import cpu, threads

# The kernels' tiles are made small here, so that modest arrays exercise every tiling path.
TEST_CHUNK = 8192

# (T, B, D) activations: small, tile-sized, and one with rows longer than two tiles.
SHAPES = [(5, 3, 4), (50, 16, 128), (3, 2, 3 * TEST_CHUNK + 7)]


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setattr(threads, "CHUNK", TEST_CHUNK)
    monkeypatch.setattr(cpu, "CHUNK", TEST_CHUNK)


def plain(fn, *args, **kwargs):
    """fn with every kernel turned off: each op of the speed layer runs its plain twin."""
    previous = kernels.set_enabled(False)
    try:
        return fn(*args, **kwargs)
    finally:
        kernels.set_enabled(previous)


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(a, b, tol=2e-6):
    assert rel_error(a, b) < tol, rel_error(a, b)


def test_tiles_cover_every_element_once():
    for rows, cols, whole in [
        (7, 5, ""),
        (1000, 3, ""),
        (3, 5 * TEST_CHUNK + 1, ""),
        (200, 50, "rows"),
        (13, 100, "cols"),
        (1, 1, ""),
    ]:
        seen = np.zeros((rows, cols), int)
        for rs, cs in cpu._tiles(rows, cols, whole):
            seen[rs, cs] += 1
            if whole == "rows":
                assert rs == slice(None)
            if whole == "cols":
                assert cs == slice(None)
        assert (seen == 1).all()


def test_parallel_for_covers_the_range_once():
    hits = np.zeros(1003, int)

    def body(lo, hi):
        hits[lo:hi] += 1

    threads.parallel_for(body, hits.size, 10)
    assert (hits == 1).all()


@pytest.mark.parametrize("m, k, n", [(300, 50, 7), (7, 50, 300), (640, 33, 650), (3, 4, 5), (40, 3000, 70)])
@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_matches_numpy(m, k, n, transposed):
    rng = np.random.default_rng(10)
    a = rand(rng, k, m).T if transposed else rand(rng, m, k)  # a transposed view, as w.T is
    b = rand(rng, n, k).T if transposed else rand(rng, k, n)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    assert kernels.applies_matmul(a, b) == (threads.num_threads() > 1)
    result = cpu.matmul(a, b)
    assert result.dtype == np.float32 and result.shape == (m, n)
    close(result, expected, 1e-6)
    out = np.full((m, n), np.nan, np.float32)
    assert cpu.matmul(a, b, out=out) is out
    close(out, expected, 1e-6)


def test_single_threaded_blas_restores_the_setting():
    before = threads.blas_threads()
    with threads.single_threaded_blas() as controlled:
        assert threads.blas_threads() == (1 if controlled else before)
    assert threads.blas_threads() == before


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_gelu_matches_linear_bias_then_gelu(axis, shape):
    rng = np.random.default_rng(0)
    y = rand(rng, *shape, scale=3.0)
    b = rand(rng, shape[axis])
    h_ref, c_ref = F.gelu_forward(y + (b if axis == -1 else b[:, None, None]))
    h, g = cpu.bias_gelu(y.copy(), b, axis)
    assert h.dtype == g.dtype == np.float32 and h.shape == g.shape == shape
    close(h, h_ref)
    close(g, c_ref.dgelu)


@pytest.mark.parametrize("axis", [-1, 0])
def test_bias_gelu_without_derivative_keeps_the_input(axis):
    rng = np.random.default_rng(11)
    y = rand(rng, 50, 16, 128, scale=3.0)
    b = rand(rng, y.shape[axis])
    h_ref, _ = cpu.bias_gelu(y.copy(), b, axis)
    y_in = y.copy()
    h, z = cpu.bias_gelu_inference(y_in, b, axis)
    assert z is y_in and h is not y_in
    np.testing.assert_array_equal(h, h_ref)
    np.testing.assert_array_equal(z, y + (b if axis == -1 else b[:, None, None]))


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_gelu_backward_matches_plain(axis, shape):
    rng = np.random.default_rng(1)
    dout, dgelu = rand(rng, *shape), rand(rng, *shape)
    db_ref = rand(rng, shape[axis])
    db = db_ref.copy()
    other = tuple(i for i in range(3) if i != axis % 3)
    dh_ref = dout * dgelu
    db_ref += dh_ref.sum(axis=other)
    dh = cpu.bias_gelu_backward(dout.copy(), dgelu, db, axis)
    close(dh, dh_ref)
    close(db, db_ref, 1e-5)


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_backward_matches_plain_and_leaves_dout(axis, shape):
    rng = np.random.default_rng(12)
    dout = rand(rng, *shape)
    db = rand(rng, shape[axis])
    other = tuple(i for i in range(3) if i != axis % 3)
    expected = db + dout.sum(axis=other)
    before = dout.copy()
    cpu.bias_backward(dout, db, axis)
    close(db, expected, 1e-5)
    np.testing.assert_array_equal(dout, before)


def test_linear_backward_bias_gradient_matches_plain():
    rng = np.random.default_rng(13)
    cases = [(-1, rand(rng, 9, 40, 16), rand(rng, 9, 40, 24)), (0, rand(rng, 16, 40, 9), rand(rng, 24, 40, 9))]
    for axis, x, dy in cases:
        w = rand(rng, 24, 16)
        grads = []
        for linear_backward in (kernels.linear_backward, F.linear_backward):
            dw, db = np.zeros_like(w), np.zeros(24, np.float32)
            linear_backward(dy, F.LinearCache(x, axis), w, dw, db)
            grads.append(db)
        close(grads[0], grads[1], 1e-6)


def test_gelu_backward_writes_into_out():
    rng = np.random.default_rng(2)
    dout, dgelu = rand(rng, 70_000), rand(rng, 70_000)
    expected = dout * dgelu
    result = cpu.gelu_backward(dout, dgelu, out=dout)
    assert result is dout
    np.testing.assert_array_equal(dout, expected)
    fresh = kernels.gelu_backward(expected, F.GeluCache(dgelu))
    assert fresh is not expected


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("shape", SHAPES)
def test_layernorm_forward_and_backward_match_plain(axis, shape):
    """As accurate as the plain float32 version, both measured against float64.

    (Groups of three values, as in the last shape, can be nearly constant; then the
    normalised values amplify rounding, in either version alike.)
    """
    rng = np.random.default_rng(3)
    x = rand(rng, *shape, scale=2.0) + 1.0
    n = shape[axis]
    w, b = 1 + 0.5 * rand(rng, n), 0.3 * rand(rng, n)  # weight != 1, bias != 0
    dy = rand(rng, *shape)

    def run(ops, x, dy):
        dw, db = np.full(n, 0.1, x.dtype), np.full(n, -0.2, x.dtype)
        y, c = ops.layernorm_forward(x, w.astype(x.dtype), b.astype(x.dtype), axis)
        dx = ops.layernorm_backward(dy, c, w.astype(x.dtype), dw, db)
        return y, c.xhat, c.rstd, dx, dw, db

    fast = run(kernels, x, dy)
    slow = run(F, x, dy)
    exact = run(F, x.astype(np.float64), dy.astype(np.float64))
    assert fast[2].shape == slow[2].shape
    for name, f32, p32, f64 in zip(("y", "xhat", "rstd", "dx", "dw", "db"), fast, slow, exact, strict=True):
        assert f32.dtype == np.float32, name
        assert rel_error(f32, f64) <= 2 * rel_error(p32, f64) + 1e-6, name


@pytest.mark.parametrize("axis", [-1, 0])
def test_add_bias_and_add_inplace_match_numpy(axis):
    rng = np.random.default_rng(4)
    y, x = rand(rng, 9, 4, 3000), rand(rng, 9, 4, 3000)
    b = rand(rng, y.shape[axis])
    expected = y + (b if axis == -1 else b[:, None, None])
    np.testing.assert_allclose(cpu.add_bias(y.copy(), b, axis), expected, rtol=1e-6)
    out = y.copy()
    assert kernels.add_inplace(out, x) is out
    np.testing.assert_array_equal(out, y + x)


@pytest.mark.parametrize("axis", [-1, 0])
def test_linear_gelu_matches_linear_then_gelu(axis):
    rng = np.random.default_rng(5)
    x = rand(rng, 12, 6, 8)
    n_in = x.shape[axis]
    w, b = rand(rng, 20, n_in) * 0.3, rand(rng, 20)
    h, (c_lin, c_act) = kernels.linear_gelu_forward(x, w, b, axis)
    y_ref, c_lin_ref = F.linear_forward(x, w, b, axis)
    h_ref, c_act_ref = F.gelu_forward(y_ref)
    close(h, h_ref)
    close(c_act.dgelu, c_act_ref.dgelu)
    dh = rand(rng, *h.shape)
    dw, db, dw_ref, db_ref = (np.zeros_like(w), np.zeros_like(b), np.zeros_like(w), np.zeros_like(b))
    dx = kernels.linear_gelu_backward(dh.copy(), (c_lin, c_act), w, dw, db, owns_dh=True)
    dx_ref = F.linear_gelu_backward(dh, (c_lin_ref, c_act_ref), w, dw_ref, db_ref)
    close(dx, dx_ref, 1e-5)
    close(dw, dw_ref, 1e-5)
    close(db, db_ref, 1e-5)


def _model_step(fast: bool):
    def run():
        model = minimlp.create_model("ff_tiny", img_size=32, patch_size=4, embed_dim=64, depth=2, num_classes=10)
        rng = np.random.default_rng(0)
        for p in model.params.values():  # non-trivial LayerNorm weights and biases
            p += (rng.standard_normal(p.shape) * 0.05).astype(p.dtype)
        x, y = rand(rng, 8, 3, 32, 32), rng.integers(0, 10, 8)
        logits, cache = model.forward(x, train=True)
        _, loss_cache = kernels.cross_entropy_forward(logits, y)
        model.zero_grad()
        dx = model.backward(kernels.cross_entropy_backward(loss_cache), cache)
        return logits, dx, {k: v.copy() for k, v in model.grads.items()}

    return run() if fast else plain(run)


def test_whole_model_fused_matches_plain_float32():
    logits, dx, grads = _model_step(fast=True)
    logits_ref, dx_ref, grads_ref = _model_step(fast=False)
    close(logits, logits_ref, 1e-5)
    close(dx, dx_ref, 1e-5)
    # One entry of the last patch-FF bias gradient is exactly zero in exact arithmetic and
    # rounding noise in float32: measure every tensor against the largest gradient.
    scale = max(float(np.abs(g).max()) for g in grads_ref.values())
    for name, g in grads.items():
        assert rel_error(g, grads_ref[name], floor=scale) < 1e-5, name


@pytest.mark.parametrize("axis", [-1, 0])
def test_linear_gelu_without_derivative_still_has_a_backward(axis):
    rng = np.random.default_rng(12)
    x = rand(rng, 12, 6, 8)
    w, b = rand(rng, 20, x.shape[axis]) * 0.3, rand(rng, 20)
    h, cache = kernels.linear_gelu_forward(x, w, b, axis)
    h_eval, cache_eval = kernels.linear_gelu_forward(x, w, b, axis, need_grad=False)
    assert isinstance(cache_eval[1], kernels.LazyGeluCache)
    close(h_eval, h)
    dh = rand(rng, *h.shape)
    grads = []
    for c in (cache, cache_eval):
        dw, db = np.zeros_like(w), np.zeros_like(b)
        dx = kernels.linear_gelu_backward(dh.copy(), c, w, dw, db, owns_dh=True)
        grads.append((dx, dw, db))
    for a, e in zip(*grads, strict=True):
        close(a, e, 1e-6)


def test_model_backward_after_an_evaluation_forward():
    model = minimlp.create_model("ff_tiny", img_size=16, patch_size=4, embed_dim=16, depth=2, num_classes=5)
    rng = np.random.default_rng(13)
    x, dlogits = rand(rng, 3, 3, 16, 16), rand(rng, 3, 5)
    results = []
    for train in (True, False):
        logits, cache = model.forward(x, train=train)
        model.zero_grad()
        dx = model.backward(dlogits, cache)
        results.append((logits, dx, model.store.flat_grads.copy()))
    for a, e in zip(*results, strict=True):
        close(a, e, 1e-6)


def test_float64_never_takes_a_fused_path():
    assert not kernels.applies(np.zeros((4, 4)))
    assert kernels.applies(np.zeros((4, 4), np.float32))
    assert not kernels.applies(np.zeros((4, 4), np.float32).T)  # not contiguous


# --------------------------------------------------------------------------------------
# The two floors: plain math below, the speed layer above it, with the same op names.
# --------------------------------------------------------------------------------------
def test_plain_math_imports_nothing_of_the_speed_layer():
    import ast
    import inspect

    for module in (F, L):
        tree = ast.parse(inspect.getsource(module))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {
            f"{node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        assert not [
            name for name in imported if name and ("kernels" in name or "fused" in name or "profiling" in name)
        ], module.__name__


SPEED_ONLY = {"need_grad", "owns_dh"}  # arguments only the speed layer has


def test_every_op_of_the_speed_layer_is_its_plain_twin_or_has_one():
    import inspect

    for name in kernels.__all__:
        op = getattr(kernels, name)
        twin = getattr(F, name, None) or getattr(L, name, None)
        if name in ("applies", "applies_matmul", "set_enabled", "LazyGeluCache"):
            assert twin is None, name
            continue
        assert twin is not None, f"kernels.{name} has no plain twin"
        if inspect.isclass(op):
            assert op is twin, name
            continue
        plain_args = list(inspect.signature(twin).parameters)
        fast_args = list(inspect.signature(op).parameters)
        assert not SPEED_ONLY & set(plain_args), f"functional.{name} takes a flag that only speed needs"
        assert [a for a in fast_args if a not in SPEED_ONLY] == plain_args, name


@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_matches_plain(shape):
    rng = np.random.default_rng(14)
    x, dout = rand(rng, *shape, scale=3.0), rand(rng, *shape)
    h, c = kernels.gelu_forward(x)
    h_ref, c_ref = F.gelu_forward(x)
    close(h, h_ref)
    close(c.dgelu, c_ref.dgelu)
    close(kernels.gelu_backward(dout, c), F.gelu_backward(dout, c_ref))


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_and_residual_match_plain(axis, bias):
    rng = np.random.default_rng(15)
    x = rand(rng, 70, 9, 40) if axis == -1 else rand(rng, 40, 9, 70)  # 40 inputs mixed
    w, b = rand(rng, 150, 40) * 0.2, rand(rng, 150) if bias else None
    y, c = kernels.linear_forward(x, w, b, axis)
    y_ref, c_ref = F.linear_forward(x, w, b, axis)
    close(y, y_ref, 1e-6)
    dy = rand(rng, *y.shape)
    grads = []
    for ops, cache in ((kernels, c), (F, c_ref)):
        dw, db = np.zeros_like(w), None if b is None else np.zeros_like(b)
        dx = ops.linear_backward(dy, cache, w, dw, db)
        grads.append((dx, dw) + (() if db is None else (db,)))
    for a, e in zip(*grads, strict=True):
        close(a, e, 1e-6)
    out, out_ref = y.copy(), y.copy()
    np.testing.assert_array_equal(kernels.add_inplace(out, y_ref), F.add_inplace(out_ref, y_ref))


def test_patch_embed_matches_plain():
    rng = np.random.default_rng(16)
    x, w, b = rand(rng, 4, 3, 16, 16), rand(rng, 24, 3, 4, 4) * 0.2, rand(rng, 24)
    y, c = kernels.patch_embed_forward(x, w, b)
    y_ref, c_ref = F.patch_embed_forward(x, w, b)
    close(y, y_ref, 1e-6)
    dy = rand(rng, *y.shape)
    grads = []
    for ops, cache in ((kernels, c), (F, c_ref)):
        dw, db = np.zeros_like(w), np.zeros_like(b)
        grads.append((ops.patch_embed_backward(dy, cache, w, dw, db), dw, db))
    for a, e in zip(*grads, strict=True):
        close(a, e, 1e-6)


# --------------------------------------------------------------------------------------
# CuPy kernels (skipped without a GPU).
# --------------------------------------------------------------------------------------
cupy_only = pytest.mark.skipif(CUPY is None, reason="CuPy with a GPU is not available")


@pytest.mark.gpu
@cupy_only
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_bias_gelu_and_backward_match_plain(axis, dtype):
    cp = CUPY
    rng = np.random.default_rng(6)
    y64, b64 = rng.standard_normal((50, 8, 96)) * 3, rng.standard_normal(96 if axis == -1 else 50)
    y, b = cp.asarray(y64, dtype=dtype), cp.asarray(b64, dtype=dtype)
    from minimlp.kernels import cuda

    h, g = cuda.bias_gelu(y.copy(), b, axis)
    h_eval, z_eval = cuda.bias_gelu_inference(y.copy(), b, axis)
    close(h_eval, h, 1e-6)
    z = y.astype(cp.float64) + (b.astype(cp.float64) if axis == -1 else b.astype(cp.float64)[:, None, None])
    h_ref, c_ref = F.gelu_forward(z)
    tol = 1e-5 if dtype == "float32" else 2e-3
    close(h, h_ref, tol)
    close(g, c_ref.dgelu, tol)
    dout = cp.asarray(rng.standard_normal(h.shape), dtype=dtype)
    db = cp.zeros(b.shape, dtype)
    dh = cuda.bias_gelu_backward(dout.copy(), g, db, axis)
    other = tuple(i for i in range(3) if i != axis % 3)
    expected = dout.astype(cp.float32) * g.astype(cp.float32)
    close(dh, expected, tol)
    close(db, expected.sum(axis=other), 10 * tol)


@pytest.mark.gpu
@cupy_only
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("D", [96, 192, 768])  # from 128 features on, CuPy takes the mean through CUB
def test_cuda_layernorm_matches_plain(axis, dtype, D):
    cp = CUPY
    rng = np.random.default_rng(7)
    x64 = rng.standard_normal((50, 8, D)) * 2 + 1
    n = x64.shape[axis]
    w64, b64, dy64 = 1 + 0.5 * rng.standard_normal(n), 0.3 * rng.standard_normal(n), rng.standard_normal(x64.shape)
    x, w, b, dy = (cp.asarray(a, dtype=dtype) for a in (x64, w64, b64, dy64))
    y_ref, c_ref = F.layernorm_forward(*(cp.asarray(a) for a in (x64, w64, b64)), axis)
    y, c = kernels.layernorm_forward(x, w, b, axis)
    tol = 1e-5 if dtype == "float32" else 3e-3
    close(y, y_ref, tol)
    dw_ref, db_ref = cp.zeros(n), cp.zeros(n)
    dx_ref = F.layernorm_backward(cp.asarray(dy64), c_ref, cp.asarray(w64), dw_ref, db_ref)
    dw, db = cp.zeros(n, dtype), cp.zeros(n, dtype)
    dx = kernels.layernorm_backward(dy, c, w, dw, db)
    close(dx, dx_ref, 5 * tol)
    close(dw, dw_ref, 5 * tol)
    close(db, db_ref, 5 * tol)


@pytest.mark.gpu
@cupy_only
def test_cuda_cross_entropy_matches_plain():
    cp = CUPY
    rng = np.random.default_rng(8)
    logits64, labels = rng.standard_normal((16, 1000)) * 3, rng.integers(0, 1000, 16)
    loss_ref, c_ref = L.cross_entropy_forward(cp.asarray(logits64), cp.asarray(labels), 0.1)
    loss, c = kernels.cross_entropy_forward(cp.asarray(logits64, dtype=cp.float32), cp.asarray(labels), 0.1)
    assert abs(float(loss) - float(loss_ref)) < 1e-5 * float(loss_ref)
    close(kernels.cross_entropy_backward(c, 0.5), L.cross_entropy_backward(c_ref, 0.5), 1e-5)


@pytest.mark.gpu
@cupy_only
def test_cuda_model_step_matches_cpu():
    on_cpu = minimlp.create_model("ff_fmnist", depth=2, seed=0)
    on_gpu = minimlp.create_model("ff_fmnist", depth=2, seed=0, device="gpu")
    rng = np.random.default_rng(9)
    x, y = rand(rng, 8, 1, 28, 28), rng.integers(0, 10, 8)
    for model in (on_cpu, on_gpu):
        logits, cache = model.forward(model.xp.asarray(x), train=True)
        _, loss_cache = kernels.cross_entropy_forward(logits, model.xp.asarray(y))
        model.zero_grad()
        model.backward(kernels.cross_entropy_backward(loss_cache), cache, input_grad=False)
    scale = max(float(np.abs(g).max()) for g in on_cpu.grads.values())
    for name, g in on_cpu.grads.items():
        assert rel_error(to_np(on_gpu.grads[name]), g, floor=scale) < 1e-4, name
