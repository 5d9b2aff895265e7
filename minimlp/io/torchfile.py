"""Read PyTorch checkpoint files (``.pth``, the zip format of torch >= 1.6) without PyTorch.

A ``.pth`` file is a zip archive whose entries all live in one folder (named after the
file it was saved as)::

    checkpoint/data.pkl       the object graph, pickled (protocol 2), storages left out
    checkpoint/data/0, 1, ... the raw bytes of each storage, little-endian unless
    checkpoint/byteorder      ... says "big"
    checkpoint/version        and a few more small records

``pickle.load`` on such a file runs whatever the file asks for: a pickle names a
function (GLOBAL ``os system``) and calls it (REDUCE).  So this module never unpickles.
It interprets the opcodes itself, with a fixed allow-list of the few things a state dict
or a DeiT training checkpoint contains:

- ``collections.OrderedDict`` (a dict), ``argparse.Namespace`` (an inert
  ``types.SimpleNamespace``), ``_codecs.encode`` (how protocol 2 stores bytes),
  ``torch.device`` (a string such as ``"cuda:0"``);
- storage types (``torch.FloatStorage`` ...) and dtypes (``torch.float32`` ...), which
  only name an element type;
- ``torch._utils._rebuild_tensor_v2`` / ``_v3`` and ``_rebuild_parameter``, which become
  a bounds-checked NumPy array: the storage's own buffer when the tensor is all of it (as
  in every state dict), a strided copy out of it otherwise.

Anything else (``os.system``, ``builtins.eval``, a model class) is refused before it is
called, with its name in the error.  BUILD only sets the state of an OrderedDict or a
namespace, SETITEM(S) only writes into dicts, APPEND(S) only into lists, and persistent ids
are only ``('storage', type, key, location, numel)``: a hostile pickle cannot reach an
attribute of anything.  Every size, stride and offset is checked against its storage
before a byte is read.

A small file must not be able to take much time or memory either, so the interpreter
bounds what it builds: at most :data:`MAX_DEPTH` levels of nesting (hashing a million-deep
tuple overflows the C stack), no container larger than :func:`max_expanded` elements when
shared parts are counted each time they appear (a tuple ``T = (T, T)`` nested 64 times is
under a kilobyte and would take 2**64 steps to hash or print), no more objects than
:func:`max_objects` allows for the pickle's size, at most :data:`~minimlp.io.files.MAX_DIMS`
dimensions per tensor, and error messages quote values through
:func:`~minimlp.io.files.brief`.  A container that has been put inside another one is
sealed: nothing may be added to it afterwards (pickle builds every container before it
nests it; only a cyclic structure needs more, and a checkpoint has none), so each
container's depth and size are final when it is nested and no cycle can be made.  In the
zip archive, names must be unique and the entries' bytes must fit in the file, so no byte
is read twice.
"""

from __future__ import annotations

import math
import os
import struct
import types
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from minimlp.io.files import MAX_DIMS, ZIP_ERRORS, CheckpointError, brief, check_shape, open_zip, read_head

MAX_PICKLE_BYTES = 64 << 20  # a state dict's pickle is kilobytes, a training checkpoint's under a megabyte
MAX_DEPTH = 100  # nesting levels; a DeiT training checkpoint has about 6
ZIP_MAGIC = b"PK\x03\x04"
# torch.save(..., _use_new_zipfile_serialization=False) starts with this number, pickled.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_HINT = (
    "re-save it with a current PyTorch, which writes the zip format minimlp reads: "
    "obj = torch.load(path, map_location='cpu'); torch.save(obj, new_path) "
    "(only for a file you trust: torch.load of a legacy file runs its pickle)"
)


# --------------------------------------------------------------------------------------
# Element types: storage classes and dtypes name one; nothing else about them is used.
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ElementType:
    name: str  # torch's name, for messages
    file_dtype: str  # NumPy dtype of one element as stored, little-endian ('<u2' for bfloat16)
    bfloat16: bool = False  # widen to float32 after reading (NumPy has no bfloat16)


_ELEMENT_TYPES = {
    "float32": ElementType("float32", "<f4"),
    "float64": ElementType("float64", "<f8"),
    "float16": ElementType("float16", "<f2"),
    "bfloat16": ElementType("bfloat16", "<u2", bfloat16=True),
    "int64": ElementType("int64", "<i8"),
    "int32": ElementType("int32", "<i4"),
    "int16": ElementType("int16", "<i2"),
    "int8": ElementType("int8", "i1"),
    "uint8": ElementType("uint8", "u1"),
    "uint16": ElementType("uint16", "<u2"),
    "uint32": ElementType("uint32", "<u4"),
    "uint64": ElementType("uint64", "<u8"),
    "bool": ElementType("bool", "?"),
    "complex64": ElementType("complex64", "<c8"),
    "complex128": ElementType("complex128", "<c16"),
}
_DTYPE_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}
_STORAGE_TYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
UNTYPED = ElementType("untyped bytes", "u1")


