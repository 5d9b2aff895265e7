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
  each one adds to :func:`host_syncs`.  ``set_strict(False)`` lets the implicit ones
  through, counted, as CuPy would (to measure code that still has them).
* **No host arrays in device operations.**  A NumPy array in an arithmetic operation, a
  ufunc or a kernel call raises TypeError ("Unsupported type"), as in CuPy; Python and
  NumPy scalars are fine.  Creating arrays from host data (``cupy.asarray``), assigning
  host data into a device array and indexing with host integer arrays are uploads, as in
  CuPy, and work.
* **Reductions and scalar indexing return 0-d device arrays**, never host scalars.
* **dtypes as in CuPy**: ``cupyx.scipy.special.erf``/``erfc`` turn float16 into float64
  (their loops are ``e->d, f->f, d->d``).
* **User kernels** (fake_cupy_kernels.py).  ``ElementwiseKernel`` and ``ReductionKernel``
  bodies are read as the small C subset minimlp writes (declarations, assignments, casts,
  ``f`` literals, ``expf``/``erfcf``/``rsqrtf``/``exp``/``log``...) and run with NumPy, with CuPy's typing
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

* **Events** time only once the end event has been waited for (CUDA's "not ready"
  otherwise); the memory pool's ``used_bytes`` counts live arrays and ``total_bytes`` the
  most held since ``free_all_blocks``.

What it does not model: asynchrony (every operation finishes at once, so a missing
synchronisation or a race between streams goes unnoticed), the real memory pool, cuBLAS
and CUDA numerics (TF32, float16 tensor cores, the order of sums, the accuracy of
``expf``/``erfcf``), NCCL, multiple devices, speed, and kernel compilation itself (the
tests in test_cuda_sources.py compile every kernel with NVRTC).  Random numbers have
CuPy's shapes and dtypes but not its values.  Anything minimlp does not use is absent and raises
AttributeError, so new CuPy calls are added here deliberately.
"""

from __future__ import annotations

import operator
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


_IMPLICIT = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."
)


def _implicit(a: ndarray, what: str) -> np.ndarray:
    """The host value behind float(d), int(d), ...: refused, or (not strict) read and counted as CuPy does."""
    if STATE.strict:
        raise TypeError(
            f"{what} of a device array would copy it to the host implicitly (a hidden host "
            "sync on a GPU); read it explicitly with .get(), .item() or cupy.asnumpy()"
        )
    _count_sync()
    return a._a


# Methods of cupy.ndarray that behave as NumPy's and that minimlp (or its tests) use.
_METHODS = frozenset(
    """
    reshape transpose swapaxes astype copy ravel flatten squeeze view sum mean max min argmax argmin
    all any var std prod cumsum clip dot fill repeat take argsort sort nonzero round
""".split()
)
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
    def get(
        self, stream: Any = None, order: str = "C", out: np.ndarray | None = None, blocking: bool = True
    ) -> np.ndarray:
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


for _name, _func in {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "truediv": np.true_divide,
    "floordiv": np.floor_divide,
    "mod": np.remainder,
    "pow": np.power,
    "matmul": np.matmul,
    "and": np.bitwise_and,
    "or": np.bitwise_or,
    "xor": np.bitwise_xor,
    "lshift": np.left_shift,
    "rshift": np.right_shift,
}.items():
    setattr(ndarray, f"__{_name}__", _binary(_func))
    setattr(ndarray, f"__r{_name}__", _binary(_func, reflected=True))
    setattr(ndarray, f"__i{_name}__", _binary(_func, inplace=True))
for _name, _func in {
    "lt": np.less,
    "le": np.less_equal,
    "eq": np.equal,
    "ne": np.not_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
}.items():
    setattr(ndarray, f"__{_name}__", _binary(_func))
for _name, _func in {"neg": np.negative, "pos": np.positive, "abs": np.absolute, "invert": np.invert}.items():
    setattr(ndarray, f"__{_name}__", lambda self, f=_func: _wrap(f(self._a)))


def asnumpy(
    a: Any, stream: Any = None, order: str = "C", out: np.ndarray | None = None, blocking: bool = True
) -> np.ndarray:
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
_CREATION = frozenset(
    "asarray array ascontiguousarray empty empty_like zeros zeros_like ones ones_like full "
    "full_like arange linspace eye".split()
)
_FUNCTIONS = _CREATION | frozenset(
    """
    exp log log1p expm1 sqrt square tanh sin cos abs absolute sign negative reciprocal power
    add subtract multiply divide true_divide maximum minimum fmax fmin where clip isfinite isnan isinf
    logical_and logical_or logical_not greater greater_equal less less_equal equal not_equal
    dot matmul concatenate stack broadcast_to transpose reshape swapaxes moveaxis expand_dims squeeze
    sum mean max amax min amin argmax argmin argsort sort cumsum prod any all count_nonzero copyto
    floor ceil rint round
