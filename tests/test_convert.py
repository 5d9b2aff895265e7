"""python -m minimlp.convert: .pth -> .npz <-> .safetensors, bit-exact, with clear refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pth_craft import Build, Global, NewObj, state_dict, write_pth

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
    write_pth(tmp_path / "checkpoint.pth", {"model": weights, "model_ema": ema_obj, "epoch": 9, "args": args},
              {**storages, **ema_storages}, prefix="checkpoint")
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
    run = subprocess.run([sys.executable, "-m", "minimlp.convert", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert run.returncode == 0
    for fragment in ("IN", "OUT", "--ema", ".safetensors", "Writing .pth is not supported"):
        assert fragment in run.stdout
