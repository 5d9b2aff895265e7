"""The one entry point for weights: format detection, strict loading into a model, a new head
for fine-tuning, and building a model from a file.  (The .npz layout, its bad-file errors and
atomic writes are tested in test_checkpoint.py.)"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from support.pth_craft import state_dict, write_pth

import minimlp
from minimlp.io.files import CheckpointError
from minimlp.io.weights import (
    detect_format,
    infer_config,
    load_pretrained,
    load_weights,
    model_from_checkpoint,
    preset_name,
    read_weights,
    save_weights,
)
from minimlp.models.registry import model_config

SMALL = dict(img_size=16, patch_size=4, num_classes=5, embed_dim=8, depth=2)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model():
    m = minimlp.create_model("ff_tiny", seed=1, **SMALL)
    rng = np.random.default_rng(0)
    for p in m.params.values():  # non-trivial values everywhere (zero biases hide mistakes)
        p += rng.standard_normal(p.shape).astype(p.dtype) * 0.1
    return m


def _images(n=3):
    return np.random.default_rng(5).standard_normal((n, 3, 16, 16)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_weights_round_trip_bit_exactly_with_their_config(tmp_path, dtype, suffix):
    m = minimlp.create_model("ff_tiny", seed=3, dtype=dtype, **SMALL)
    path = tmp_path / f"w{suffix}"
    save_weights(path, m.state_dict(), {"model": m.config_dict(), "classes": ["a", "b", "c", "d", "e"]})
    state, meta, fmt = read_weights(path)
    assert fmt == suffix[1:] == detect_format(path)
    assert list(state) == list(m.params)
    for name, p in m.state_dict().items():
        assert state[name].dtype == p.dtype and state[name].tobytes() == p.tobytes(), name
    assert meta["format"] == "minimlp-checkpoint" and meta["version"] == 1
    assert meta["model"] == m.config_dict() and meta["classes"][4] == "e"


def test_format_is_detected_from_content_not_name(tmp_path, model):
    obj, storages = state_dict(model.state_dict())
    write_pth(tmp_path / "weights.bin", obj, storages)
    save_weights(tmp_path / "a.safetensors", model.state_dict())
    os.replace(tmp_path / "a.safetensors", tmp_path / "a.npz")
    assert detect_format(tmp_path / "weights.bin") == "pth"
    assert detect_format(tmp_path / "a.npz") == "safetensors"
    (tmp_path / "noise").write_bytes(np.random.default_rng(0).bytes(100))
    with pytest.raises(CheckpointError, match="not a weights file minimlp can read"):
        detect_format(tmp_path / "noise")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("notes.txt", "hi")
    with pytest.raises(CheckpointError, match="neither a PyTorch checkpoint.*notes.txt"):
        detect_format(tmp_path / "other.zip")
    (tmp_path / "cut").write_bytes((tmp_path / "weights.bin").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt zip"):
        load_weights(tmp_path / "cut")


def test_writing_pth_is_refused_with_the_reason(tmp_path, model):
    for name in ("w.pth", "w.pt"):
        with pytest.raises(CheckpointError, match="writing .pth is not supported.*pickle.*safetensors"):
            save_weights(tmp_path / name, model.state_dict())
    with pytest.raises(CheckpointError, match="use .npz or .safetensors"):
        save_weights(tmp_path / "w.weights", model.state_dict())
    assert not list(tmp_path.iterdir())


def test_ema_is_only_in_pth_training_checkpoints(tmp_path, model):
    save_weights(tmp_path / "w.npz", model.state_dict())
    with pytest.raises(CheckpointError, match="EMA weights are only found"):
        load_weights(tmp_path / "w.npz", use_ema=True)


# --------------------------------------------------------------------------------------
# Into a model
# --------------------------------------------------------------------------------------
def test_load_pretrained_is_strict_and_names_every_problem(tmp_path, model):
    state = model.state_dict()
    del state["blocks.1.norm2.bias"]
    state["blocks.9.mlp1.fc1.weight"] = np.zeros(3, np.float32)
    state["norm.weight"] = np.zeros(7, np.float32)
    save_weights(tmp_path / "bad.safetensors", state)
    fresh = minimlp.create_model("ff_tiny", **SMALL)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(fresh, tmp_path / "bad.safetensors")
    message = str(info.value)
    for fragment in (
        "bad.safetensors",
        "missing keys (1): blocks.1.norm2.bias",
        "unexpected keys (1): blocks.9.mlp1.fc1.weight",
        "norm.weight: checkpoint (7,) vs model (8,)",
    ):
        assert fragment in message, message


def test_load_pretrained_copies_every_tensor_and_casts(tmp_path, model):
    save_weights(tmp_path / "w.npz", model.state_dict())
    twin = minimlp.create_model("ff_tiny", seed=9, dtype="float64", **SMALL)
    info = load_pretrained(twin, tmp_path / "w.npz")
    assert info.reset == [] and info.num_tensors == len(model.params) and info.format == "npz"
    for name, p in model.params.items():
        assert twin.params[name].dtype == np.float64
        np.testing.assert_array_equal(twin.params[name], p.astype(np.float64))
    assert f"loaded {len(model.params)} tensors from" in str(info)


def test_fine_tuning_starts_a_new_head_only_when_asked(tmp_path, model):
    save_weights(tmp_path / "w.npz", model.state_dict())
    three = minimlp.create_model("ff_tiny", seed=2, **{**SMALL, "num_classes": 3})
    with pytest.raises(CheckpointError) as info:
        load_pretrained(three, tmp_path / "w.npz")
    assert "head.weight: checkpoint (5, 8) vs model (3, 8)" in str(info.value)
    assert "pass num_classes=3 (--num-classes 3)" in str(info.value)

    with pytest.raises(ValueError, match="model has 3 classes"):
        load_pretrained(three, tmp_path / "w.npz", num_classes=4)

    result = load_pretrained(three, tmp_path / "w.npz", num_classes=3, seed=4)
    assert result.reset == ["head.weight", "head.bias"] and "new head.weight, head.bias" in str(result)
    for name, p in model.params.items():
        if not name.startswith("head."):
            np.testing.assert_array_equal(three.params[name], p)
    w, b = three.params["head.weight"], three.params["head.bias"]
    assert w.shape == (3, 8) and 0.005 < w.std() < 0.05  # the model's own initialiser: trunc normal, std 0.02
    again = minimlp.create_model("ff_tiny", seed=7, **{**SMALL, "num_classes": 3})
    load_pretrained(again, tmp_path / "w.npz", num_classes=3, seed=4)
    np.testing.assert_array_equal(again.params["head.weight"], w)  # the new head depends on seed only
    np.testing.assert_array_equal(again.params["head.bias"], b)

    same = minimlp.create_model("ff_tiny", **SMALL)  # asking for the classes it already has: a plain load
    assert load_pretrained(same, tmp_path / "w.npz", num_classes=5).reset == []
    np.testing.assert_array_equal(same.params["head.weight"], model.params["head.weight"])


def test_load_pretrained_accepts_a_state_dict(model):
    twin = minimlp.create_model("ff_tiny", seed=8, **SMALL)
    assert load_pretrained(twin, model.state_dict()).format == "state dict"
    np.testing.assert_array_equal(twin.forward(_images())[0], model.forward(_images())[0])


@pytest.mark.parametrize("suffix", [".pth", ".npz", ".safetensors"])
def test_model_from_checkpoint_rebuilds_the_model(tmp_path, model, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":  # no config inside: inferred from the shapes
        obj, storages = state_dict(model.state_dict())
        write_pth(path, obj, storages)
    else:
        save_weights(path, model.state_dict(), {"model": model.config_dict()})
    rebuilt, info = model_from_checkpoint(path)
    assert rebuilt.config == model.config and info.format == suffix[1:]
    np.testing.assert_array_equal(rebuilt.forward(_images())[0], model.forward(_images())[0])

    tuned, info = model_from_checkpoint(path, num_classes=2, dtype="float64")
    assert tuned.config.num_classes == 2 and tuned.dtype == np.float64 and info.reset == ["head.weight", "head.bias"]


def test_infer_config_from_shapes_and_preset_names(model):
    config = infer_config(model.state_dict())
    assert config == {"arch": "ffvit", **{k: getattr(model.config, k) for k in config if k != "arch"}}
    assert preset_name(config) is None
    for name in ("ff_tiny", "ff_base", "ff_large"):
        assert preset_name(vars(model_config(name, num_classes=10))) == name
    state = model.state_dict()
    del state["cls_token"]
    with pytest.raises(CheckpointError, match="no 'cls_token'.*feed-forward ViT"):
        infer_config(state, "x.pth")
    state = model.state_dict()
    state["blocks.0.norm2.weight"] = np.ones(9)
    with pytest.raises(CheckpointError, match="mixes 9 tokens, which are not a square grid of patches and a class"):
        infer_config(state)
    state = model.state_dict()
    state["pos_encoding.pos_embed"] = np.ones((1, 8, 4, 5))
    with pytest.raises(CheckpointError, match="position grid pos_encoding.pos_embed is 4x5; minimlp builds square"):
        infer_config(state)


def test_patch_mlp_dim_and_mlp_ratio_are_inferred():
    m = minimlp.create_model(
        "ff_tiny", img_size=8, patch_size=4, embed_dim=6, depth=1, num_classes=2, mlp_ratio=2.0, patch_mlp_dim=7
    )
    config = infer_config(m.state_dict())
    assert config["mlp_ratio"] == 2.0 and config["patch_mlp_dim"] == 7


# --------------------------------------------------------------------------------------
# A config is checked against the file's tensors before any model is allocated
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, shape",
    [
        ("cls_token", ()),
        ("patch_embed.proj.weight", (8 * 3 * 4 * 4,)),
        ("pos_encoding.pos_embed", (1, 8, 0, 0)),
        ("head.weight", (5,)),
    ],
)
def test_infer_config_refuses_tensors_of_the_wrong_rank(model, key, shape):
    state = model.state_dict()
    state[key] = np.zeros(shape, np.float32)
    with pytest.raises(CheckpointError, match=rf"x\.pth: {key} has shape"):
        infer_config(state, "x.pth")


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("embed_dim", 20_000, "must lie in"),
        ("depth", 100, "more blocks than the file has tensors"),
        ("depth", "ten", "must be int"),
        ("img_size", 16.0, "must be int"),
        ("num_classes", True, "must be int"),
        ("patch_size", -4, "must lie in"),
        ("mlp_ratio", 1e12, "must lie in"),
        ("patch_mlp_dim", [1], "must be None or int"),
        ("dtype", "float32" * 100, "must be str"),
        ("dtype", "complex128", "does not describe a model"),
        ("drop_rate", 1.5, "does not describe a model"),
        ("img_size", 18, "does not describe a model"),  # not a multiple of the patch size
        ("embed_dim", 16, r"shape mismatches \(\d+\): cls_token: checkpoint \(1, 1, 8\) vs model \(1, 1, 16\)"),
        ("depth", 1, r"unexpected keys \(12\): blocks\.1\."),
        ("arch", "transformer-xl", "unknown architecture"),
    ],
)
def test_stored_config_is_checked_against_the_tensors(tmp_path, model, field, value, fragment):
    save_weights(tmp_path / "w.npz", model.state_dict(), {"model": {**model.config_dict(), field: value}})
    with pytest.raises(CheckpointError, match=rf"w\.npz: .*{fragment}") as info:
        model_from_checkpoint(tmp_path / "w.npz")
    assert "\n" not in str(info.value)


def test_huge_stored_config_is_refused_before_allocating(tmp_path, model):
    import tracemalloc

    small = {"model": {**model.config_dict(), "embed_dim": 1000, "depth": 2}}  # 3,000 values, a 30M-value model
    save_weights(tmp_path / "w.npz", model.state_dict(), small)
    tracemalloc.start()
    with pytest.raises(CheckpointError, match="shape mismatches"):
        model_from_checkpoint(tmp_path / "w.npz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20


def test_no_config_or_a_bad_one_for_a_training_checkpoint(tmp_path, model):
    from minimlp.io.weights import checked_config

    state = model.state_dict()
    assert checked_config(model.config_dict(), state, "w.npz") == model.config_dict()
    with pytest.raises(CheckpointError, match="w.npz: stores no model config"):
        checked_config(None, state, "w.npz")
    with pytest.raises(CheckpointError, match="w.npz: stores a list as its model config"):
        checked_config([1, 2], state, "w.npz")


# --------------------------------------------------------------------------------------
# The released model file's layout, written out from that file (not from minimlp's model):
# a 14×14 position grid for every model, a patch feed-forward over 1 + (224 / P)² tokens.
# --------------------------------------------------------------------------------------
def released_shapes(patch: int, dim: int, depth: int, classes: int = 1000) -> dict[str, tuple[int, ...]]:
    T = 1 + (224 // patch) ** 2
    shapes = {
        "cls_token": (1, 1, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "pos_encoding.pos_embed": (1, dim, 14, 14),
        "pos_encoding.cls_pos_embed": (1, 1, dim),
    }
    for i in range(depth):
        b = f"blocks.{i}"
        shapes.update(
            {
                f"{b}.mlp1.fc1.weight": (4 * dim, dim),
                f"{b}.mlp1.fc1.bias": (4 * dim,),
                f"{b}.mlp1.fc2.weight": (dim, 4 * dim),
                f"{b}.mlp1.fc2.bias": (dim,),
                f"{b}.norm1.weight": (dim,),
                f"{b}.norm1.bias": (dim,),
                f"{b}.mlp2.fc1.weight": (4 * T, T),
                f"{b}.mlp2.fc1.bias": (4 * T,),
                f"{b}.mlp2.fc2.weight": (T, 4 * T),
                f"{b}.mlp2.fc2.bias": (T,),
                f"{b}.norm2.weight": (T,),
                f"{b}.norm2.bias": (T,),
            }
        )
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (classes, dim), "head.bias": (classes,)})
    return shapes


RELEASED = {
    "ff_tiny": (16, 192, 12, 7_676_332),
    "ff_base": (16, 768, 12, 61_943_020),
    "ff_large": (32, 1024, 24, 206_363_576),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_the_released_layout_of_every_size_is_the_preset(name, monkeypatch):
    """Full-size state dicts of zero-stride arrays (nothing allocated): the shapes name the preset,
    and the preset declares exactly these tensors, in this order."""
    patch, dim, depth, count = RELEASED[name]
    shapes = released_shapes(patch, dim, depth)
    assert sum(int(np.prod(s)) for s in shapes.values()) == count
    state = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
    config = infer_config(state, "released.pth")
    assert preset_name(config) == name
    assert config["img_size"] == 224 and config["patch_size"] == patch
    monkeypatch.setattr(minimlp.models.Model, "_build", lambda self, seed: None)
    declared = {spec.name: spec.shape for spec in minimlp.models.model_from_config(config).store.specs}
    assert list(declared.items()) == list(shapes.items())
    assert {spec.name: spec.shape for spec in minimlp.create_model(name).store.specs} == declared


def _released_large(tmp_path, seed=0):
    """A .pth in ff_large's released geometry (224 px, patch 32, 14×14 grid, 50 tokens), made narrow and shallow."""
    rng = np.random.default_rng(seed)
    shapes = released_shapes(32, 8, 2, classes=6)
    weights = {k: rng.standard_normal(s).astype(np.float32) * 0.2 for k, s in shapes.items()}
    obj, storages = state_dict(weights)
    write_pth(tmp_path / "linear-large.pth", {"model": obj}, storages, prefix="checkpoint")
    return tmp_path / "linear-large.pth", weights