# --------------------------------------------------------------------------------------
# What the pickle can name.  GLOBAL pushes one of these inert tokens, never a live object.
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Global:
    qualname: str  # "module.name", for messages
    call: Callable[..., Any] | None = None  # what REDUCE does with it (None: not callable)
    newobj: Callable[[], Any] | None = None  # what NEWOBJ makes of it (None: not allowed)
    element: ElementType | None = None  # storage types and dtypes

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


@dataclass(eq=False)
class _Storage:
    """One ``data/<key>`` record: raw bytes and the element type the pickle gave them."""

    key: str
    element: ElementType
    raw: np.ndarray  # (nbytes,) uint8
    numel: int  # in elements of ``element``
    claimed: bool = False  # a tensor owns ``raw`` now: later views must copy

    def __repr__(self) -> str:
        return f"<storage {self.key}: {self.numel} x {self.element.name}>"


class _UnpicklingError(Exception):
    """Raised inside the interpreter; ``load_pth`` adds the file name and byte position."""


def max_objects(pickle_bytes: int) -> int:
    """Objects (stack pushes and memo entries) a pickle may make: about 100 bytes each.

    A state dict makes about one per 4 bytes of pickle and a whole DeiT checkpoint a few
    thousand; a pickle of empty dicts makes one per byte, 70 bytes of memory for each.
    """
    return 1_000_000 + pickle_bytes // 16


def max_expanded(pickle_bytes: int) -> int:
    """Elements in one container, counting a shared part each time it appears.

    Without sharing this is at most the number of objects; ``repr``, ``hash`` and ``==``
    of a container take time in proportion to it.
    """
    return 1_000_000 + 4 * pickle_bytes


def _tensor_bytes_budget(storage_bytes: int) -> int:
    # Views may read one storage several times (tied weights, an EMA copy of the model
    # that shares storages with it), but a file whose tensors would take far more memory
    # than the storages they were read from is a decompression bomb of a kind: refuse it.
    return 8 * storage_bytes + (64 << 20)


