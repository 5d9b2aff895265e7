"""python -m minimlp.convert: .pth -> .npz <-> .safetensors, bit-exact, with clear refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.pth_craft import Build, Global, NewObj, state_dict, write_pth

import minimlp
from minimlp.convert import main
from minimlp.io.weights import load_weights, model_from_checkpoint, read_weights

SMALL = dict(img_size=16, patch_size=4, num_classes=5, embed_dim=8, depth=2, dtype="float64")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pth(tmp_path):
    """A crafted DeiT-style checkpoint of a small FF-ViT, with different EMA weights."""
    model = minimlp.create_model("ff_tiny", seed=0, **SMALL)
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    weights, storages = state_dict(model.state_dict())
    ema_obj, ema_storages = state_dict(ema, key_prefix="ema")
    args = Build(NewObj(Global("argparse", "Namespace"), ()), {"model": "linear_tiny"})
    write_pth(
        tmp_path / "checkpoint.pth",
        {"model": weights, "model_ema": ema_obj, "epoch": 9, "args": args},
        {**storages, **ema_storages},
        prefix="checkpoint",
    )
    return tmp_path / "checkpoint.pth", model.state_dict(), ema


def _assert_same(state, expected):
    assert list(state) == list(expected)
    for name, a in expected.items():
        assert state[name].tobytes() == np.asarray(a, np.float32).tobytes(), name  # the .pth stores float32


def test_pth_to_npz_to_safetensors_and_back(pth, tmp_path, capsys):
    path, weights, _ = pth
    assert main([str(path), str(tmp_path / "a.npz")]) == 0
    assert "(pth) -> " in capsys.readouterr().out
    assert main([str(tmp_path / "a.npz"), str(tmp_path / "b.safetensors")]) == 0
    assert main([str(tmp_path / "b.safetensors"), str(tmp_path / "c.npz")]) == 0
    for name in ("a.npz", "b.safetensors", "c.npz"):
        _assert_same(load_weights(tmp_path / name), weights)
    _, meta, _ = read_weights(tmp_path / "c.npz")
    assert meta["model"]["embed_dim"] == 8 and meta["model"]["arch"] == "ffvit"
    model, _ = model_from_checkpoint(tmp_path / "b.safetensors")
    assert (model.config.img_size, model.config.patch_size, model.config.depth) == (16, 4, 2)


def test_ema_weights(pth, tmp_path):
    path, _, ema = pth
    assert main([str(path), str(tmp_path / "ema.safetensors"), "--ema"]) == 0
    _assert_same(load_weights(tmp_path / "ema.safetensors"), ema)


def test_format_flag_overrides_the_extension(pth, tmp_path):
    path, weights, _ = pth
    assert main([str(path), str(tmp_path / "weights.bin"), "--format", "safetensors"]) == 0
    _, _, fmt = read_weights(tmp_path / "weights.bin")
    assert fmt == "safetensors"


def test_tensors_of_another_model_still_convert(tmp_path, capsys):
    obj, storages = state_dict({"conv.weight": np.ones((2, 2))})
    write_pth(tmp_path / "other.pth", obj, storages)
    assert main([str(tmp_path / "other.pth"), str(tmp_path / "other.npz")]) == 0
    assert "without a model config" in capsys.readouterr().err
    np.testing.assert_array_equal(load_weights(tmp_path / "other.npz")["conv.weight"], np.ones((2, 2)))


def test_refusals_are_clear_and_write_nothing(pth, tmp_path, capsys):
    path, _, _ = pth
    assert main([str(path), str(tmp_path / "out.pth")]) == 2
    assert "writing .pth is not supported" in capsys.readouterr().err
    (tmp_path / "noise.pth").write_bytes(b"\x00" * 64)
    assert main([str(tmp_path / "noise.pth"), str(tmp_path / "out.npz")]) == 2
    assert "not a weights file" in capsys.readouterr().err
    assert main([str(tmp_path / "absent.pth"), str(tmp_path / "out.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth", "noise.pth"]


def test_help_runs_as_a_module():
    run = subprocess.run(
        [sys.executable, "-m", "minimlp.convert", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert run.returncode == 0
    for fragment in ("IN", "OUT", "--ema", ".safetensors", "Writing .pth is not supported"):
        assert fragment in run.stdout


# --------------------------------------------------------------------------------------
# timm's ViT/DeiT and MLP-Mixer checkpoints: convert writes the config the shapes imply,
# so evaluate and predict rebuild the model from the converted file alone.
# --------------------------------------------------------------------------------------
TIMM = {  # timm's names; minimlp's comparison models use them (test_vit_and_mixer checks the names)
    "vit": (
        "deit_tiny",
        dict(img_size=16, patch_size=8, in_chans=3, num_classes=3, embed_dim=128, depth=2, num_heads=2),
    ),  # 64 features per head, as every timm ViT/DeiT
    "attention-only": (
        "attn_only_tiny",
        dict(img_size=16, patch_size=8, in_chans=3, num_classes=3, embed_dim=64, depth=1, num_heads=1),
    ),
    "mixer": ("mixer_s16", dict(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=8, depth=2)),
}


@pytest.mark.parametrize("family", list(TIMM))
def test_timm_checkpoints_convert_with_their_config_and_evaluate_and_predict_alone(tmp_path, capsys, family):
    from support.data_trees import WNIDS, build_tree

    from minimlp.data.transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
    from minimlp.evaluate import main as evaluate_main
    from minimlp.predict import load_image, predict
    from minimlp.predict import main as predict_main

    name, config = TIMM[family]
    reference = minimlp.create_model(name, seed=0, **config)
    rng = np.random.default_rng(1)
    for p in reference.params.values():  # the Mixer's head starts at zero: make every tensor non-trivial
        p += rng.standard_normal(p.shape).astype(p.dtype) * 0.1
    obj, storages = state_dict(reference.state_dict())
    write_pth(tmp_path / "timm.pth", {"model": obj}, storages, prefix="checkpoint")  # as timm's train.py saves

    assert main([str(tmp_path / "timm.pth"), str(tmp_path / "w.safetensors")]) == 0
    assert "without a model config" not in capsys.readouterr().err
    _, meta, _ = read_weights(tmp_path / "w.safetensors")
    assert model_from_checkpoint(tmp_path / "w.safetensors")[0].config == reference.config
    assert {k: v for k, v in meta["model"].items() if k != "arch"}.items() <= vars(reference.config).items()

    build_tree(tmp_path / "tree", train_per_class=0, val_per_class=2, awkward=False)
    assert (
        evaluate_main(
            ["--checkpoint", str(tmp_path / "w.safetensors"), "--data-dir", str(tmp_path / "tree"), "-j", "0"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"(safetensors, {reference.num_params():,} parameters, 3 classes)" in out and "top-1" in out

    images = sorted((tmp_path / "tree" / "val" / WNIDS[0]).iterdir())
    assert predict_main(["--checkpoint", str(tmp_path / "w.safetensors"), "--top", "3", *map(str, images)]) == 0
    lines = capsys.readouterr().out.splitlines()
    pixels = np.stack([load_image(p, 3, 16, DEFAULT_CROP_PCT) for p in images])
    probs = predict(reference, pixels, IMAGENET_MEAN, IMAGENET_STD)  # (2, 3)
    for i, path in enumerate(images):
        start = lines.index(str(path))
        shown = [float(line.split("%")[0]) for line in lines[start + 1 : start + 4]]
        np.testing.assert_allclose(shown, 100 * np.sort(probs[i])[::-1], atol=0.006)


def test_a_vit_whose_heads_the_shapes_do_not_tell_converts_without_a_config(tmp_path, capsys):
    vit = minimlp.create_model("vit_fmnist", depth=1)  # 112 features: not 64 per head
    obj, storages = state_dict(vit.state_dict())
    write_pth(tmp_path / "vit.pth", obj, storages)
    assert main([str(tmp_path / "vit.pth"), str(tmp_path / "vit.npz")]) == 0
    err = capsys.readouterr().err
    assert "cannot tell the number of attention heads" in err and "without a model config" in err
