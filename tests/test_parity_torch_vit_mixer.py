"""Parity of the comparison models (ViT/DeiT, the attention-only ablation, MLP-Mixer) with
independent PyTorch twins on shared weights: logits, loss and every gradient agree to
1e-9 relative error in float64; float32 logits agree to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest

import minimlp
from minimlp.gradcheck import rel_error

torch = pytest.importorskip("torch", reason="PyTorch is an optional test dependency")
from support.torch_twin import assert_float64_parity  # noqa: E402
from support.torch_twin_vit_mixer import TwinMixer, TwinViT  # noqa: E402

pytestmark = pytest.mark.torch

IMAGE = dict(img_size=16, patch_size=4, in_chans=3, num_classes=7)
CASES = {
    "vit": ("deit_tiny", TwinViT, dict(**IMAGE, embed_dim=12, depth=2, num_heads=3)),
    "vit-one-head": ("deit_tiny", TwinViT, dict(**IMAGE, embed_dim=8, depth=1, num_heads=1)),
    "attention-only": (
        "attn_only_tiny",
        TwinViT,
        dict(**IMAGE, embed_dim=12, depth=2, num_heads=2, feature_mixer="attention", feature_num_heads=1),
    ),
    "mixer": ("mixer_s16", TwinMixer, dict(**IMAGE, embed_dim=12, depth=2)),
}


def twin_of(model, twin_cls, config):
    twin = twin_cls(**config).double()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, strict=True)
    return twin


def perturbed(name, config, seed):
    """A float64 model with non-trivial parameters (the Mixer's head starts at zero)."""
    model = minimlp.create_model(name, dtype="float64", seed=seed, **config)
    rng = np.random.default_rng(seed + 1)
    for p in model.params.values():
        p += rng.standard_normal(p.shape) * 0.1
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_float64_logits_loss_and_every_gradient(case):
    name, twin_cls, config = CASES[case]
    model = perturbed(name, config, 0)
    twin = twin_of(model, twin_cls, config)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 16, 16))
    y = rng.integers(0, 7, 5)

    assert_float64_parity(model, twin, x, y)  # the same names, in timm's order


@pytest.mark.parametrize("case", ["vit", "mixer"])
def test_float32_logits_match_to_float32_rounding(case):
    name, twin_cls, config = CASES[case]
    model = minimlp.create_model(name, seed=0, **{**config, "img_size": 32, "patch_size": 8})
    rng = np.random.default_rng(0)
    for p in model.params.values():  # a non-zero head for the Mixer
        p += (rng.standard_normal(p.shape) * 0.05).astype(np.float32)
    twin = twin_of(model, twin_cls, {**config, "img_size": 32, "patch_size": 8}).float()
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    logits, _ = model.forward(x)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    assert logits.dtype == np.float32
    assert rel_error(logits, expected) < 1e-5