""".split()
)
_DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool_",
    "dtype",
    "newaxis",
    "pi",
    "inf",
    "nan",
)


def _module_function(name: str) -> Any:
    np_func = getattr(np, name)
    convert = _upload if name in _CREATION else _operand

    def fn(*args: Any, **kwargs: Any) -> Any:
        if name in ("asarray", "array", "ascontiguousarray") and args:
            if not isinstance(args[0], ndarray):  # an upload: the device gets its own copy
                return _wrap(np.array(np_func(*args, **kwargs), copy=True))
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

    def integers(
        self, low: int, high: int | None = None, size: Any = None, dtype: Any = np.int64, endpoint: bool = False
    ) -> Any:
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
def _check_device(index: int) -> None:
    """What the CUDA runtime answers for a device that is not there (no GPU at all, or a bad index)."""
    if STATE.device_count == 0:
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    if not 0 <= index < STATE.device_count:
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")


def _device_count() -> int:
    _check_device(0)
    return STATE.device_count


class Device:
    """A device handle; as in CuPy, making one checks nothing, using it does."""

    def __init__(self, device: int | None = None) -> None:
        self.id = STATE.current_device if device is None else int(device)

    @property
    def compute_capability(self) -> str:
        _check_device(self.id)
        return STATE.compute_capability

    def use(self) -> None:
        _check_device(self.id)
        STATE.current_device = self.id

    def synchronize(self) -> None:
        _check_device(self.id)

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
    m.getDeviceCount = _device_count
    m.getDevice = lambda: STATE.current_device
    m.runtimeGetVersion = lambda: 12090
    m.driverGetVersion = lambda: 12090

    def get_device_properties(device: int) -> dict[str, Any]:
        _check_device(device)
        major, minor = STATE.compute_capability[:-1], STATE.compute_capability[-1]
        return {
            "name": DEVICE_NAME.encode(),
            "totalGlobalMem": 1 << 30,
            "major": int(major),
            "minor": int(minor),
            "multiProcessorCount": 1,
            "clockRate": 1_000_000,
        }

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
    m.is_available = lambda: STATE.device_count > 0  # never raises, as in CuPy
    return _strict(m)


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
    from support import fake_cupy_kernels  # it uses this module's array type: imported once this module is complete

    cupy = types.ModuleType("cupy")
    cupy.__version__ = VERSION
    cupy.__file__ = __file__
    cupy.__path__ = []  # a package, so "import cupy.cuda" works
    cupy.ndarray = ndarray
    cupy.asnumpy, cupy.get_array_module = asnumpy, get_array_module
    cupy.ElementwiseKernel = fake_cupy_kernels.ElementwiseKernel
    cupy.ReductionKernel = fake_cupy_kernels.ReductionKernel
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
    linalg.set_compute_type = lambda dtype, compute_type: STATE.compute_types.__setitem__(np.dtype(dtype), compute_type)
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
    return {
        "cupy": cupy,
        "cupy.random": cupy.random,
        "cupy.cuda": cupy.cuda,
        "cupy.cuda.runtime": cupy.cuda.runtime,
        "cupy.cuda.compiler": cupy.cuda.compiler,
        "cupy.cuda.nvrtc": cupy.cuda.nvrtc,
        "cupy._core": core,
        "cupy._core._routines_linalg": linalg,
        "cupyx": cupyx,
        "cupyx.scipy": scipy,
        "cupyx.scipy.special": special,
    }


def _is_cupy_module(name: str) -> bool:  # CuPy's modules, and minimlp's that import CuPy at the top
    return name.split(".")[0] in ("cupy", "cupyx", "cupy_backends") or name == "minimlp.kernels.cuda"


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
    saved_state = (STATE, Stream._current)  # a stand-in installed before this one keeps its own
    STATE, Stream._current = _State(), []
    sys.modules.update(_build_modules())
    return {"": saved_state, **saved}


def uninstall(saved: dict[str, Any]) -> None:
    """Remove the stand-in (and minimlp modules imported against it); restore what was there."""
    global STATE
    saved = dict(saved)
    STATE, Stream._current = saved.pop("")
    for name in sorted((n for n in sys.modules if _is_cupy_module(n)), reverse=True):
        _forget(name)
    sys.modules.update(saved)
    for name, module in saved.items():
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
