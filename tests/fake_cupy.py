"""A strict, NumPy-backed stand-in for CuPy, so the GPU code path runs where there is no GPU.

``install()`` puts modules named ``cupy``, ``cupyx`` and the few submodules minimlp uses
into ``sys.modules``; minimlp's backend then finds "CuPy with one GPU" and every ``--gpu``
code path runs on NumPy arrays wrapped in a device array type.  It behaves as CuPy 14
does where a difference would hide a bug on a real card, and is stricter where CuPy is
silently slow:

* **No implicit host conversion.**  ``np.asarray(d)`` raises TypeError, as in CuPy.  So do
  ``float(d)``, ``int(d)``, ``bool(d)``, ``operator.index(d)`` and iteration, which CuPy
  allows but pays for with a hidden device-to-host copy (a host sync) each time.  Only
  the explicit reads work: ``d.get()``, ``cupy.asnumpy(d)``, ``d.item()``, ``d.tolist()``;
  each one adds to :func:`host_syncs`.
* **No host arrays in device operations.**  A NumPy array in an arithmetic operation, a
  ufunc or a kernel call raises TypeError ("Unsupported type"), as in CuPy; Python and
  NumPy scalars are fine.  Creating arrays from host data (``cupy.asarray``), assigning
  host data into a device array and indexing with host integer arrays are uploads, as in
  CuPy, and work.
* **Reductions and scalar indexing return 0-d device arrays**, never host scalars.
* **dtypes as in CuPy**: ``cupyx.scipy.special.erf``/``erfc`` turn float16 into float64
  (their loops are ``e->d, f->f, d->d``).
* **User kernels.**  ``ElementwiseKernel`` and ``ReductionKernel`` bodies are read as the
  small C subset minimlp writes (declarations, assignments, casts, ``f`` literals,
  ``expf``/``erfcf``/``rsqrtf``/``exp``/``log``...) and run with NumPy, with CuPy's typing
  (``T`` bound by the array arguments, fixed-type parameters matched exactly, float16
  data promoted by the casts) and its output-shape checks.  An identifier the C code
  does not define fails as NVRTC would, with :class:`CompileException`.
* **CuPy's CUB rewrite.**  A ``ReductionKernel`` call that CuPy 14 sends through CUB
  (one input, one output, the reduced axes contiguous and at least 128 elements, unless
  ``CUPY_ACCELERATORS`` leaves out ``cub``) gets the same plain string replacements CuPy
  applies to the kernel text (cupy/_core/_cub_reduction.pyx): for a kernel whose name
  contains "mean", ``_in_ind.size()`` becomes ``_segment_size`` and ``_out_ind.size()``
  ``1.0``; then the input's name becomes ``in0`` in the map expression and the output's
  ``out0`` in the post-map expression, wherever those letters occur.

What it does not model: asynchrony (every operation finishes at once, so a missing
synchronisation goes unnoticed), the real memory pool (sizes are counted from live
arrays), cuBLAS and CUDA numerics (TF32, float16 tensor cores, the order of sums), NCCL,
multiple devices, and kernel compilation itself (the tests in test_cuda_sources.py
compile every kernel with NVRTC).  Anything minimlp does not use is absent and raises
AttributeError, so new CuPy calls are added here deliberately.
"""

from __future__ import annotations

import math
import operator
import os
import re
import sys
import time
import types
import weakref
from typing import Any

import numpy as np

from minimlp.backend import _erf_erfc_numpy

VERSION = "14.2.0"
DEVICE_NAME = "CuPy stand-in (NumPy)"


# --------------------------------------------------------------------------------------
# State shared by the stand-in's modules: sync count, memory, settings.
# --------------------------------------------------------------------------------------
class _State:
    def __init__(self) -> None:
        self.syncs = 0  # device -> host reads
        self.strict = True  # refuse implicit conversions; False: allow and count them, as CuPy does
        self.used_bytes = 0  # bytes held by live device arrays that own their memory
        self.peak_bytes = 0  # the most held since the pool was last emptied
        self.tracked: set[int] = set()  # ids of the arrays counted in used_bytes
        self.compute_types: dict[Any, int] = {}  # set_compute_type calls (TF32)
        self.device_count = 1
        self.compute_capability = "90"
        self.current_device = 0


STATE = _State()


def host_syncs() -> int:
    """Device -> host reads since :func:`install`: get, asnumpy, item, tolist (and, when not
    strict, the implicit float(), int(), bool() ... that CuPy allows)."""
    return STATE.syncs


def set_strict(strict: bool) -> None:
    """strict (the default): implicit host conversions raise TypeError; otherwise they work and
    are counted, as on CuPy, which measures how many a piece of code makes."""
    STATE.strict = strict


def _count_sync() -> None:
    STATE.syncs += 1


class CompileException(Exception):
    """What NVRTC reports for kernel code that does not compile."""


class CUDARuntimeError(RuntimeError):
    pass


def _unsupported(value: Any) -> TypeError:
    return TypeError(f"Unsupported type {type(value)}")


# --------------------------------------------------------------------------------------
# The device array.
# --------------------------------------------------------------------------------------
def _track(host: np.ndarray) -> None:
    """Count an array that owns its memory as pool memory, once, until it is freed."""
    if host.base is None and host.nbytes and id(host) not in STATE.tracked:
        STATE.tracked.add(id(host))
        STATE.used_bytes += host.nbytes
        STATE.peak_bytes = max(STATE.peak_bytes, STATE.used_bytes)
        weakref.finalize(host, _release, STATE, id(host), host.nbytes)


def _release(state: _State, key: int, nbytes: int) -> None:
    state.tracked.discard(key)
    state.used_bytes -= nbytes