def test_a_released_ff_large_file_loads_and_resizes_its_grid(tmp_path):
    path, weights = _released_large(tmp_path)
    model, info = model_from_checkpoint(path, dtype="float64")
    c = model.config
    assert (c.img_size, c.patch_size, c.grid, c.pos_grid, c.num_classes) == (224, 32, 7, 14, 6)
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224))
    logits, _ = model.forward(x)
    # The same computation written out: the 14×14 grid averaged 2×2 (bilinear, align_corners=False,
    # at half the size), flattened row-major after the class token's position.
    grid = weights["pos_encoding.pos_embed"].astype(np.float64).reshape(1, 8, 7, 2, 7, 2).mean(axis=(3, 5))
    state7 = {**weights, "pos_encoding.pos_embed": grid}
    plain = minimlp.create_model("ff_large", embed_dim=8, depth=2, num_classes=6, pos_grid=7, dtype="float64")
    plain.load_state_dict(state7)
    np.testing.assert_allclose(logits, plain.forward(x)[0], rtol=1e-12, atol=1e-12)


def test_ff_large_files_with_a_7x7_grid_still_load(tmp_path):
    """A file whose stored ff_large config has no pos_grid (its grid is the 7×7 patch grid) rebuilds as it was."""
    old = minimlp.create_model("ff_large", embed_dim=8, depth=2, num_classes=6, pos_grid=7, seed=3)
    config = old.config_dict()
    del config["pos_grid"]
    save_weights(tmp_path / "old.npz", old.state_dict(), {"model": config})
    rebuilt, _ = model_from_checkpoint(tmp_path / "old.npz")
    assert rebuilt.params["pos_encoding.pos_embed"].shape == (1, 8, 7, 7) and rebuilt.config.pos_grid is None
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_array_equal(rebuilt.forward(x)[0], old.forward(x)[0])
    assert preset_name(config) is None  # not the released layout


