"""Properties that must hold for any input (hypothesis): batch independence, LayerNorm
invariances, cross-entropy facts, which feed-forward commutes with token permutations,
gradient accumulation, dtypes."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_vit_and_mixer import MIXER64, VIT64

import minimlp
from minimlp import functional as F
from minimlp.backend import get_backend
from minimlp.gradcheck import rel_error
from minimlp.layers import Mlp, ParameterStore
from minimlp.loss import cross_entropy_backward, cross_entropy_forward

SMALL = dict(img_size=8, patch_size=4, in_chans=2, num_classes=4, embed_dim=8, depth=2)
MODEL64 = minimlp.create_model("ff_tiny", dtype="float64", seed=0, **SMALL)
seeds = st.integers(0, 2**31 - 1)


def arrays(seed, *shape, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


@settings(max_examples=20, deadline=None)
@given(seed=seeds, batch=st.integers(2, 5))
def test_batch_independence(seed, batch):
    x = arrays(seed, batch, 2, 8, 8)
    together, _ = MODEL64.forward(x)
    alone = np.concatenate([MODEL64.forward(x[i : i + 1])[0] for i in range(batch)])
    assert rel_error(together, alone) < 1e-12


@settings(max_examples=30, deadline=None)
@given(seed=seeds, axis=st.sampled_from([-1, 0]), shift=st.floats(-50, 50), scale=st.floats(0.1, 20))
def test_layernorm_is_shift_and_scale_invariant(seed, axis, shift, scale):
    x = arrays(seed, 6, 3, 5)
    n = x.shape[axis]
    w, b = arrays(seed + 1, n), arrays(seed + 2, n)
    y1, _ = F.layernorm_forward(x, w, b, axis, eps=0.0)
    y2, _ = F.layernorm_forward(scale * x + shift, w, b, axis, eps=0.0)
    assert np.abs(y1 - y2).max() < 1e-8
    xhat, _ = F.layernorm_forward(x, np.ones(n), np.zeros(n), axis, eps=0.0)
    assert np.abs(xhat.mean(axis)).max() < 1e-12 and np.abs(xhat.var(axis) - 1).max() < 1e-10


@settings(max_examples=30, deadline=None)
@given(seed=seeds, batch=st.integers(1, 6), classes=st.integers(2, 12), smoothing=st.floats(0, 0.5))
def test_cross_entropy_gradient_rows_sum_to_zero(seed, batch, classes, smoothing):
    z = arrays(seed, batch, classes, scale=5)
    y = np.random.default_rng(seed).integers(0, classes, batch)
    loss, cache = cross_entropy_forward(z, y, smoothing)
    assert np.abs(cross_entropy_backward(cache).sum(axis=1)).max() < 1e-12
    assert float(loss) >= 0


@given(batch=st.integers(1, 6), classes=st.integers(2, 1000))
def test_cross_entropy_at_zero_logits_is_log_k(batch, classes):
    loss, _ = cross_entropy_forward(np.zeros((batch, classes)), np.zeros(batch, dtype=np.int64))
    assert abs(float(loss) - math.log(classes)) < 1e-12


def _mlp(axis, n):
    store = ParameterStore()
    mlp = Mlp(store, "mlp", n, 3 * n, axis=axis)
    store.build(get_backend("cpu"), np.float64, seed=0)
    return mlp


@settings(max_examples=20, deadline=None)
@given(seed=seeds)
def test_feature_ff_commutes_with_token_permutations_and_patch_ff_does_not(seed):
    T, B, D = 6, 2, 5
    x = arrays(seed, T, B, D)
    perm = np.random.default_rng(seed).permutation(T)
    if (perm == np.arange(T)).all():
        perm = np.roll(perm, 1)
    feature_ff, patch_ff = _mlp(-1, D), _mlp(0, T)
    assert np.abs(feature_ff.forward(x[perm])[0] - feature_ff.forward(x)[0][perm]).max() < 1e-12
    assert np.abs(patch_ff.forward(x[perm])[0] - patch_ff.forward(x)[0][perm]).max() > 1e-6


@settings(max_examples=15, deadline=None)
@given(seed=seeds, which=st.sampled_from(["ff", "vit", "mixer"]))
def test_two_half_batches_accumulate_to_one_full_batch(seed, which):
    model = {"ff": MODEL64, "vit": VIT64, "mixer": MIXER64}[which]  # the comparison models too
    x = arrays(seed, 6, *model.expected_input_shape())
    y = np.random.default_rng(seed).integers(0, model.config.num_classes, 6)

    def accumulate(parts):
        model.zero_grad()
        for xs, ys in parts:
            logits, cache = model.forward(xs)
            _, lcache = cross_entropy_forward(logits, ys)
            model.backward(cross_entropy_backward(lcache, dloss=len(ys) / len(y)), cache)
        return model.store.flat_grads.copy()

    full = accumulate([(x, y)])
    halves = accumulate([(x[:3], y[:3]), (x[3:], y[3:])])
    assert rel_error(full, halves) < 1e-12


@settings(max_examples=10, deadline=None)
@given(seed=seeds, axes=st.permutations([0, 1, 2]))
def test_transposes_round_trip(seed, axes):
    x = arrays(seed, 2, 3, 4)
    y, cache = F.transpose_forward(x, tuple(axes))
    assert (F.transpose_backward(y, cache) == x).all()


@settings(max_examples=5, deadline=None)
@given(seed=seeds)
def test_float32_stays_float32(seed):
    model = minimlp.create_model("ff_tiny", seed=1, **SMALL)
    x = arrays(seed, 3, 2, 8, 8).astype(np.float32)
    logits, cache = model.forward(x, train=True)
    loss, lcache = cross_entropy_forward(logits, np.array([0, 1, 2]))
    dx = model.backward(cross_entropy_backward(lcache), cache)
    assert logits.dtype == dx.dtype == np.float32 and loss.dtype == np.float32
