"""Attention: float64 finite-difference checks of softmax, the scaled dot product, the
head layout changes, mean pooling, the single-table positional embedding and the
Attention layer on both axes; then the properties attention must have."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_functional import TOL, check, rand

from minimlp import functional as F
from minimlp.backend import get_backend
from minimlp.gradcheck import numerical_gradient, rel_error
from minimlp.layers import Attention, ParameterStore


def test_softmax(xp):
    rng = np.random.default_rng(0)
    x = rand(xp, rng, 2, 3, 5) * 3
    check(
        xp,
        lambda: F.softmax_forward(x)[0],
        lambda d: {"x": F.softmax_backward(d, F.softmax_forward(x)[1])},
        {"x": x},
        x.shape,
        rng,
    )


@pytest.mark.parametrize("attn_drop", [0.0, 0.3])
def test_scaled_dot_product_attention(xp, attn_drop):
    rng = np.random.default_rng(1)
    q, k, v = (rand(xp, rng, 2, 3, 5, 4) for _ in range(3))  # (B, h, S, d)

    def forward():  # a fresh generator with a fixed seed: the same dropout mask every call
        return F.attention_forward(q, k, v, 0.7, attn_drop, xp.random.default_rng(5), True)

    def grads(dout):
        dq, dk, dv = F.attention_backward(dout, forward()[1])
        return {"q": dq, "k": dk, "v": dv}

    check(xp, lambda: forward()[0], grads, {"q": q, "k": k, "v": v}, (2, 3, 5, 4), rng)


@pytest.mark.parametrize("axis", [-1, 0])
def test_head_layout_changes(xp, axis):
    """Split and merge are permutations of entries: their backward is the inverse
    permutation, which finite differences confirm; merge(split) is the identity on q."""
    rng = np.random.default_rng(2)
    h, d, S, B = 2, 3, 5, 4
    qkv = rand(xp, rng, S, B, 3 * h * d) if axis == -1 else rand(xp, rng, 3 * h * d, B, S)
    wq, wk, wv = (rand(xp, rng, B, h, S, d) for _ in range(3))

    def split():  # a scalar-friendly view of all three outputs
        q, k, v = F.split_heads_forward(qkv, h, axis)
        return (q * wq + k * wk + v * wv).sum(axis=(0, 1))

    def grads(dout):
        return {"qkv": F.split_heads_backward(wq * dout, wk * dout, wv * dout, axis)}

    check(xp, split, grads, {"qkv": qkv}, (S, d), rng)
    q, k, v = F.split_heads_forward(qkv, h, axis)
    assert q.shape == (B, h, S, d) and q.flags.c_contiguous
    merged = F.merge_heads_forward(q, axis)
    first_third = qkv[..., : h * d] if axis == -1 else qkv[: h * d]
    assert bool((merged == first_third).all())
    check(
        xp,
        lambda: F.merge_heads_forward(q, axis),
        lambda dout: {"q": F.merge_heads_backward(dout, h, axis)},
        {"q": q},
        merged.shape,
        rng,
    )


def test_mean_pool(xp):
    rng = np.random.default_rng(3)
    x = rand(xp, rng, 5, 3, 4)
    check(
        xp, lambda: F.mean_pool_forward(x)[0], lambda d: {"x": F.mean_pool_backward(d, x.shape)}, {"x": x}, (3, 4), rng
    )


def test_tokens_with_one_position_table(xp):
    """timm's layout: pos_embed (1, T, D), the class token's position in row 0."""
    rng = np.random.default_rng(4)
    N, B, D = 6, 3, 4
    t, cls, pos = rand(xp, rng, N, B, D), rand(xp, rng, 1, 1, D), rand(xp, rng, 1, N + 1, D)

    def grads(dout):
        d = {"cls": xp.zeros_like(cls), "pos": xp.zeros_like(pos)}
        d["t"] = F.tokens_backward(dout, d["cls"], d["pos"])
        return d

    check(xp, lambda: F.tokens_forward(t, cls, pos), grads, {"t": t, "cls": cls, "pos": pos}, (N + 1, B, D), rng)
    # The same numbers as the FF model's grid + class-position layout.
    grid = xp.ascontiguousarray(pos[0, 1:].T.reshape(1, D, 2, 3))
    assert rel_error(F.tokens_forward(t, cls, pos), F.tokens_forward(t, cls, grid, pos[:, :1])) < 1e-15


# --------------------------------------------------------------------------------------
# The layer: every parameter and the input
# --------------------------------------------------------------------------------------
def build(device, make, seed=0):
    """Declare a layer or block on a fresh float64 store and give every parameter
    non-trivial values (LayerNorm weight != 1, biases != 0)."""
    store = ParameterStore()
    layer = make(store)
    store.build(get_backend(device), np.float64, seed)
    xp = get_backend(device).xp
    rng = np.random.default_rng(seed + 1)
    for p in store.params.values():
        p += xp.asarray(rng.standard_normal(p.shape) * (0.3 if p.ndim == 1 else 0.2))
    return store, layer


def check_layer(xp, store, layer, x, out_shape, seed=0):
    """Finite differences of sum(layer(x) * dout) for the input and every parameter,
    with dropout masks held fixed by a freshly seeded generator."""
    rng = np.random.default_rng(seed)
    dout = rand(xp, rng, *out_shape)

    def forward():
        return layer.forward(x, True, xp.random.default_rng(11))

    def f():
        return float((forward()[0] * dout).sum())

    store.flat_grads.fill(0)
    out, cache = forward()
    assert out.shape == out_shape
    analytic = {"input": layer.backward(dout, cache), **store.grads}
    targets = {"input": x, **store.params}
    for name, arr in targets.items():
        err = rel_error(analytic[name], numerical_gradient(f, arr))
        assert err < TOL, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("axis,shape,heads", [(-1, (5, 2, 6), 2), (0, (6, 2, 5), 3)])
def test_attention_layer(xp, device, axis, shape, heads):
    dim = shape[-1] if axis == -1 else shape[0]
    store, layer = build(device, lambda s: Attention(s, "attn", dim, heads, axis, attn_drop=0.2, proj_drop=0.1))
    check_layer(xp, store, layer, rand(xp, np.random.default_rng(6), *shape), shape)


def test_attention_check_can_fail(monkeypatch):
    """A backward that forgets the softmax Jacobian's second term is caught."""
    monkeypatch.setattr(F, "softmax_backward", lambda dp, cache: cache.probs * dp)
    store, layer = build("cpu", lambda s: Attention(s, "attn", 4, 2))
    with pytest.raises(AssertionError, match="relative error"):
        check_layer(np, store, layer, np.random.default_rng(0).standard_normal((5, 2, 4)), (5, 2, 4))


