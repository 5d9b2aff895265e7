"""minimlp's .npz checkpoints and the atomic writes every saved file goes through: the layout
and meta record, loading without pickle, clear errors for truncated or foreign files (through
both entry points: ``load_checkpoint`` for training checkpoints, ``load_weights`` for any
weights file), and writes that never damage the previous file, whether they fail or are killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minimlp
from minimlp.io.checkpoint import (
    FORMAT,
    encode_meta,
    load_checkpoint,
    make_meta,
    save_checkpoint,
    weights_meta,
)
from minimlp.io.files import CheckpointError, CheckpointNotFound, atomic_write
from minimlp.io.weights import load_weights, model_from_checkpoint, read_weights, save_weights

ROOT = Path(__file__).resolve().parents[1]


def small_model():
    return minimlp.create_model("ff_fmnist", embed_dim=8, depth=1, patch_size=7, seed=3)


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------
def test_round_trip_and_layout(tmp_path):
    model = small_model()
    meta = make_meta(
        model.config_dict(),
        epoch=2,
        step=40,
        classes=["a", "b"],
        rng={"model": {"x": 1}},
        args={"lr": 0.1},
        optimizer={"name": "sgd", "hyperparameters": {"lr": 0.1}, "step": 40},
        extra_field=[1, 2],
    )
    path = save_checkpoint(tmp_path / "c.npz", model.params, meta, {"momentum_buffer": np.ones(model.num_params())})
    with np.load(path, allow_pickle=False) as z:  # the documented layout, readable by NumPy alone
        assert "params/blocks.0.mlp2.fc1.weight" in z.files and "optimizer/momentum_buffer" in z.files
        assert z["meta"].dtype == np.uint8
        raw = json.loads(z["meta"].tobytes().decode("utf-8"))
    assert raw["format"] == FORMAT and raw["version"] == 1 and raw["extra_field"] == [1, 2]
    ckpt = load_checkpoint(path)
    assert ckpt.meta["epoch"] == 2 and ckpt.meta["step"] == 40 and ckpt.meta["classes"] == ["a", "b"]
    assert list(ckpt.params) == list(model.params), "checkpoint order is the model's order"
    assert list(ckpt.optimizer) == ["momentum_buffer"]
    restored, info = model_from_checkpoint(path)
    assert info.meta == ckpt.meta and info.format == "npz"
    for name, p in model.params.items():
        assert np.array_equal(restored.params[name], p) and restored.params[name].dtype == np.float32
    state, weights_only_meta, _ = read_weights(path)  # the weights entry point skips the optimizer state
    assert list(state) == list(model.params) and weights_only_meta == ckpt.meta


def test_weights_only_layout_is_params_and_json_meta(tmp_path):
    model = small_model()
    save_weights(tmp_path / "w.npz", model.state_dict(), {"model": model.config_dict()})
    with np.load(tmp_path / "w.npz", allow_pickle=False) as z:
        assert set(z.files) == {"meta"} | {f"params/{k}" for k in model.params}
        assert z["meta"].dtype == np.uint8
    with zipfile.ZipFile(tmp_path / "w.npz") as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    assert load_checkpoint(tmp_path / "w.npz").optimizer == {}  # the trainer's reader reads it too


def test_plain_npz_is_a_state_dict_for_weights_but_not_a_checkpoint(tmp_path):
    model = small_model()
    np.savez(tmp_path / "plain.npz", **model.state_dict())
    state, meta, _ = read_weights(tmp_path / "plain.npz")
    assert meta is None and set(state) == set(model.params)
    with pytest.raises(CheckpointError, match=r"plain\.npz: no 'meta' record"):
        load_checkpoint(tmp_path / "plain.npz")


# --------------------------------------------------------------------------------------
# Python objects are never stored, and never unpickled
# --------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_python_objects_are_neither_saved_nor_loaded(tmp_path):
    with pytest.raises(CheckpointError, match="object arrays"):
        save_checkpoint(tmp_path / "c.npz", {"w": np.array([{"a": 1}], dtype=object)}, make_meta({}))
    assert not (tmp_path / "c.npz").exists()
    with pytest.raises(CheckpointError, match="object arrays"):
        save_weights(tmp_path / "w.npz", {"w": np.array([None], dtype=object)})
    assert list(tmp_path.iterdir()) == []

    marker = tmp_path / "pwned"
    objects = np.empty(1, dtype=object)
    objects[0] = _Evil(marker)
    with open(tmp_path / "evil.npz", "wb") as f:  # np.savez pickles object arrays
        np.savez(f, meta=encode_meta(weights_meta()), **{"params/w": objects})
    assert b"system" in (tmp_path / "evil.npz").read_bytes()  # the payload is really in the file
    for load in (load_weights, load_checkpoint):
        with pytest.raises(CheckpointError, match="Python objects"):
            load(tmp_path / "evil.npz")
    assert not marker.exists()


# --------------------------------------------------------------------------------------
# Bad files: each refused with the file's name and the problem
# --------------------------------------------------------------------------------------
def test_truncated_and_foreign_files_name_the_file(tmp_path):
    model = small_model()
    good = save_checkpoint(tmp_path / "good.npz", model.params, make_meta(model.config_dict()))
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"cut\.npz: .*truncated or corrupt"):
            load_checkpoint(tmp_path / "cut.npz")
        with pytest.raises(CheckpointError, match=r"cut\.npz: .*truncated or corrupt"):
            load_weights(tmp_path / "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"\x80\x04K\x01." * 10)  # a pickle: must not be loaded
    with pytest.raises(CheckpointError, match=r"junk\.npz: not a zip"):
        load_checkpoint(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_checkpoint(tmp_path / "missing.npz")
    with pytest.raises(CheckpointNotFound, match=r"missing\.npz: no such"):  # both a CheckpointError ...
        load_weights(tmp_path / "missing.npz")  # ... and a FileNotFoundError, whichever way it is read


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


@pytest.mark.parametrize("load", [load_checkpoint, load_weights], ids=["load_checkpoint", "load_weights"])
def test_bad_meta_records_are_refused(tmp_path, load):
    model = small_model()
    meta = make_meta(model.config_dict())
    save_checkpoint(tmp_path / "v9.npz", model.params, {**meta, "version": 9})
    with pytest.raises(CheckpointError, match="version 9 is newer"):
        load(tmp_path / "v9.npz")
    np.savez(
        tmp_path / "new.npz",
        meta=encode_meta({"format": "minimlp-checkpoint", "version": 99}),
        **{"params/w": np.ones(2)},
    )
    with pytest.raises(CheckpointError, match="version 99.*newer minimlp"):
        load(tmp_path / "new.npz")
    save_checkpoint(tmp_path / "other.npz", model.params, {**meta, "format": "something-else"})
    with pytest.raises(CheckpointError, match="not a minimlp checkpoint.*'something-else'"):
        load(tmp_path / "other.npz")
    np.savez(tmp_path / "alien.npz", meta=encode_meta({"format": "other"}), w=np.ones(2))
    with pytest.raises(CheckpointError, match="does not describe a minimlp-checkpoint"):
        load(tmp_path / "alien.npz")
    np.savez(tmp_path / "junk.npz", meta=np.frombuffer(b"\xff{", np.uint8))
    with pytest.raises(CheckpointError, match="not UTF-8"):
        load(tmp_path / "junk.npz")
    np.savez(tmp_path / "text.npz", meta=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(CheckpointError, match=r"text\.npz: .*not valid JSON"):
        load(tmp_path / "text.npz")
    np.savez(tmp_path / "noparams.npz", meta=encode_meta(weights_meta()))
    with pytest.raises(CheckpointError, match=r"noparams\.npz: .*holds no parameters"):
        load(tmp_path / "noparams.npz")


def test_wrong_parameters_are_named_with_the_file(tmp_path):
    model = small_model()
    params = dict(model.state_dict())
    del params["head.bias"]
    params["head.weight"] = np.zeros((3, 3), np.float32)
    save_checkpoint(tmp_path / "c.npz", params, make_meta(model.config_dict()))
    with pytest.raises(CheckpointError, match=r"(?s)c\.npz: .*missing keys \(1\): head\.bias.*head\.weight"):
        model_from_checkpoint(tmp_path / "c.npz")


# --------------------------------------------------------------------------------------
# Atomic writes: a failed or killed write never replaces the previous file
# --------------------------------------------------------------------------------------
def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    with atomic_write(target) as f:
        f.write(b"old contents")

    with pytest.raises(RuntimeError, match="disk gone"), atomic_write(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"], "the temporary file is removed"
    with atomic_write(tmp_path / "new" / "dir" / "g.bin") as f:  # parents are created
        f.write(b"x")
    assert (tmp_path / "new" / "dir" / "g.bin").read_bytes() == b"x"


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from minimlp.io import safetensors
    from minimlp.io.weights import save_weights

    path, ready = sys.argv[1], Path(sys.argv[2])
    calls = []
    def hang_mid_write(write):
        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:  # part of the file is written: stop here until killed
                ready.write_text("writing")
                time.sleep(60)
            return write(*args, **kwargs)
        return wrapper
    safetensors._tensor_bytes = hang_mid_write(safetensors._tensor_bytes)
    np.lib.format.write_array = hang_mid_write(np.lib.format.write_array)
    save_weights(path, {"a": np.zeros(1 << 20, np.float32), "b": np.zeros(1 << 20, np.float32)})
""")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_write_killed_midway_keeps_the_previous_file(tmp_path, suffix):
    model = small_model()
    path, ready = tmp_path / f"w{suffix}", tmp_path / "ready"
    save_weights(path, model.state_dict())
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path), str(ready)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert child.poll() is None, "the writer exited before it was killed"
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.01)
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(f".{path.name}.tmp-")]
        assert temps and temps[0].stat().st_size > 0  # it was mid-write, into a temporary file
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    state = load_weights(path)
    np.testing.assert_array_equal(state["head.weight"], model.params["head.weight"])