class _Rebuilder:
    """The allow-listed callables, bound to one archive's storages."""

    def __init__(self, archive: _Archive) -> None:
        self.archive = archive
        self.bytes_made = 0

    # torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
    #                                 backward_hooks, metadata=None)
    def tensor_v2(self, storage, offset, size, stride, requires_grad, hooks, metadata=None) -> np.ndarray:
        if not isinstance(storage, _Storage):
            raise _UnpicklingError(f"_rebuild_tensor_v2 expects a storage, got a {type(storage).__name__}")
        return self._tensor(storage, storage.element, offset, size, stride, metadata)

    # torch._utils._rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
    #                                 backward_hooks, dtype, metadata=None): dtypes with no
    # storage class of their own (uint16, ...) are saved as untyped bytes plus a dtype.
    def tensor_v3(self, storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None) -> np.ndarray:
        if not isinstance(storage, _Storage):
            raise _UnpicklingError(f"_rebuild_tensor_v3 expects a storage, got {type(storage).__name__}")
        if not (isinstance(dtype, _Global) and dtype.element is not None and dtype.call is None):
            raise _UnpicklingError(f"_rebuild_tensor_v3 expects a dtype, got {brief(dtype)}")
        if storage.element is not UNTYPED and storage.element != dtype.element:
            raise _UnpicklingError(
                f"storage {brief(storage.key)} holds {storage.element.name}, not {dtype.element.name}"
            )
        return self._tensor(storage, dtype.element, offset, size, stride, metadata)

    @staticmethod
    def parameter(data, requires_grad, hooks, state=None) -> np.ndarray:
        # torch._utils._rebuild_parameter(_with_state): an nn.Parameter is just its tensor here.
        if not isinstance(data, np.ndarray):
            raise _UnpicklingError(f"_rebuild_parameter expects a tensor, got {type(data).__name__}")
        return data

    def _tensor(self, storage: _Storage, element: ElementType, offset, size, stride, metadata) -> np.ndarray:
        bits_set = any(metadata.values()) if isinstance(metadata, dict) else metadata is not None
        if bits_set:  # torch records conjugate/negative views here; state dicts have none
            raise _UnpicklingError(f"tensor metadata {brief(metadata)} (conjugate/negative bits) is not supported")
        size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
        if type(offset) is not int:
            raise _UnpicklingError(f"storage offset must be an integer, got {brief(offset)}")
        if len(size) != len(stride):
            raise _UnpicklingError(f"size {brief(size)} and stride {brief(stride)} have different lengths")
        if offset < 0 or any(s < 0 for s in stride):
            raise _UnpicklingError(f"negative stride or offset: stride {brief(stride)}, offset {brief(offset)}")
        itemsize = np.dtype(element.file_dtype).itemsize
        try:
            check_shape(size, itemsize)
        except ValueError as e:
            raise _UnpicklingError(f"tensor size: {e}") from None
        if storage.raw.size % itemsize:
            raise _UnpicklingError(
                f"storage {brief(storage.key)} has {storage.raw.size} bytes, "
                f"not a whole number of {element.name} elements"
            )
        numel = storage.raw.size // itemsize
        count = math.prod(size)  # bounded by check_shape
        out_dtype = np.dtype(np.float32) if element.bfloat16 else np.dtype(element.file_dtype).newbyteorder("=")
        self.bytes_made += count * out_dtype.itemsize
        if self.bytes_made > _tensor_bytes_budget(self.archive.bytes_read):
            raise _UnpicklingError(
                f"the tensors would take {self.bytes_made} bytes, far more than the "
                f"{self.archive.bytes_read} bytes of storage they are read from"
            )
        if count == 0:
            return np.zeros(size, dtype=out_dtype)
        # The last element read: offset + sum((size_j - 1) * stride_j).  Python integers do
        # not overflow, so a crafted stride of 2**62 is caught here, not wrapped around.
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= numel:
            raise _UnpicklingError(
                f"tensor reads past the end of storage {brief(storage.key)}: size {size}, "
                f"stride {brief(stride)}, offset {brief(offset)} reach element {brief(last)}, "
                f"but the storage holds {numel} {element.name} elements"
            )
        dtype = np.dtype(element.file_dtype)
        if self.archive.big_endian:
            dtype = dtype.newbyteorder(">")
        elements = storage.raw.view(dtype)  # (numel,)
        if (
            offset == 0
            and count == numel
            and _is_c_contiguous(size, stride)
            and dtype.isnative
            and not element.bfloat16
            and not storage.claimed
        ):
            # A tensor that is its whole storage (every tensor of a state dict) takes the
            # buffer as it is: no copy.  Only the first may; later views copy, so no two
            # arrays returned share memory.
            storage.claimed = True
            return elements.reshape(size)
        view = np.lib.stride_tricks.as_strided(
            elements[offset:], shape=size, strides=[s * itemsize for s in stride], writeable=False
        )
        out = np.array(view, dtype=dtype.newbyteorder("="), order="C")  # one copy, native byte order
        if element.bfloat16:  # bfloat16 is the top half of a float32
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _is_c_contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Row-major in elements; a dimension of size 1 may have any stride (torch allows it)."""
    step = 1
    for n, s in zip(reversed(size), reversed(stride), strict=True):
        if n != 1 and s != step:
            return False
        step *= n
    return True


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, tuple | list) and len(value) > MAX_DIMS:
        raise _UnpicklingError(f"tensor {what} has {len(value)} dimensions; at most {MAX_DIMS} are allowed")
    if not isinstance(value, tuple | list) or not all(type(v) is int for v in value):
        raise _UnpicklingError(f"tensor {what} must be a tuple of integers, got {brief(value)}")
    return tuple(value)


def _namespace() -> types.SimpleNamespace:
    return types.SimpleNamespace()


def _codecs_encode(text, encoding="utf-8") -> bytes:
    # Protocol 2 writes bytes b as _codecs.encode(b.decode('latin1'), 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise _UnpicklingError(f"_codecs.encode({brief(text, 40)}, {brief(encoding, 40)}) is not a bytes literal")
    return text.encode(encoding)


def _device(kind, index=None) -> str:
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise _UnpicklingError(f"torch.device({brief(kind, 40)}, {brief(index, 40)}) is not a device")
    return kind if index is None else f"{kind}:{index}"


def _ordered_dict(*args) -> OrderedDict:
    if args:  # OrderedDict pickles as an empty call followed by SETITEMS
        raise _UnpicklingError("collections.OrderedDict is only rebuilt from no arguments")
    return OrderedDict()


def _allowed_globals(rebuild: _Rebuilder) -> dict[tuple[str, str], _Global]:
    allowed = {
        ("collections", "OrderedDict"): _Global("collections.OrderedDict", call=_ordered_dict, newobj=OrderedDict),
        ("argparse", "Namespace"): _Global("argparse.Namespace", newobj=_namespace),
        ("_codecs", "encode"): _Global("_codecs.encode", call=_codecs_encode),
        ("torch", "device"): _Global("torch.device", call=_device),
        ("torch._utils", "_rebuild_tensor_v2"): _Global("torch._utils._rebuild_tensor_v2", call=rebuild.tensor_v2),
        ("torch._utils", "_rebuild_tensor_v3"): _Global("torch._utils._rebuild_tensor_v3", call=rebuild.tensor_v3),
        ("torch._utils", "_rebuild_parameter"): _Global("torch._utils._rebuild_parameter", call=rebuild.parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Global(
            "torch._utils._rebuild_parameter_with_state", call=rebuild.parameter
        ),
        ("torch", "UntypedStorage"): _Global("torch.UntypedStorage", element=UNTYPED),
        ("torch.storage", "UntypedStorage"): _Global("torch.storage.UntypedStorage", element=UNTYPED),
    }
    for name, dtype in _STORAGE_TYPES.items():
        allowed["torch", name] = _Global(f"torch.{name}", element=_ELEMENT_TYPES[dtype])
    for name, element in _ELEMENT_TYPES.items():
        allowed["torch", name] = _Global(f"torch.{name}", element=element)
    for alias, name in _DTYPE_ALIASES.items():
        allowed["torch", alias] = _Global(f"torch.{alias}", element=_ELEMENT_TYPES[name])
    return allowed


# --------------------------------------------------------------------------------------
# The pickle interpreter: binary opcodes of protocols 2-5, minus everything that can
# reach an attribute or call something not on the allow-list.
# --------------------------------------------------------------------------------------
_MARK = object()  # what MARK pushes; never escapes the interpreter
_CONTAINERS = (tuple, list, dict, OrderedDict, types.SimpleNamespace)


class _Interpreter:
    def __init__(
        self, data: bytes, allowed: dict[tuple[str, str], _Global], persistent_load: Callable[[Any], Any]
    ) -> None:
        self.data, self.pos = data, 0
        self.allowed, self.persistent_load = allowed, persistent_load
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.objects, self.max_objects = 0, max_objects(len(data))
        self.max_expanded = max_expanded(len(data))
        # id -> (container, nesting depth, elements counted with repetition) for every
        # container that is not empty or is sealed (an empty one is depth 1, one element).
        # Holding the container keeps its id from being reused while the pickle runs.
        self.extent: dict[int, tuple[Any, int, int]] = {}
        self.sealed: set[int] = set()  # ids of containers already put inside another
        self.ops = {
            0x80: self.proto,
            0x95: self.frame,  # PROTO, FRAME (STOP is handled in run)
            0x28: self.mark,
            0x30: self.pop,
            0x31: self.pop_mark,
            0x32: self.dup,  # ( 0 1 2
            0x4E: lambda: self.push(None),  # N  NONE
            0x88: lambda: self.push(True),
            0x89: lambda: self.push(False),  # NEWTRUE/NEWFALSE
            0x4A: lambda: self.push(self.unpack("<i", 4)),  # J  BININT
            0x4B: lambda: self.push(self.read(1)[0]),  # K  BININT1
            0x4D: lambda: self.push(self.unpack("<H", 2)),  # M  BININT2
            0x8A: lambda: self.push(self.long(self.read(1)[0])),  # LONG1
            0x8B: lambda: self.push(self.long(self.unpack("<i", 4))),  # LONG4
            0x47: lambda: self.push(self.unpack(">d", 8)),  # G  BINFLOAT
            0x58: lambda: self.push(self.text(self.unpack("<I", 4))),  # X  BINUNICODE
            0x8C: lambda: self.push(self.text(self.read(1)[0])),  # SHORT_BINUNICODE
            0x8D: lambda: self.push(self.text(self.unpack("<Q", 8))),  # BINUNICODE8
            0x55: lambda: self.push(self.text(self.read(1)[0])),  # U  SHORT_BINSTRING
            0x42: lambda: self.push(self.read(self.unpack("<I", 4))),  # B  BINBYTES
            0x43: lambda: self.push(self.read(self.read(1)[0])),  # C  SHORT_BINBYTES
            0x8E: lambda: self.push(self.read(self.unpack("<Q", 8))),  # BINBYTES8
            0x29: lambda: self.push(()),  # )  EMPTY_TUPLE
            0x74: lambda: self.push(self.new_tuple(self.pop_to_mark())),  # t  TUPLE
            0x85: lambda: self.tuple_n(1),
            0x86: lambda: self.tuple_n(2),
            0x87: lambda: self.tuple_n(3),
            0x5D: lambda: self.push([]),  # ]  EMPTY_LIST
            0x61: self.append,
            0x65: self.appends,  # a e
            0x7D: lambda: self.push({}),  # }  EMPTY_DICT
            0x73: self.setitem,
            0x75: self.setitems,  # s u
            0x63: self.global_,
            0x93: self.stack_global,  # c  GLOBAL, STACK_GLOBAL
            0x52: self.reduce,
            0x81: self.newobj,
            0x62: self.build,  # R, NEWOBJ, b
            0x51: self.persid,  # Q  BINPERSID
            0x71: lambda: self.put(self.read(1)[0]),
            0x72: lambda: self.put(self.unpack("<I", 4)),  # q r
            0x94: lambda: self.put(len(self.memo)),  # MEMOIZE
            0x68: lambda: self.get(self.read(1)[0]),
            0x6A: lambda: self.get(self.unpack("<I", 4)),  # h j
        }

    def run(self) -> Any:
        while True:
            start = self.pos
            code = self.read(1)[0]
            if code == 0x2E:  # STOP
                if len(self.stack) != 1:
                    raise _UnpicklingError(f"STOP with {len(self.stack)} objects on the stack")
                return self.stack.pop()
            op = self.ops.get(code)
            if op is None:
                raise _UnpicklingError(
                    f"pickle opcode {bytes([code])!r} at byte {start} is not allowed "
                    "(checkpoints use a small set of binary opcodes)"
                )
            op()

    # -- reading --------------------------------------------------------------------
    def read(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _UnpicklingError("the pickle ends in the middle of an opcode (a truncated data.pkl)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, n: int) -> Any:
        return struct.unpack(fmt, self.read(n))[0]

    def long(self, n: int) -> int:
        if n < 0:
            raise _UnpicklingError("negative LONG4 length")
        return int.from_bytes(self.read(n), "little", signed=True)

    def text(self, n: int) -> str:
        try:
            return self.read(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise _UnpicklingError(f"a string is not valid UTF-8: {e}") from None

    # -- what the pickle builds, and its bounds ---------------------------------------
    def count_object(self) -> None:
        self.objects += 1
        if self.objects > self.max_objects:
            raise _UnpicklingError(
                f"the pickle makes more than {self.max_objects} objects, far more than a "
                f"checkpoint of {len(self.data)} bytes holds"
            )

    def measure(self, obj: Any) -> tuple[int, int]:
        """(nesting depth, elements counted with repetition) of a value the pickle made."""
        if not isinstance(obj, _CONTAINERS):
            return 0, 1
        return self.extent.get(id(obj), (obj, 1, 1))[1:]

    def nest(self, target: Any, items: list[Any], new: bool = False) -> None:
        """Account for ``items`` being put into ``target``: seal them, grow its depth and size."""
        if not new and id(target) in self.sealed:
            raise _UnpicklingError(
                f"a {type(target).__name__} is changed after it was put inside another "
                "object (only a cyclic structure needs that, and a checkpoint has none)"
            )
        depth, size = self.measure(target)
        for item in items:
            if item is target:
                raise _UnpicklingError(f"a {type(target).__name__} is put inside itself")
            self.seal(item)
            item_depth, item_size = self.measure(item)
            depth, size = max(depth, item_depth + 1), size + item_size
        if depth > MAX_DEPTH:
            raise _UnpicklingError(f"containers nested more than {MAX_DEPTH} levels deep")
        if size > self.max_expanded:
            raise _UnpicklingError(
                f"a {type(target).__name__} of more than {self.max_expanded} elements "
                "(counting shared parts each time they appear)"
            )
        self.extent[id(target)] = (target, depth, size)

    def new_tuple(self, items: list[Any]) -> tuple:
        t = tuple(items)
        self.nest(t, items, new=True)  # new, but () is one shared object, maybe sealed already
        return t

    def seal(self, value: Any) -> None:
        """``value`` is handed to a call (REDUCE, NEWOBJ, BUILD, a persistent id): no more changes."""
        if isinstance(value, _CONTAINERS):
            self.extent.setdefault(id(value), (value, 1, 1))  # keeps it alive, so its id stays its own
            self.sealed.add(id(value))

    # -- stack ----------------------------------------------------------------------
    def push(self, value: Any) -> None:
        self.count_object()
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise _UnpicklingError("stack underflow")
        return self.stack.pop()

    def pop_to_mark(self) -> list[Any]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise _UnpicklingError("no MARK on the stack")

    def proto(self) -> None:
        if self.read(1)[0] > 5:
            raise _UnpicklingError("pickle protocol newer than 5")

    def frame(self) -> None:
        self.read(8)  # protocol 4 framing is only a hint for buffered readers

    def mark(self) -> None:
        self.push(_MARK)

    def pop_mark(self) -> None:
        self.pop_to_mark()

    def dup(self) -> None:
        self.push(self.top())

    def top(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise _UnpicklingError("stack underflow")
        return self.stack[-1]

    def tuple_n(self, n: int) -> None:
        items = [self.pop() for _ in range(n)][::-1]
        self.push(self.new_tuple(items))

    def put(self, index: int) -> None:
        self.count_object()
        self.memo[index] = self.top()

    def get(self, index: int) -> None:
        if index not in self.memo:
            raise _UnpicklingError(f"memo entry {index} is read before it is written")
        self.push(self.memo[index])

    # -- containers: only into lists and dicts we made ----------------------------------
    def append(self) -> None:
        value = self.pop()
        target = self._list(self.top())
        self.nest(target, [value])
        target.append(value)

    def appends(self) -> None:
        items = self.pop_to_mark()
        target = self._list(self.top())
        self.nest(target, items)
        target.extend(items)

    def setitem(self) -> None:
        value, key = self.pop(), self.pop()
        self._store(self._dict(self.top()), [key, value])

    def setitems(self) -> None:
        items = self.pop_to_mark()
        if len(items) % 2:
            raise _UnpicklingError("SETITEMS with an odd number of items")
        self._store(self._dict(self.top()), items)

    @staticmethod
    def _list(target: Any) -> list:
        if type(target) is not list:
            raise _UnpicklingError(f"APPEND into a {type(target).__name__}; only lists are allowed")
        return target

    @staticmethod
    def _dict(target: Any) -> dict:
        if type(target) not in (dict, OrderedDict):
            raise _UnpicklingError(f"SETITEM on a {type(target).__name__}; only dicts are allowed")
        return target

    def _store(self, target: dict, items: list[Any]) -> None:
        self.nest(target, items)  # bounds every key's depth and size before it is hashed
        for key, value in zip(items[::2], items[1::2], strict=True):
            try:
                target[key] = value
            except TypeError:
                raise _UnpicklingError(f"unhashable dict key of type {type(key).__name__}") from None

    # -- globals and calls ------------------------------------------------------------
    def global_(self) -> None:
        module = self.line()
        name = self.line()
        self.push(self.resolve(module, name))

    def stack_global(self) -> None:
        name, module = self.pop(), self.pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise _UnpicklingError("STACK_GLOBAL needs two strings")
        self.push(self.resolve(module, name))

    def line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + 256)
        if end < 0:
            raise _UnpicklingError("GLOBAL without a newline-terminated name")
        text = self.read(end - self.pos + 1)[:-1]
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise _UnpicklingError(f"GLOBAL name {brief(text)} is not ASCII") from None

    def resolve(self, module: str, name: str) -> _Global:
        token = self.allowed.get((module, name))
        if token is None:
            raise _UnpicklingError(
                f"the pickle refers to {module[:100]}.{name[:100]}, which is not "
                "on the allow-list (a checkpoint holds only tensors, storages, OrderedDict, "
                "argparse.Namespace and plain values); nothing was called"
            )
        return token

    def reduce(self) -> None:
        args, func = self.pop(), self.pop()
        if not isinstance(func, _Global) or func.call is None:
            raise _UnpicklingError(f"REDUCE calls {brief(func)}, which is not an allowed callable")
        if type(args) is not tuple:
            raise _UnpicklingError(f"REDUCE arguments for {func.qualname} must be a tuple")
        self.seal(args)
        try:
            result = func.call(*args)
        except TypeError as e:
            raise _UnpicklingError(f"{func.qualname} called with {len(args)} arguments: {e}") from None
        self.push(result)

    def newobj(self) -> None:
        args, cls = self.pop(), self.pop()
        if not isinstance(cls, _Global) or cls.newobj is None:
            raise _UnpicklingError(f"NEWOBJ of {brief(cls)}, which is not an allowed class")
        if args != ():
            raise _UnpicklingError(f"NEWOBJ of {cls.qualname} with arguments {brief(args)}")
        self.push(cls.newobj())

    def persid(self) -> None:
        pid = self.pop()
        self.seal(pid)
        self.push(self.persistent_load(pid))

    def build(self) -> None:
        state = self.pop()
        target = self.top()
        if type(state) is not dict:
            raise _UnpicklingError(f"BUILD with a {type(state).__name__} state; only a dict is allowed")
        self.seal(state)
        if type(target) is OrderedDict:
            return  # a state dict's "_metadata" (module versions): nothing minimlp needs
        if type(target) is types.SimpleNamespace:
            if not all(isinstance(k, str) and not k.startswith("__") for k in state):
                raise _UnpicklingError("namespace attributes must be plain names")
            self.nest(target, list(state.values()))
            vars(target).update(state)
            return
        raise _UnpicklingError(
            f"BUILD on a {type(target).__name__}; only OrderedDict and argparse.Namespace instances may be given state"
        )


# --------------------------------------------------------------------------------------
# The archive
# --------------------------------------------------------------------------------------
class _Archive:
    """The zip archive of a ``.pth`` file: its folder, byte order and storage records."""

    def __init__(self, path: str | os.PathLike, zf: zipfile.ZipFile, file: BinaryIO) -> None:
        self.path, self.zf, self.file = path, zf, file
        self.file_size = os.fstat(file.fileno()).st_size
        names = zf.namelist()
        if not names:
            raise CheckpointError(f"{path}: an empty zip archive, not a PyTorch checkpoint")
        duplicate = next((n for n in names if names.count(n) > 1), None) if len(set(names)) < len(names) else None
        if duplicate is not None:  # torch.load refuses these too: which one would be meant?
            raise CheckpointError(
                f"{path}: the zip archive holds two entries named {brief(duplicate)}; "
                "torch.save never writes that, so the file was repacked or crafted"
            )
        # torch.save puts every entry in one folder named after the file it was saved as
        # ("checkpoint/" for checkpoint.pth, "archive/" for a buffer); find it as torch does.
        first = names[0]
        if "/" not in first:
            raise CheckpointError(
                f"{path}: a zip archive whose entries are not in a folder, so not a PyTorch checkpoint (.pth)"
            )
        self.prefix = first.split("/", 1)[0] + "/"
        if self.prefix + "data.pkl" not in names:
            what = (
                "a TorchScript archive (torch.jit.save); save model.state_dict() with torch.save instead"
                if any(n.startswith(self.prefix + "code/") for n in names)
                else "not a PyTorch checkpoint: there is no data.pkl (an .npz file is also a zip archive)"
            )
            raise CheckpointError(f"{path}: {what}")
        byteorder = (
            self.read(self.prefix + "byteorder", limit=16).tobytes().decode("ascii", "replace").strip()
            if self.prefix + "byteorder" in names
            else "little"
        )  # files before torch 2.1: little-endian
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"{path}: unknown byteorder record {byteorder!r}")
        self.big_endian = byteorder == "big"
        self.storages: dict[str, _Storage] = {}
        self.bytes_read = 0  # storage bytes read: at most the file's size, whatever the zip directory says

    def read(self, name: str, limit: int | None = None) -> np.ndarray:
        """One entry's bytes as a writable (nbytes,) uint8 array (tensors may use it without a copy)."""
        info = self.zf.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{self.path}: entry {brief(name)} is compressed; torch.save never compresses, "
                "so this file was repacked or crafted"
            )
        if limit is not None and info.file_size > limit:
            raise CheckpointError(f"{self.path}: entry {brief(name)} is {info.file_size} bytes, more than {limit}")
        if info.header_offset + 30 + info.file_size > self.file_size:
            raise CheckpointError(
                f"{self.path}: entry {brief(name)} claims {info.file_size} bytes, more than the "
                f"{self.file_size}-byte file holds; the file is truncated or corrupt"
            )
        # The local header is 30 bytes plus the name and an extra field (torch pads it so
        # that the data starts on a 64-byte boundary); the data follows, stored as is.
        self.file.seek(info.header_offset)
        header = self.file.read(30)
        if len(header) != 30 or header[:4] != ZIP_MAGIC:
            raise CheckpointError(f"{self.path}: entry {brief(name)} has no valid local header; the file is corrupt")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        self.file.seek(info.header_offset + 30 + name_len + extra_len)
        data = np.empty(info.file_size, dtype=np.uint8)  # not zero-filled: readinto writes every byte
        if self.file.readinto(memoryview(data)) != info.file_size:
            raise CheckpointError(f"{self.path}: entry {brief(name)} is truncated; the file is incomplete")
        # CRC 0 is what torch writes with its CRC computation turned off: nothing to check.
        if info.CRC and zlib.crc32(data) != info.CRC:
            raise CheckpointError(
                f"{self.path}: entry {brief(name)} cannot be read (its CRC-32 does not match); the file is corrupt"
            )
        return data

    def storage(self, pid: Any) -> _Storage:
        """persistent_load: ('storage', storage type, key, location, numel) -> _Storage."""
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            raise _UnpicklingError(f"persistent id {brief(pid)} is not ('storage', type, key, location, numel)")
        _, kind, key, location, numel = pid
        if not (isinstance(kind, _Global) and kind.element is not None and kind.call is None):
            raise _UnpicklingError(f"persistent id names {brief(kind)}, not a storage type")
        if not isinstance(key, str) or not isinstance(location, str) or type(numel) is not int or numel < 0:
            raise _UnpicklingError(f"malformed storage id {brief(pid, 120)}")
        element = kind.element
        if key in self.storages:
            cached = self.storages[key]
            if cached.element != element or cached.numel != numel:
                raise _UnpicklingError(
                    f"storage {brief(key)} is referenced as {cached.numel} x {cached.element.name} "
                    f"and as {numel} x {element.name}"
                )
            return cached
        name = self.prefix + "data/" + key
        try:
            size = self.zf.getinfo(name).file_size
        except KeyError:
            raise _UnpicklingError(
                f"storage {brief(key)} is referenced but {name[:120]} is missing from the archive"
            ) from None
        nbytes = numel * np.dtype(element.file_dtype).itemsize
        if size != nbytes:
            raise _UnpicklingError(
                f"storage {key[:40]} should hold {brief(numel)} {element.name} elements "
                f"({brief(nbytes)} bytes) but {name[:120]} has {size} bytes"
            )
        if self.bytes_read + size > self.file_size:  # entries that share bytes: each read would copy them
            raise _UnpicklingError(
                f"the storages add up to more bytes than the {self.file_size}-byte file holds "
                "(zip entries that overlap)"
            )
        raw = self.read(name)
        self.bytes_read += raw.size
        self.storages[key] = _Storage(key, element, raw, numel)
        return self.storages[key]


