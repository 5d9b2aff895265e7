"""The whole model: parameter counts, the public API, errors, and a float64 gradient check
of every parameter and the input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import to_np

import minimlp
from minimlp.gradcheck import check_model_gradients, rel_error
from minimlp.loss import cross_entropy_backward, cross_entropy_forward

SMALL = dict(img_size=8, patch_size=4, in_chans=3, num_classes=5, embed_dim=8, depth=2)


def perturbed_model(device="cpu", seed=0, **overrides):
    """A float64 model whose every parameter is non-trivial (LayerNorm weight != 1, biases != 0)."""
    model = minimlp.create_model("ff_tiny", device=device, seed=seed, **{**SMALL, "dtype": "float64", **overrides})
    rng = np.random.default_rng(seed + 100)
    for p in model.params.values():
        noise = rng.standard_normal(p.shape) * (0.3 if p.ndim == 1 else 0.2)
        p[...] = model.xp.asarray(to_np(p) + noise)
    return model


@pytest.mark.parametrize(
    "name,count",
    [("ff_tiny", 7_676_332), ("ff_base", 61_943_020), ("linear_tiny", 7_676_332), ("linear_base", 61_943_020)],
)
def test_parameter_counts(name, count):
    assert minimlp.create_model(name).num_params() == count


def declared(name, **overrides):
    """A model's parameter shapes, declared but never allocated (ff_large would take 0.8 GB)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(minimlp.models.Model, "_build", lambda self, seed: None)
        return {spec.name: spec.shape for spec in minimlp.create_model(name, **overrides).store.specs}


def test_ff_large_keeps_the_released_14x14_position_grid():
    """The released model file resizes a 14×14 grid to ff_large's 7×7 patches: 206,363,576 parameters."""
    shapes = declared("ff_large")
    assert sum(math.prod(s) for s in shapes.values()) == 206_363_576
    assert shapes["pos_encoding.pos_embed"] == (1, 1024, 14, 14)
    assert shapes["blocks.23.norm2.weight"] == (50,) and shapes["blocks.0.mlp2.fc1.weight"] == (200, 50)
    # A grid at the patch grid's size: the count in the paper's table, the layout of older files.
    seven = declared("ff_large", pos_grid=7)
    assert sum(math.prod(s) for s in seven.values()) == 206_213_048
    assert seven["pos_encoding.pos_embed"] == (1, 1024, 7, 7)
    assert declared("ff_tiny")["pos_encoding.pos_embed"] == (1, 192, 14, 14)
    assert declared("ff_tiny", img_size=8, patch_size=4)["pos_encoding.pos_embed"] == (1, 192, 2, 2)


def test_pos_grid_option_is_checked():
    for bad in (0, -3, 2.5, "14", True):
        with pytest.raises(ValueError, match="pos_grid must be a positive integer"):
            minimlp.create_model("ff_tiny", **SMALL, pos_grid=bad)


@pytest.mark.parametrize("pos_grid", [3, 1, 5])  # the 2×2 patch grid from a larger grid, and from smaller ones
def test_whole_model_gradient_check_through_the_resized_grid(xp, device, pos_grid):
    model = perturbed_model(device, pos_grid=pos_grid)
    assert model.params["pos_encoding.pos_embed"].shape == (1, 8, pos_grid, pos_grid)
    rng = np.random.default_rng(3)
    # every parameter once; for the other sizes, those next to the resize
    names = (
        None
        if pos_grid == 3
        else ["pos_encoding.pos_embed", "pos_encoding.cls_pos_embed", "cls_token", "patch_embed.proj.bias"]
    )
    errors = check_model_gradients(model, rng.standard_normal((3, 3, 8, 8)), rng.standard_normal((3, 5)), names=names)
    assert len(errors) == len(names or model.params) + 1  # and the input
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"{worst}: {errors[worst]:.2e}"


def test_a_grid_of_the_patch_grid_size_is_not_resized(monkeypatch):
    """At equal sizes the resize is the identity (tested in test_functional), so it is skipped."""
    from minimlp import kernels

    calls = []
    original = kernels.resize_bilinear_forward
    monkeypatch.setattr(kernels, "resize_bilinear_forward", lambda *a: calls.append(a) or original(*a))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    same = perturbed_model()
    explicit = perturbed_model(pos_grid=2)  # the patch grid, given explicitly: the same model
    np.testing.assert_array_equal(same.forward(x)[0], explicit.forward(x)[0])
    assert calls == []
    perturbed_model(pos_grid=4).forward(x)
    assert len(calls) == 1


