"""Real torch.save files, read by minimlp in a process where PyTorch cannot be imported.

A randomly initialised PyTorch twin of ff_tiny (the released checkpoints' names and
shapes) is saved as a bare state dict and as a DeiT training checkpoint (model, AdamW
state after a step, LR scheduler, epoch, EMA weights, grad scaler, argparse args).  A
subprocess that blocks ``import torch`` loads both and must produce PyTorch's logits to
float32 rounding.  The rest checks tensor layouts and dtypes as torch writes them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from minimlp.convert import main as convert
from minimlp.gradcheck import rel_error
from minimlp.io.files import CheckpointError
from minimlp.io.torchfile import load_pth, load_torch_weights
from minimlp.io.weights import load_weights

torch = pytest.importorskip("torch", reason="PyTorch is an optional test dependency")
from support.no_torch import BLOCK_TORCH  # noqa: E402
from support.torch_twin import TwinFFViT  # noqa: E402

pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parents[1]


def _perturb(module, seed, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # non-trivial LayerNorm weights and biases too
            p.add_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """ff_tiny's twin saved both ways, with PyTorch's logits for the same images."""
    d = tmp_path_factory.mktemp("pth")
    torch.manual_seed(0)
    twin = TwinFFViT()  # ff_tiny: 224 px, patch 16, dim 192, depth 12, 1000 classes
    _perturb(twin, 1)
    optimizer = torch.optim.AdamW(twin.parameters(), lr=5e-4, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=300)
    gen = torch.Generator().manual_seed(2)
    for p in twin.parameters():  # a real AdamW step (its state is what we read back); any gradient will do
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    optimizer.step()
    scheduler.step()
    ema = copy.deepcopy(twin)
    _perturb(ema, 3, scale=0.01)
    args = argparse.Namespace(
        model="linear_tiny",
        batch_size=128,
        lr=5e-4,
        drop=0.1,
        drop_path=0.1,
        smoothing=0.1,
        output_dir="output",
        data_path="/data/imagenet",
        resume="",
        model_ema=True,
        betas=None,
        eval=False,
        input_size=224,
    )
    checkpoint = {
        "model": twin.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": 299,
        "model_ema": ema.state_dict(),
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
        "args": args,
    }
    torch.save(twin.state_dict(), d / "linear-tiny.pth")
    torch.save(checkpoint, d / "checkpoint.pth")  # DeiT's name: entries live under "checkpoint/"
    x = np.random.default_rng(4).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        logits = twin(torch.from_numpy(x)).numpy()
        logits_ema = ema(torch.from_numpy(x)).numpy()
    np.save(d / "x.npy", x)
    return {"dir": d, "logits": logits, "logits_ema": logits_ema, "checkpoint": checkpoint}


_WITHOUT_TORCH = BLOCK_TORCH + textwrap.dedent("""
    import json
    from pathlib import Path

    try:
        import torch  # noqa: F401
        raise SystemExit("torch is importable; the test is meaningless")
    except ImportError:
        pass

    import numpy as np
    from minimlp.io.torchfile import load_pth
    from minimlp.io.weights import load_pretrained, model_from_checkpoint, preset_name

    d = Path(sys.argv[1])
    x = np.load(d / "x.npy")
    out, archs = {}, {}
    for name, file in [("bare", "linear-tiny.pth"), ("model", "checkpoint.pth")]:
        model, info = model_from_checkpoint(d / file)  # the architecture inferred from the shapes
        archs[name] = preset_name(model.config_dict())
        out[name] = model.forward(x)[0]
    assert load_pretrained(model, d / "checkpoint.pth", use_ema=True).ema
    out["ema"] = model.forward(x)[0]
    ck = load_pth(d / "checkpoint.pth")
    out["exp_avg_0"] = ck["optimizer"]["state"][0]["exp_avg"]
    out["exp_avg_sq_5"] = ck["optimizer"]["state"][5]["exp_avg_sq"]
    out["step_0"] = ck["optimizer"]["state"][0]["step"]
    plain = {"epoch": ck["epoch"], "args": vars(ck["args"]), "scaler": ck["scaler"], "archs": archs,
             "lr_scheduler": ck["lr_scheduler"], "param_groups": ck["optimizer"]["param_groups"],
             "torch_modules": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}
    np.savez(d / "out.npz", **out)
    (d / "out.json").write_text(json.dumps(plain))