def is_legacy_torch_file(head: bytes) -> bool:
    """A pre-1.6 torch.save stream (pickled magic number) or the older tar archive."""
    magic = b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")  # LONG1, 10 bytes
    return (len(head) >= 2 and head[0] == 0x80 and head[2:14] == magic) or head[257:262] == b"ustar"


def load_pth(path: str | os.PathLike) -> Any:
    """Read a ``.pth`` file into plain Python values, with tensors as NumPy arrays.

    Dicts, OrderedDicts, lists, tuples and scalars come back as themselves,
    ``argparse.Namespace`` as ``types.SimpleNamespace``, tensors and parameters as
    C-contiguous arrays that share no memory (bfloat16 widened to float32).  Raises
    :class:`CheckpointError` naming the file and the problem.
    """
    head = read_head(path, 512)
    if head[:4] != ZIP_MAGIC:
        if is_legacy_torch_file(head):
            raise CheckpointError(
                f"{path}: a PyTorch file in the legacy (pre-1.6, non-zip) format is not supported; {LEGACY_HINT}"
            )
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (a .pth file is a zip archive starting "
            f"with PK\\x03\\x04; this file starts with {head[:8]!r})"
        )
    with open(path, "rb") as file:
        zf = open_zip(path, file)
        try:
            return _load_archive(_Archive(path, zf, file))
        except CheckpointError:
            raise
        except ZIP_ERRORS as e:  # a directory entry that zipfile parsed but cannot follow
            raise CheckpointError(f"{path}: a corrupt zip archive ({brief(str(e), 200)})") from None


