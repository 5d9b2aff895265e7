"""Parity with the PyTorch twin on shared weights: logits, loss and every gradient agree
to 1e-9 relative error in float64; float32 agrees to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest

import minimlp
from minimlp.gradcheck import rel_error

torch = pytest.importorskip("torch", reason="PyTorch is an optional test dependency")
from support.torch_twin import TwinFFViT, assert_float64_parity  # noqa: E402

pytestmark = pytest.mark.torch

CONFIGS = {
    "small": dict(img_size=16, patch_size=4, in_chans=3, num_classes=7, embed_dim=12, depth=2),
    "fmnist-like": dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16, depth=3, patch_mlp_dim=9),
    # ff_large's geometry as the released file has it: 224 px, patch 32, a 14×14 grid resized to 7×7
    "large-grid": dict(img_size=224, patch_size=32, in_chans=3, num_classes=6, embed_dim=8, depth=2, pos_grid=14),
    "upsampled-grid": dict(img_size=16, patch_size=4, in_chans=2, num_classes=3, embed_dim=6, depth=1, pos_grid=3),
}


def twin_of(model, config):
    twin = TwinFFViT(**config).double()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, strict=True)
    return twin


def perturb(model, seed):
    rng = np.random.default_rng(seed)
    for p in model.params.values():
        p += rng.standard_normal(p.shape) * 0.1


@pytest.mark.parametrize("name", list(CONFIGS))
def test_float64_logits_loss_and_every_gradient(name):
    config = CONFIGS[name]
    model = minimlp.create_model("ff_tiny", dtype="float64", seed=0, **config)
    perturb(model, 1)
    twin = twin_of(model, config)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, config["in_chans"], config["img_size"], config["img_size"]))
    y = rng.integers(0, config["num_classes"], 5)

    assert_float64_parity(model, twin, x, y)


def test_float32_logits_match_to_float32_rounding():
    config = dict(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=32, depth=3)
    model = minimlp.create_model("ff_tiny", seed=0, **config)
    twin = twin_of(model, config).float()
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    logits, _ = model.forward(x)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    assert rel_error(logits, expected) < 1e-5


def test_the_benchmarks_twin_takes_ff_large_with_its_resized_grid():
    from minimlp.bench.torch_baseline import from_minimlp

    model = minimlp.create_model("ff_large", embed_dim=8, depth=1, num_classes=5, seed=0)
    twin = from_minimlp(model)  # a strict load: the 14×14 grid must fit
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    assert rel_error(model.forward(x)[0], expected) < 1e-5
