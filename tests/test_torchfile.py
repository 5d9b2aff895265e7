"""The torch-free .pth reader on files written byte by byte (no PyTorch needed): tensor
layouts and dtypes, and hostile files that must be refused without running anything."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
from support.pth_craft import (
    ORDERED_DICT,
    Build,
    Call,
    Global,
    NewObj,
    PersId,
    Raw,
    dumps,
    state_dict,
    storage,
    tensor,
    write_pth,
)

from minimlp.io.files import CheckpointError
from minimlp.io.torchfile import LEGACY_MAGIC, load_pth, load_torch_weights, state_dict_from

REBUILD = Global("torch._utils", "_rebuild_tensor_v2")


def test_state_dict_with_metadata_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"cls_token": rng.standard_normal((1, 1, 4)), "head.weight": rng.standard_normal((3, 4))}
    obj, storages = state_dict(arrays)
    write_pth(tmp_path / "sd.pth", obj, storages)
    loaded = load_torch_weights(tmp_path / "sd.pth")
    assert list(loaded) == list(arrays)
    for name, a in arrays.items():
        assert loaded[name].dtype == np.float32 and loaded[name].flags.c_contiguous
        np.testing.assert_array_equal(loaded[name], a.astype(np.float32))


def test_views_sharing_one_storage_transposes_and_offsets(tmp_path):
    base = np.arange(12, dtype="<f4")  # one storage of 12 elements, seen five ways
    obj = {
        "matrix": tensor("0", "float32", 12, (3, 4)),
        "transposed": tensor("0", "float32", 12, (4, 3), stride=(1, 4)),
        "rows_1_2": tensor("0", "float32", 12, (2, 4), offset=4),
        "column_2": tensor("0", "float32", 12, (3,), stride=(4,), offset=2),
        "broadcast": tensor("0", "float32", 12, (2, 3), stride=(0, 1), offset=9),
        "empty": tensor("0", "float32", 12, (0, 5), offset=12),
        "scalar": tensor("0", "float32", 12, (), stride=(), offset=11),
    }
    write_pth(tmp_path / "views.pth", obj, {"0": base.tobytes()})
    out = load_pth(tmp_path / "views.pth")
    m = base.reshape(3, 4)
    np.testing.assert_array_equal(out["matrix"], m)
    np.testing.assert_array_equal(out["transposed"], m.T)
    assert out["transposed"].flags.c_contiguous  # a copy, not a strided view of file bytes
    np.testing.assert_array_equal(out["rows_1_2"], m[1:])
    np.testing.assert_array_equal(out["column_2"], m[:, 2])
    np.testing.assert_array_equal(out["broadcast"], np.broadcast_to(base[9:12], (2, 3)))
    assert out["empty"].shape == (0, 5)
    assert out["scalar"].shape == () and out["scalar"] == 11
    arrays = list(out.values())  # one array may own the storage's buffer; no two share memory
    assert all(a.flags.writeable for a in arrays)
    assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1 :])
    out["matrix"][0, 0] = 100
    assert out["transposed"][0, 0] == 0


@pytest.mark.parametrize("dtype", ["float16", "float64", "int64", "int32", "uint8", "bool"])
def test_storage_dtypes(tmp_path, dtype):
    values = (
        (np.arange(6) % 2 == 1)
        if dtype == "bool"
        else (np.arange(6) * 7 - 3).astype(dtype) * (0.5 if dtype.startswith("float") else 1)
    )
    values = values.astype(dtype)
    data = values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    write_pth(tmp_path / "t.pth", {"x": tensor("0", dtype, 6, (2, 3))}, {"0": data})
    out = load_pth(tmp_path / "t.pth")["x"]
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, values.reshape(2, 3))


def test_bfloat16_is_widened_to_float32(tmp_path):
    exact = np.array([1.0, -2.5, 3.140625, 2.0**100, 0.0, -0.0], dtype=np.float32)  # representable in bfloat16
    top_halves = (exact.view(np.uint32) >> 16).astype("<u2")
    write_pth(tmp_path / "bf.pth", {"x": tensor("0", "bfloat16", 6, (6,))}, {"0": top_halves.tobytes()})
    out = load_pth(tmp_path / "bf.pth")["x"]
    assert out.dtype == np.float32
    assert out.tobytes() == exact.tobytes()


def test_big_endian_byteorder_record_is_honoured(tmp_path):
    values = np.array([[1.5, -2.0], [3.25, 1e-3]])
    write_pth(
        tmp_path / "be.pth",
        {"x": tensor("0", "float64", 4, (2, 2), stride=(1, 2))},
        {"0": values.T.astype(">f8").tobytes()},
        byteorder="big",
    )
    out = load_pth(tmp_path / "be.pth")["x"]
    assert out.dtype == np.float64 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_old_style_long_integer_storage_keys_and_custom_folder(tmp_path):
    # torch 1.6-1.8 named storages by a memory address; the folder is the saved file's name.
    key = "94376543219872"
    write_pth(
        tmp_path / "old.pth",
        {"w": tensor(key, "float32", 2, (2,))},
        {key: np.array([4.0, 5.0], "<f4").tobytes()},
        prefix="linear-tiny-checkpoint",
        byteorder=None,
    )
    np.testing.assert_array_equal(load_pth(tmp_path / "old.pth")["w"], [4.0, 5.0])


def test_deit_checkpoint_values_and_namespace(tmp_path):
    weights, storages = state_dict({"head.bias": np.array([1.0, 2.0])})
    ema, _ = state_dict({"head.bias": np.array([1.0, 2.0])})
    obj = {
        "model": weights,
        "model_ema": ema,
        "epoch": 299,
        "scaler": {"scale": 65536.0, "_growth_tracker": 0},
        "lr_scheduler": {"base_values": [5e-4], "noise_range_t": None, "t_in_epochs": True},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "params": [0, 1]}]},
        "args": Build(
            NewObj(Global("argparse", "Namespace"), ()),
            {"model": "linear_tiny", "lr": 5e-4, "drop": 0.1, "big": 2**70, "neg": -5},
        ),
        "raw": Call(Global("_codecs", "encode"), ("\x00\xff", "latin1")),
        "device": Call(Global("torch", "device"), ("cuda", 0)),
    }
    write_pth(tmp_path / "ck.pth", obj, storages, prefix="checkpoint")
    out = load_pth(tmp_path / "ck.pth")
    assert out["epoch"] == 299 and out["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert vars(out["args"]) == {"model": "linear_tiny", "lr": 5e-4, "drop": 0.1, "big": 2**70, "neg": -5}
    assert out["raw"] == b"\x00\xff" and out["device"] == "cuda:0"
    np.testing.assert_array_equal(load_torch_weights(tmp_path / "ck.pth")["head.bias"], [1.0, 2.0])
    np.testing.assert_array_equal(load_torch_weights(tmp_path / "ck.pth", use_ema=True)["head.bias"], [1.0, 2.0])


def test_state_dict_from_picks_model_or_ema_and_strips_ddp_prefix():
    a, b = np.zeros(2, np.float32), np.ones(2, np.float32)
    assert state_dict_from({"model": {"w": a}, "model_ema": {"w": b}}, use_ema=True)["w"] is b
    assert state_dict_from({"model": {"w": a}})["w"] is a
    assert list(state_dict_from({"module.w": a, "module.v": b})) == ["w", "v"]
    with pytest.raises(CheckpointError, match="no EMA weights.*model, epoch"):
        state_dict_from({"model": {"w": a}, "epoch": 1}, use_ema=True)
    with pytest.raises(CheckpointError, match="not a state dict of named tensors: 'epoch' \\(int\\)"):
        state_dict_from({"w": a, "epoch": 3})
    with pytest.raises(CheckpointError, match="holds a list"):
        state_dict_from([a])


# --------------------------------------------------------------------------------------
# Hostile files: refused, and nothing in them runs.
# --------------------------------------------------------------------------------------
class _Evil:
    """Pickles (safely) to a call of ``func(*args)``, as a hostile file would."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _refused(path, *fragments):
    with pytest.raises(CheckpointError) as info:
        load_pth(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_pickle_calling_os_system_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": _Evil(os.system, f"touch {marker}")}, protocol=2)  # writing runs nothing
    assert b"system" in payload
    write_pth(tmp_path / "evil.pth", pickle_bytes=payload)
    message = _refused(tmp_path / "evil.pth", "system", "not on the allow-list", "nothing was called")
    assert os.name + ".system" in message or "os.system" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("subprocess", "Popen"),
        ("torch", "load"),
        ("torch.nn.modules.linear", "Linear"),
        ("numpy.core.multiarray", "_reconstruct"),
    ],
)
def test_globals_outside_the_allow_list_are_refused(tmp_path, module, name):
    marker = tmp_path / "pwned"
    write_pth(tmp_path / "evil.pth", {"x": Call(Global(module, name), (f"touch {marker}",))})
    _refused(tmp_path / "evil.pth", f"{module}.{name}", "not on the allow-list")
    assert not marker.exists()


