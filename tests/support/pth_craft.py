"""Write PyTorch-format ``.pth`` files without PyTorch, byte by byte, for tests.

A small pickle emitter (protocol 2 opcodes) plus the zip layout torch.save uses.  It can
write what torch.save writes (tensors as ``_rebuild_tensor_v2`` calls on persistent
storages) and also what torch.save never would: calls to ``os.system``, BUILD on a
function, tensors that read past their storage.  Writing a pickle executes nothing;
these files are only ever read by minimlp's own interpreter.
"""

from __future__ import annotations

import struct
import zipfile
from typing import Any, NamedTuple

import numpy as np


class Global(NamedTuple):
    module: str
    name: str


class Call(NamedTuple):  # GLOBAL + args tuple + REDUCE
    func: Any
    args: tuple


class NewObj(NamedTuple):  # GLOBAL + args tuple + NEWOBJ
    cls: Any
    args: tuple


class Build(NamedTuple):  # obj + state + BUILD
    obj: Any
    state: Any


class PersId(NamedTuple):  # pid + BINPERSID
    pid: Any


class ODict(NamedTuple):  # collections.OrderedDict() + SETITEMS, as pickle writes one
    items: dict


class Raw(NamedTuple):  # opcodes written verbatim
    data: bytes


def _emit(obj: Any, out: bytearray) -> None:
    if isinstance(obj, Raw):
        out += obj.data
    elif isinstance(obj, Global):
        out += b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n"
    elif isinstance(obj, Call):
        _emit(obj.func, out)
        _emit(tuple(obj.args), out)
        out += b"R"
    elif isinstance(obj, NewObj):
        _emit(obj.cls, out)
        _emit(tuple(obj.args), out)
        out += b"\x81"
    elif isinstance(obj, Build):
        _emit(obj.obj, out)
        _emit(obj.state, out)
        out += b"b"
    elif isinstance(obj, ODict):
        _emit(Call(ORDERED_DICT, ()), out)
        out += b"("
        for key, value in obj.items.items():
            _emit(key, out)
            _emit(value, out)
        out += b"u"
    elif isinstance(obj, PersId):
        _emit(obj.pid, out)
        out += b"Q"
    elif obj is None:
        out += b"N"
    elif obj is True or obj is False:
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out += b"K" + bytes([obj])
        elif -(2**31) <= obj < 2**31:
            out += b"J" + struct.pack("<i", obj)
        else:
            n = (obj.bit_length() + 8) // 8
            out += b"\x8a" + bytes([n]) + obj.to_bytes(n, "little", signed=True)
    elif isinstance(obj, float):
        out += b"G" + struct.pack(">d", obj)
    elif isinstance(obj, str):
        data = obj.encode()
        out += b"X" + struct.pack("<I", len(data)) + data
    elif isinstance(obj, tuple):
        out += b"("
        for item in obj:
            _emit(item, out)
        out += b"t"
    elif isinstance(obj, list):
        out += b"]("
        for item in obj:
            _emit(item, out)
        out += b"e"
    elif isinstance(obj, dict):
        out += b"}("
        for key, value in obj.items():
            _emit(key, out)
            _emit(value, out)
        out += b"u"
    else:
        raise TypeError(f"cannot emit {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    out = bytearray(b"\x80\x02")
    _emit(obj, out)
    return bytes(out + b".")


ORDERED_DICT = Global("collections", "OrderedDict")
STORAGE_TYPES = {
    "float32": "FloatStorage",
    "float64": "DoubleStorage",
    "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
}


def storage(key: str, dtype: str, numel: int) -> PersId:
    return PersId(("storage", Global("torch", STORAGE_TYPES[dtype]), key, "cpu", numel))


def tensor(key: str, dtype: str, numel: int, size: tuple, stride: tuple | None = None, offset: int = 0) -> Call:
    """A ``_rebuild_tensor_v2`` call, as torch pickles a tensor (contiguous strides by default)."""
    if stride is None:
        stride = tuple(int(np.prod(size[i + 1 :])) for i in range(len(size)))
    return Call(
        Global("torch._utils", "_rebuild_tensor_v2"),
        (storage(key, dtype, numel), offset, tuple(size), tuple(stride), False, Call(ORDERED_DICT, ())),
    )


def state_dict(arrays: dict[str, np.ndarray], key_prefix: str = "") -> tuple[Any, dict[str, bytes]]:
    """An OrderedDict of contiguous float32 tensors, one storage each: (pickle object, storages)."""
    items, storages = {}, {}
    for i, (name, a) in enumerate(arrays.items()):
        a = np.ascontiguousarray(a, dtype="<f4")
        key = f"{key_prefix}{i}"
        storages[key] = a.tobytes()
        items[name] = tensor(key, "float32", a.size, a.shape)
    return Build(ODict(items), {"_metadata": ODict({"": {"version": 1}})}), storages


def write_pth(
    path,
    obj: Any = None,
    storages: dict[str, bytes] | None = None,
    prefix: str = "archive",
    byteorder: str | None = "little",
    pickle_bytes: bytes | None = None,
) -> None:
    """Write the zip layout of torch.save: <prefix>/data.pkl, byteorder, data/<key>, version."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", pickle_bytes if pickle_bytes is not None else dumps(obj))
        if byteorder is not None:
            zf.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in (storages or {}).items():
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", "3\n")