def test_released_names_and_shapes():
    model = minimlp.create_model("ff_tiny")
    p = model.params
    assert list(p)[:5] == [
        "cls_token",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "pos_encoding.pos_embed",
        "pos_encoding.cls_pos_embed",
    ]
    assert p["patch_embed.proj.weight"].shape == (192, 3, 16, 16)
    assert p["pos_encoding.pos_embed"].shape == (1, 192, 14, 14)
    assert p["blocks.11.mlp1.fc1.weight"].shape == (768, 192)
    assert p["blocks.0.mlp2.fc1.weight"].shape == (788, 197)
    assert p["blocks.0.mlp2.fc2.weight"].shape == (197, 788)
    assert p["blocks.0.norm2.weight"].shape == (197,)
    assert p["head.weight"].shape == (1000, 192)
    assert len(p) == 153 and set(model.grads) == set(p)


def test_init_follows_released_code():
    model = minimlp.create_model("ff_base", seed=3)
    p = {k: to_np(v) for k, v in model.params.items()}
    assert abs(p["blocks.0.mlp1.fc1.weight"].std() - 0.02) < 1e-3
    assert (p["blocks.0.mlp1.fc1.bias"] == 0).all() and (p["norm.weight"] == 1).all() and (p["norm.bias"] == 0).all()
    bound = 1 / math.sqrt(3 * 16 * 16)  # PyTorch's conv default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = p["patch_embed.proj.weight"]
    assert w.min() >= -bound and w.max() <= bound and w.std() > 0.9 * bound / math.sqrt(3)
    assert abs(p["cls_token"].std() - 0.02) < 4e-3
    same = minimlp.create_model("ff_base", seed=3)
    assert all((to_np(same.params[k]) == v).all() for k, v in p.items())


def test_patch_mlp_dim_option():
    model = minimlp.create_model("ff_tiny", patch_mlp_dim=64)
    assert model.params["blocks.0.mlp2.fc1.weight"].shape == (64, 197)


def test_whole_model_gradient_check(xp, device):
    model = perturbed_model(device)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 8, 8))
    errors = check_model_gradients(model, x, rng.standard_normal((3, 5)))
    assert len(errors) == len(model.params) + 1
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"{worst}: {errors[worst]:.2e}"


def test_gradient_check_with_dropout_and_drop_path(xp, device):
    model = perturbed_model(device, drop_rate=0.2, drop_path_rate=0.3, depth=3)
    rng = np.random.default_rng(1)
    names = ["blocks.2.mlp2.fc1.weight", "blocks.1.mlp1.fc2.weight", "patch_embed.proj.weight", "cls_token"]
    errors = check_model_gradients(model, rng.standard_normal((4, 3, 8, 8)), rng.standard_normal((4, 5)), names=names)
    assert max(errors.values()) < 1e-6, errors


def test_gradient_check_detects_a_wrong_backward(monkeypatch):
    """The check can fail: a backward that drops the GELU derivative is caught."""
    from minimlp import functional as F

    model = perturbed_model()
    monkeypatch.setattr(F, "gelu_backward", lambda dout, cache: dout)
    rng = np.random.default_rng(2)
    errors = check_model_gradients(
        model, rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((2, 5)), names=["blocks.0.mlp1.fc1.weight"]
    )
    assert errors["blocks.0.mlp1.fc1.weight"] > 0.01


def test_ff_block_spells_out_the_generic_pre_norm_block():
    """FFBlock's own forward/backward compute, bit for bit, what the shared pre-norm block
    of the ViT and the Mixer computes from the same layers, and name every cache."""
    from minimlp.layers import PreNormBlock
    from minimlp.models.ffvit import FFBlock, FFBlockCache

    assert "forward" in vars(FFBlock) and "backward" in vars(FFBlock)
    model = perturbed_model(drop_rate=0.2, drop_path_rate=0.5)
    block = model.blocks[1]
    generic = PreNormBlock()
    generic.branches = ((block.norm1, block.mlp1), (block.norm2, block.mlp2))
    generic.drop_path = block.drop_path
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 6, 8))  # (T, B, D)
    dout = rng.standard_normal(x.shape)
    results = []
    for run in (block, generic):
        model.zero_grad()
        out, cache = run.forward(x.copy(), True, np.random.default_rng(7))
        dx = run.backward(dout.copy(), cache)
        results.append((out, dx, model.store.flat_grads.copy(), cache))
    (out, dx, grads, cache), (out_g, dx_g, grads_g, _) = results
    assert isinstance(cache, FFBlockCache) and cache._fields == ("norm1", "mlp1", "path1", "norm2", "mlp2", "path2")
    assert np.array_equal(out, out_g) and np.array_equal(dx, dx_g) and np.array_equal(grads, grads_g)
    assert np.abs(grads).max() > 0