def test_eval_through_stdlib_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    write_pth(tmp_path / "evil.pth", pickle_bytes=pickle.dumps(_Evil(eval, code), protocol=2))
    _refused(tmp_path / "evil.pth", "builtin", ".eval")  # protocol 2 writes __builtin__.eval
    assert not marker.exists()


def test_stack_global_protocol_4_is_checked_too(tmp_path):
    marker = tmp_path / "pwned"
    write_pth(tmp_path / "evil.pth", pickle_bytes=pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=4))
    _refused(tmp_path / "evil.pth", "system", "not on the allow-list")
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj, fragment",
    [
        # BUILD may not set attributes on an allowed function or class (it would poison it).
        (Build(REBUILD, {"__defaults__": (1,)}), "BUILD on a _Global"),
        (Build(NewObj(Global("argparse", "Namespace"), ()), ({}, {"x": 1})), "only a dict is allowed"),
        (Build([], {"x": 1}), "BUILD on a list"),
        (Build(NewObj(Global("argparse", "Namespace"), ()), {"__class__": 1}), "plain names"),
        # Items go only into lists and dicts.
        (Raw(b"(t" + b"K\x01" + b"a"), "APPEND into a tuple"),
        (Raw(b"]K\x01K\x02s"), "SETITEM on a list"),
        (Raw(b"}]K\x01s"), "unhashable dict key"),
        # Only allowed callables are called, only allowed classes instantiated.
        (Call(storage("0", "float32", 1), ()), "not an allowed callable"),
        (NewObj(REBUILD, ()), "not an allowed class"),
        (Call(ORDERED_DICT, ([("a", 1)],)), "only rebuilt from no arguments"),
        (Call(Global("_codecs", "encode"), ("x", "rot13")), "not a bytes literal"),
        # Persistent ids are storages only.
        (PersId(("module", "os", "x", "y")), "is not ('storage'"),
        (PersId(("storage", REBUILD, "0", "cpu", 1)), "not a storage type"),
        (PersId(("storage", Global("torch", "FloatStorage"), 0, "cpu", 1)), "malformed storage id"),
        # Opcodes outside the small binary set (INST calls a class by name; PERSID is text).
        (Raw(b"(ios\nsystem\n"), "opcode b'i'"),
        (Raw(b"Pfoo\n"), "opcode b'P'"),
        (Raw(b"h\x05"), "memo entry 5"),
        (Raw(b"t"), "no MARK"),
        (Raw(b"X\xff\x00\x00\x00ab"), "truncated data.pkl"),
    ],
)
def test_crafted_pickles_are_refused(tmp_path, obj, fragment):
    write_pth(tmp_path / "evil.pth", obj, {"0": b"\x00" * 4})
    _refused(tmp_path / "evil.pth", fragment)