def _wrap(value: Any) -> Any:
    """NumPy results -> device arrays (scalars become 0-d arrays, as CuPy returns them)."""
    if isinstance(value, np.ndarray):
        out = ndarray.__new__(ndarray)
        out._a = value
        _track(value)
        return out
    if isinstance(value, np.generic):
        return _wrap(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _operand(value: Any) -> Any:
    """A device array's data, or a scalar; host arrays are refused as CuPy refuses them."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray):
        raise _unsupported(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_operand(v) for v in value)
    return value


def _upload(value: Any) -> Any:
    """Host data allowed (an upload), device arrays unwrapped: array creation, indices, assignment."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, (list, tuple)):
        return type(value)(_upload(v) for v in value)
    return value


def _call(fn: Any, args: tuple, kwargs: dict, convert=_operand) -> Any:
    args = tuple(convert(a) for a in args)
    kwargs = {k: (_operand(v) if k == "out" else convert(v)) for k, v in kwargs.items()}
    return _wrap(fn(*args, **kwargs))


_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")


def _implicit(a: ndarray, what: str) -> np.ndarray:
    """The host value behind float(d), int(d), ...: refused, or (not strict) read and counted as CuPy does."""
    if STATE.strict:
        raise TypeError(f"{what} of a device array would copy it to the host implicitly (a hidden host "
                        "sync on a GPU); read it explicitly with .get(), .item() or cupy.asnumpy()")
    _count_sync()
    return a._a


# Methods of cupy.ndarray that behave as NumPy's and that minimlp (or its tests) use.
_METHODS = frozenset("""
    reshape transpose swapaxes astype copy ravel flatten squeeze view sum mean max min argmax argmin
    all any var std prod cumsum clip dot fill repeat take argsort sort nonzero round
""".split())
_ATTRIBUTES = frozenset("shape dtype ndim size nbytes itemsize strides flags".split())


class ndarray:  # noqa: N801  (CuPy's name)
    """A device array: a NumPy array that refuses to leave the device implicitly."""

    __array_priority__ = 100
    __hash__ = None  # type: ignore[assignment]
    _a: np.ndarray

    def __init__(self, shape: Any, dtype: Any = float) -> None:
        self._a = np.empty(shape, dtype)
        _track(self._a)

    def __getattr__(self, name: str) -> Any:
        if name in _ATTRIBUTES:
            return getattr(self._a, name)
        if name in _METHODS:
            method = getattr(self._a, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                result = _call(method, args, kwargs)
                return self if isinstance(result, ndarray) and result._a is self._a else result

            return call
        raise AttributeError(f"the CuPy stand-in does not model ndarray.{name}")

    @property
    def T(self) -> ndarray:  # noqa: N802
        return _wrap(self._a.T)

    @property
    def device(self) -> Device:
        return Device(0)

    # Explicit transfers.
    def get(self, stream: Any = None, order: str = "C", out: np.ndarray | None = None,
            blocking: bool = True) -> np.ndarray:
        _count_sync()
        if out is not None:
            np.copyto(out, self._a)
            return out
        return np.array(self._a, order=order)

    def item(self) -> Any:
        if self._a.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        _count_sync()
        return self._a.item()

    def tolist(self) -> Any:
        _count_sync()
        return self._a.tolist()

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, not {type(arr)}")
        if arr.shape != self._a.shape or arr.dtype != self._a.dtype:
            raise ValueError("Shape or dtype mismatch")
        np.copyto(self._a, arr)

    # Implicit transfers: refused.
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(_IMPLICIT)

    def __float__(self) -> float:
        return float(_implicit(self, "float()"))

    def __int__(self) -> int:
        return int(_implicit(self, "int()"))

    def __complex__(self) -> complex:
        return complex(_implicit(self, "complex()"))

    def __bool__(self) -> bool:
        return bool(_implicit(self, "bool()"))

    def __index__(self) -> int:
        return operator.index(_implicit(self, "using as an index"))

    def __iter__(self) -> Any:
        if STATE.strict:
            _implicit(self, "iteration")
        return (self[i] for i in range(len(self)))

    def __len__(self) -> int:
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return self._a.shape[0]

    def __repr__(self) -> str:
        return f"<device array {self._a.dtype} {self._a.shape}>"

    __str__ = __repr__

    # Indexing: host integer/boolean indices and host values are uploads, as in CuPy.
    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._a[_upload(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._a[_upload(key)] = _upload(value)

    # NumPy's ufuncs and functions on device arrays run on the device (CuPy dispatches them).
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method != "__call__":
            return NotImplemented
        if "out" in kwargs:
            kwargs["out"] = tuple(_operand(o) for o in kwargs["out"])
        return _wrap(ufunc(*(_operand(x) for x in inputs), **kwargs))

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        if func.__name__ not in _FUNCTIONS:
            raise TypeError(f"the CuPy stand-in does not model numpy.{func.__name__} on device arrays")
        return _call(func, args, kwargs)


def _binary(np_func: Any, reflected: bool = False, inplace: bool = False) -> Any:
    def op(self: ndarray, other: Any) -> Any:
        other = _operand(other)
        if inplace:
            np_func(self._a, other, out=self._a)
            return self
        return _wrap(np_func(other, self._a) if reflected else np_func(self._a, other))

    return op


for _name, _func in {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
                     "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
                     "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
                     "lshift": np.left_shift, "rshift": np.right_shift}.items():
    setattr(ndarray, f"__{_name}__", _binary(_func))
    setattr(ndarray, f"__r{_name}__", _binary(_func, reflected=True))
    setattr(ndarray, f"__i{_name}__", _binary(_func, inplace=True))
for _name, _func in {"lt": np.less, "le": np.less_equal, "eq": np.equal, "ne": np.not_equal,
                     "gt": np.greater, "ge": np.greater_equal}.items():
    setattr(ndarray, f"__{_name}__", _binary(_func))
for _name, _func in {"neg": np.negative, "pos": np.positive, "abs": np.absolute, "invert": np.invert}.items():
    setattr(ndarray, f"__{_name}__", lambda self, f=_func: _wrap(f(self._a)))


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: np.ndarray | None = None,
            blocking: bool = True) -> np.ndarray:
    if isinstance(a, ndarray):
        return a.get(out=out, order=order)
    if out is not None:
        np.copyto(out, a)
        return out
    return np.asarray(a, order=order)


def get_array_module(*args: Any) -> types.ModuleType:
    return sys.modules["cupy"] if any(isinstance(a, ndarray) for a in args) else np


# --------------------------------------------------------------------------------------
# Module-level functions: NumPy's, on device arrays.  Creation functions accept host data
# (an upload); the others refuse host arrays.
# --------------------------------------------------------------------------------------
_CREATION = frozenset("asarray array ascontiguousarray empty empty_like zeros zeros_like ones ones_like full "
                      "full_like arange linspace eye".split())
_FUNCTIONS = _CREATION | frozenset("""
    exp log log1p expm1 sqrt square tanh sin cos abs absolute sign negative reciprocal power
    add subtract multiply divide true_divide maximum minimum fmax fmin where clip isfinite isnan isinf
    logical_and logical_or logical_not greater greater_equal less less_equal equal not_equal
    dot matmul concatenate stack broadcast_to transpose reshape swapaxes moveaxis expand_dims squeeze
    sum mean max amax min amin argmax argmin argsort sort cumsum prod any all count_nonzero copyto
    floor ceil rint round
""".split())
_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
           "uint64", "bool_", "dtype", "newaxis", "pi", "inf", "nan")


def _module_function(name: str) -> Any:
    np_func = getattr(np, name)
    convert = _upload if name in _CREATION else _operand

    def fn(*args: Any, **kwargs: Any) -> Any:
        if name in ("asarray", "array", "ascontiguousarray") and args and isinstance(args[0], ndarray):
            if name == "array" and kwargs.get("copy", True) is not False:
                return _wrap(np.array(args[0]._a, **{k: v for k, v in kwargs.items() if k != "copy"}))
        return _call(np_func, args, kwargs, convert)

    fn.__name__ = name
    return fn


# --------------------------------------------------------------------------------------
# Random numbers: CuPy's Generator methods (the numbers differ from CuPy's XORWOW; only
# shapes, dtypes and the distributions are modelled).
# --------------------------------------------------------------------------------------
class Generator:
    def __init__(self, seed: Any = None) -> None:
        self._rng = np.random.default_rng(seed)
        self.bit_generator = types.SimpleNamespace()  # CuPy's keeps no exportable state

    def random(self, size: Any = None, dtype: Any = np.float64, out: Any = None) -> Any:
        return _wrap(np.asarray(self._rng.random(size, dtype=dtype)))

    def standard_normal(self, size: Any = None, dtype: Any = np.float64, out: Any = None) -> Any:
        return _wrap(np.asarray(self._rng.standard_normal(size, dtype=dtype)))

    def uniform(self, low: float = 0.0, high: float = 1.0, size: Any = None, dtype: Any = np.float64) -> Any:
        return _wrap(np.asarray(self._rng.uniform(low, high, size)).astype(dtype))

    def integers(self, low: int, high: int | None = None, size: Any = None, dtype: Any = np.int64,
                 endpoint: bool = False) -> Any:
        return _wrap(np.asarray(self._rng.integers(low, high, size, dtype=dtype, endpoint=endpoint)))

    def beta(self, a: float, b: float, size: Any = None, dtype: Any = np.float64) -> Any:
        return _wrap(np.asarray(self._rng.beta(a, b, size)).astype(dtype))


_legacy_rng = Generator(0)


def _random_module() -> types.ModuleType:
    m = types.ModuleType("cupy.random")
    m.default_rng = lambda seed=None: Generator(seed)
    m.Generator = Generator
    m.seed = lambda seed=None: _legacy_rng.__init__(seed)
    m.standard_normal = lambda size=None, dtype=float: _legacy_rng.standard_normal(size, dtype)
    m.random = lambda size=None, dtype=float: _legacy_rng.random(size, dtype)
    m.rand = lambda *shape, dtype=float: _legacy_rng.random(shape or None, dtype)
    m.randn = lambda *shape, dtype=float: _legacy_rng.standard_normal(shape or None, dtype)
    m.uniform = lambda low=0.0, high=1.0, size=None, dtype=float: _legacy_rng.uniform(low, high, size, dtype)
    m.randint = lambda low, high=None, size=None, dtype=int: _legacy_rng.integers(low, high, size, dtype)
    return _strict(m)


# --------------------------------------------------------------------------------------
# cupy.cuda: one device, streams and events that finish at once, a counting memory pool.
# --------------------------------------------------------------------------------------
class Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = STATE.current_device if device is None else int(device)
        if not 0 <= self.id < STATE.device_count:
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")

    @property
    def compute_capability(self) -> str:
        return STATE.compute_capability

    def use(self) -> None:
        STATE.current_device = self.id

    def synchronize(self) -> None:
        pass

    def __enter__(self) -> Device:
        self._previous = STATE.current_device
        self.use()
        return self

    def __exit__(self, *exc: Any) -> None:
        STATE.current_device = self._previous


class Event:
    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        self.disable_timing = disable_timing
        self._time: float | None = None
        self._synchronized = False

    def record(self, stream: Any = None) -> None:
        self._time, self._synchronized = time.perf_counter(), False

    def synchronize(self) -> None:
        if self._time is not None:
            self._synchronized = True

    @property
    def done(self) -> bool:
        if self._time is not None:
            self._synchronized = True
        return True


def get_elapsed_time(start: Event, end: Event) -> float:
    """Milliseconds between two recorded events; like CUDA, the end must have been waited for."""
    if start._time is None or end._time is None:
        raise CUDARuntimeError("cudaErrorInvalidResourceHandle: an event was not recorded")
    if start.disable_timing or end.disable_timing:
        raise CUDARuntimeError("cudaErrorInvalidResourceHandle: an event was created with disable_timing")
    if not end._synchronized:
        raise CUDARuntimeError("cudaErrorNotReady: device not ready (synchronize the end event first)")
    return 1e3 * (end._time - start._time)


class Stream:
    _current: list[Stream] = []

    def __init__(self, null: bool = False, non_blocking: bool = False, ptr: int = 0) -> None:
        self.null, self.non_blocking = null, non_blocking
        self.ptr = 0 if null else id(self)

    def record(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event: Event) -> None:
        if event._time is None:
            raise CUDARuntimeError("cudaErrorInvalidResourceHandle: waiting on an event never recorded")

    def synchronize(self) -> None:
        pass

    def use(self) -> Stream:
        Stream._current[-1:] = [self]
        return self

    def __enter__(self) -> Stream:
        Stream._current.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        Stream._current.pop()


Stream.null = Stream(null=True)


def get_current_stream(device_id: int = -1) -> Stream:
    return Stream._current[-1] if Stream._current else Stream.null


class MemoryPool:
    """Bytes of live device arrays (used) and the most held since the last free_all_blocks (total)."""

    def used_bytes(self) -> int:
        return STATE.used_bytes

    def total_bytes(self) -> int:
        return STATE.peak_bytes

    def free_bytes(self) -> int:
        return STATE.peak_bytes - STATE.used_bytes

    def free_all_blocks(self, stream: Any = None) -> None:
        STATE.peak_bytes = STATE.used_bytes

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        pass


_memory_pool = MemoryPool()


def _runtime_module() -> types.ModuleType:
    m = types.ModuleType("cupy.cuda.runtime")
    m.CUDARuntimeError = CUDARuntimeError
    m.is_hip = False
    m.getDeviceCount = lambda: STATE.device_count
    m.getDevice = lambda: STATE.current_device
    m.runtimeGetVersion = lambda: 12090
    m.driverGetVersion = lambda: 12090

    def get_device_properties(device: int) -> dict[str, Any]:
        Device(device)
        major, minor = STATE.compute_capability[:-1], STATE.compute_capability[-1]
        return {"name": DEVICE_NAME.encode(), "totalGlobalMem": 1 << 30, "major": int(major),
                "minor": int(minor), "multiProcessorCount": 1, "clockRate": 1_000_000}

    m.getDeviceProperties = get_device_properties
    return _strict(m)


def _cuda_module() -> types.ModuleType:
    m = types.ModuleType("cupy.cuda")
    m.Device, m.Event, m.Stream, m.MemoryPool = Device, Event, Stream, MemoryPool
    m.get_elapsed_time, m.get_current_stream = get_elapsed_time, get_current_stream
    m.runtime = _runtime_module()
    m.compiler = _strict(types.ModuleType("cupy.cuda.compiler"))
    m.compiler.CompileException = CompileException
    m.nvrtc = _strict(types.ModuleType("cupy.cuda.nvrtc"))
    m.nvrtc.getVersion = lambda: (12, 9)
    m.is_available = lambda: STATE.device_count > 0
    return _strict(m)


# --------------------------------------------------------------------------------------
# User kernels: CuPy's parameter lists and typing, and the kernel bodies read as C.
# --------------------------------------------------------------------------------------
_C_TYPES = {"float": np.float32, "double": np.float64, "float16": np.float16, "half": np.float16,
            "int": np.int32, "long long": np.int64, "bool": np.bool_, "unsigned int": np.uint32,
            "signed char": np.int8, "unsigned char": np.uint8, "short": np.int16, "long": np.int64}
_DTYPE_NAMES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                "uint32", "uint64", "bool", "complex64", "complex128"}


class ParameterInfo:
    """One parameter of a kernel: ``[raw] <type> <name>``, type a dtype name or a type variable."""

    def __init__(self, text: str, is_const: bool) -> None:
        words = text.split()
        self.raw = words[0] == "raw"
        if self.raw:
            words = words[1:]
        if len(words) != 2 or not words[1].isidentifier():
            raise ValueError(f"Invalid parameter: {text!r}")
        type_name, self.name = words
        self.is_const = is_const
        if type_name in _DTYPE_NAMES:
            self.dtype = np.dtype(type_name)
            self.ctype = {np.float32: "float", np.float64: "double", np.float16: "float16",
                          np.bool_: "bool"}.get(self.dtype.type, type_name)
        elif type_name.isidentifier():
            self.dtype, self.ctype = None, type_name
        else:
            raise ValueError(f"Invalid parameter type: {type_name!r}")


def _params(text: str, is_const: bool) -> tuple[ParameterInfo, ...]:
    return tuple(ParameterInfo(p, is_const) for p in text.split(",") if p.strip())


def _decide_types(in_params: tuple, out_params: tuple, in_args: list, out_args: list) -> dict[str, np.dtype]:
    """CuPy's _decide_params_type_core: bind type variables, check fixed types exactly."""
    types_: dict[str, np.dtype] = {}
    for group, args in ((out_params, out_args), (in_params, in_args)):
        if not args:  # outputs not given: they will be allocated
            continue
        for p, a in zip(group, args, strict=True):
            if not isinstance(a, np.ndarray):
                if group is out_params:
                    raise TypeError("Output arguments must be cupy.ndarray")
                continue  # a scalar binds nothing; it is cast to the parameter's type
            if p.dtype is not None:
                if a.dtype != p.dtype:
                    raise TypeError(f"Type is mismatched. {p.name} {a.dtype.type} {p.dtype.type}")
            elif p.ctype in types_:
                if types_[p.ctype] != a.dtype:
                    raise TypeError(f"Type is mismatched. {p.name} {a.dtype.type} {types_[p.ctype].type} {p.ctype}")
            else:
                types_[p.ctype] = a.dtype
    for p in in_params + out_params:
        if p.dtype is None and p.ctype not in types_:
            raise TypeError(f"Cannot determine the type of {p.name} ({p.ctype}): no array argument binds it")
    return types_


def _param_dtype(p: ParameterInfo, types_: dict[str, np.dtype]) -> np.dtype:
    return p.dtype if p.dtype is not None else types_[p.ctype]


def _kernel_args(args: tuple, nin: int, nargs: int, name: str) -> tuple[list, list]:
    if len(args) not in (nin, nargs):
        raise TypeError(f"Wrong number of arguments for {name!r}. It must be either {nin} or {nargs} "
                        f"(with outputs), but given {len(args)}.")
    converted = []
    for a in args:
        if isinstance(a, ndarray):
            converted.append(a._a)
        elif isinstance(a, (bool, int, float, complex, np.generic)):
            converted.append(a)
        else:
            raise _unsupported(a)
    return converted[:nin], converted[nin:]


class _Indexer:
    def __init__(self, size: int) -> None:
        self._size = size

    def size(self) -> int:
        return self._size


class ElementwiseKernel:
    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 reduce_dims: bool = True, preamble: str = "", no_return: bool = False,
                 return_tuple: bool = False, **kwargs: Any) -> None:
        if preamble or kwargs.get("loop_prep") or kwargs.get("after_loop"):
            raise NotImplementedError("the CuPy stand-in does not model kernel preambles or loop code")
        self.in_params, self.out_params = _params(in_params, True), _params(out_params, False)
        self.params = self.in_params + self.out_params
        self.nin, self.nout, self.nargs = len(self.in_params), len(self.out_params), len(self.params)
        self.operation, self.name = operation, name
        self.no_return, self.return_tuple = no_return, return_tuple
        self._program = _Program(operation, [p.name for p in self.in_params], [p.name for p in self.out_params],
                                 self.name, {p.ctype for p in self.params})

    def __call__(self, *args: Any, size: int | None = None, stream: Any = None, block_size: int = 128) -> Any:
        if size is not None or any(p.raw for p in self.params):
            raise NotImplementedError("the CuPy stand-in does not model raw parameters or size=")
        in_args, out_args = _kernel_args(args, self.nin, self.nargs, self.name)
        arrays = [a for a in in_args + out_args if isinstance(a, np.ndarray)]
        if not arrays:
            raise ValueError("Loop size is undecided.")
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        types_ = _decide_types(self.in_params, self.out_params, in_args, out_args)
        if out_args:
            for a in out_args:
                if a.shape != shape:
                    raise ValueError("Out shape is mismatched")
        else:
            out_args = [np.empty(shape, _param_dtype(p, types_)) for p in self.out_params]
        env = {p.name: _as_param(a, _param_dtype(p, types_)) for p, a in zip(self.in_params, in_args, strict=True)}
        outputs = dict(zip((p.name for p in self.out_params), out_args, strict=True))
        self._program.run(env, outputs, types_)
        results = [_wrap(a) for a in out_args]
        if self.no_return:
            return None
        return results[0] if self.nout == 1 and not self.return_tuple else tuple(results)