def test_a_7x7_grid_into_the_released_ff_large_layout_says_why(tmp_path):
    old = minimlp.create_model("ff_large", embed_dim=8, depth=2, num_classes=6, pos_grid=7)
    save_weights(tmp_path / "old.npz", old.state_dict())
    model = minimlp.create_model("ff_large", embed_dim=8, depth=2, num_classes=6)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(model, tmp_path / "old.npz")
    msg = str(err.value)
    assert "pos_encoding.pos_embed: checkpoint (1, 8, 7, 7) vs model (1, 8, 14, 14)" in msg
    assert (
        "the checkpoint keeps a 7x7 position grid and the model a 14x14 one (resized to its 7x7 patches "
        "on every forward): build the model with pos_grid=7"
    ) in msg
    load_pretrained(
        minimlp.create_model("ff_large", embed_dim=8, depth=2, num_classes=6, pos_grid=7), tmp_path / "old.npz"
    )


@pytest.mark.parametrize("name", ["deit_tiny", "deit_small", "deit_base", "attn_only_tiny", "mixer_s16", "mixer_b16"])
def test_timm_layouts_are_told_from_their_shapes(name, monkeypatch):
    """The comparison presets at full size (zero-stride arrays, nothing allocated): the shapes give the
    family, the config (a ViT's heads from 64 features per head) and the preset's name back."""
    monkeypatch.setattr(minimlp.models.Model, "_build", lambda self, seed: None)
    model = minimlp.create_model(name)
    state = {s.name: np.broadcast_to(np.float32(0), s.shape) for s in model.store.specs}
    config = infer_config(state, f"{name}.pth")
    assert preset_name(config) == name
    assert minimlp.models.model_from_config(config).config == model.config