def test_build_cannot_poison_the_rebuild_function(tmp_path):
    write_pth(tmp_path / "evil.pth", Build(REBUILD, {"__defaults__": (1,)}))
    _refused(tmp_path / "evil.pth")
    good, storages = state_dict({"w": np.ones(3)})  # a later, honest file still loads as before
    write_pth(tmp_path / "good.pth", good, storages)
    np.testing.assert_array_equal(load_torch_weights(tmp_path / "good.pth")["w"], np.ones(3))


@pytest.mark.parametrize(
    "size, stride, offset, fragment",
    [
        ((5,), (1,), 0, "reads past the end"),  # one element too many
        ((2, 2), (3, 1), 0, "reads past the end"),  # stride walks off the end
        ((4,), (1,), 1, "reads past the end"),  # offset pushes it off the end
        ((1,), (1,), 4, "reads past the end"),  # offset alone
        ((2,), (2**62,), 0, "reads past the end"),  # would wrap a 64-bit index
        ((2**20, 2**20), (0, 0), 0, "far more than"),  # a memory bomb from one small storage
        ((2**40, 2**40), (1, 1), 0, "too large for any array"),
        ((1,) * 33, (1,) * 33, 0, "at most 32"),
        ((-1,), (1,), 0, "negative"),
        ((2,), (-1,), 1, "negative"),
        ((1,), (1,), -1, "negative"),
        ((2, 2), (1,), 0, "different lengths"),
        ((2.0,), (1,), 0, "tuple of integers"),
        ((True,), (1,), 0, "tuple of integers"),
    ],
)
def test_tensors_reading_outside_their_storage_are_refused(tmp_path, size, stride, offset, fragment):
    write_pth(
        tmp_path / "oob.pth",
        {"x": tensor("0", "float32", 4, size, stride, offset)},
        {"0": np.arange(4, dtype="<f4").tobytes()},
    )
    _refused(tmp_path / "oob.pth", fragment)


