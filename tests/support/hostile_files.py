"""Hostile weights files, crafted byte by byte: small files that would make a careless
reader crash, stall or fill memory.  Each maker writes one file and returns its path;
``ATTACKS`` names them with the entry point that reads them.  Writing any of these runs
nothing and allocates little: the bombs are streamed, not built in memory.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minimlp.io.checkpoint import FORMAT, VERSION
from support.pth_craft import Call, Global, dumps, state_dict, tensor, write_pth

# --------------------------------------------------------------------------------------
# The zip central directory, as records that can be edited and written back
# --------------------------------------------------------------------------------------
CENTRAL, END = b"PK\x01\x02", b"PK\x05\x06"


class Zip(NamedTuple):
    body: bytes  # local headers and data, everything before the central directory
    records: list[bytearray]  # one central directory record each (46 fixed bytes, name, extra, comment)


def read_zip(data: bytes) -> Zip:
    end = data.rindex(END)
    count, size, offset = struct.unpack("<HII", data[end + 10 : end + 20])
    records, pos = [], offset
    for _ in range(count):
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[pos + 28 : pos + 34])
        n = 46 + name_len + extra_len + comment_len
        records.append(bytearray(data[pos : pos + n]))
        pos += n
    return Zip(data[:offset], records)


def write_zip(z: Zip) -> bytes:
    directory = b"".join(z.records)
    n = len(z.records)
    return z.body + directory + END + struct.pack("<HHHHIIH", 0, 0, n, n, len(directory), len(z.body), 0)


def record_name(record: bytes) -> str:
    (name_len,) = struct.unpack("<H", record[28:30])
    return record[46 : 46 + name_len].decode("utf-8", "replace")


def renamed(record: bytes, name: str) -> bytearray:
    """The same directory record (same data) under another name."""
    (name_len,) = struct.unpack("<H", record[28:30])
    new = bytearray(record[:46]) + name.encode() + record[46 + name_len :]
    new[28:30] = struct.pack("<H", len(name.encode()))
    return new


# --------------------------------------------------------------------------------------
# .pth
# --------------------------------------------------------------------------------------
def _pth_with_pickle(path: Path, pickle_bytes: bytes, storages: dict[str, bytes] | None = None) -> Path:
    write_pth(path, pickle_bytes=pickle_bytes, storages=storages)
    return path


def pth_deep_tuple_key(path: Path, depth: int = 1_000_000) -> Path:
    """{((((0,),),)...): None}, a million levels: hashing it recurses past the C stack."""
    return _pth_with_pickle(path, b"\x80\x02}K\x00" + b"\x85" * depth + b"Ns.")


def pth_shared_tuple_key(path: Path, levels: int = 28) -> Path:
    """T = (T, T) nested ``levels`` times, under a kilobyte: hashing it takes 2**levels steps."""
    return _pth_with_pickle(path, b"\x80\x02}K\x00" + b"2\x86" * levels + b"Ns.")


def pth_laughs_to_reduce(path: Path, levels: int = 30) -> Path:
    """A list holding the previous list twice, ``levels`` deep, handed to _codecs.encode:
    its repr (for an error message) doubles in length with every level."""
    laughs = b"]"
    for _ in range(levels):  # the list on top goes to memo 1, then a new list gets it twice
        laughs += b"q\x010](h\x01h\x01e"
    codecs = b"c_codecs\nencode\n"
    return _pth_with_pickle(path, b"\x80\x02" + codecs + laughs + b"\x85R.")


def pth_huge_size_tuple(path: Path, dims: int = 45_000) -> Path:
    """A tensor whose size and stride are ``dims`` integers of 2**62 each (just under 1 MB)."""
    big = 2**62
    obj = Call(
        Global("torch._utils", "_rebuild_tensor_v2"),
        (
            tensor("0", "float32", 4, (1,)).args[0],
            0,
            (big,) * dims,
            (big,) * dims,
            False,
            Call(Global("collections", "OrderedDict"), ()),
        ),
    )
    return _pth_with_pickle(path, dumps({"x": obj}), {"0": b"\x00" * 16})


def pth_empty_dicts(path: Path, megabytes: int = 20) -> Path:
    """A pickle of nothing but EMPTY_DICT opcodes: one 64-byte dict per byte of file."""
    return _pth_with_pickle(path, b"\x80\x02" + b"}" * (megabytes << 20) + b".")


def pth_duplicate_entries(path: Path) -> Path:
    """Two data.pkl entries: the first a state dict, the second (which a reader that takes
    the last one would use) a different one."""
    obj, storages = state_dict({"w": np.ones(4)})
    write_pth(path, obj, storages)
    other = dumps({"w": "not the tensor the first entry holds"})
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_STORED) as zf, _quiet_duplicates():
        zf.writestr("archive/data.pkl", other)
    return path


def pth_overlapping_entries(path: Path, copies: int = 2000, kilobytes: int = 256) -> Path:
    """``copies`` directory entries that all point at one 256 KB storage: read one by one,
    a small file becomes gigabytes."""
    n = kilobytes * 256  # float32 elements
    pickle = dumps({f"t{i}": tensor(str(i), "float32", n, (n,)) for i in range(copies)})
    write_pth(path, pickle_bytes=pickle, storages={"0": b"\x00" * (4 * n)})
    z = read_zip(path.read_bytes())
    storage0 = next(r for r in z.records if record_name(r) == "archive/data/0")
    z.records.extend(renamed(storage0, f"archive/data/{i}") for i in range(1, copies))
    path.write_bytes(write_zip(z))
    return path


class _quiet_duplicates:
    """zipfile warns when it writes a duplicate name; here that is the point."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


