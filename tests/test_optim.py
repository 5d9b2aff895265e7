"""Optimizers, clipping and schedules: hand-worked steps against their formulas, then
parity with torch.optim (SGD, Nesterov, AdamW with decay / no-decay groups) when PyTorch
is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minimlp
from minimlp.optim import SGD, AdamW, LRSchedule, clip_grad_norm, create_optimizer, scale_lr


def buffers(values, grads, dtype=np.float64):
    return np.array(values, dtype=dtype), np.array(grads, dtype=dtype)


# -- SGD ---------------------------------------------------------------------------------
def test_sgd_momentum_by_hand():
    # Two elements: the first takes weight decay (num_decay=1), the second does not.
    p, g = buffers([1.0, -2.0], [0.5, 0.25])
    opt = SGD(p, g, num_decay=1, lr=0.1, momentum=0.9, weight_decay=0.01)
    opt.step()
    # step 1: d = g + wd p (decay only on p[0]); buf = d; p -= lr buf
    d0 = 0.5 + 0.01 * 1.0
    assert p[0] == pytest.approx(1.0 - 0.1 * d0, abs=1e-15)
    assert p[1] == pytest.approx(-2.0 - 0.1 * 0.25, abs=1e-15)
    p0_after1 = p[0]
    g[:] = [-1.0, 1.0]
    opt.step(lr=0.05)
    d0b = -1.0 + 0.01 * p0_after1
    buf0 = 0.9 * d0 + d0b
    buf1 = 0.9 * 0.25 + 1.0
    assert p[0] == pytest.approx(p0_after1 - 0.05 * buf0, abs=1e-15)
    assert p[1] == pytest.approx(-2.0 - 0.1 * 0.25 - 0.05 * buf1, abs=1e-15)
    assert np.allclose(opt.state["momentum_buffer"], [buf0, buf1], atol=1e-15)
    assert list(g) == [-1.0, 1.0], "the optimizer must not modify the gradients"


def test_sgd_nesterov_by_hand():
    p, g = buffers([1.0], [2.0])
    opt = SGD(p, g, num_decay=0, lr=0.1, momentum=0.5, nesterov=True)
    opt.step()  # buf = 2; d = g + m buf = 3
    assert p[0] == pytest.approx(1.0 - 0.3)
    g[:] = [-1.0]
    opt.step()  # buf = 0.5 * 2 - 1 = 0; d = -1 + 0 = -1
    assert p[0] == pytest.approx(0.7 + 0.1)


def test_plain_sgd_without_momentum():
    p, g = buffers([3.0, 4.0], [1.0, -1.0])
    SGD(p, g, num_decay=2, lr=0.5, momentum=0.0).step()
    assert list(p) == [2.5, 4.5]


# -- AdamW -------------------------------------------------------------------------------
def test_adamw_by_hand():
    p, g = buffers([1.0, 0.5], [0.2, -0.4])
    lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-8
    opt = AdamW(p, g, num_decay=1, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    expect = np.array([1.0, 0.5])
    m = np.zeros(2)
    v = np.zeros(2)
    for t, grad in enumerate([[0.2, -0.4], [-0.1, 0.3], [0.5, 0.5]], start=1):
        g[:] = grad
        opt.step()
        expect[0] *= 1 - lr * wd  # decoupled decay on the first element only
        m = b1 * m + (1 - b1) * np.array(grad)
        v = b2 * v + (1 - b2) * np.array(grad) ** 2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        expect -= lr * m_hat / (np.sqrt(v_hat) + eps)
        assert np.allclose(p, expect, rtol=1e-12, atol=1e-15), t
    # The first Adam step moves every coordinate by about lr (m_hat / sqrt(v_hat) = sign(g)).
    p2, g2 = buffers([0.0, 0.0], [1e-3, -5.0])
    AdamW(p2, g2, num_decay=0, lr=0.01).step()
    assert np.allclose(p2, [-0.01, 0.01], rtol=1e-4)


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    grads_seq = rng.standard_normal((6, 5))
    results = []
    for split in (False, True):
        p, g = buffers(np.linspace(-1, 1, 5), np.zeros(5))
        opt = AdamW(p, g, num_decay=3, lr=0.01)
        for i, grad in enumerate(grads_seq):
            if split and i == 3:  # rebuild the optimizer from its saved state
                saved, steps = opt.state_dict(), opt.steps
                opt = AdamW(p, g, num_decay=3, lr=0.01)
                opt.load_state_dict(saved, steps)
            g[:] = grad
            opt.step()
        results.append(p.copy())
    assert (results[0] == results[1]).all()


def test_state_mismatch_is_named():
    p, g = buffers([1.0, 2.0], [0.0, 0.0])
    opt = AdamW(p, g, num_decay=0, lr=0.1)
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict({"exp_avg": np.zeros(2)}, 1)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict({"exp_avg": np.zeros(3), "exp_avg_sq": np.zeros(2)}, 1)


def test_bad_hyperparameters():
    p, g = buffers([1.0], [0.0])
    with pytest.raises(ValueError, match="momentum"):
        SGD(p, g, 0, lr=0.1, momentum=1.5)
    with pytest.raises(ValueError, match="non-negative"):
        SGD(p, g, 0, lr=-0.1)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        create_optimizer("adam", minimlp.create_model("ff_fmnist", embed_dim=8, depth=1), lr=0.1)


def test_decay_skips_1d_params_and_cls_token():
    model = minimlp.create_model("ff_fmnist", embed_dim=8, depth=1, patch_size=7)
    for p in model.params.values():
        p[...] = 1.0
    opt = create_optimizer("adamw", model, lr=0.1, weight_decay=0.5)
    model.zero_grad()  # zero gradients: only weight decay moves anything
    opt.step()
    for name, p in model.params.items():
        decays = p.ndim > 1 and name != "cls_token"
        assert np.allclose(p, 1.0 - 0.05 if decays else 1.0), name


# -- clipping and schedules ----------------------------------------------------------------
def test_clip_grad_norm():
    g = np.array([3.0, 4.0])
    assert clip_grad_norm(g, 10.0) == 5.0 and list(g) == [3.0, 4.0]
    assert clip_grad_norm(g, 1.0) == 5.0
    assert np.allclose(g, [0.6, 0.8], rtol=1e-6) and np.linalg.norm(g) <= 1.0
    assert clip_grad_norm(g, 0.0) == pytest.approx(1.0, rel=1e-6)  # 0 = off: only measures


def test_clip_grad_norm_leaves_the_norm_on_the_device(fake_cupy):
    """Measuring and clipping read nothing back from a GPU; the trainer checks the norm later."""
    import cupy

    long, short = cupy.asarray(np.array([3.0, 4.0], np.float32)), cupy.asarray(np.array([0.3, 0.4], np.float32))
    before = fake_cupy.host_syncs()
    norms = clip_grad_norm(long, 1.0), clip_grad_norm(short, 1.0)
    assert fake_cupy.host_syncs() == before
    assert [float(n.get()) for n in norms] == pytest.approx([5.0, 0.5])
    np.testing.assert_allclose(long.get(), [0.6, 0.8], rtol=1e-6)
    assert short.get().tolist() == np.array([0.3, 0.4], np.float32).tolist()  # unclipped: untouched


def test_warmup_then_cosine():
    s = LRSchedule("cosine", lr=1.0, epochs=10, warmup_epochs=2, warmup_lr=0.0, min_lr=0.1)
    assert s(0) == 0.0 and s(1) == pytest.approx(0.5) and s(2) == pytest.approx(1.0)
    assert s(6) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert s(10) == pytest.approx(0.1) and s(12) == pytest.approx(0.1)
    lrs = [s(e / 10) for e in range(20, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False)), "the cosine only decreases"


def test_step_and_constant():
    s = LRSchedule("step", lr=1.0, epochs=100, warmup_epochs=0, decay_epochs=30, decay_rate=0.1)
    assert [s(e) for e in (0, 29.9, 30, 61)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    c = LRSchedule("constant", lr=0.3, epochs=5, warmup_epochs=1, warmup_lr=0.1)
    assert c(0.5) == pytest.approx(0.2) and c(1) == c(4.9) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule("linear", 1.0, 10)


def test_deit_scaling_rule():
    assert scale_lr(5e-4, 1024) == pytest.approx(1e-3)
    assert scale_lr(5e-4, 128) == pytest.approx(1.25e-4)


# -- parity with torch.optim -----------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize(
    "name,kwargs,torch_kwargs",
    [
        ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=1e-2), dict(momentum=0.9)),
        ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2), dict(momentum=0.9, nesterov=True)),
        ("adamw", dict(lr=1e-2, weight_decay=0.05), dict(betas=(0.9, 0.999), eps=1e-8)),
    ],
)
def test_parity_with_torch_optim(name, kwargs, torch_kwargs):
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test dependency")
    model = minimlp.create_model("ff_fmnist", embed_dim=8, depth=2, patch_size=7, dtype="float64")
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in model.state_dict().items()}
    decay = [t for k, t in tparams.items() if t.ndim > 1 and k != "cls_token"]
    no_decay = [t for k, t in tparams.items() if not (t.ndim > 1 and k != "cls_token")]
    groups = [{"params": decay, "weight_decay": kwargs["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    topt = (torch.optim.SGD if name == "sgd" else torch.optim.AdamW)(groups, lr=kwargs["lr"], **torch_kwargs)
    opt = create_optimizer(name, model, **kwargs)
    schedule = LRSchedule("cosine", kwargs["lr"], epochs=5, warmup_epochs=1, warmup_lr=1e-3)
    rng = np.random.default_rng(0)
    for step in range(5):
        lr = schedule(step)
        for k, t in tparams.items():
            grad = rng.standard_normal(t.shape)
            model.grads[k][...] = grad
            t.grad = torch.from_numpy(grad.copy())
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        opt.step(lr)
        for k, t in tparams.items():
            assert np.allclose(model.params[k], t.detach().numpy(), rtol=1e-12, atol=1e-14), (step, k)


def test_optimizer_keeps_float32():
    model = minimlp.create_model("ff_fmnist", embed_dim=8, depth=1, patch_size=7)
    opt = create_optimizer("adamw", model, lr=1e-3)
    model.store.flat_grads[...] = 0.1
    opt.step()
    assert model.store.flat_params.dtype == np.float32
    assert all(a.dtype == np.float32 for a in opt.state.values())
    assert not math.isnan(float(model.store.flat_params.sum()))