def test_storage_size_must_match_its_record(tmp_path):
    write_pth(tmp_path / "big.pth", {"x": tensor("0", "float32", 1000, (1000,))}, {"0": b"\x00" * 16})
    _refused(tmp_path / "big.pth", "should hold 1000 float32 elements (4000 bytes)", "has 16 bytes")
    write_pth(tmp_path / "missing.pth", {"x": tensor("7", "float32", 1, (1,))}, {})
    _refused(tmp_path / "missing.pth", "archive/data/7 is missing")
    write_pth(
        tmp_path / "twice.pth", [tensor("0", "float32", 4, (4,)), tensor("0", "float64", 2, (2,))], {"0": b"\x00" * 16}
    )
    _refused(tmp_path / "twice.pth", "referenced as 4 x float32 and as 2 x float64")


def test_truncated_zip_is_refused(tmp_path):
    obj, storages = state_dict({"w": np.ones((64, 64))})
    write_pth(tmp_path / "full.pth", obj, storages)
    data = (tmp_path / "full.pth").read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 40):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        _refused(tmp_path / "cut.pth", "truncated or corrupt")


def test_corrupted_storage_bytes_fail_the_crc(tmp_path):
    obj, storages = state_dict({"w": np.ones((64, 64))})
    write_pth(tmp_path / "ok.pth", obj, storages)
    data = bytearray((tmp_path / "ok.pth").read_bytes())
    data[data.index(np.ones(4, "<f4").tobytes()) + 100] ^= 0xFF
    (tmp_path / "bad.pth").write_bytes(bytes(data))
    _refused(tmp_path / "bad.pth", "cannot be read", "CRC")


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    _refused(tmp_path / "random.pth", "not a PyTorch checkpoint", "PK\\x03\\x04")
    (tmp_path / "empty.pth").write_bytes(b"")
    _refused(tmp_path / "empty.pth", "not a PyTorch checkpoint")
    with zipfile.ZipFile(tmp_path / "nopkl.pth", "w") as zf:
        zf.writestr("archive/readme.txt", "hello")
    _refused(tmp_path / "nopkl.pth", "no data.pkl")
    with zipfile.ZipFile(tmp_path / "flat.pth", "w") as zf:
        zf.writestr("data.pkl", dumps({}))
    _refused(tmp_path / "flat.pth", "not in a folder")
    with zipfile.ZipFile(tmp_path / "script.pth", "w") as zf:
        zf.writestr("model/code/__torch__.py", "")
        zf.writestr("model/constants.pkl", dumps(()))
    _refused(tmp_path / "script.pth", "TorchScript")
    with pytest.raises(CheckpointError, match="no such file"):
        load_pth(tmp_path / "absent.pth")


