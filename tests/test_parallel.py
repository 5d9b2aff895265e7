"""Data parallelism over worker processes: the gradient of the split batch equals the
gradient of the whole batch, evaluation gives the same logits, and a data-parallel run
resumes bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from test_train import final_params, quick

import minimlp
from minimlp import train
from minimlp.loss import cross_entropy_backward, cross_entropy_forward
from minimlp.parallel.workers import DataParallel


def whole_batch(model, x, targets, smoothing):
    """(loss, logits, gradients) of one process's training step on the whole batch."""
    logits, cache = model.forward(x, train=True)
    loss, loss_cache = cross_entropy_forward(logits, targets, smoothing)
    model.zero_grad()
    model.backward(cross_entropy_backward(loss_cache), cache, input_grad=False)
    return loss, logits, model.store.flat_grads.copy()


def test_split_batch_gradient_equals_whole_batch():
    model = minimlp.create_model("ff_fmnist", embed_dim=16, depth=2, patch_size=7, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((13, 1, 28, 28)).astype(np.float32)  # 13 rows: unequal shards
    y = rng.integers(0, 10, 13)
    loss, logits, expected = whole_batch(model, x, y, 0.1)
    with DataParallel(model, 3, max_batch=16, seed=0) as parallel:
        split_loss, split_logits = parallel.train_step(x, y, 0.1, step=0)
        assert split_loss == pytest.approx(float(loss), rel=1e-6)
        assert np.allclose(split_logits, logits, atol=1e-5)
        scale = np.abs(expected).max()
        assert np.abs(model.store.flat_grads - expected).max() < 1e-5 * scale
        eval_logits, _ = parallel.forward(x[:5])
        assert np.allclose(eval_logits, model.forward(x[:5])[0], atol=1e-5)
        with pytest.raises(ValueError, match="expects input of shape"):
            parallel.forward(np.zeros((2, 3, 28, 28), np.float32))
        with pytest.raises(ValueError, match="larger than the 16"):
            parallel.forward(np.zeros((17, 1, 28, 28), np.float32))


def test_soft_targets_reach_every_workers_loss():
    """Mixup/cutmix targets (B, K), with smoothing 0, split over the workers like the labels."""
    model = minimlp.create_model("ff_fmnist", embed_dim=16, depth=2, patch_size=7, seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 1, 28, 28)).astype(np.float32)
    targets = rng.dirichlet(np.ones(10), size=10).astype(np.float32)  # (B, K), rows sum to 1
    loss, _, expected = whole_batch(model, x, targets, 0.0)
    with DataParallel(model, 2, max_batch=16, seed=0) as parallel:
        split_loss, _ = parallel.train_step(x, targets, 0.0, step=0)
        assert split_loss == pytest.approx(float(loss), rel=1e-6)
        assert np.abs(model.store.flat_grads - expected).max() < 1e-5 * np.abs(expected).max()
        hard_loss, _ = parallel.train_step(x, targets.argmax(1), 0.0, step=1)  # and labels again after
        assert hard_loss != pytest.approx(split_loss)


def test_data_parallel_run_resumes_bitwise(tmp_path, fmnist_dir):
    args = ("--epochs", "2", "--procs", "2", "--drop-path", "0.1")
    train.run(quick(tmp_path, "straight", *args, data_dir=fmnist_dir))
    first = train.run(quick(tmp_path, "split", *args, data_dir=fmnist_dir), on_epoch_end=lambda record: True)
    assert first.status == "interrupted"
    assert train.run(["--resume", str(tmp_path / "split"), "--procs", "2"]).status == "done"
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "split")
    assert all(np.array_equal(a[k], b[k]) for k in a)
