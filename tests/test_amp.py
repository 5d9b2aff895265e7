"""float16 training with loss scaling, tested against float32; and the GPU helpers.

The float16 numerics run on NumPy here (slow matrix products, but the models are tiny),
so they are checked on every machine; the same code runs on CuPy with a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CUPY, to_np

import minimlp
from minimlp.gradcheck import rel_error
from minimlp.kernels.amp import LossScaler, MixedPrecision
from minimlp.loss import cross_entropy_backward, cross_entropy_forward

CONFIG = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=16, depth=2, num_classes=5)


def test_loss_scaler_backs_off_and_grows():
    s = LossScaler(init_scale=1024.0, growth_interval=3)
    s.update(found_inf=True)
    assert s.scale == 512.0
    for _ in range(3):
        s.update(found_inf=False)
    assert s.scale == 1024.0 and s.good_steps == 0
    s.update(found_inf=False)
    restored = LossScaler()
    restored.load_state_dict(s.state_dict())
    assert (restored.scale, restored.good_steps) == (1024.0, 1)


def batch(xp, seed=0, n=6):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 16, 16)).astype(np.float32)
    return xp.asarray(x), xp.asarray(rng.integers(0, 5, n))


def float32_grads(model, x, y):
    logits, cache = model.forward(x, train=True)
    loss, loss_cache = cross_entropy_forward(logits, y)
    model.zero_grad()
    model.backward(cross_entropy_backward(loss_cache), cache, input_grad=False)
    return float(loss), {k: to_np(v).copy() for k, v in model.grads.items()}


def check_against_float32(device):
    model = minimlp.create_model("ff_tiny", device=device, seed=0, **CONFIG)
    x, y = batch(model.xp)
    loss32, grads32 = float32_grads(model, x, y)
    mixed = MixedPrecision(model)
    model.zero_grad()
    loss16, ok = mixed.forward_backward(x, y)
    assert ok and mixed.half.dtype == np.float16 and model.store.flat_grads.dtype == np.float32
    assert abs(float(loss16) - loss32) < 1e-2 * loss32
    scale = max(float(np.abs(g).max()) for g in grads32.values())
    for name, g in grads32.items():
        assert rel_error(model.grads[name], g, floor=scale) < 2e-2, name


def test_float16_gradients_match_float32_on_numpy():
    check_against_float32("cpu")


def test_overflow_skips_the_step_and_halves_the_scale():
    model = minimlp.create_model("ff_tiny", seed=0, **CONFIG)
    mixed = MixedPrecision(model, LossScaler(init_scale=1e9))  # dlogits * 1e9 overflows float16
    x, y = batch(np)
    model.zero_grad()
    _, ok = mixed.forward_backward(x, y)
    assert not ok and mixed.scaler.scale == 5e8
    assert not model.store.flat_grads.any()  # nothing reached the master gradients


def test_float16_training_follows_float32():
    losses = {}
    for dtype in ("float32", "float16"):
        model = minimlp.create_model("ff_tiny", seed=0, **CONFIG)
        rng = np.random.default_rng(3)
        for p in model.params.values():  # weights large enough for the loss to move quickly
            p += (rng.standard_normal(p.shape) * 0.1).astype(np.float32)
        mixed = MixedPrecision(model) if dtype == "float16" else None
        x, y = batch(np, seed=1, n=8)
        losses[dtype] = []
        for _ in range(5):
            model.zero_grad()
            if mixed is not None:
                loss, _ = mixed.forward_backward(x, y)
            else:
                loss, _ = float32_grads(model, x, y)
            losses[dtype].append(float(loss))
            model.store.flat_params -= 0.5 * model.store.flat_grads
    assert losses["float32"][-1] < 0.5 * losses["float32"][0]
    np.testing.assert_allclose(losses["float16"], losses["float32"], rtol=2e-2)


def test_master_model_must_be_float32():
    with pytest.raises(ValueError, match="float32"):
        MixedPrecision(minimlp.create_model("ff_tiny", dtype="float64", **CONFIG))


# --------------------------------------------------------------------------------------
# GPU (skipped without one).
# --------------------------------------------------------------------------------------
cupy_only = pytest.mark.skipif(CUPY is None, reason="CuPy with a GPU is not available")


@pytest.mark.gpu
@cupy_only
def test_float16_gradients_match_float32_on_the_gpu():
    check_against_float32("gpu")


@pytest.mark.gpu
@cupy_only
def test_batch_uploader_delivers_every_batch_in_order():
    from minimlp.kernels.gpu import BatchUploader

    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8) for _ in range(5)]
    uploader = BatchUploader((4, 3, 8, 8))
    uploader.put(batches[0])
    received = []
    for nxt in batches[1:]:
        x = uploader.get()
        uploader.put(nxt)
        received.append((x.astype(CUPY.float32) / 255).get())
    received.append((uploader.get().astype(CUPY.float32) / 255).get())
    for got, sent in zip(received, batches, strict=True):
        np.testing.assert_array_equal(got, sent.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="batch of shape"):
        uploader.put(batches[0][:2])


@pytest.mark.gpu
@cupy_only
def test_tf32_can_be_switched_on_and_off():
    from minimlp.kernels.gpu import set_tf32

    a = CUPY.asarray(np.random.default_rng(0).standard_normal((256, 256)), dtype=CUPY.float32)
    exact = a.astype(CUPY.float64) @ a.astype(CUPY.float64)
    try:
        set_tf32(False)
        err32 = float(CUPY.abs(a @ a - exact).max())
        set_tf32(True)
        err_tf32 = float(CUPY.abs(a @ a - exact).max())
    finally:
        set_tf32(False)
    assert err32 < 1e-3
    major = CUPY.cuda.Device().compute_capability[0]
    if int(major) >= 8:
        assert err_tf32 > err32  # TF32 rounds the inputs to 10 mantissa bits


# --------------------------------------------------------------------------------------
# The same on the CuPy stand-in (tests/support/fake_cupy.py): no implicit reads from the device.
# --------------------------------------------------------------------------------------
def test_mixed_precision_reads_one_flag_per_step_from_the_device(fake_cupy):
    """Whether the step overflowed decides on the host whether the optimizer steps: one read, no more."""
    import cupy

    model = minimlp.create_model("ff_tiny", device="gpu", seed=0, drop_path_rate=0.1, drop_rate=0.1, **CONFIG)
    mixed = MixedPrecision(model)
    x, y = batch(cupy)
    before = fake_cupy.host_syncs()
    loss, logits, ok = mixed.train_step(x, y, smoothing=0.1)
    assert fake_cupy.host_syncs() - before == 1 and ok is True
    assert logits.dtype == np.float16 and loss.dtype == np.float32 and model.store.flat_grads.dtype == np.float32


def test_dropout_and_drop_path_on_float16_device_arrays(fake_cupy):
    """Generators draw float32 or float64 only (NumPy's and CuPy's): float16 masks come from float32 draws."""
    import cupy

    from minimlp import functional as F

    x = cupy.ones((4, 3, 8), dtype=cupy.float16)
    rng = cupy.random.default_rng(0)
    for out, _ in (F.dropout_forward(x, 0.5, rng, True), F.drop_path_forward(x, 0.5, rng, True, batch_axis=0)):
        values = set(np.unique(out.get()).tolist())
        assert out.dtype == np.float16 and values <= {0.0, 2.0} and len(values) == 2


def test_batch_feed_uploads_one_batch_ahead_in_order(fake_cupy):
    from minimlp.kernels.gpu import BatchFeed

    rng = np.random.default_rng(0)
    shapes = [4, 4, 4, 2, 0]  # full batches, a short last one, a rank's empty share (mpirun)
    batches = [(rng.integers(0, 256, (n, 1, 5, 5), dtype=np.uint8), rng.integers(0, 10, n)) for n in shapes]
    taken = []

    def source():
        for item in batches:
            taken.append(item)
            yield item

    feed = BatchFeed()
    for i, (x, labels) in enumerate(feed(source())):
        assert len(taken) == min(i + 2, len(batches)), "the next batch is on its way while this one is used"
        assert np.array_equal(x.get(), batches[i][0]) and labels is batches[i][1]
    assert feed.uploader.shape == (4, 1, 5, 5) and feed.uploader.dtype == np.uint8
    for _ in feed(iter(batches)):  # an epoch stopped early (Ctrl-C) ...
        break
    assert not feed.uploader.pending  # ... leaves nothing queued for the next one
    assert all(np.array_equal(x.get(), b[0]) for (x, _), b in zip(feed(iter(batches)), batches, strict=True))