""")


def test_both_files_load_without_torch_and_match_pytorch_logits(saved):
    d = saved["dir"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(d)], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    info = json.loads((d / "out.json").read_text())
    assert info["torch_modules"] == []
    assert info["archs"] == {"bare": "ff_tiny", "model": "ff_tiny"}
    with np.load(d / "out.npz") as out:
        # float32 end to end on both sides: agreement to float32 rounding, not bit-equality
        assert rel_error(out["bare"], saved["logits"]) < 1e-5
        assert rel_error(out["model"], saved["logits"]) < 1e-5
        assert rel_error(out["ema"], saved["logits_ema"]) < 1e-5
        assert rel_error(out["ema"], saved["logits"]) > 1e-3  # the EMA weights really are the other set
        state = saved["checkpoint"]["optimizer"]["state"]
        np.testing.assert_array_equal(out["exp_avg_0"], state[0]["exp_avg"].numpy())
        np.testing.assert_array_equal(out["exp_avg_sq_5"], state[5]["exp_avg_sq"].numpy())
        assert out["step_0"] == state[0]["step"].item()
    ck = saved["checkpoint"]
    assert info["epoch"] == 299 and info["args"] == vars(ck["args"]) and info["scaler"] == ck["scaler"]
    assert info["lr_scheduler"] == ck["lr_scheduler"]
    groups = json.loads(json.dumps(ck["optimizer"]["param_groups"]))  # tuples become lists, as in out.json
    assert info["param_groups"] == groups


def test_convert_round_trips_the_released_layout_bit_exactly(saved, tmp_path, capsys):
    d, model = saved["dir"], saved["checkpoint"]["model"]
    assert convert([str(d / "checkpoint.pth"), str(tmp_path / "w.safetensors")]) == 0
    assert "ff_tiny, 153 tensors, 7,676,332 values" in capsys.readouterr().out
    assert convert([str(tmp_path / "w.safetensors"), str(tmp_path / "w.npz")]) == 0
    assert convert([str(d / "checkpoint.pth"), str(tmp_path / "ema.npz"), "--ema"]) == 0
    for path in (tmp_path / "w.safetensors", tmp_path / "w.npz"):
        state = load_weights(path)
        assert list(state) == list(model)
        for name, t in model.items():
            assert state[name].tobytes() == t.numpy().tobytes(), name
    ema = load_weights(tmp_path / "ema.npz")
    for name, t in saved["checkpoint"]["model_ema"].items():
        assert ema[name].tobytes() == t.numpy().tobytes(), name


@pytest.mark.parametrize("patch", [16, 32])  # ff_tiny and ff_base; ff_large
def test_released_geometry_of_each_size_loads_and_matches_pytorch(tmp_path, patch):
    """The twin as the released file builds each size at 224 px (a 14×14 grid; for patch 32 it is
    resized to 7×7 with F.interpolate on every forward), narrowed to 16 features and 2 blocks."""
    from minimlp.io.weights import model_from_checkpoint

    torch.manual_seed(5)
    twin = TwinFFViT(patch_size=patch, embed_dim=16, depth=2, num_classes=10, pos_grid=14)
    _perturb(twin, 6)
    assert twin.pos_encoding.pos_embed.shape == (1, 16, 14, 14)
    torch.save({"model": twin.state_dict(), "epoch": 299}, tmp_path / "checkpoint.pth")
    model, _ = model_from_checkpoint(tmp_path / "checkpoint.pth")
    c = model.config
    assert (c.img_size, c.patch_size, c.pos_grid_size, c.num_tokens) == (224, patch, 14, 1 + (224 // patch) ** 2)
    x = np.random.default_rng(7).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    assert rel_error(model.forward(x)[0], expected) < 1e-5


def test_views_offsets_and_transposes_as_torch_writes_them(tmp_path):
    t = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    views = {
        "t": t,
        "transposed": t.T,
        "row": t[2],
        "column": t[:, 3],
        "block": t[1:, 2:],
        "strided": t[::2, ::3],
        "expanded": t[0:1].expand(3, 6),
        "scalar": t[4, 5],
    }
    torch.save(views, tmp_path / "views.pth")
    out = load_pth(tmp_path / "views.pth")
    for name, v in views.items():
        assert out[name].shape == tuple(v.shape) and out[name].flags.c_contiguous, name
        np.testing.assert_array_equal(out[name], v.numpy(), err_msg=name)


@pytest.mark.parametrize(
    "dtype",
    ["float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool", "complex64", "uint16"],
)
def test_storage_dtypes_as_torch_writes_them(tmp_path, dtype):
    t = torch.randn(3, 4, generator=torch.Generator().manual_seed(1)) * 50
    t = (t > 0) if dtype == "bool" else t.to(getattr(torch, dtype)) if dtype != "uint16" else t.abs().to(torch.uint16)
    torch.save({"x": t, "xT": t.T, "empty": t[:0]}, tmp_path / "t.pth")
    out = load_pth(tmp_path / "t.pth")
    expected = t.float().numpy() if dtype == "bfloat16" else t.numpy()
    assert out["x"].dtype == expected.dtype
    if dtype == "bfloat16":
        assert out["x"].tobytes() == expected.tobytes()  # widening is exact
    np.testing.assert_array_equal(out["x"], expected)
    np.testing.assert_array_equal(out["xT"], expected.T)
    assert out["empty"].shape == (0, 4)


def test_parameters_and_optimizer_step_tensors(tmp_path):
    p = torch.nn.Parameter(torch.arange(4.0))
    torch.save({"p": p, "zero_d": torch.tensor(3.0), "big": torch.tensor(2**40)}, tmp_path / "p.pth")
    out = load_pth(tmp_path / "p.pth")
    np.testing.assert_array_equal(out["p"], [0, 1, 2, 3])
    assert out["zero_d"].shape == () and out["zero_d"] == 3.0 and out["big"] == 2**40


def test_files_saved_without_crc_still_load(tmp_path):
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "nocrc.pth")
    finally:
        torch.serialization.set_crc32_options(previous)
    np.testing.assert_array_equal(load_torch_weights(tmp_path / "nocrc.pth")["w"], np.arange(6.0).reshape(2, 3))


def test_legacy_torch_file_gets_a_resave_message(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy.*not supported.*torch.save"):
        load_weights(tmp_path / "legacy.pth")


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_torch_saved_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.ones(2)}, "hook": _Evil(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth.*system.*not on the allow-list"):
        load_weights(tmp_path / "evil.pth")
    assert not marker.exists()


def test_a_whole_pickled_model_is_refused_with_its_class_named(tmp_path):
    torch.save(TwinFFViT(img_size=16, patch_size=8, embed_dim=4, depth=1, num_classes=2), tmp_path / "module.pth")
    with pytest.raises(CheckpointError, match="torch_twin.TwinFFViT, which is not on the allow-list"):
        load_weights(tmp_path / "module.pth")
