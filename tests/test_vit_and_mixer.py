"""The comparison models, whole: parameter counts, timm's names, initialisation, the
public API, errors, and float64 finite-difference checks of the ViT block, the
attention-only block, the Mixer block and of every parameter of each whole model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import to_np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_attention import build, check_layer
from test_functional import rand

import minimlp
from minimlp.gradcheck import check_model_gradients, rel_error
from minimlp.loss import cross_entropy_backward, cross_entropy_forward
from minimlp.models import Model, model_from_config
from minimlp.models.mixer import MixerBlock
from minimlp.models.vit import ViTBlock, ViTConfig

IMAGE = dict(img_size=8, patch_size=4, in_chans=1, num_classes=5)  # 4 patches, T = 5 with the class token
SMALL = {
    "deit_tiny": dict(**IMAGE, embed_dim=4, depth=2, num_heads=2),
    "attn_only_tiny": dict(**IMAGE, embed_dim=4, depth=2, num_heads=2, feature_num_heads=5),
    "mixer_s16": dict(**IMAGE, embed_dim=4, depth=2),
}


def perturbed_model(name, device="cpu", seed=0, **overrides):
    """A float64 model whose every parameter is non-trivial (the Mixer's head starts at zero)."""
    model = minimlp.create_model(name, device=device, seed=seed, **{**SMALL[name], "dtype": "float64", **overrides})
    rng = np.random.default_rng(seed + 100)
    for p in model.params.values():
        p[...] = model.xp.asarray(to_np(p) + rng.standard_normal(p.shape) * (0.3 if p.ndim == 1 else 0.2))
    return model


@pytest.mark.parametrize(
    "name,count", [("deit_tiny", 5_717_416), ("mixer_s16", 18_528_264), ("attn_only_tiny", 4_039_360)]
)
def test_parameter_counts(name, count):
    assert minimlp.create_model(name).num_params() == count


@pytest.mark.parametrize(
    "name,count",
    [
        ("deit_small", 22_050_664),
        ("deit_base", 86_567_656),
        ("mixer_b16", 59_880_472),
        ("vit_fmnist", 920_874),
        ("mixer_fmnist", 939_792),
        ("attn_only_fmnist", 931_874),
    ],
)
def test_declared_parameter_counts(name, count, monkeypatch):
    """The larger presets, counted from their declarations without allocating them."""
    monkeypatch.setattr(Model, "_build", lambda self, seed: None)
    model = minimlp.create_model(name)
    assert sum(math.prod(spec.shape) for spec in model.store.specs) == count


def test_fmnist_presets_match_the_ff_model_within_two_percent():
    ff = minimlp.create_model("ff_fmnist").num_params()
    for name in ("vit_fmnist", "mixer_fmnist", "attn_only_fmnist"):
        assert abs(minimlp.create_model(name).num_params() / ff - 1) < 0.02, name


def test_timm_names_and_shapes():
    p = minimlp.create_model("deit_tiny").params
    assert list(p)[:6] == [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "blocks.0.norm1.weight",
        "blocks.0.norm1.bias",
    ]
    assert p["pos_embed"].shape == (1, 197, 192)
    assert p["blocks.0.attn.qkv.weight"].shape == (576, 192) and p["blocks.0.attn.qkv.bias"].shape == (576,)
    assert p["blocks.11.attn.proj.weight"].shape == (192, 192)
    assert p["blocks.3.mlp.fc1.weight"].shape == (768, 192) and p["blocks.3.mlp.fc2.weight"].shape == (192, 768)
    assert list(p)[-4:] == ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    assert len(p) == 4 + 12 * 12 + 4

    p = minimlp.create_model("attn_only_tiny").params
    assert p["blocks.0.norm2.weight"].shape == (197,)
    assert p["blocks.0.feature_attn.qkv.weight"].shape == (591, 197)
    assert p["blocks.0.feature_attn.proj.weight"].shape == (197, 197)
    assert not any(".mlp." in k for k in p)

    p = minimlp.create_model("mixer_s16").params
    assert list(p)[:2] == ["stem.proj.weight", "stem.proj.bias"]
    assert p["blocks.0.mlp_tokens.fc1.weight"].shape == (256, 196)  # 0.5·D hidden, over the 196 patches
    assert p["blocks.0.mlp_tokens.fc2.weight"].shape == (196, 256)
    assert p["blocks.7.mlp_channels.fc1.weight"].shape == (2048, 512)  # 4·D hidden
    assert p["blocks.0.norm1.weight"].shape == p["blocks.0.norm2.weight"].shape == (512,)
    assert not any("cls_token" in k or "pos_embed" in k for k in p)


def test_weight_decay_groups_follow_deit():
    """DeiT exempts pos_embed and cls_token as well as 1-D parameters."""
    model = minimlp.create_model("deit_tiny", **SMALL["deit_tiny"])
    decayed = {s.name for s in model.store.specs if s.decay}
    assert "pos_embed" not in decayed and "cls_token" not in decayed and "blocks.0.attn.qkv.bias" not in decayed
    assert "blocks.0.attn.qkv.weight" in decayed and "patch_embed.proj.weight" in decayed
    assert model.store.num_decay == sum(int(model.params[n].size) for n in decayed)


def test_init_follows_timm():
    p = {k: to_np(v) for k, v in minimlp.create_model("deit_small", seed=3).params.items()}
    assert abs(p["blocks.0.attn.qkv.weight"].std() - 0.02) < 1e-3 and abs(p["pos_embed"].std() - 0.02) < 1e-3
    assert (p["blocks.0.attn.qkv.bias"] == 0).all() and (p["blocks.0.norm1.weight"] == 1).all()
    bound = 1 / math.sqrt(3 * 16 * 16)  # the patch embedding keeps PyTorch's conv default
    assert np.abs(p["patch_embed.proj.weight"]).max() <= bound

    p = {k: to_np(v) for k, v in minimlp.create_model("mixer_s16", seed=3).params.items()}
    assert (p["head.weight"] == 0).all() and (p["head.bias"] == 0).all()
    w = p["blocks.0.mlp_channels.fc1.weight"]  # Xavier uniform: bound sqrt(6 / (fan_in + fan_out))
    xavier = math.sqrt(6 / (512 + 2048))
    assert np.abs(w).max() <= xavier and abs(w.std() - xavier / math.sqrt(3)) < 1e-3
    b = p["blocks.0.mlp_tokens.fc1.bias"]
    assert 0 < np.abs(b).max() < 1e-5  # N(0, 1e-6²)
    # timm's LeCun normal: std sqrt(1/fan_in) / 0.8796 (its truncation at ±2 cuts nothing here)
    assert abs(p["stem.proj.weight"].std() - math.sqrt(1 / 768) / 0.87962566103423978) < 1e-3
    assert (p["stem.proj.bias"] == 0).all() and (p["norm.weight"] == 1).all()
    same = minimlp.create_model("mixer_s16", seed=3)
    assert all((to_np(same.params[k]) == v).all() for k, v in p.items())


# --------------------------------------------------------------------------------------
# Finite differences: the blocks, then each whole model (every parameter and the input)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("feature_mixer", ["mlp", "attention"])
def test_vit_block(xp, device, feature_mixer):
    config = ViTConfig(
        img_size=8,
        patch_size=4,
        embed_dim=6,
        num_heads=2,
        feature_mixer=feature_mixer,
        feature_num_heads=5,
        drop_rate=0.1,
        attn_drop_rate=0.1,
    )  # T = 5 tokens
    store, block = build(device, lambda s: ViTBlock(s, "blocks.0", config, drop_path=0.3))
    check_layer(xp, store, block, rand(xp, np.random.default_rng(7), 5, 3, 6), (5, 3, 6))


def test_mixer_block(xp, device):
    store, block = build(
        device,
        lambda s: MixerBlock(
            s, "blocks.0", dim=6, num_patches=4, token_hidden=3, channel_hidden=10, drop=0.1, drop_path=0.3
        ),
    )
    check_layer(xp, store, block, rand(xp, np.random.default_rng(8), 4, 3, 6), (4, 3, 6))


@pytest.mark.parametrize("name", list(SMALL))
def test_whole_model_gradient_check(xp, device, name):
    """With dropout, attention dropout and drop path on (masks held fixed)."""
    drops = dict(drop_rate=0.1, drop_path_rate=0.2) | ({} if name == "mixer_s16" else dict(attn_drop_rate=0.1))
    model = perturbed_model(name, device, **drops)
    rng = np.random.default_rng(0)
    errors = check_model_gradients(model, rng.standard_normal((2, 1, 8, 8)), rng.standard_normal((2, 5)))
    assert len(errors) == len(model.params) + 1
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"{worst}: {errors[worst]:.2e}"


# Gradients that are exactly zero by construction.  The key bias of every attention
# shifts each row of scores by a constant, which softmax ignores (a third of qkv.bias).
# A Mixer token-MLP output bias adds one constant to all features of a token; every
# reader of the residual stream is a LayerNorm over features, which removes it.  The
# ablation's last feature-attention output bias does the same to the class token.
DEAD = {
    "deit_tiny": [],
    "attn_only_tiny": ["blocks.1.feature_attn.proj.bias"],
    "mixer_s16": ["blocks.0.mlp_tokens.fc2.bias", "blocks.1.mlp_tokens.fc2.bias"],
}


@pytest.mark.parametrize("name", list(SMALL))
def test_every_parameter_gets_a_gradient(xp, device, name):
    model = perturbed_model(name, device)
    x = xp.asarray(np.random.default_rng(0).standard_normal((4, 1, 8, 8)))
    logits, cache = model.forward(x, train=True)
    loss, lcache = cross_entropy_forward(logits, xp.asarray([0, 1, 2, 3]))
    model.backward(cross_entropy_backward(lcache), cache, input_grad=False)
    scale = max(float(xp.abs(g).max()) for g in model.grads.values())
    for key, g in model.grads.items():
        assert bool(xp.isfinite(g).all()), key
        if key in DEAD[name]:
            assert float(xp.abs(g).max()) < 1e-12 * scale, key
        else:
            assert float(xp.abs(g).max()) > 1e-6 * scale, f"{key} got no gradient"
        if key.endswith("qkv.bias"):
            third = g.shape[0] // 3
            assert float(xp.abs(g[third : 2 * third]).max()) < 1e-12 * scale, key


# --------------------------------------------------------------------------------------
# The public API, as for the FF model
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SMALL))
def test_float32_in_float32_out(xp, device, name):
    model = minimlp.create_model(name, device=device, **SMALL[name])
    x = xp.asarray(np.random.default_rng(0).standard_normal((2, 1, 8, 8)), dtype=xp.float32)
    logits, cache = model.forward(x, train=True)
    dx = model.backward(xp.ones_like(logits), cache)
    assert logits.dtype == xp.float32 and dx.dtype == xp.float32
    assert all(g.dtype == xp.float32 for g in model.grads.values())