# --------------------------------------------------------------------------------------
# .safetensors
# --------------------------------------------------------------------------------------
def write_safetensors_raw(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def st_deep_json(path: Path, depth: int = 100_000) -> Path:
    """Metadata nested a hundred thousand lists deep."""
    return write_safetensors_raw(path, b'{"__metadata__": ' + b"[" * depth + b"]" * depth + b"}")


def st_huge_shape(path: Path) -> Path:
    """A tensor of shape [0, 2**62, 2**62]: zero bytes, but no array can have that shape."""
    return write_safetensors_raw(path, {"x": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}})


def st_many_dims(path: Path) -> Path:
    """A one-element tensor of 100 dimensions (NumPy allows 64)."""
    return write_safetensors_raw(path, {"x": {"dtype": "F32", "shape": [1] * 100, "data_offsets": [0, 4]}}, b"\x00" * 4)


def _ff_state() -> dict[str, np.ndarray]:
    import minimlp

    return minimlp.create_model("ff_tiny", img_size=16, patch_size=4, num_classes=5, embed_dim=8, depth=2).state_dict()


def st_scalar_cls_token(path: Path) -> Path:
    """A feed-forward ViT's weights without a config, whose class token is a 0-d scalar."""
    from minimlp.io.safetensors import save_safetensors

    state = _ff_state()
    state["cls_token"] = np.float32(0.5).reshape(())
    save_safetensors(path, state)
    return path


def st_flat_patch_embed(path: Path) -> Path:
    """A feed-forward ViT's weights without a config, whose patch embedding is 1-D."""
    from minimlp.io.safetensors import save_safetensors

    state = _ff_state()
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].reshape(-1)
    save_safetensors(path, state)
    return path


# --------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------
def npy_header(shape: tuple, dtype: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def npz_huge_claim(path: Path) -> Path:
    """An .npy entry whose header claims 10**12 float32 elements, with 16 bytes of data."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("w.npy", npy_header((10**12,)) + b"\x00" * 16)
    return path


def npz_bomb(path: Path, megabytes: int = 300) -> Path:
    """A deflated .npz of one float32 array of zeros: ~1 KB of file per MB of array."""
    n = (megabytes << 20) // 4
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("w.npy", "w", force_zip64=True) as f:
        f.write(npy_header((n,)))
        chunk = bytes(1 << 20)
        for _ in range(megabytes):
            f.write(chunk)
    return path


def npz_overlapping_entries(path: Path, copies: int = 2000, kilobytes: int = 256) -> Path:
    """``copies`` directory entries for one stored 256 KB array."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a0.npy", npy_header((kilobytes * 256,)) + bytes(kilobytes * 1024))
    z = read_zip(path.read_bytes())
    z.records.extend(renamed(z.records[0], f"a{i}.npy") for i in range(1, copies))
    path.write_bytes(write_zip(z))
    return path


def npz_enormous_config(path: Path) -> Path:
    """A 1 KB minimlp weights file whose stored config describes a 20,000-wide FF-ViT."""
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "arch": "ffvit",
            "img_size": 224,
            "patch_size": 16,
            "in_chans": 3,
            "num_classes": 1000,
            "embed_dim": 20_000,
            "depth": 12,
        },
    }
    np.savez(
        path,
        **{
            "params/cls_token": np.zeros((1, 1, 8), np.float32),
            "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
        },
    )
    return path


class Attack(NamedTuple):
    make: object  # (path) -> path
    suffix: str
    reader: str  # the entry point that meets it: load_weights or model_from_checkpoint
    fragment: str  # what the refusal says


ATTACKS = {
    "pth: million-deep tuple as a dict key (1 MB)": Attack(pth_deep_tuple_key, ".pth", "load_weights", "nested more"),
    "pth: T=(T,T) 28 levels as a dict key": Attack(pth_shared_tuple_key, ".pth", "load_weights", "elements"),
    "pth: T=(T,T) 64 levels as a dict key": Attack(
        lambda p: pth_shared_tuple_key(p, 64), ".pth", "load_weights", "elements"
    ),
    "pth: billion-laughs list passed to REDUCE": Attack(pth_laughs_to_reduce, ".pth", "load_weights", "elements"),
    "pth: tensor size of 45,000 ints of 2**62": Attack(pth_huge_size_tuple, ".pth", "load_weights", "dimensions"),
    "pth: 20 MB pickle of empty dicts": Attack(pth_empty_dicts, ".pth", "load_weights", "objects"),
    "pth: duplicate data.pkl entries": Attack(pth_duplicate_entries, ".pth", "load_weights", "two entries"),
    "pth: 2000 zip entries sharing one 256 KB storage": Attack(
        pth_overlapping_entries, ".pth", "load_weights", "more bytes than"
    ),
    "safetensors: JSON nested 100,000 deep": Attack(st_deep_json, ".safetensors", "load_weights", "nested"),
    "safetensors: shape [0, 2**62, 2**62]": Attack(st_huge_shape, ".safetensors", "load_weights", "too large"),
    "safetensors: 100 dimensions": Attack(st_many_dims, ".safetensors", "load_weights", "dimensions"),
    "safetensors: 0-d cls_token (no config)": Attack(
        st_scalar_cls_token, ".safetensors", "model_from_checkpoint", "cls_token"
    ),
    "safetensors: 1-D patch embedding (no config)": Attack(
        st_flat_patch_embed, ".safetensors", "model_from_checkpoint", "patch_embed.proj.weight"
    ),
    "npz: header claiming 10**12 elements": Attack(npz_huge_claim, ".npz", "load_weights", "bytes"),
    "npz: 300 KB deflated, 300 MB inflated": Attack(npz_bomb, ".npz", "load_weights", "inflate"),
    "npz: 1 KB file, config of a 20,000-wide model": Attack(
        npz_enormous_config, ".npz", "model_from_checkpoint", "model config"
    ),
}