def _as_param(a: Any, dtype: np.dtype) -> Any:
    """An argument as the kernel sees it: arrays as they are, scalars cast to the parameter's type."""
    return a if isinstance(a, np.ndarray) else dtype.type(a)


class ReductionKernel:
    def __init__(self, in_params: str, out_params: str, map_expr: str, reduce_expr: str, post_map_expr: str,
                 identity: Any, name: str = "reduce_kernel", reduce_type: str | None = None,
                 reduce_dims: bool = True, preamble: str = "", options: tuple = ()) -> None:
        if preamble:
            raise NotImplementedError("the CuPy stand-in does not model kernel preambles")
        self.in_params, self.out_params = _params(in_params, True), _params(out_params, False)
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity = "" if identity is None else str(identity)
        self.name = name
        self.reduce_type = self.out_params[0].ctype if reduce_type is None else reduce_type
        self._reducer = _reducer(reduce_expr)

    def __call__(self, *args: Any, out: Any = None, axis: Any = None, keepdims: bool = False,
                 stream: Any = None) -> Any:
        in_args, out_args = _kernel_args(args, self.nin, self.nargs, self.name)
        if out is not None:
            if self.nout != 1:
                raise NotImplementedError("")
            if out_args:
                raise ValueError("cannot specify 'out' as both a positional and keyword argument")
            if not isinstance(out, ndarray):
                raise TypeError("Output arguments type must be cupy.ndarray")
            out_args = [out._a]
        arrays = [a for a in in_args if isinstance(a, np.ndarray)]
        if not arrays:
            raise ValueError("Loop size is undecided.")
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        in_args = [np.broadcast_to(a, shape) if isinstance(a, np.ndarray) and a.shape != shape else a
                   for a in in_args]
        types_ = _decide_types(self.in_params, self.out_params, in_args, out_args)
        ndim = len(shape)
        axes = tuple(range(ndim)) if axis is None else tuple(
            a % ndim if -ndim <= a < ndim else _axis_error(a, ndim) for a in np.atleast_1d(axis).tolist())
        reduce_axis = tuple(sorted(set(axes)))
        out_axis = tuple(i for i in range(ndim) if i not in reduce_axis)
        out_shape = tuple(1 if i in reduce_axis else n for i, n in enumerate(shape)) if keepdims else tuple(
            shape[i] for i in out_axis)
        out_dtypes = [_param_dtype(p, types_) for p in self.out_params]
        if out_args:
            for a in out_args:
                if a.shape != out_shape:
                    raise ValueError("Out shape is mismatched")
        else:
            out_args = [np.empty(out_shape, t) for t in out_dtypes]
        if self.identity == "" and 0 in shape:
            raise ValueError(f"zero-size array to reduction operation {self.name} which has no identity")
        reduce_dtype = _reduce_dtype(self.reduce_type, types_)
        cub = _cub_plan(in_args, out_args, shape, reduce_axis, out_axis)
        in_names, out_names = [p.name for p in self.in_params], [p.name for p in self.out_params]
        map_expr, post_map_expr = self.map_expr, self.post_map_expr
        sizes = {"_in_ind": _Indexer(math.prod(shape)), "_out_ind": _Indexer(math.prod(out_shape))}
        if cub is not None:
            map_expr, post_map_expr, in_names, out_names, sizes = _cub_rewrite(
                self.name, map_expr, post_map_expr, in_names, out_names, cub, shape)
        env = {n: _as_param(a, _param_dtype(p, types_))
               for n, p, a in zip(in_names, self.in_params, in_args, strict=True)}
        type_names = {p.ctype for p in self.in_params + self.out_params} | {self.reduce_type}
        mapped = _Program(map_expr, list(env) + list(sizes), [], self.name, type_names, expression=True).value(
            {**env, **sizes}, types_)
        mapped = np.broadcast_to(np.asarray(mapped), shape).astype(reduce_dtype)
        reduced = self._reducer(mapped, reduce_axis, reduce_dtype).reshape(out_shape)
        post = _Program(post_map_expr, ["a", *sizes], out_names, self.name, type_names)
        post.run({"a": reduced, **sizes}, dict(zip(out_names, out_args, strict=True)), types_)
        results = [_wrap(a) for a in out_args]
        return results[0] if self.nout == 1 else tuple(results)