@pytest.mark.parametrize("name", ["vit_fmnist", "mixer_fmnist", "attn_only_fmnist"])
def test_first_loss_is_log_k(name):
    model = minimlp.create_model(name)
    x = np.random.default_rng(0).standard_normal((10, 1, 28, 28)).astype(np.float32)
    logits, _ = model.forward(x)
    loss, _ = cross_entropy_forward(logits, np.arange(10))
    assert abs(float(loss) - math.log(10)) < 0.1


@pytest.mark.parametrize("name", list(SMALL))
def test_config_round_trip_and_features(name):
    model = perturbed_model(name)
    again = model_from_config(model.config_dict())
    assert type(again) is type(model) and again.config == model.config
    again.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    assert rel_error(again.forward(x)[0], model.forward(x)[0]) == 0.0
    tokens = 4 if name == "mixer_s16" else 5
    assert model.forward_features(x).shape == (2, tokens, 4)


def test_option_errors():
    with pytest.raises(ValueError, match="num_heads 5 must divide embed_dim 192"):
        minimlp.create_model("deit_tiny", num_heads=5)
    with pytest.raises(ValueError, match="feature_num_heads 3 must divide the number of tokens 197"):
        minimlp.create_model("attn_only_tiny", feature_num_heads=3)
    with pytest.raises(ValueError, match="feature_mixer must be one of"):
        minimlp.create_model("deit_tiny", feature_mixer="conv")
    with pytest.raises(TypeError, match="unknown option.*patch_mlp_dim.*for 'deit_tiny'"):
        minimlp.create_model("deit_tiny", patch_mlp_dim=64)
    with pytest.raises(TypeError, match="unknown option.*num_heads.*for 'mixer_s16'"):
        minimlp.create_model("mixer_s16", num_heads=4)
    with pytest.raises(ValueError, match="expects input of shape \\(B, 1, 8, 8\\)"):
        minimlp.create_model("mixer_s16", **SMALL["mixer_s16"]).forward(np.zeros((2, 3, 8, 8)))
    # Options left unset (None) are ignored, so one command line can build every family.
    assert minimlp.create_model("mixer_s16", num_heads=None, patch_mlp_dim=None, **SMALL["mixer_s16"])
    assert minimlp.create_model("ff_tiny", num_heads=None, img_size=8, patch_size=4)


