"""The GPU code path, run on the CuPy stand-in (tests/support/fake_cupy.py) where there is no GPU.

First the stand-in itself: it must refuse what CuPy refuses (and the implicit host
conversions CuPy allows but pays a sync for), count explicit reads, and reproduce CuPy's
kernel typing and its CUB rewrite of reduction kernels.  Then minimlp under it: every
fused op's CUDA path against its plain twin, and a whole training step of ff_tiny
against the NumPy gradients.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from minimlp import backend, kernels
from minimlp.kernels import cross_entropy_backward, cross_entropy_forward
from minimlp.models import create_model


# --------------------------------------------------------------------------------------
# The stand-in behaves as CuPy does where it matters.
# --------------------------------------------------------------------------------------
def test_backend_picks_the_standin_as_a_gpu(fake_cupy):
    chosen = backend.get_backend("gpu")
    assert chosen.is_gpu and chosen.xp is sys.modules["cupy"] and chosen.xp.__file__ == fake_cupy.__file__
    assert backend.is_gpu_array(chosen.xp.zeros(3))


def test_implicit_host_conversions_are_refused(fake_cupy):
    import cupy

    x = cupy.arange(4, dtype=cupy.int64)
    for convert in (np.asarray, np.array, list, lambda a: range(10)[a[0]]):  # list() iterates; [] needs __index__
        with pytest.raises(TypeError):
            convert(x)
    for convert in (float, int, bool):
        with pytest.raises(TypeError):
            convert(x.sum())
    assert fake_cupy.host_syncs() == 0


def test_explicit_reads_work_and_are_counted(fake_cupy):
    import cupy

    x = cupy.arange(4, dtype=cupy.float32)
    assert isinstance(x.get(), np.ndarray) and isinstance(cupy.asnumpy(x), np.ndarray)
    assert x.sum().item() == 6.0 and x.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert fake_cupy.host_syncs() == 4
    counted = backend.host_syncs()
    assert backend.to_numpy(x).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert fake_cupy.host_syncs() == 5 and backend.host_syncs() == counted + 1  # minimlp's own count


def test_not_strict_counts_the_implicit_conversions_cupy_allows(fake_cupy):
    import cupy

    fake_cupy.set_strict(False)
    x = cupy.ones(3)
    assert float(x.sum()) == 3.0 and int(x[0]) == 1 and bool(x.all())
    assert fake_cupy.host_syncs() == 3


def test_host_arrays_are_refused_in_device_operations_but_scalars_and_uploads_work(fake_cupy):
    import cupy

    x = cupy.ones((2, 3), dtype=cupy.float32)
    host = np.ones(3, np.float32)
    for op in (
        lambda: x + host,
        lambda: host * x,
        lambda: cupy.multiply(x, host),
        lambda: np.add(x, host),
        lambda: cupy.exp(host),
        lambda: x + np.ones(()),
    ):
        with pytest.raises(TypeError, match="Unsupported type"):
            op()
    assert (x * np.float32(2) + 1.5).dtype == np.float32  # scalars are weak, as in CuPy 14 (NEP 50)
    x[0] = host  # assignment and indexing with host data are uploads
    assert x[np.array([1, 0])].shape == (2, 3)
    uploaded = cupy.asarray(host)
    host[0] = 7  # an upload is a copy: the device array does not follow the host's changes
    assert uploaded.dtype == np.float32 and uploaded[0].item() == 1.0


def test_reductions_and_scalar_indexing_return_0d_device_arrays(fake_cupy):
    import cupy

    x = cupy.arange(6, dtype=cupy.float32).reshape(2, 3)
    for value in (x.sum(), x.max(), x[1, 2], cupy.sum(x), x.mean(axis=None)):
        assert isinstance(value, cupy.ndarray) and value.shape == ()


def test_erf_turns_float16_into_float64_as_cupy_does(fake_cupy):
    import cupy
    import cupyx.scipy.special

    for dtype, expected in ((np.float16, np.float64), (np.float32, np.float32), (np.float64, np.float64)):
        assert cupyx.scipy.special.erf(cupy.zeros(2, dtype)).dtype == expected
        assert cupyx.scipy.special.erfc(cupy.zeros(2, dtype)).dtype == expected


def test_anything_not_modelled_is_an_attribute_error(fake_cupy):
    import cupy

    with pytest.raises(AttributeError, match="stand-in"):
        cupy.fft  # noqa: B018
    with pytest.raises(AttributeError, match="stand-in"):
        cupy.zeros(2).tobytes  # noqa: B018
    with pytest.raises(ImportError):
        from cupy.cuda import nccl  # noqa: F401


def test_events_time_only_after_the_end_is_synchronised(fake_cupy):
    import cupy

    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    end.record()
    with pytest.raises(fake_cupy.CUDARuntimeError, match="NotReady"):
        cupy.cuda.get_elapsed_time(start, end)
    end.synchronize()
    assert cupy.cuda.get_elapsed_time(start, end) >= 0.0


def test_memory_pool_counts_live_arrays_and_the_peak(fake_cupy):
    import cupy

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    base = pool.used_bytes()
    a = cupy.zeros(1000, cupy.float32)
    assert pool.used_bytes() == base + 4000
    del a
    assert pool.used_bytes() == base and pool.total_bytes() >= base + 4000
    pool.free_all_blocks()
    assert pool.total_bytes() == base


# --------------------------------------------------------------------------------------
# User kernels: CuPy's typing rules, and the CUB rewrite of reductions.
# --------------------------------------------------------------------------------------
def test_elementwise_kernel_typing(fake_cupy):
    import cupy

    k = cupy.ElementwiseKernel("T x, float32 s", "T y", "const float z = (float)x * s; y = (T)(z + 1.0f);", "k")
    for dtype in (np.float16, np.float32):
        x = cupy.arange(4, dtype=dtype)
        y = k(x, cupy.full(4, 2, np.float32))
        assert y.dtype == dtype and y.get().tolist() == [1.0, 3.0, 5.0, 7.0]
    with pytest.raises(TypeError, match="mismatched"):  # fixed types match exactly, no casting
        k(cupy.zeros(4, np.float32), cupy.zeros(4, np.float64))
    with pytest.raises(TypeError, match="mismatched"):  # T is bound once
        k(cupy.zeros(4, np.float32), cupy.zeros(4, np.float32), cupy.zeros(4, np.float16))
    with pytest.raises(ValueError, match="Out shape"):  # outputs broadcast with the inputs, and must be whole
        k(cupy.zeros((2, 4), np.float32), cupy.zeros(4, np.float32), cupy.zeros(4, np.float32))
    with pytest.raises(TypeError, match="Unsupported type"):
        k(np.zeros(4, np.float32), cupy.zeros(4, np.float32))
    with pytest.raises(fake_cupy.CompileException, match='"zz" is undefined'):
        cupy.ElementwiseKernel("T x", "T y", "y = zz", "bad")


def test_c_arithmetic_types(fake_cupy):
    import cupy

    # A double literal promotes a float expression to double; an f literal keeps it float.
    k = cupy.ElementwiseKernel("float32 x", "float64 a, float64 b", "a = x * 0.1; b = x * 0.1f", "lit")
    a, b = k(cupy.ones(1, np.float32))
    assert a.get()[0] == 0.1 and b.get()[0] == np.float64(np.float32(0.1)) != 0.1
    # Integer division truncates.
    r = cupy.ReductionKernel(
        "T x", "float32 m", "x", "a + b", "m = a / (_in_ind.size() / _out_ind.size())", "0", "div"
    )(cupy.ones((2, 3), np.float32), axis=1)
    assert r.get().tolist() == [1.0, 1.0]


def _mean_kernel(cupy, name, out):
    return cupy.ReductionKernel(
        "T x",
        f"float32 {out}",
        "(float)x",
        "a + b",
        f"{out} = a / ((float)(_in_ind.size() / _out_ind.size()))",
        "0",
        name,
    )


def test_reduction_outside_cub_computes_the_mean(fake_cupy):
    import cupy

    x = np.random.default_rng(0).standard_normal((5, 100)).astype(np.float16)
    for axis in (0, 1):
        got = _mean_kernel(cupy, "demo_mean", "m")(cupy.asarray(x), axis=axis, keepdims=True)
        assert got.dtype == np.float32 and got.shape == (1, 100) if axis == 0 else (5, 1)
        np.testing.assert_allclose(got.get(), x.astype(np.float32).mean(axis=axis, keepdims=True), rtol=1e-6)


def test_cub_rewrite_breaks_a_mean_kernel_whose_output_is_named_m(fake_cupy):
    """CuPy 14 reduces >= 128 contiguous elements through CUB and rewrites the kernel text:
    `_in_ind.size()` -> `_segment_size`, then every `m` -> `out0`: `_segout0ent_size`."""
    import cupy

    kernel = _mean_kernel(cupy, "demo_mean", "m")
    x = cupy.ones((4, 128), np.float32)
    with pytest.raises(fake_cupy.CompileException, match="_segout0ent_size"):
        kernel(x, axis=1)
    kernel(cupy.ones((4, 127), np.float32), axis=1)  # below CUB's threshold: the generic kernel
    kernel(x, axis=0)  # not the contiguous axis: the generic kernel
    with pytest.raises(fake_cupy.CompileException):  # ...unless the array is F-contiguous
        kernel(x.T, axis=0)
    np.testing.assert_allclose(_mean_kernel(cupy, "demo_mean", "mu")(x, axis=1).get(), 1.0)


def test_cub_kernel_has_no_indexers_unless_named_mean(fake_cupy, monkeypatch):
    import cupy

    x = cupy.ones((4, 256), np.float32)
    with pytest.raises(fake_cupy.CompileException, match="_in_ind"):  # CUB's kernel has no _in_ind
        _mean_kernel(cupy, "demo_average", "mu")(x, axis=1)
    # ... two inputs, or CUB turned off: the generic kernel, where the indexers exist.
    two = cupy.ReductionKernel(
        "T x, T w",
        "float32 mu",
        "(float)x * (float)w",
        "a + b",
        "mu = a / ((float)(_in_ind.size() / _out_ind.size()))",
        "0",
        "demo_average2",
    )
    np.testing.assert_allclose(two(x, x, axis=1).get(), 1.0)
    monkeypatch.setenv("CUPY_ACCELERATORS", "")
    np.testing.assert_allclose(_mean_kernel(cupy, "demo_average", "mu")(x, axis=1).get(), 1.0)
    np.testing.assert_allclose(_mean_kernel(cupy, "demo_mean", "m")(x, axis=1).get(), 1.0)


def test_cub_full_reduction_of_a_mean_kernel(fake_cupy):
    import cupy

    x = cupy.asarray(np.arange(300, dtype=np.float32))
    assert _mean_kernel(cupy, "demo_mean", "m")(x).get() == pytest.approx(149.5)


# --------------------------------------------------------------------------------------
# minimlp's fused ops: the CUDA path (kernels read by the stand-in) against the plain ops.
# --------------------------------------------------------------------------------------
def _device(a, dtype):
    import cupy

    return cupy.asarray(np.asarray(a, dtype))


def _host(a):
    return backend.to_numpy(a).astype(np.float64)


def _both_paths(fn):
    """fn() with the fast kernels, then with their plain twins (as host float64 arrays)."""
    fast = fn()
    previous = kernels.set_enabled(False)
    try:
        plain = fn()
    finally:
        kernels.set_enabled(previous)
    return [_host(a) for a in fast], [_host(a) for a in plain]


TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float16: dict(rtol=2e-2, atol=2e-2)}
SHAPES = [(9, 3, 96), (9, 3, 192), (130, 2, 16)]  # (T, B, D): D = 96 and 192 around CUB's 128; T >= 128


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("shape", SHAPES, ids=["D96", "D192", "T130"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_fused_layernorm_matches_plain(fake_cupy, shape, axis, dtype):
    """D = 192 along the features takes CuPy's CUB path, whose rewrite once broke the mean kernel."""
    rng = np.random.default_rng(1)
    n = shape[axis]
    x, dy = rng.standard_normal(shape) * 2 + 0.5, rng.standard_normal(shape)
    w, b = 1 + 0.3 * rng.standard_normal(n), 0.2 * rng.standard_normal(n)

    def run():
        X, W, B, DY = (_device(a, dtype) for a in (x, w, b, dy))
        dW, dB = _device(np.zeros(n), dtype), _device(np.zeros(n), dtype)
        y, cache = kernels.layernorm_forward(X, W, B, axis)
        dx = kernels.layernorm_backward(DY, cache, W, dW, dB)
        assert y.dtype == dx.dtype == dtype
        return y, dx, dW, dB

    fast, plain = _both_paths(run)
    for f, p in zip(fast, plain, strict=True):
        np.testing.assert_allclose(f, p, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_fused_linear_gelu_matches_plain(fake_cupy, axis, dtype):
    rng = np.random.default_rng(2)
    shape = (7, 3, 192)
    n_in = shape[axis]
    hidden = 160
    x = rng.standard_normal(shape)
    w, b = rng.standard_normal((hidden, n_in)) / np.sqrt(n_in), rng.standard_normal(hidden)
    out_shape = (*shape[:-1], hidden) if axis == -1 else (hidden, *shape[1:])
    dh = rng.standard_normal(out_shape)

    def run():
        X, W, B, DH = (_device(a, dtype) for a in (x, w, b, dh))
        grads = [(_device(np.zeros(w.shape), dtype), _device(np.zeros(hidden), dtype)) for _ in range(3)]
        h, cache = kernels.linear_gelu_forward(X, W, B, axis)
        dx = kernels.linear_gelu_backward(DH, cache, W, *grads[0])
        dx_owned = kernels.linear_gelu_backward(DH.copy(), cache, W, *grads[1], owns_dh=True)  # in place, db fused
        h_eval, cache_eval = kernels.linear_gelu_forward(X, W, B, axis, need_grad=False)  # GELU' left for later
        dx_eval = kernels.linear_gelu_backward(DH, cache_eval, W, *grads[2])
        total = kernels.add_inplace(h.copy(), h_eval)
        g, gcache = kernels.gelu_forward(X)
        dg = kernels.gelu_backward(X, gcache)
        outputs = [h, dx, dx_owned, h_eval, dx_eval, total, g, dg, *(a for pair in grads for a in pair)]
        assert all(a.dtype == dtype for a in outputs)  # no float64 creeping in
        return outputs

    fast, plain = _both_paths(run)
    for f, p in zip(fast, plain, strict=True):
        np.testing.assert_allclose(f, p, **TOL[dtype])


def test_fused_cross_entropy_matches_plain(fake_cupy):
    rng = np.random.default_rng(3)
    logits, labels = rng.standard_normal((6, 10)) * 3, rng.integers(0, 10, 6)
    q = np.eye(10)[labels] * 0.9 + 0.01

    def run():
        loss, cache = cross_entropy_forward(_device(logits, np.float32), _device(q, np.float32))
        return loss, cross_entropy_backward(cache, dloss=2.0)

    fast, plain = _both_paths(run)
    for f, p in zip(fast, plain, strict=True):
        np.testing.assert_allclose(f, p, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# A whole training step of ff_tiny: the GPU path's gradients equal the CPU's.
# --------------------------------------------------------------------------------------
def _step_grads(device, overrides, x, q):
    model = create_model("ff_tiny", device=device, seed=0, num_classes=10, **overrides)
    xp = model.xp
    logits, cache = model.forward(xp.asarray(x), train=True)
    loss, loss_cache = cross_entropy_forward(logits, xp.asarray(q))
    model.zero_grad()
    model.backward(cross_entropy_backward(loss_cache), cache, input_grad=False)
    return backend.to_numpy(loss), backend.to_numpy(logits), {k: backend.to_numpy(g) for k, g in model.grads.items()}


@pytest.mark.parametrize(
    "overrides, targets",
    [(dict(img_size=32, patch_size=8), "labels"), (dict(img_size=32, patch_size=8), "soft"), (dict(), "soft")],
    ids=["32px-labels", "32px-soft", "224px-soft"],
)
def test_ff_tiny_step_on_the_gpu_path_matches_the_cpu(fake_cupy, overrides, targets):
    """Labels, or soft targets (B, K) as mixup gives them; D = 192 takes CuPy's CUB path in LayerNorm."""
    rng = np.random.default_rng(4)
    size = overrides.get("img_size", 224)
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    q = rng.integers(0, 10, 2) if targets == "labels" else rng.dirichlet(np.ones(10), 2).astype(np.float32)
    cpu = _step_grads("cpu", overrides, x, q)
    syncs = fake_cupy.host_syncs()
    gpu = _step_grads("gpu", overrides, x, q)
    assert fake_cupy.host_syncs() - syncs == 2 + len(gpu[2])  # only the reads of this test
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-5)
    np.testing.assert_allclose(gpu[1], cpu[1], rtol=1e-4, atol=1e-5)
    # Some gradients are zero but for rounding (the last patch bias meets a LayerNorm over the
    # features, whose input gradient sums to zero), so the scale is the largest gradient's.
    top = max(np.abs(g).max() for g in cpu[2].values())
    for name, g in cpu[2].items():
        np.testing.assert_allclose(gpu[2][name], g, rtol=1e-3, atol=1e-5 * top, err_msg=name)


# --------------------------------------------------------------------------------------
# The stand-in's CUDA runtime: no device at all; pinned memory, streams and events.
# --------------------------------------------------------------------------------------
def test_without_a_usable_gpu_the_standin_fails_as_the_cuda_runtime_does(fake_cupy):
    """CuPy installed, no GPU: the backend falls back to NumPy and says why."""
    import cupy

    fake_cupy.STATE.device_count = 0
    with pytest.raises(fake_cupy.CUDARuntimeError, match="cudaErrorNoDevice"):
        cupy.cuda.runtime.getDeviceCount()
    with pytest.raises(fake_cupy.CUDARuntimeError):
        cupy.cuda.Device().compute_capability  # noqa: B018
    with pytest.warns(RuntimeWarning, match="CUDA is unusable"):
        chosen = backend.get_backend("gpu")
    assert not chosen.is_gpu


def test_batch_uploader_round_trips_on_the_standin(fake_cupy):
    """Pinned host buffers, a side stream and events: what the uploader asks of CuPy is there."""
    from minimlp.kernels.gpu import BatchUploader

    batches = [np.full((2, 1, 4, 4), i, np.uint8) for i in range(4)]
    uploader = BatchUploader((2, 1, 4, 4))
    uploader.put(batches[0])
    seen = []
    for batch in batches[1:]:
        x = uploader.get()
        uploader.put(batch)
        seen.append(int(x.max().item()))
    seen.append(int(uploader.get().max().item()))
    assert seen == [0, 1, 2, 3]
