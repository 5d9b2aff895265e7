"""safetensors read/write: bit-exact round trips, and malformed files refused."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from minimlp.io import safetensors as st
from minimlp.io.files import CheckpointError


def _awkward_floats(dtype):
    """Values a lossy path would change: -0.0, NaN payloads, subnormals, infinities, extremes."""
    info = np.finfo(dtype)
    rng = np.random.default_rng(0)
    special = [-0.0, np.inf, -np.inf, info.tiny / 4, info.max, info.eps]
    values = np.concatenate([rng.standard_normal(55 - len(special)), special]).astype(dtype)
    payload_nan = np.array(
        [0x7FC00001 if dtype == np.float32 else 0x7FF8000000000123],
        dtype=np.uint32 if dtype == np.float32 else np.uint64,
    ).view(dtype)
    return np.concatenate([values, payload_nan]).reshape(8, 7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    tensors = {
        "a": _awkward_floats(dtype),
        "b.weight": _awkward_floats(dtype).T,  # transposed: not contiguous
        "scalar": np.array(2.5, dtype),
        "empty": np.zeros((0, 3), dtype),
    }
    st.save_safetensors(tmp_path / "w.safetensors", tensors, {"note": "hello"})
    loaded, metadata = st.read_safetensors(tmp_path / "w.safetensors")
    assert metadata == {"note": "hello"}
    assert list(loaded) == list(tensors)
    for name, a in tensors.items():
        assert loaded[name].dtype == a.dtype and loaded[name].shape == a.shape
        assert loaded[name].tobytes() == np.ascontiguousarray(a).tobytes(), name


def test_other_dtypes_layout_and_alignment(tmp_path):
    tensors = {
        "h": np.arange(3, dtype=np.float16),
        "i": np.arange(5, dtype=np.int64),
        "u": np.arange(3, dtype=np.uint8),
        "b": np.array([True, False]),
        "c": np.arange(2, dtype=np.complex64),
        "be": np.arange(4, dtype=">f4"),
    }
    st.save_safetensors(tmp_path / "d.safetensors", tensors)
    loaded = st.load_safetensors(tmp_path / "d.safetensors")
    for name, a in tensors.items():
        np.testing.assert_array_equal(loaded[name], a)
        assert loaded[name].dtype.isnative
    header, _, start = st.read_safetensors_header(tmp_path / "d.safetensors")
    assert start % 8 == 0  # the header is padded so data starts 8-byte aligned
    for entry in header.values():  # largest elements first keeps every tensor aligned
        assert entry["data_offsets"][0] % np.dtype(st.DTYPES[entry["dtype"]]).itemsize == 0


def test_unwritable_inputs_are_refused_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="cannot be stored"):
        st.save_safetensors(tmp_path / "x.safetensors", {"o": np.array([object()])})
    with pytest.raises(CheckpointError, match="invalid tensor name"):
        st.save_safetensors(tmp_path / "x.safetensors", {"__metadata__": np.zeros(1)})
    with pytest.raises(CheckpointError, match="strings to strings"):
        st.save_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(1)}, {"n": 1})
    assert not list(tmp_path.iterdir())


def test_bf16_is_read_as_float32(tmp_path):
    exact = np.array([1.0, -3.5, 2.0**-20], np.float32)
    raw = (exact.view(np.uint32) >> 16).astype("<u2").tobytes()
    _write_raw(tmp_path / "bf.safetensors", {"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, raw)
    x = st.load_safetensors(tmp_path / "bf.safetensors")["x"]
    assert x.dtype == np.float32 and x.tobytes() == exact.tobytes()


def _write_raw(path, header, data: bytes, header_len=None):
    text = json.dumps(header).encode() if isinstance(header, dict) else header
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + data)


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    "header, data, header_len, fragment",
    [
        ({"a": F32_2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\x00" * 12, None, "overlaps"),
        ({"a": F32_2, "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, b"\x00" * 16, None, "gap"),
        ({"a": F32_2}, b"\x00" * 9, None, "trailing bytes"),
        ({"a": F32_2}, b"\x00" * 7, None, "truncated"),
        ({"a": F32_2}, b"\x00" * 8, 2**63, "larger than"),
        ({"a": F32_2}, b"\x00" * 8, 10**6, "runs past the end"),
        (b"{not json", b"", None, "not valid JSON"),
        (b"\xff\xfe{}", b"", None, "not valid JSON"),
        (b"[1, 2]", b"", None, "not a JSON object"),
        (b'{"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "a": {}}', b"", None, "duplicate key"),
        ({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\x00" * 2, None, "cannot read"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\x00" * 8, None, "needs 12 bytes"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\x00" * 8, None, "sizes >= 0"),
        ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\x00" * 8, None, "sizes >= 0"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\x00" * 8, None, "[begin, end]"),
        ({"a": {**F32_2, "extra": 1}}, b"\x00" * 8, None, "exactly dtype"),
        ({"a": F32_2, "__metadata__": {"n": 3}}, b"\x00" * 8, None, "strings to strings"),
        # Bounded: nesting the JSON decoder recurses over, shapes no array can have.
        (b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", None, "nested too deeply"),
        ({"a": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}, b"", None, "too large"),
        ({"a": {"dtype": "F32", "shape": [2**31, 2**31, 0], "data_offsets": [0, 0]}}, b"", None, "too large"),
        ({"a": {"dtype": "F32", "shape": [1] * 100, "data_offsets": [0, 4]}}, b"\x00" * 4, None, "100 dimensions"),
        (
            b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}',
            b"\x00" * 4,
            None,
            "not valid JSON",
        ),  # Python refuses to parse an integer of more than 4300 digits
        (
            {"a": {"dtype": "F32", "shape": [2**62] * 100_000, "data_offsets": [0, 4]}},
            b"\x00" * 4,
            None,
            "100000 dimensions",
        ),
    ],
)
def test_malformed_files_are_refused(tmp_path, header, data, header_len, fragment):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data, header_len)
    with pytest.raises(CheckpointError) as info:
        st.load_safetensors(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_too_short_file_is_refused(tmp_path):
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="too short"):
        st.load_safetensors(tmp_path / "short.safetensors")


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    good = {"a": np.arange(4.0), "b": np.ones(3)}
    st.save_safetensors(path, good)
    before = path.read_bytes()
    calls = []

    def fail_on_second(array):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")  # the header and one tensor are already written
        return st_tensor_bytes(array)

    st_tensor_bytes = st._tensor_bytes
    monkeypatch.setattr(st, "_tensor_bytes", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        st.save_safetensors(path, {"a": np.zeros(4), "b": np.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left


def test_messages_quote_bounded_names_and_values(tmp_path):
    name = "n" * 1_000_000
    _write_raw(
        tmp_path / "long.safetensors",
        {name: {"dtype": "F32" * 100_000, "shape": [2], "data_offsets": [0, 8]}},
        b"\x00" * 8,
    )
    with pytest.raises(CheckpointError, match="cannot read") as info:
        st.load_safetensors(tmp_path / "long.safetensors")
    assert len(str(info.value)) < 500