def _load_archive(archive: _Archive) -> Any:
    data = archive.read(archive.prefix + "data.pkl", limit=MAX_PICKLE_BYTES).tobytes()
    interpreter = _Interpreter(data, _allowed_globals(_Rebuilder(archive)), archive.storage)
    try:
        return interpreter.run()
    except CheckpointError:
        raise
    except _UnpicklingError as e:
        raise CheckpointError(f"{archive.path}: refused: {e} (data.pkl, byte {interpreter.pos})") from None
    except (RecursionError, MemoryError, OverflowError, ValueError) as e:
        raise CheckpointError(
            f"{archive.path}: malformed data.pkl near byte {interpreter.pos}: {type(e).__name__} {brief(str(e), 200)}"
        ) from None


# --------------------------------------------------------------------------------------
# From a checkpoint to a state dict
# --------------------------------------------------------------------------------------
MODEL_KEYS = ("model", "state_dict")  # DeiT's training checkpoints, timm's
EMA_KEYS = ("model_ema", "state_dict_ema")


def state_dict_from(obj: Any, use_ema: bool = False, where: str = "checkpoint") -> dict[str, np.ndarray]:
    """The model weights in a loaded ``.pth``: a bare state dict or a DeiT training dict.

    A DeiT checkpoint is ``{"model", "optimizer", "lr_scheduler", "epoch", "model_ema",
    "scaler", "args"}``; ``use_ema`` takes ``model_ema`` (the averaged weights) instead of
    ``model``.  A ``module.`` prefix left by DistributedDataParallel is removed.
    """
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    keys = EMA_KEYS if use_ema else MODEL_KEYS
    found = next((k for k in keys if k in obj), None)
    if found is not None:
        state = obj[found]
    elif use_ema:
        raise CheckpointError(
            f"{where}: has no EMA weights (none of {', '.join(EMA_KEYS)}); its top-level keys are: {_keys(obj)}"
        )
    else:
        state = obj
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: '{found}' holds a {type(state).__name__}, not a state dict")
    bad = [
        f"{brief(k)} ({type(v).__name__})"
        for k, v in state.items()
        if not isinstance(k, str) or not isinstance(v, np.ndarray)
    ][:6]
    if bad:
        hint = "" if found else f"; its top-level keys are: {_keys(obj)}"
        raise CheckpointError(
            f"{where}: not a state dict of named tensors: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}{hint}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _keys(obj: dict) -> str:
    """The first few keys of a dict, for a message."""
    shown = [k if isinstance(k, str) and len(k) <= 80 else brief(k) for k in list(obj)[:10]]
    return ", ".join(shown) + (f" ... ({len(obj)} keys)" if len(obj) > 10 else "")


def load_torch_weights(path: str | os.PathLike, use_ema: bool = False) -> dict[str, np.ndarray]:
    """The weights in a ``.pth`` file as ``{name: np.ndarray}`` (see :func:`state_dict_from`)."""
    return state_dict_from(load_pth(path), use_ema, where=str(path))
