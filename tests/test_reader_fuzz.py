"""Fuzz the three readers with mutated valid files: random bytes, pickle opcodes, safetensors
header fields and zip directory records.  Whatever the mutation, a read either loads or
raises CheckpointError with one line naming the file, within BUDGET_S seconds and
BUDGET_MB of memory (measured with tracemalloc, which sees NumPy's buffers too).

The budget is what the readers promise for any small file: a pickle makes at most about
one object per byte, tensors may take 8x their storages plus 64 MB (stride-0 views), and a
deflated .npz may inflate to 16x its size plus 64 MB.  All fuzzers together run in well
under a minute (about 150 files each).
"""

from __future__ import annotations

import atexit
import json
import os
import pickletools
import shutil
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.hostile_files import read_zip, record_name, write_zip
from support.pth_craft import Build, Global, NewObj, state_dict, write_pth

import minimlp
from minimlp.io.checkpoint import save_checkpoint, weights_meta
from minimlp.io.files import CheckpointError
from minimlp.io.safetensors import save_safetensors
from minimlp.io.weights import open_weights

BUDGET_S, BUDGET_MB = 2.0, 160
# MINIMLP_FUZZ_EXAMPLES=5000 fuzzes longer than CI does.
FUZZ = settings(
    max_examples=int(os.environ.get("MINIMLP_FUZZ_EXAMPLES", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_DIR = Path(tempfile.mkdtemp(prefix="minimlp-fuzz-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)


def _state() -> dict[str, np.ndarray]:
    model = minimlp.create_model("ff_tiny", img_size=8, patch_size=4, num_classes=3, embed_dim=4, depth=1, seed=0)
    return model.state_dict()


def _seed_files() -> dict[str, bytes]:
    state = _state()
    weights, storages = state_dict(state)
    args = Build(NewObj(Global("argparse", "Namespace"), ()), {"model": "linear_tiny", "lr": 0.001, "drop": [0.1]})
    write_pth(_DIR / "seed.pth", {"model": weights, "epoch": 3, "args": args}, storages, prefix="checkpoint")
    save_safetensors(_DIR / "seed.safetensors", state, {"format": "np"})
    model = minimlp.create_model("ff_tiny", img_size=8, patch_size=4, num_classes=3, embed_dim=4, depth=1)
    config = model.config_dict()
    save_checkpoint(_DIR / "seed.npz", state, weights_meta({"model": config}))
    np.savez_compressed(_DIR / "deflated.npz", **state)  # a bare state dict, deflated
    return {name: (_DIR / name).read_bytes() for name in ("seed.pth", "seed.safetensors", "seed.npz", "deflated.npz")}


SEEDS = _seed_files()


def _read(data: bytes, suffix: str) -> None:
    """Write ``data`` and read it as minimlp does, within the budget; fail on anything else."""
    path = _DIR / f"fuzzed{suffix}"
    path.write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        weights = open_weights(path)
        weights.config()
    except CheckpointError as e:
        message = str(e)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    assert seconds < BUDGET_S and peak < BUDGET_MB, f"{seconds:.2f} s, {peak:.0f} MB"


# --------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------
INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1]


@st.composite
def byte_edits(draw, data: bytes) -> bytes:
    """Overwrite, insert, delete or truncate a few bytes anywhere."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and out:
            out[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del out[pos : pos + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del out[pos:]
    return bytes(out)


@st.composite
def directory_edits(draw, data: bytes) -> bytes:
    """Change fields of the zip central directory: method, sizes, offsets, names; copy or drop records."""
    z = read_zip(data)
    records = [bytearray(r) for r in z.records]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(records) - 1))
        kind = draw(st.sampled_from(["method", "compressed", "size", "offset", "name", "copy", "drop"]))
        r = records[i]
        if kind == "method":
            r[10:12] = struct.pack("<H", draw(st.sampled_from([0, 8, 12, 14, 99])))
        elif kind in ("compressed", "size", "offset"):
            at = {"compressed": 20, "size": 24, "offset": 42}[kind]
            old = struct.unpack("<I", r[at : at + 4])[0]
            new = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(max(old - 64, 0), old + 64)))
            r[at : at + 4] = struct.pack("<I", new % 2**32)
        elif kind == "name":
            other = record_name(records[draw(st.integers(0, len(records) - 1))])
            from support.hostile_files import renamed

            records[i] = renamed(r, draw(st.sampled_from([other, other + "x", "", "a/b/c", "x.npy"])))
        elif kind == "copy":
            records.insert(draw(st.integers(0, len(records))), bytearray(r))
        elif kind == "drop" and len(records) > 1:
            del records[i]
    return write_zip(z._replace(records=records))


def _pickle_of(pth: bytes) -> tuple[bytes, dict[str, bytes]]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(pth)) as zf:
        pickle = zf.read("checkpoint/data.pkl")
        storages = {n.rsplit("/", 1)[1]: zf.read(n) for n in zf.namelist() if "/data/" in n}
    return pickle, storages


PTH_PICKLE, PTH_STORAGES = _pickle_of(SEEDS["seed.pth"])
OPS = [(pos, opcode.code.encode("latin1")) for opcode, _, pos in pickletools.genops(PTH_PICKLE)]
OPCODES = b"()0125NIJKMX\x85\x86\x87]aeq}su\x8a\x8c\x94hjtcRQb\x81\x93.G\x88\x89BC"


@st.composite
def opcode_edits(draw) -> bytes:
    """Replace, delete, duplicate or re-argue opcodes of a real checkpoint's pickle."""
    ends = [pos for pos, _ in OPS[1:]] + [len(PTH_PICKLE)]
    spans = [(pos, end) for (pos, _), end in zip(OPS, ends, strict=True)]
    out = bytearray(PTH_PICKLE)
    for _ in range(draw(st.integers(1, 3))):
        start, end = spans[draw(st.integers(0, len(spans) - 1))]
        end = min(end, len(out))
        start = min(start, end)
        kind = draw(st.sampled_from(["opcode", "delete", "duplicate", "argument"]))
        if kind == "opcode" and start < len(out):
            out[start] = draw(st.sampled_from(list(OPCODES)))
        elif kind == "delete":
            del out[start:end]
        elif kind == "duplicate":
            at = draw(st.integers(0, len(out)))
            out[at:at] = out[start:end]
        elif kind == "argument" and end - start > 1:
            pos = draw(st.integers(start + 1, end - 1))
            out[pos] = draw(st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFF]))
    buf = _DIR / "opcodes.pth"
    write_pth(buf, pickle_bytes=bytes(out), storages=PTH_STORAGES, prefix="checkpoint")
    return buf.read_bytes()


def _header_of(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


ST_HEADER, ST_DATA = _header_of(SEEDS["seed.safetensors"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def header_edits(draw) -> bytes:
    """Change a safetensors header's fields: dtype, shape, offsets, extra keys, metadata."""
    header = json.loads(json.dumps(ST_HEADER))
    names = [k for k in header if k != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra", "metadata", "dim"]))
        entry = header[name]
        if field == "dtype":
            entry["dtype"] = draw(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "x", 1]))
        elif field == "dim":
            shape = entry["shape"]
            if shape:
                shape[draw(st.integers(0, len(shape) - 1))] = draw(
                    st.sampled_from([0, 1, 3, 2**31, 2**62, 2**63, 2**64, -1])
                )
        elif field == "extra":
            entry[draw(st.text(max_size=4))] = draw(JSON_VALUES)
        elif field == "metadata":
            header["__metadata__"] = draw(JSON_VALUES)
        else:
            entry[field] = draw(JSON_VALUES)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + ST_DATA


# --------------------------------------------------------------------------------------
# The fuzzers
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", list(SEEDS))
def test_seed_files_load(seed):
    _read(SEEDS[seed], Path(seed).suffix)
    assert open_weights(_DIR / f"fuzzed{Path(seed).suffix}").config()["embed_dim"] == 4


@FUZZ
@given(data=st.data(), seed=st.sampled_from(list(SEEDS)))
def test_mutated_bytes(data, seed):
    _read(data.draw(byte_edits(SEEDS[seed])), Path(seed).suffix)


@FUZZ
@given(data=st.data(), seed=st.sampled_from(["seed.pth", "seed.npz", "deflated.npz"]))
def test_mutated_zip_directory(data, seed):
    _read(data.draw(directory_edits(SEEDS[seed])), Path(seed).suffix)


@FUZZ
@given(mutated=opcode_edits())
def test_mutated_pickle_opcodes(mutated):
    _read(mutated, ".pth")


@FUZZ
@given(mutated=header_edits())
def test_mutated_safetensors_header(mutated):
    _read(mutated, ".safetensors")