def test_compressed_entries_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "zipped.pth", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", dumps({"x": tensor("0", "float32", 4, (4,))}))
        zf.writestr("archive/data/0", b"\x00" * 16)
    _refused(tmp_path / "zipped.pth", "is compressed")


def test_legacy_formats_get_a_resave_message(tmp_path):
    stream = b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, {"protocol_version": 1001}))
    (tmp_path / "legacy.pth").write_bytes(stream)
    _refused(tmp_path / "legacy.pth", "legacy (pre-1.6, non-zip) format is not supported", "torch.save(")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("pickle")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\x80\x02N."))
    (tmp_path / "tar.pth").write_bytes(buf.getvalue())
    _refused(tmp_path / "tar.pth", "legacy")


def test_entries_without_crc_are_read_raw(tmp_path):
    # torch.save with CRC computation off writes CRC 0; the bytes are still stored as is.
    obj, storages = state_dict({"w": np.arange(6.0)})
    write_pth(tmp_path / "crc.pth", obj, storages)
    data = bytearray((tmp_path / "crc.pth").read_bytes())
    with zipfile.ZipFile(tmp_path / "crc.pth") as zf:
        infos = zf.infolist()
    for info in infos:  # zero the CRC in the local and the central header
        for sig, at in ((b"PK\x03\x04", 14), (b"PK\x01\x02", 16)):
            pos = -1
            while (pos := data.find(sig, pos + 1)) >= 0:
                name_at = 30 if sig == b"PK\x03\x04" else 46
                n = int.from_bytes(data[pos + (26 if sig == b"PK\x03\x04" else 28) :][:2], "little")
                if data[pos + name_at : pos + name_at + n] == info.filename.encode():
                    data[pos + at : pos + at + 4] = b"\x00" * 4
    (tmp_path / "crc.pth").write_bytes(bytes(data))
    np.testing.assert_array_equal(load_torch_weights(tmp_path / "crc.pth")["w"], np.arange(6.0))


# --------------------------------------------------------------------------------------
# Bounded: what a small pickle can make the reader build (support/hostile_files.py has the
# large attacks, read in a capped child process by test_hostile_files.py)
# --------------------------------------------------------------------------------------
def _nested(depth: int) -> bytes:
    return b"K\x00" + b"\x85" * depth  # ((((0,),),)...), depth levels


@pytest.mark.parametrize(
    "pickle_bytes, fragment",
    [
        (b"\x80\x02}" + _nested(101) + b"Ns.", "nested more than 100 levels"),  # a dict key too deep to hash safely
        (b"\x80\x02]" + b"](" * 101 + b"e" * 101 + b"a.", "nested more than 100"),
        (b"\x80\x02}K\x00" + b"2\x86" * 21 + b"Ns.", "counting shared parts"),  # T = (T, T): 2**21 leaves
        (b"\x80\x02]q\x00h\x00a.", "inside itself"),  # a list holding itself
        (b"\x80\x02]q\x00]h\x00\x86q\x010h\x00K\x01a.", "changed after it was put inside"),  # ([L], ...) then L grows
        (b"\x80\x02}q\x00h\x00\x85\x94" + b"0h\x00K\x01K\x02s.", "changed after it was put inside"),
    ],
    ids=["deep-key", "deep-list", "shared-tuple", "self-cycle", "list-grows-after", "dict-grows-after"],
)
def test_nesting_sharing_and_cycles_are_bounded(tmp_path, pickle_bytes, fragment):
    write_pth(tmp_path / "nest.pth", pickle_bytes=pickle_bytes)
    _refused(tmp_path / "nest.pth", fragment)


def test_honest_nesting_and_sharing_still_load(tmp_path):
    deep = {"a": 1}
    for _ in range(60):
        deep = {"next": deep, "tags": [1, 2]}
    shared = ["x"] * 10
    args = Build(NewObj(Global("argparse", "Namespace"), ()), {"layers": [shared, shared, shared], "cfg": deep})
    weights, storages = state_dict({"w": np.ones(3)})
    write_pth(tmp_path / "ok.pth", {"model": weights, "args": args, "deep": deep}, storages)
    out = load_pth(tmp_path / "ok.pth")
    assert out["args"].layers == [shared] * 3 and out["deep"]["next"]["next"]["tags"] == [1, 2]
    np.testing.assert_array_equal(out["model"]["w"], np.ones(3))