def test_attention_and_block_caches_are_named():
    """Backward reads its cache by field name, not by position in a bare tuple."""
    import minimlp
    from minimlp.layers import AttentionLayerCache, BranchCache

    store, layer = build("cpu", lambda s: Attention(s, "attn", 4, 2))
    _, cache = layer.forward(np.random.default_rng(0).standard_normal((5, 2, 4)))
    assert isinstance(cache, AttentionLayerCache) and cache._fields == ("qkv", "attn", "proj", "drop")
    assert isinstance(cache.attn, F.AttentionCache)
    vit = minimlp.create_model("vit_fmnist", img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2)
    tokens = np.random.default_rng(1).standard_normal((5, 2, 8)).astype(np.float32)  # (T, B, D)
    _, caches = vit.blocks[0].forward(tokens, False, None)
    assert [type(c) for c in caches] == [BranchCache, BranchCache]
    assert isinstance(caches[0].mixer, AttentionLayerCache)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------
seeds = st.integers(0, 2**31 - 1)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, scale=st.floats(0.01, 100), shift=st.floats(-1e3, 1e3))
def test_softmax_rows_sum_to_one_and_ignore_shifts(seed, scale, shift):
    x = np.random.default_rng(seed).standard_normal((3, 4, 7)) * scale
    p, _ = F.softmax_forward(x)
    assert (p >= 0).all() and np.abs(p.sum(-1) - 1).max() < 1e-12
    assert np.abs(F.softmax_forward(x + shift)[0] - p).max() < 1e-9  # softmax(x + c) = softmax(x)


@settings(max_examples=20, deadline=None)
@given(seed=seeds)
def test_attention_output_is_an_average_of_values(seed):
    """Each output row is a convex combination of the value rows."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((2, 3, 6, 4)) * 2 for _ in range(3))
    out, cache = F.attention_forward(q, k, v)
    assert np.abs(cache.softmax.probs.sum(-1) - 1).max() < 1e-12
    lo, hi = v.min(axis=-2, keepdims=True), v.max(axis=-2, keepdims=True)
    assert (out >= lo - 1e-12).all() and (out <= hi + 1e-12).all()


def _layer(make):
    return build("cpu", make, seed=3)[1]


ATTN_TOKENS = _layer(lambda s: Attention(s, "a", 5, 1, axis=-1))
ATTN_FEATURES = _layer(lambda s: Attention(s, "a", 6, 2, axis=0))


def _permutation(rng, n):
    perm = rng.permutation(n)
    return perm if (perm != np.arange(n)).any() else np.roll(perm, 1)


@settings(max_examples=20, deadline=None)
@given(seed=seeds)
def test_attention_over_tokens_commutes_with_token_permutations(seed):
    """Without positional embeddings attention cannot tell where a token is: permuting
    the tokens permutes the output the same way.  Attention over features, whose
    weights act along the tokens, does not commute with them but with feature
    permutations instead."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 2, 5))  # (T, B, D)
    perm_t, perm_d = _permutation(rng, 6), _permutation(rng, 5)
    y = ATTN_TOKENS.forward(x)[0]
    assert np.abs(ATTN_TOKENS.forward(x[perm_t])[0] - y[perm_t]).max() < 1e-12
    y = ATTN_FEATURES.forward(x)[0]
    assert np.abs(ATTN_FEATURES.forward(x[:, :, perm_d])[0] - y[:, :, perm_d]).max() < 1e-12
    assert np.abs(ATTN_FEATURES.forward(x[perm_t])[0] - y[perm_t]).max() > 1e-6


@settings(max_examples=20, deadline=None)
@given(seed=seeds, batch=st.integers(2, 4))
def test_attention_keeps_samples_apart(seed, batch):
    x = np.random.default_rng(seed).standard_normal((6, batch, 5))
    together = ATTN_TOKENS.forward(x)[0]
    alone = np.concatenate([ATTN_TOKENS.forward(x[:, i : i + 1])[0] for i in range(batch)], axis=1)
    assert rel_error(together, alone) < 1e-12