def _axis_error(axis: int, ndim: int) -> int:
    raise np.exceptions.AxisError(axis, ndim)


def _reduce_dtype(reduce_type: str, types_: dict[str, np.dtype]) -> np.dtype:
    if reduce_type in types_:
        return types_[reduce_type]
    if reduce_type in _C_TYPES:
        return np.dtype(_C_TYPES[reduce_type])
    if reduce_type in _DTYPE_NAMES:
        return np.dtype(reduce_type)
    raise CompileException(f'identifier "{reduce_type}" is undefined (reduce_type)')


def _reducer(reduce_expr: str) -> Any:
    text = re.sub(r"\s+", "", reduce_expr)
    if text in ("a+b", "b+a"):
        return lambda x, axis, dtype: x.sum(axis=axis, dtype=dtype)
    if text in ("max(a,b)", "max(b,a)", "fmaxf(a,b)", "fmax(a,b)"):
        return lambda x, axis, dtype: x.max(axis=axis)
    if text in ("min(a,b)", "min(b,a)", "fminf(a,b)", "fmin(a,b)"):
        return lambda x, axis, dtype: x.min(axis=axis)
    raise NotImplementedError(f"the CuPy stand-in does not model the reduction {reduce_expr!r}")


# The CUB path of CuPy 14's ReductionKernel (cupy/_core/_cub_reduction.pyx):
# _can_use_cub_block_reduction decides, _try_to_call_cub_reduction rewrites the text.
CUB_REDUCE_SIZE_THRESHOLD = 128