# --------------------------------------------------------------------------------------
# Properties of the whole models
# --------------------------------------------------------------------------------------
def _patch_permuted(x, perm, patch):
    """Rearrange the P×P patches of images (B, C, H, W) in grid order ``perm``."""
    B, C, H, W = x.shape
    g = H // patch
    tiles = x.reshape(B, C, g, patch, g, patch).transpose(0, 1, 2, 4, 3, 5).reshape(B, C, g * g, patch, patch)
    tiles = tiles[:, :, perm].reshape(B, C, g, g, patch, patch)
    return tiles.transpose(0, 1, 2, 4, 3, 5).reshape(B, C, H, W)


VIT64 = perturbed_model("deit_tiny", seed=1)
VIT64_NO_POS = perturbed_model("deit_tiny", seed=1)
VIT64_NO_POS.params["pos_embed"][...] = 0
MIXER64 = perturbed_model("mixer_s16", seed=1)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_without_positions_a_vit_cannot_tell_where_patches_are(seed):
    """Shuffling the patches leaves the ViT's logits unchanged once pos_embed is zero
    (attention and per-token layers commute with the shuffle, and the class token reads
    all patches alike); with positions, or in the Mixer, whose token MLP has a weight
    per patch position, the logits change."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 1, 8, 8))
    perm = rng.permutation(4)
    if (perm == np.arange(4)).all():
        perm = np.roll(perm, 1)
    shuffled = _patch_permuted(x, perm, 4)
    assert rel_error(VIT64_NO_POS.forward(shuffled)[0], VIT64_NO_POS.forward(x)[0]) < 1e-12
    assert rel_error(VIT64.forward(shuffled)[0], VIT64.forward(x)[0]) > 1e-6
    assert rel_error(MIXER64.forward(shuffled)[0], MIXER64.forward(x)[0]) > 1e-6
