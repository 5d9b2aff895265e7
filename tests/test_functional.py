"""Finite-difference checks (float64) of every forward/backward pair in functional and loss.

Each check uses a random upstream gradient and non-trivial parameters, and must reach a
relative error below 1e-6 (typically ~1e-10); a wrong backward gives errors near 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from minimlp import functional as F
from minimlp.gradcheck import numerical_gradient, rel_error
from minimlp.loss import cross_entropy_backward, cross_entropy_forward

TOL = 1e-6


def rand(xp, rng, *shape):
    return xp.asarray(rng.standard_normal(shape))


def check(xp, f_forward, backward_grads, inputs, dout_shape, rng):
    """Compare analytic gradients of sum(forward() * dout) with finite differences."""
    dout = rand(xp, rng, *dout_shape)

    def f():
        return float((f_forward() * dout).sum())

    analytic = backward_grads(dout)
    for name, arr in inputs.items():
        err = rel_error(analytic[name], numerical_gradient(f, arr))
        assert err < TOL, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("axis", [-1, 0])
def test_linear(xp, axis):
    rng = np.random.default_rng(0)
    x = rand(xp, rng, 5, 3, 4) if axis == -1 else rand(xp, rng, 4, 3, 5)
    w, b = rand(xp, rng, 6, 4), rand(xp, rng, 6)
    out_shape = (5, 3, 6) if axis == -1 else (6, 3, 5)

    def grads(dout):
        dw, db = xp.zeros_like(w), xp.zeros_like(b)
        _, cache = F.linear_forward(x, w, b, axis)
        dx = F.linear_backward(dout, cache, w, dw, db)
        return {"x": dx, "w": dw, "b": db}

    check(xp, lambda: F.linear_forward(x, w, b, axis)[0], grads, {"x": x, "w": w, "b": b}, out_shape, rng)


def test_linear_accumulates_and_skips_input_grad(xp):
    rng = np.random.default_rng(1)
    x, w, b = rand(xp, rng, 7, 4), rand(xp, rng, 3, 4), rand(xp, rng, 3)
    dy = rand(xp, rng, 7, 3)
    _, cache = F.linear_forward(x, w, b)
    dw, db = xp.ones_like(w), xp.ones_like(b)
    assert F.linear_backward(dy, cache, w, dw, db, input_grad=False) is None
    assert rel_error(dw - 1, dy.T @ x) < 1e-12 and rel_error(db - 1, dy.sum(0)) < 1e-12


def test_gelu(xp, plain_kernels):
    rng = np.random.default_rng(2)
    x = rand(xp, rng, 4, 6) * 3
    check(
        xp,
        lambda: F.gelu_forward(x)[0],
        lambda d: {"x": F.gelu_backward(d, F.gelu_forward(x)[1])},
        {"x": x},
        x.shape,
        rng,
    )


def test_gelu_values_match_erf_definition():
    x = np.linspace(-8, 8, 201)
    h, _ = F.gelu_forward(x)
    expected = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    assert np.abs(h - expected).max() < 1e-15 * 8 + 1e-16


@pytest.mark.parametrize("axis", [-1, 0])
def test_layernorm(xp, axis):
    rng = np.random.default_rng(3)
    x = rand(xp, rng, 5, 3, 4) * 2 + 1
    n = x.shape[axis]
    w, b = 1 + 0.5 * rand(xp, rng, n), 0.3 * rand(xp, rng, n)  # weight != 1, bias != 0

    def grads(dout):
        dw, db = xp.zeros_like(w), xp.zeros_like(b)
        _, cache = F.layernorm_forward(x, w, b, axis)
        return {"x": F.layernorm_backward(dout, cache, w, dw, db), "w": dw, "b": db}

    check(xp, lambda: F.layernorm_forward(x, w, b, axis)[0], grads, {"x": x, "w": w, "b": b}, x.shape, rng)


@pytest.mark.parametrize("op", ["dropout", "drop_path"])
def test_masks(xp, op):
    rng = np.random.default_rng(4)
    x = rand(xp, rng, 6, 5, 4)
    fwd = F.dropout_forward if op == "dropout" else F.drop_path_forward

    def forward():  # a fresh generator with a fixed seed: the same mask every call
        return fwd(x, 0.3, xp.random.default_rng(7), True)

    check(xp, lambda: forward()[0], lambda d: {"x": F.mask_backward(d, forward()[1])}, {"x": x}, x.shape, rng)


def test_drop_path_drops_whole_samples(xp):
    x = xp.ones((10, 64, 3))
    y, cache = F.drop_path_forward(x, 0.5, xp.random.default_rng(0), True)
    per_sample = y.transpose(1, 0, 2).reshape(64, -1)
    assert bool(((per_sample == 0).all(1) | (per_sample == 2).all(1)).all())
    assert 0 < int((per_sample[:, 0] == 0).sum()) < 64
    assert F.drop_path_forward(x, 0.5, None, train=False)[0] is x


def test_transpose_round_trip(xp):
    rng = np.random.default_rng(5)
    x = rand(xp, rng, 2, 3, 4)
    axes = (2, 0, 1)
    y, cache = F.transpose_forward(x, axes)
    assert y.shape == (4, 2, 3)
    assert bool((F.transpose_backward(y, cache) == x).all())
    check(
        xp,
        lambda: F.transpose_forward(x, axes)[0],
        lambda d: {"x": F.transpose_backward(d, axes)},
        {"x": x},
        (4, 2, 3),
        rng,
    )


def test_patchify_matches_convolution(xp):
    """The matmul on flattened patches equals a direct stride-P convolution."""
    rng = np.random.default_rng(6)
    B, C, H, W, P, D = 2, 3, 8, 12, 4, 5
    x, w, b = rand(xp, rng, B, C, H, W), rand(xp, rng, D, C, P, P), rand(xp, rng, D)
    y, _ = F.patch_embed_forward(x, w, b)  # (N, B, D)
    conv = np.zeros((B, D, H // P, W // P))
    xn, wn, bn = (np.asarray(a.get() if hasattr(a, "get") else a) for a in (x, w, b))
    for i in range(H // P):
        for j in range(W // P):
            patch = xn[:, :, i * P : (i + 1) * P, j * P : (j + 1) * P]
            conv[:, :, i, j] = np.einsum("bcpq,dcpq->bd", patch, wn) + bn
    expected = conv.reshape(B, D, -1).transpose(2, 0, 1)  # row-major grid -> (N, B, D)
    assert rel_error(y, expected) < 1e-12
    assert bool((F.unpatchify(F.patchify(x, P), x.shape, P) == x).all())


def test_patch_embed(xp):
    rng = np.random.default_rng(7)
    x, w, b = rand(xp, rng, 2, 3, 8, 8), rand(xp, rng, 5, 3, 4, 4), rand(xp, rng, 5)

    def grads(dout):
        dw, db = xp.zeros_like(w), xp.zeros_like(b)
        _, cache = F.patch_embed_forward(x, w, b)
        return {"x": F.patch_embed_backward(dout, cache, w, dw, db), "w": dw, "b": db}

    check(xp, lambda: F.patch_embed_forward(x, w, b)[0], grads, {"x": x, "w": w, "b": b}, (4, 2, 5), rng)


def test_tokens(xp):
    rng = np.random.default_rng(8)
    N, B, D = 6, 3, 4
    t, cls, pos, cls_pos = (
        rand(xp, rng, N, B, D),
        rand(xp, rng, 1, 1, D),
        rand(xp, rng, 1, D, 2, 3),
        rand(xp, rng, 1, 1, D),
    )

    def grads(dout):
        d = {k: xp.zeros_like(v) for k, v in (("cls", cls), ("pos", pos), ("cls_pos", cls_pos))}
        d["t"] = F.tokens_backward(dout, d["cls"], d["pos"], d["cls_pos"])
        return d

    check(
        xp,
        lambda: F.tokens_forward(t, cls, pos, cls_pos),
        grads,
        {"t": t, "cls": cls, "pos": pos, "cls_pos": cls_pos},
        (N + 1, B, D),
        rng,
    )


@pytest.mark.parametrize("size_in,size_out", [((4, 5), (2, 3)), ((2, 3), (5, 4)), ((3, 3), (3, 3)), ((1, 4), (3, 1))])
def test_resize_bilinear(xp, size_in, size_out):
    rng = np.random.default_rng(15)
    x = rand(xp, rng, 2, 3, *size_in)
    _, cache = F.resize_bilinear_forward(x, size_out)
    check(
        xp,
        lambda: F.resize_bilinear_forward(x, size_out)[0],
        lambda d: {"x": F.resize_bilinear_backward(d, cache)},
        {"x": x},
        (2, 3, *size_out),
        rng,
    )


def test_resize_bilinear_weights():
    # 14 -> 7, the released ff_large's grid: each output is the mean of two neighbours.
    w = F.bilinear_weights(14, 7)
    np.testing.assert_array_equal(w, np.kron(np.eye(7), [[0.5, 0.5]]))
    # Upsampling 2 -> 4: outputs at input coordinates -0.25 (moved up to 0), 0.25, 0.75, 1.25 (past the last).
    np.testing.assert_allclose(F.bilinear_weights(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], atol=1e-15)
    for n_in, n_out in [(14, 7), (3, 5), (5, 3), (1, 4), (4, 1), (14, 10)]:
        w = F.bilinear_weights(n_in, n_out)
        assert w.shape == (n_out, n_in) and (w >= 0).all()
        np.testing.assert_allclose(w.sum(axis=1), 1, atol=1e-15)


@pytest.mark.parametrize("n", [1, 2, 7, 14])
def test_resize_bilinear_at_the_same_size_is_exactly_the_identity(xp, n):
    rng = np.random.default_rng(16)
    np.testing.assert_array_equal(F.bilinear_weights(n, n), np.eye(n))
    for dtype in ("float32", "float64"):
        x = rand(xp, rng, 1, 4, n, n).astype(dtype) * 1e3
        y, cache = F.resize_bilinear_forward(x, (n, n))
        assert y.dtype == x.dtype
        assert bool((y == x).all())
        assert bool((F.resize_bilinear_backward(x, cache) == x).all())


@pytest.mark.torch
@pytest.mark.parametrize(
    "size_in,size_out",
    [
        ((14, 14), (7, 7)),
        ((14, 14), (14, 14)),
        ((7, 7), (14, 14)),
        ((5, 7), (3, 4)),
        ((3, 2), (8, 5)),
        ((14, 14), (10, 10)),
    ],
)
def test_resize_bilinear_matches_pytorch_interpolate(size_in, size_out):
    """Forward and backward against torch.nn.functional.interpolate(mode="bilinear", align_corners=False)."""
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test dependency")
    rng = np.random.default_rng(17)
    x, dy = rng.standard_normal((2, 3, *size_in)), rng.standard_normal((2, 3, *size_out))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.nn.functional.interpolate(xt, size=size_out, mode="bilinear", align_corners=False)
    yt.backward(torch.from_numpy(dy))
    y, cache = F.resize_bilinear_forward(x, size_out)
    assert rel_error(y, yt.detach().numpy()) < 1e-12
    assert rel_error(F.resize_bilinear_backward(dy, cache), xt.grad.numpy()) < 1e-12
    # float32: PyTorch's own float32 arithmetic, to float32 rounding
    y32, _ = F.resize_bilinear_forward(x.astype(np.float32), size_out)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x.astype(np.float32)), size=size_out, mode="bilinear", align_corners=False
    ).numpy()
    assert y32.dtype == np.float32 and rel_error(y32, expected) < 1e-6


def test_cls_pool(xp):
    rng = np.random.default_rng(9)
    x = rand(xp, rng, 5, 3, 4)
    check(xp, lambda: F.cls_pool_forward(x)[0], lambda d: {"x": F.cls_pool_backward(d, x.shape)}, {"x": x}, (3, 4), rng)


@pytest.mark.parametrize("target_kind,smoothing", [("labels", 0.0), ("labels", 0.1), ("soft", 0.0), ("soft", 0.2)])
def test_cross_entropy(xp, target_kind, smoothing):
    rng = np.random.default_rng(10)
    B, K = 6, 5
    z = rand(xp, rng, B, K) * 2
    if target_kind == "labels":
        target = xp.asarray(rng.integers(0, K, B))
    else:
        p = rng.random((B, K))
        target = xp.asarray(p / p.sum(1, keepdims=True))
    _, cache = cross_entropy_forward(z, target, smoothing)
    dz = cross_entropy_backward(cache, dloss=1.7)
    num = numerical_gradient(lambda: 1.7 * float(cross_entropy_forward(z, target, smoothing)[0]), z)
    assert rel_error(dz, num) < TOL


def test_cross_entropy_rejects_bad_targets(xp):
    z = xp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        cross_entropy_forward(z, np.asarray([0, 3]))  # host labels are checked, whatever the logits
    with pytest.raises(ValueError, match="target must be labels"):
        cross_entropy_forward(z, xp.zeros((2, 4)))


def test_label_checks_read_nothing_back_from_a_gpu(fake_cupy):
    """Host labels are checked on the host; labels on the device are not read back (a wait for the
    GPU at every step): one outside [0, K) makes the loss NaN there, never a silently wrong number."""
    import cupy

    rng = np.random.default_rng(0)
    z_host = rng.standard_normal((4, 3)).astype(np.float32)
    z, labels = cupy.asarray(z_host), np.array([0, 2, 1, 0])
    before = fake_cupy.host_syncs()
    on_device, _ = cross_entropy_forward(z, cupy.asarray(labels), smoothing=0.1)
    from_host, _ = cross_entropy_forward(z, labels, smoothing=0.1)
    bad, _ = cross_entropy_forward(z, cupy.asarray([0, 3, 1, 0]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got min 0, max 3"):
        cross_entropy_forward(z, np.array([0, 3, 1, 0]))
    assert fake_cupy.host_syncs() == before
    expected = float(cross_entropy_forward(z_host, labels, smoothing=0.1)[0])
    assert on_device.get() == pytest.approx(expected, rel=1e-6) and from_host.get() == pytest.approx(expected, rel=1e-6)
    assert np.isnan(bad.get())