# --------------------------------------------------------------------------------------
# Bounded: every .npz entry is checked against the zip directory before it is inflated
# --------------------------------------------------------------------------------------
def test_npy_headers_must_account_for_their_entry(tmp_path):
    from support.hostile_files import npy_header, npz_huge_claim

    with pytest.raises(
        CheckpointError,
        match=r"claim\.npz: entry 'w\.npy': its header describes float32 "
        r"\(1000000000000,\)",
    ):
        load_weights(npz_huge_claim(tmp_path / "claim.npz"))
    for shape, fragment in [((2**62, 2**62), "too large"), ((1,) * 40, "40 dimensions"), ((-1,), "negative")]:
        with zipfile.ZipFile(tmp_path / "shape.npz", "w") as zf:
            zf.writestr("w.npy", npy_header(shape) + b"\x00" * 4)
        with pytest.raises(CheckpointError, match=fragment):
            load_weights(tmp_path / "shape.npz")


def test_deflated_npz_loads_but_a_zip_bomb_is_refused_before_inflating(tmp_path):
    import tracemalloc

    from support.hostile_files import npz_bomb

    state = small_model().state_dict()
    np.savez_compressed(tmp_path / "small.npz", **state)
    for name, a in load_weights(tmp_path / "small.npz").items():
        np.testing.assert_array_equal(a, state[name])
    bomb = npz_bomb(tmp_path / "bomb.npz", megabytes=100)  # 100 KB of file, 100 MB of zeros
    tracemalloc.start()
    with pytest.raises(CheckpointError, match=r"bomb\.npz: the arrays would inflate to 104857728 bytes"):
        load_weights(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20


def test_fortran_order_and_big_endian_arrays_load_as_np_load_reads_them(tmp_path):
    arrays = {"f": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "b": np.arange(5, dtype=">i4")}
    np.savez(tmp_path / "layouts.npz", **arrays)
    loaded = load_weights(tmp_path / "layouts.npz")
    for name, a in arrays.items():
        assert loaded[name].dtype == a.dtype
        np.testing.assert_array_equal(loaded[name], a)


def test_duplicate_overlapping_and_exotic_zip_entries_are_refused(tmp_path):
    from support.hostile_files import npy_header, npz_overlapping_entries, read_zip, write_zip

    with zipfile.ZipFile(tmp_path / "dup.npz", "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
        zf.writestr("w.npy", npy_header((1,)) + b"\x00" * 4)
        zf.writestr("w.npy", npy_header((2,)) + b"\x00" * 8)
    with pytest.raises(CheckpointError, match="two entries named 'w.npy'"):
        load_weights(tmp_path / "dup.npz")
    with pytest.raises(CheckpointError, match="more bytes than the .*overlap"):
        load_weights(npz_overlapping_entries(tmp_path / "overlap.npz", copies=20, kilobytes=4))
    with zipfile.ZipFile(tmp_path / "lzma.npz", "w", zipfile.ZIP_LZMA) as zf:
        zf.writestr("w.npy", npy_header((1,)) + b"\x00" * 4)
    with pytest.raises(CheckpointError, match="compression method 14"):
        load_weights(tmp_path / "lzma.npz")
    z = read_zip((tmp_path / "lzma.npz").read_bytes())  # a size in the directory that the header does not match
    z.records[0][10:12] = b"\x00\x00"
    z.records[0][24:28] = (10**6).to_bytes(4, "little")
    (tmp_path / "size.npz").write_bytes(write_zip(z))
    with pytest.raises(CheckpointError, match=r"size\.npz"):
        load_weights(tmp_path / "size.npz")


@pytest.mark.parametrize(
    "text", [b"[" * 100_000 + b"]" * 100_000, b'{"format": ' + b"9" * 5000 + b"}"], ids=["nested", "long-integer"]
)
def test_meta_json_that_json_cannot_parse_safely_is_refused(tmp_path, text):
    np.savez(tmp_path / "meta.npz", meta=np.frombuffer(text, np.uint8), **{"params/w": np.ones(2)})
    with pytest.raises(CheckpointError, match=r"meta\.npz: the 'meta' record is not valid JSON"):
        load_weights(tmp_path / "meta.npz")