def _cub_plan(in_args: list, out_args: list, shape: tuple, reduce_axis: tuple,
              out_axis: tuple) -> dict[str, Any] | None:
    accelerators = os.environ.get("CUPY_ACCELERATORS", "cub").split(",")
    if "cub" not in accelerators or len(in_args) != 1 or len(out_args) != 1:
        return None
    arr = in_args[0]
    if not isinstance(arr, np.ndarray):
        return None
    ndim = arr.ndim
    contiguous_axes = reduce_axis == tuple(range(reduce_axis[0], reduce_axis[-1] + 1)) if reduce_axis else False
    if arr.flags.f_contiguous:  # CuPy checks F order first, even for arrays that are both
        if not (contiguous_axes and reduce_axis[0] == 0) or reduce_axis + out_axis != tuple(range(ndim)):
            return None
    elif arr.flags.c_contiguous:
        if not (contiguous_axes and reduce_axis[-1] == ndim - 1) or out_axis + reduce_axis != tuple(range(ndim)):
            return None
    else:
        return None
    segment = math.prod(shape[i] for i in reduce_axis)
    if segment == 0 or segment < CUB_REDUCE_SIZE_THRESHOLD:
        return None
    return {"segment_size": segment, "full": not out_axis}


def _cub_rewrite(name: str, map_expr: str, post_map_expr: str, in_names: list, out_names: list,
                 cub: dict[str, Any], shape: tuple) -> tuple[str, str, list, list, dict]:
    """CuPy's plain string replacements, in CuPy's order; the CUB kernel has no _in_ind/_out_ind."""
    if not cub["full"] and "mean" in name:
        post_map_expr = post_map_expr.replace("_in_ind.size()", "_segment_size")
        post_map_expr = post_map_expr.replace("_out_ind.size()", "1.0")
    old_in0, old_out0 = in_names[0], out_names[0]
    if old_in0 != "in0" or old_out0 != "out0":
        map_expr = map_expr.replace(old_in0, "in0")
        post_map_expr = post_map_expr.replace(old_out0, "out0")
    sizes: dict[str, Any] = {"_segment_size": cub["segment_size"], "_array_size": cub["segment_size"]}
    if cub["full"]:  # two passes; the first keeps partial sums (checked to compile, not run)
        first = post_map_expr
        if "mean" in name:
            first = first.replace("_in_ind.size()", "1.0").replace("_out_ind.size()", "1.0")
            post_map_expr = post_map_expr.replace("_in_ind.size()", "_array_size")
            post_map_expr = post_map_expr.replace("_out_ind.size()", "1.0")
        _Program(first, ["a", *sizes], ["out0"], name + "_pass1", set())
    return map_expr, post_map_expr, ["in0"], ["out0"], sizes