def test_every_parameter_gets_a_gradient(xp, device):
    model = minimlp.create_model("ff_tiny", device=device, **{**SMALL, "dtype": "float64"})
    x = xp.asarray(np.random.default_rng(0).standard_normal((4, 3, 8, 8)))
    logits, cache = model.forward(x, train=True)
    loss, lcache = cross_entropy_forward(logits, xp.asarray([0, 1, 2, 3]))
    model.backward(cross_entropy_backward(lcache), cache, input_grad=False)
    scale = max(float(xp.abs(g).max()) for g in model.grads.values())
    # The one exception, by construction: the last block's patch-FF output bias adds a
    # constant across the features of each token; the head reads only the class token,
    # after a LayerNorm over features that removes any constant.
    dead = "blocks.1.mlp2.fc2.bias"
    for name, g in model.grads.items():
        assert bool(xp.isfinite(g).all()), name
        if name == dead:
            assert float(xp.abs(g).max()) < 1e-12 * scale
        else:
            assert float(xp.abs(g).max()) > 1e-6 * scale, f"{name} got no gradient"


def test_float32_in_float32_out(xp, device):
    model = minimlp.create_model("ff_tiny", device=device, **SMALL)
    x = xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8)), dtype=xp.float32)
    logits, cache = model.forward(x, train=True)
    dx = model.backward(xp.ones_like(logits), cache)
    assert logits.dtype == xp.float32 and dx.dtype == xp.float32
    assert all(g.dtype == xp.float32 for g in model.grads.values())


def test_input_shape_errors():
    model = minimlp.create_model("ff_tiny", **SMALL)
    for bad in [np.zeros((2, 1, 8, 8)), np.zeros((2, 3, 16, 16)), np.zeros((3, 8, 8)), np.zeros((0, 3, 8, 8))]:
        with pytest.raises(ValueError, match=r"expects input of shape \(B, 3, 8, 8\)"):
            model.forward(bad)


def test_unknown_model_and_option():
    with pytest.raises(ValueError, match="unknown model 'ff_huge'.*ff_tiny.*linear_base"):
        minimlp.create_model("ff_huge")
    with pytest.raises(TypeError, match="unknown option.*num_head.*embed_dim"):
        minimlp.create_model("ff_tiny", num_head=3)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        minimlp.create_model("ff_tiny", img_size=30, patch_size=8)


def test_state_dict_round_trip_and_strict_errors():
    a = minimlp.create_model("ff_tiny", seed=1, **SMALL)
    b = minimlp.create_model("ff_tiny", seed=2, **SMALL)
    b.load_state_dict(a.state_dict())
    assert all((to_np(b.params[k]) == to_np(v)).all() for k, v in a.params.items())
    # Loading writes into the flat buffer the layers and optimizers read.
    assert np.shares_memory(b.params["head.weight"], b.store.flat_params)
    state = a.state_dict()
    del state["head.bias"]
    state["head.extra"] = np.zeros(3)
    state["norm.weight"] = np.zeros(7)
    with pytest.raises(ValueError) as err:
        b.load_state_dict(state)
    msg = str(err.value)
    assert "missing keys (1): head.bias" in msg
    assert "unexpected keys (1): head.extra" in msg
    assert "norm.weight: checkpoint (7,) vs model (8,)" in msg


def test_first_loss_is_log_k():
    model = minimlp.create_model("ff_fmnist")
    x = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    logits, _ = model.forward(x)
    loss, _ = cross_entropy_forward(logits, np.arange(64) % 10)
    assert abs(float(loss) - math.log(10)) < 0.1


@pytest.mark.parametrize(
    "name,size,overrides,lr",
    [
        ("ff_tiny", 16, dict(embed_dim=32, depth=2), 0.1),
        ("deit_tiny", 8, dict(embed_dim=16, depth=1, num_heads=2), 0.2),  # the comparison models too
        ("mixer_s16", 8, dict(embed_dim=16, depth=1), 0.2),
    ],
)
def test_tiny_batch_overfits(name, size, overrides, lr):
    model = minimlp.create_model(name, img_size=size, patch_size=4, in_chans=1, num_classes=4, seed=0, **overrides)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, size, size)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    for _ in range(60):
        model.zero_grad()
        logits, cache = model.forward(x, train=True)
        loss, lcache = cross_entropy_forward(logits, y)
        model.backward(cross_entropy_backward(lcache), cache, input_grad=False)
        model.store.flat_params -= lr * model.store.flat_grads  # plain SGD
    logits, _ = model.forward(x)
    assert float(loss) < 0.05 and (logits.argmax(1) == y).all()


def test_forward_features_in_paper_layout():
    model = minimlp.create_model("ff_tiny", **SMALL)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 5, 8)
    logits, _ = model.forward(x)
    from minimlp import functional as F

    p = model.params
    cls, _ = F.layernorm_forward(feats[:, 0], p["norm.weight"], p["norm.bias"])
    assert rel_error(cls @ p["head.weight"].T + p["head.bias"], logits) < 1e-6
