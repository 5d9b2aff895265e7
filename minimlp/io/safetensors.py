"""Read and write ``.safetensors`` files with NumPy, ``json`` and ``struct`` only.

The format, as the reference implementation writes and checks it::

    8 bytes   N, the header length, unsigned little-endian
    N bytes   UTF-8 JSON: {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                           ..., "__metadata__": {"key": "string value"}}
              padded with spaces so that the data starts on an 8-byte boundary
    the rest  every tensor's bytes, little-endian, C order, back to back

Offsets count from the start of the data.  A file is valid only if the tensors cover the
data exactly (no gaps, no overlaps), each one's byte count is its shape's element count
times its dtype's size, and nothing follows the last tensor.  There is no code in such a
file, which is why the wider ecosystem uses it to share weights.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from minimlp.io.files import CheckpointError, atomic_write, brief, check_shape, read_head

MAX_HEADER_BYTES = 100_000_000  # the reference reader's limit
METADATA_KEY = "__metadata__"

# safetensors dtype name -> NumPy dtype as stored (BF16 is read as uint16, then widened).
DTYPES = {
    "BOOL": "?",
    "U8": "u1",
    "I8": "i1",
    "I16": "<i2",
    "U16": "<u2",
    "F16": "<f2",
    "BF16": "<u2",
    "I32": "<i4",
    "U32": "<u4",
    "F32": "<f4",
    "F64": "<f8",
    "I64": "<i8",
    "U64": "<u8",
    "C64": "<c8",
}
_NAMES = {np.dtype(v).newbyteorder("<").str: k for k, v in DTYPES.items() if k != "BF16"}


def dtype_name(dtype: Any) -> str:
    """The safetensors name of a NumPy dtype (``float32`` -> ``"F32"``)."""
    dtype = np.dtype(dtype)
    name = _NAMES.get(dtype.newbyteorder("<").str)  # big-endian arrays are swapped when written
    if name is None:
        raise CheckpointError(
            f"dtype {dtype} cannot be stored in a safetensors file "
            f"(supported: {', '.join(str(np.dtype(DTYPES[n])) for n in _NAMES.values())})"
        )
    return name


def save_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` (name -> array) atomically; ``metadata`` is a str -> str map.

    Tensors are laid out largest element first (as the reference writer does), so every
    tensor starts at a multiple of its element size and can be memory-mapped in place.
    """
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise CheckpointError("safetensors metadata must map strings to strings")
        header[METADATA_KEY] = dict(metadata)
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or name == METADATA_KEY:
            raise CheckpointError(f"invalid tensor name {name!r}")
        array = np.asarray(value)
        dtype_name(array.dtype)  # refuse unsupported dtypes before anything is written
        arrays[name] = array
    order = sorted(arrays, key=lambda n: -arrays[n].dtype.itemsize)  # stable: keeps the given order within a size
    offset = 0
    for name in order:
        array = arrays[name]
        header[name] = {
            "dtype": dtype_name(array.dtype),
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in order:
            f.write(_tensor_bytes(arrays[name]))


def _tensor_bytes(array: np.ndarray) -> memoryview:
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)  # a no-op on little-endian hosts
    return memoryview(np.ascontiguousarray(little).reshape(-1).view(np.uint8))  # C order, no extra copy


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str], int]:
    """Parse and validate the header: (tensor entries by name, metadata, data start offset)."""
    head = read_head(path, 8)
    size = os.path.getsize(path)
    if len(head) < 8:
        raise CheckpointError(f"{path}: {len(head)} bytes, too short for a safetensors file")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path}: safetensors header length {n} is larger than the {MAX_HEADER_BYTES} "
            "bytes allowed (a corrupt or crafted file)"
        )
    if 8 + n > size:
        raise CheckpointError(
            f"{path}: safetensors header length {n} runs past the end of the {size}-byte file (truncated?)"
        )
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except ValueError as e:  # not UTF-8, not JSON, a duplicate key, an integer of more than 4300 digits
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON: {brief(str(e), 200)}") from None
    except RecursionError:  # the decoder recurses once per level of nesting
        raise CheckpointError(
            f"{path}: the safetensors header is JSON nested too deeply (a header is a flat map of tensor entries)"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    metadata = header.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: {METADATA_KEY} must map strings to strings")
    data_size = size - 8 - n
    spans = []
    for name, entry in header.items():
        spans.append((*_check_entry(path, name, entry), name))
    expected = 0  # tensors must tile the data exactly: sorted by offset, each starts where the last ended
    for begin, end, name in sorted(spans):
        if begin != expected:
            what = "overlaps the previous tensor" if begin < expected else f"leaves a gap at byte {expected}"
            raise CheckpointError(f"{path}: tensor {brief(name)} at bytes [{begin}, {end}) {what}")
        expected = end
    if expected != data_size:
        raise CheckpointError(
            f"{path}: the tensors cover {expected} bytes but the file holds {data_size} bytes "
            "of data (truncated, or trailing bytes after the last tensor)"
        )
    return header, metadata, 8 + n


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key {brief(key)}")
        out[key] = value
    return out


def _check_entry(path: Any, name: str, entry: Any) -> tuple[int, int]:
    name = brief(name)
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"{path}: tensor {name} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(
            f"{path}: tensor {name} has dtype {brief(dtype)}, which minimlp cannot read (readable: {', '.join(DTYPES)})"
        )
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape[:100]):
        raise CheckpointError(f"{path}: tensor {name} has shape {brief(shape)}; expected a list of sizes >= 0")
    try:
        nbytes = check_shape(shape, np.dtype(DTYPES[dtype]).itemsize)
    except ValueError as e:
        raise CheckpointError(f"{path}: tensor {name}: {e}") from None
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{path}: tensor {name} has data_offsets {brief(offsets)}; expected [begin, end]")
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            f"{path}: tensor {name} ({dtype} {shape}) needs {nbytes} bytes "
            f"but its data_offsets span {offsets[1] - offsets[0]}"
        )
    return offsets[0], offsets[1]


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor: ({name: array in header order}, metadata).  BF16 becomes float32."""
    header, metadata, start = read_safetensors_header(path)
    tensors = {}
    with open(path, "rb") as f:
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            buf = bytearray(end - begin)  # writable, so the array needs no second copy
            f.seek(start + begin)
            if f.readinto(buf) != len(buf):
                raise CheckpointError(f"{path}: tensor {brief(name)} is truncated")
            array = np.frombuffer(buf, dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])
            if entry["dtype"] == "BF16":  # bfloat16 is the top half of a float32
                array = (array.astype(np.uint32) << 16).view(np.float32)
            tensors[name] = array.astype(array.dtype.newbyteorder("="), copy=False)
    return tensors, metadata


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as ``{name: np.ndarray}``."""
    return read_safetensors(path)[0]