def test_objects_are_bounded_by_the_pickle_size(tmp_path, monkeypatch):
    from minimlp.io import torchfile

    monkeypatch.setattr(torchfile, "max_objects", lambda pickle_bytes: 1000)  # as if the pickle were small
    write_pth(tmp_path / "dicts.pth", pickle_bytes=b"\x80\x02" + b"}" * 999 + b".")  # fits: only a STOP error
    _refused(tmp_path / "dicts.pth", "STOP with 999 objects")
    write_pth(tmp_path / "more.pth", pickle_bytes=b"\x80\x02" + b"}" * 1001 + b".")
    _refused(tmp_path / "more.pth", "more than 1000 objects")
    write_pth(tmp_path / "memo.pth", pickle_bytes=b"\x80\x02N" + b"\x94" * 1001 + b".")  # memo entries count too
    _refused(tmp_path / "memo.pth", "more than 1000 objects")


def test_messages_quote_bounded_reprs(tmp_path):
    laughs = b"]" + b"q\x010](h\x01h\x01e" * 16  # a list of the previous one twice: a 260 KB repr
    write_pth(
        tmp_path / "sizes.pth",
        {"x": Call(REBUILD, (storage("0", "float32", 4), 0, Raw(laughs), (1, 1), False, Call(ORDERED_DICT, ())))},
        {"0": b"\x00" * 16},
    )
    message = _refused(tmp_path / "sizes.pth", "must be a tuple of integers, got [[[[")
    assert len(message) < 400
    write_pth(tmp_path / "key.pth", {(("k" * 10_000,) * 50): "v"})  # a hashable but unreadably long key
    with pytest.raises(CheckpointError, match="not a state dict") as info:
        load_torch_weights(tmp_path / "key.pth")
    assert len(str(info.value)) < 600


def test_duplicate_and_overlapping_zip_entries_are_refused(tmp_path):
    from support.hostile_files import pth_duplicate_entries, pth_overlapping_entries

    _refused(pth_duplicate_entries(tmp_path / "dup.pth"), "two entries named 'archive/data.pkl'")
    _refused(pth_overlapping_entries(tmp_path / "overlap.pth", copies=20, kilobytes=4), "more bytes than", "overlap")


def test_zip_directory_claiming_more_bytes_than_the_file_is_refused(tmp_path):
    from support.hostile_files import read_zip, record_name, write_zip

    obj, storages = state_dict({"w": np.ones(4)})
    write_pth(tmp_path / "ok.pth", obj, storages)
    z = read_zip((tmp_path / "ok.pth").read_bytes())
    for r in z.records:
        if record_name(r).endswith("data.pkl"):
            r[20:28] = (60 << 20).to_bytes(4, "little") * 2  # compressed and uncompressed sizes: 60 MB
    (tmp_path / "claim.pth").write_bytes(write_zip(z))
    _refused(tmp_path / "claim.pth", "claims 62914560 bytes, more than the")


def test_brief_reads_a_bounded_part_of_any_value():
    import types

    from minimlp.io.files import brief

    laughs: list = []
    for _ in range(60):
        laughs = [laughs, laughs]  # a repr of 2**60 brackets
    values = [
        laughs,
        (1,) * 10**6,
        {"a": 2**100_000, "b": "x" * 10**6},
        types.SimpleNamespace(x=laughs),
        np.zeros((10**4, 10**4), np.uint8),
    ]
    for value in values:
        assert len(brief(value)) <= 84
    assert brief((1, "a", None)) == "(1, 'a', None)" and brief({"k": [1.5]}) == "{'k': [1.5]}"
    assert brief(2**100_000) == "<a 100001-bit integer>" and brief(np.zeros((2, 3))) == "<array (2, 3) float64>"
