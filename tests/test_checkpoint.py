"""Checkpoints: the .npz layout and meta record, loading without pickle, clear errors for
truncated or foreign files, and atomic writes that never damage the previous file."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import minimlp
from minimlp.io.atomic import atomic_write
from minimlp.io.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    make_meta,
    model_from_checkpoint,
    save_checkpoint,
)


def small_model():
    return minimlp.create_model("ff_fmnist", embed_dim=8, depth=1, patch_size=7, seed=3)


def test_round_trip_and_layout(tmp_path):
    model = small_model()
    meta = make_meta(model.config_dict(), epoch=2, step=40, classes=["a", "b"], rng={"model": {"x": 1}},
                     args={"lr": 0.1}, optimizer={"name": "sgd", "hyperparameters": {"lr": 0.1}, "step": 40},
                     extra_field=[1, 2])
    path = save_checkpoint(tmp_path / "c.npz", model.params, meta, {"momentum_buffer": np.ones(model.num_params())})
    with np.load(path, allow_pickle=False) as z:  # the documented layout, readable by NumPy alone
        assert "params/blocks.0.mlp2.fc1.weight" in z.files and "optimizer/momentum_buffer" in z.files
        assert z["meta"].dtype == np.uint8
        raw = json.loads(z["meta"].tobytes().decode("utf-8"))
    assert raw["format"] == FORMAT and raw["version"] == 1 and raw["extra_field"] == [1, 2]
    ckpt = load_checkpoint(path)
    assert ckpt.meta["epoch"] == 2 and ckpt.meta["step"] == 40 and ckpt.meta["classes"] == ["a", "b"]
    assert list(ckpt.params) == list(model.params), "checkpoint order is the model's order"
    restored = model_from_checkpoint(ckpt)
    for name, p in model.params.items():
        assert np.array_equal(restored.params[name], p) and restored.params[name].dtype == np.float32


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="object arrays"):
        save_checkpoint(tmp_path / "c.npz", {"w": np.array([{"a": 1}], dtype=object)}, make_meta({}))
    assert not (tmp_path / "c.npz").exists()


def test_truncated_and_foreign_files_name_the_file(tmp_path):
    model = small_model()
    good = save_checkpoint(tmp_path / "good.npz", model.params, make_meta(model.config_dict()))
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"cut\.npz: .*truncated or corrupt"):
            load_checkpoint(tmp_path / "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"\x80\x04K\x01." * 10)  # a pickle: must not be loaded
    with pytest.raises(CheckpointError, match=r"junk\.npz: not a zip"):
        load_checkpoint(tmp_path / "junk.npz")
    np.savez(tmp_path / "plain.npz", w=np.ones(3))
    with pytest.raises(CheckpointError, match=r"plain\.npz: no 'meta' record"):
        load_checkpoint(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_checkpoint(tmp_path / "missing.npz")


def test_corrupt_member_is_detected(tmp_path):
    model = small_model()
    path = save_checkpoint(tmp_path / "c.npz", model.params, make_meta(model.config_dict()))
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("params/head.weight.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 100] ^= 0xFF  # flip a byte inside one array (stored uncompressed)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"c\.npz: cannot read"):
        load_checkpoint(path)


def test_newer_version_and_wrong_format(tmp_path):
    model = small_model()
    meta = make_meta(model.config_dict())
    save_checkpoint(tmp_path / "v9.npz", model.params, {**meta, "version": 9})
    with pytest.raises(CheckpointError, match="version 9 is newer"):
        load_checkpoint(tmp_path / "v9.npz")
    save_checkpoint(tmp_path / "other.npz", model.params, {**meta, "format": "something-else"})
    with pytest.raises(CheckpointError, match="not a minimlp checkpoint"):
        load_checkpoint(tmp_path / "other.npz")


def test_wrong_parameters_are_named(tmp_path):
    model = small_model()
    params = dict(model.state_dict())
    del params["head.bias"]
    params["head.weight"] = np.zeros((3, 3), np.float32)
    save_checkpoint(tmp_path / "c.npz", params, make_meta(model.config_dict()))
    with pytest.raises(CheckpointError, match=r"(?s)c\.npz: .*missing keys \(1\): head\.bias.*head\.weight"):
        model_from_checkpoint(tmp_path / "c.npz")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda f: f.write(b"old contents"))

    def fails(f):
        f.write(b"half of the new")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        atomic_write(target, fails)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"], "the temporary file is removed"