# --------------------------------------------------------------------------------------
# The C subset of kernel bodies, translated to Python over NumPy arrays.
#   statement: [const] [type] name = expression
#   expression: + - * / with C precedence, unary -, (type) casts, calls, literals (1.0f is a
#   float, 1.0 a double, 1 an int), x.size() on the index objects.
# Arithmetic follows C's types: float with float stays float32, a double literal makes
# double, float16 with float gives float (CuPy's float16 converts to float).
# --------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[fF]?)|(?P<id>[A-Za-z_]\w*)"
                    r"|(?P<op>[-+*/%(),.=]))")
_TYPE_WORDS = {"const", "unsigned", "signed", "long", "short"}


def _c_dtype(name: str, types_: dict[str, np.dtype]) -> np.dtype:
    if name in types_:
        return types_[name]
    return np.dtype(_C_TYPES[name])


def _cast(value: Any, dtype: np.dtype) -> Any:
    if isinstance(value, np.ndarray):
        return value.astype(dtype)
    return dtype.type(value)


def _c_div(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        return int(a / b)  # C integer division truncates
    return np.true_divide(a, b)


def _float_fn(fn: Any, dtype: Any) -> Any:
    """A CUDA math function of fixed type: argument converted, result in that type."""
    return lambda *xs: np.asarray(fn(*(np.asarray(x, dtype) for x in xs))).astype(dtype)[()]


def _erfc64(x: Any) -> Any:
    return _erf_erfc_numpy(np.asarray(x, np.float64))[1]


def _erf64(x: Any) -> Any:
    return _erf_erfc_numpy(np.asarray(x, np.float64))[0]


def _overloaded(fn: Any) -> Any:
    """A C++ overloaded math function (exp, log, ...): the result has the argument's float type."""
    def call(*xs: Any) -> Any:
        arrays = [np.asarray(x) for x in xs]
        dtype = np.result_type(*arrays)
        dtype = dtype if dtype.kind == "f" else np.dtype(np.float64)
        return np.asarray(fn(*(a.astype(np.float64) for a in arrays))).astype(dtype)[()]

    return call


_C_FUNCTIONS = {
    "expf": _float_fn(np.exp, np.float32), "logf": _float_fn(np.log, np.float32),
    "sqrtf": _float_fn(np.sqrt, np.float32), "rsqrtf": _float_fn(lambda x: 1 / np.sqrt(x), np.float32),
    "tanhf": _float_fn(np.tanh, np.float32), "fabsf": _float_fn(np.abs, np.float32),
    "erff": _float_fn(_erf64, np.float32), "erfcf": _float_fn(_erfc64, np.float32),
    "fmaxf": _float_fn(np.fmax, np.float32), "fminf": _float_fn(np.fmin, np.float32),
    "exp": _overloaded(np.exp), "log": _overloaded(np.log), "sqrt": _overloaded(np.sqrt),
    "rsqrt": _overloaded(lambda x: 1 / np.sqrt(x)), "tanh": _overloaded(np.tanh), "erf": _overloaded(_erf64),
    "erfc": _overloaded(_erfc64), "abs": _overloaded(np.abs), "fabs": _overloaded(np.abs),
    "max": np.maximum, "min": np.minimum,
}


class _Program:
    """A kernel body (statements) or a map expression, checked for undefined names up front."""

    def __init__(self, text: str, inputs: list[str], outputs: list[str], kernel: str, type_names: set[str],
                 expression: bool = False) -> None:
        self.kernel, self.inputs, self.outputs = kernel, set(inputs), set(outputs)
        self.type_names = set(type_names) | set(_C_TYPES)
        self.defined = set(inputs) | set(outputs)
        if any(ch in text for ch in "{}?<>!&|[]#"):
            raise NotImplementedError(f"the CuPy stand-in does not model this C code in {kernel}: {text!r}")
        self.statements: list[tuple[str | None, str | None, str]] = []  # (target, declared type, python)
        if expression:
            self.statements.append((None, None, self._translate(text)))
            return
        for stmt in text.split(";"):
            if stmt.strip():
                self.statements.append(self._statement(stmt.strip()))

    def _error(self, message: str) -> CompileException:
        return CompileException(f"{self.kernel}: error: {message}")

    def _statement(self, stmt: str) -> tuple[str, str | None, str]:
        left, eq, right = stmt.partition("=")
        if not eq or right.startswith("="):
            raise NotImplementedError(f"the CuPy stand-in models only assignments, not {stmt!r} in {self.kernel}")
        words = left.split()
        target = words[-1] if words else ""
        if not target.isidentifier():
            raise self._error(f"expected an identifier before '=' in {stmt!r}")
        type_words = [w for w in words[:-1] if w != "const"]
        declared = " ".join(type_words) or None
        if declared is not None and declared not in self.type_names:
            raise self._error(f'identifier "{declared}" is undefined')
        if declared is None:
            if target in self.inputs:
                raise self._error(f'expression must be a modifiable lvalue ("{target}" is an input)')
            if target not in self.defined:
                raise self._error(f'identifier "{target}" is undefined')
        self.defined.add(target)
        return target, declared, self._translate(right)

    def _translate(self, text: str) -> str:
        tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise NotImplementedError(f"the CuPy stand-in cannot read {text[pos:]!r} in {self.kernel}")
            kind = m.lastgroup
            tokens.append((kind, m.group(kind)))
            pos = m.end()
        parser = _Parser(tokens, self)
        code = parser.expression()
        if parser.i != len(tokens):
            raise self._error(f"unexpected {tokens[parser.i][1]!r} in {text!r}")
        return code

    def value(self, env: dict[str, Any], types_: dict[str, np.dtype]) -> Any:
        return self.run(env, {}, types_)

    def run(self, env: dict[str, Any], outputs: dict[str, np.ndarray], types_: dict[str, np.dtype]) -> Any:
        scope = {**env, **outputs, **_C_FUNCTIONS, "_cast": _cast, "_div": _c_div, "_t": types_,
                 "_dt": _c_dtype, "_f32": np.float32, "_f64": np.float64}
        result = None
        for target, declared, code in self.statements:
            result = eval(code, {"__builtins__": {}}, scope)  # noqa: S307  (translated from the kernel text)
            if target is None:
                continue
            if declared is not None:
                scope[target] = _cast(result, _c_dtype(declared, types_))
            elif target in outputs:
                dest = outputs[target]
                np.copyto(dest, np.broadcast_to(np.asarray(result), dest.shape), casting="unsafe")
                scope[target] = dest  # later statements read what was stored, as a C reference does
            else:
                scope[target] = result
        return result


class _Parser:
    """Recursive descent over the tokens, emitting a fully parenthesised Python expression."""

    def __init__(self, tokens: list[tuple[str, str]], program: _Program) -> None:
        self.tokens, self.i, self.program = tokens, 0, program

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise self.program._error(f"expected {value!r}")
        self.i += 1
        return tok

    def expression(self) -> str:
        code = self.term()
        while self.peek() and self.peek()[1] in "+-":
            op = self.take()[1]
            code = f"({code} {op} {self.term()})"
        return code

    def term(self) -> str:
        code = self.unary()
        while self.peek() and self.peek()[1] in ("*", "/", "%"):
            op = self.take()[1]
            right = self.unary()
            code = f"_div({code}, {right})" if op == "/" else f"({code} {op} {right})"
        return code

    def _cast_type(self) -> str | None:
        """The type name if the tokens at the cursor are a cast '(' type ')'."""
        words, j = [], 1
        while (tok := self.peek(j)) is not None and tok[0] == "id" and (tok[1] in _TYPE_WORDS or not words):
            words.append(tok[1])
            j += 1
        if words and self.peek(j) == ("op", ")") and self.peek() == ("op", "("):
            name = " ".join(w for w in words if w != "const")
            if name in self.program.type_names:
                self.i += j + 1
                return name
        return None

    def unary(self) -> str:
        tok = self.peek()
        if tok is not None and tok[1] in ("-", "+"):
            self.take()
            return f"({tok[1]}{self.unary()})"
        if tok == ("op", "("):
            cast = self._cast_type()
            if cast is not None:
                return f"_cast({self.unary()}, _dt({cast!r}, _t))"
        return self.postfix()

    def postfix(self) -> str:
        tok = self.take()
        kind, text = tok
        if kind == "num":
            if text[-1] in "fF":
                return f"_f32({text[:-1]!r})"
            return f"_f64({text!r})" if any(c in text for c in ".eE") else text
        if text == "(":
            code = self.expression()
            self.take(")")
            return f"({code})"
        if kind != "id":
            raise self.program._error(f"unexpected {text!r}")
        if self.peek() == ("op", "("):  # a function call
            if text not in _C_FUNCTIONS:
                raise self.program._error(f'identifier "{text}" is undefined')
            self.take("(")
            args = []
            while self.peek() != ("op", ")"):
                args.append(self.expression())
                if self.peek() == ("op", ","):
                    self.take(",")
            self.take(")")
            return f"{text}({', '.join(args)})"
        if text not in self.program.defined:
            raise self.program._error(f'identifier "{text}" is undefined')
        if self.peek() == ("op", "."):  # _in_ind.size()
            self.take(".")
            method = self.take()[1]
            self.take("(")
            self.take(")")
            return f"{text}.{method}()"
        return text


# --------------------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------------------
def _strict(module: types.ModuleType) -> types.ModuleType:
    """Make a missing attribute an AttributeError that says the stand-in lacks it."""
    def missing(name: str) -> Any:
        raise AttributeError(f"the CuPy stand-in does not model {module.__name__}.{name}")

    module.__getattr__ = missing  # type: ignore[attr-defined]
    return module


def _special_ufunc(index: int) -> Any:
    # CuPy's loops are e->d, f->f, d->d: float16 comes back as float64.
    def fn(x: Any) -> Any:
        a = _operand(x)
        dtype = {np.float16: np.float64, np.float32: np.float32}.get(np.asarray(a).dtype.type, np.float64)
        return _wrap(np.asarray(_erf_erfc_numpy(np.asarray(a, np.float64))[index]).astype(dtype))

    return fn


def _build_modules() -> dict[str, types.ModuleType]:
    cupy = types.ModuleType("cupy")
    cupy.__version__ = VERSION
    cupy.__file__ = __file__
    cupy.__path__ = []  # a package, so "import cupy.cuda" works
    cupy.ndarray = ndarray
    cupy.asnumpy, cupy.get_array_module = asnumpy, get_array_module
    cupy.ElementwiseKernel, cupy.ReductionKernel = ElementwiseKernel, ReductionKernel
    cupy.get_default_memory_pool = lambda: _memory_pool
    cupy.get_default_pinned_memory_pool = lambda: _memory_pool
    for name in _FUNCTIONS:
        setattr(cupy, name, _module_function(name))
    for name in _DTYPES:
        setattr(cupy, name, getattr(np, name))
    cupy.bool = np.bool_
    cupy.random = _random_module()
    cupy.cuda = _cuda_module()
    core = _strict(types.ModuleType("cupy._core"))
    core.__path__ = []
    linalg = _strict(types.ModuleType("cupy._core._routines_linalg"))
    linalg.set_compute_type = lambda dtype, compute_type: STATE.compute_types.__setitem__(np.dtype(dtype),
                                                                                        compute_type)
    linalg.get_compute_type = lambda dtype: STATE.compute_types.get(np.dtype(dtype), 1)
    core._routines_linalg = linalg
    cupy._core = core
    _strict(cupy)

    cupyx = types.ModuleType("cupyx")
    cupyx.__path__ = []
    cupyx.empty_pinned = lambda shape, dtype=float, order="C": np.empty(shape, dtype, order)
    cupyx.zeros_pinned = lambda shape, dtype=float, order="C": np.zeros(shape, dtype, order)
    scipy = types.ModuleType("cupyx.scipy")
    scipy.__path__ = []
    special = types.ModuleType("cupyx.scipy.special")
    special.erf, special.erfc = _special_ufunc(0), _special_ufunc(1)
    scipy.special = _strict(special)
    cupyx.scipy = _strict(scipy)
    _strict(cupyx)
    return {"cupy": cupy, "cupy.random": cupy.random, "cupy.cuda": cupy.cuda,
            "cupy.cuda.runtime": cupy.cuda.runtime, "cupy.cuda.compiler": cupy.cuda.compiler,
            "cupy.cuda.nvrtc": cupy.cuda.nvrtc, "cupy._core": core, "cupy._core._routines_linalg": linalg,
            "cupyx": cupyx, "cupyx.scipy": scipy, "cupyx.scipy.special": special}


def _is_cupy_module(name: str) -> bool:
    return name.split(".")[0] in ("cupy", "cupyx", "cupy_backends") or name == "minimlp.fused_cuda"


def _forget(name: str) -> None:
    """Drop a module, and its attribute on the parent package, so the next import finds it afresh."""
    del sys.modules[name]
    parent, _, child = name.rpartition(".")
    if parent in sys.modules and getattr(sys.modules[parent], child, None) is not None:
        delattr(sys.modules[parent], child)


def install() -> dict[str, Any]:
    """Put the stand-in in sys.modules (with fresh state); returns what it replaced, for :func:`uninstall`."""
    global STATE
    saved = {name: mod for name, mod in sys.modules.items() if _is_cupy_module(name)}
    for name in sorted(saved, reverse=True):
        _forget(name)
    STATE = _State()
    Stream._current = []
    sys.modules.update(_build_modules())
    return saved


def uninstall(saved: dict[str, Any]) -> None:
    """Remove the stand-in (and minimlp modules imported against it); restore what was there."""
    for name in sorted((n for n in sys.modules if _is_cupy_module(n)), reverse=True):
        _forget(name)
    sys.modules.update(saved)
    for name, module in saved.items():
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)

