"""CuPy's user kernels for the CuPy stand-in (fake_cupy.py): ``ElementwiseKernel`` and
``ReductionKernel`` run on NumPy.

A kernel's C code is read as the small subset minimlp writes and translated to one NumPy
expression per statement; the arguments are typed as CuPy types them
(cupy/_core/_kernel.pyx, ``_decide_params_type_core``); and a reduction that CuPy 14 would
send through CUB gets the text rewrite CuPy applies there (cupy/_core/_cub_reduction.pyx).
"""

from __future__ import annotations

import functools
import math
import os
import re
from typing import Any

import numpy as np

from minimlp.backend import _erf_erfc_numpy
from support.fake_cupy import CompileException, _unsupported, _wrap, ndarray

# --------------------------------------------------------------------------------------
# User kernels: CuPy's parameter lists and typing, and the kernel bodies read as C.
# --------------------------------------------------------------------------------------
_C_TYPES = {
    "float": np.float32,
    "double": np.float64,
    "float16": np.float16,
    "half": np.float16,
    "int": np.int32,
    "long long": np.int64,
    "bool": np.bool_,
    "unsigned int": np.uint32,
    "signed char": np.int8,
    "unsigned char": np.uint8,
    "short": np.int16,
    "long": np.int64,
}
_DTYPE_NAMES = {
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
    "bool",
    "complex64",
    "complex128",
}


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
            self.ctype = {np.float32: "float", np.float64: "double", np.float16: "float16", np.bool_: "bool"}.get(
                self.dtype.type, type_name
            )
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
        raise TypeError(
            f"Wrong number of arguments for {name!r}. It must be either {nin} or {nargs} "
            f"(with outputs), but given {len(args)}."
        )
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
    def __init__(
        self,
        in_params: str,
        out_params: str,
        operation: str,
        name: str = "kernel",
        reduce_dims: bool = True,
        preamble: str = "",
        no_return: bool = False,
        return_tuple: bool = False,
        **kwargs: Any,
    ) -> None:
        if preamble or kwargs.get("loop_prep") or kwargs.get("after_loop"):
            raise NotImplementedError("the CuPy stand-in does not model kernel preambles or loop code")
        self.in_params, self.out_params = _params(in_params, True), _params(out_params, False)
        self.params = self.in_params + self.out_params
        self.nin, self.nout, self.nargs = len(self.in_params), len(self.out_params), len(self.params)
        self.operation, self.name = operation, name
        self.no_return, self.return_tuple = no_return, return_tuple
        self._program = _Program(
            operation,
            [p.name for p in self.in_params],
            [p.name for p in self.out_params],
            self.name,
            {p.ctype for p in self.params},
        )

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
    def __init__(
        self,
        in_params: str,
        out_params: str,
        map_expr: str,
        reduce_expr: str,
        post_map_expr: str,
        identity: Any,
        name: str = "reduce_kernel",
        reduce_type: str | None = None,
        reduce_dims: bool = True,
        preamble: str = "",
        options: tuple = (),
    ) -> None:
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

    def __call__(
        self, *args: Any, out: Any = None, axis: Any = None, keepdims: bool = False, stream: Any = None
    ) -> Any:
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
        in_args = [np.broadcast_to(a, shape) if isinstance(a, np.ndarray) and a.shape != shape else a for a in in_args]
        types_ = _decide_types(self.in_params, self.out_params, in_args, out_args)
        ndim = len(shape)
        axes = (
            tuple(range(ndim))
            if axis is None
            else tuple(a % ndim if -ndim <= a < ndim else _axis_error(a, ndim) for a in np.atleast_1d(axis).tolist())
        )
        reduce_axis = tuple(sorted(set(axes)))
        out_axis = tuple(i for i in range(ndim) if i not in reduce_axis)
        out_shape = (
            tuple(1 if i in reduce_axis else n for i, n in enumerate(shape))
            if keepdims
            else tuple(shape[i] for i in out_axis)
        )
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
                self.name, map_expr, post_map_expr, in_names, out_names, cub, shape
            )
        env = {
            n: _as_param(a, _param_dtype(p, types_)) for n, p, a in zip(in_names, self.in_params, in_args, strict=True)
        }
        type_names = frozenset({p.ctype for p in self.in_params + self.out_params} | {self.reduce_type})
        mapped = _program(map_expr, (*env, *sizes), (), self.name, type_names, True).value({**env, **sizes}, types_)
        mapped = np.broadcast_to(np.asarray(mapped), shape).astype(reduce_dtype)
        reduced = self._reducer(mapped, reduce_axis, reduce_dtype).reshape(out_shape)
        post = _program(post_map_expr, ("a", *sizes), tuple(out_names), self.name, type_names, False)
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


def _cub_plan(
    in_args: list, out_args: list, shape: tuple, reduce_axis: tuple, out_axis: tuple
) -> dict[str, Any] | None:
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


def _cub_rewrite(
    name: str, map_expr: str, post_map_expr: str, in_names: list, out_names: list, cub: dict[str, Any], shape: tuple
) -> tuple[str, str, list, list, dict]:
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
        _program(first, ("a", *sizes), ("out0",), name + "_pass1", frozenset(), False)
    return map_expr, post_map_expr, ["in0"], ["out0"], sizes


# --------------------------------------------------------------------------------------
# The C subset of kernel bodies, translated to Python over NumPy arrays.
#   statement: [const] [type] name = expression
#   expression: + - * / with C precedence, unary -, (type) casts, calls, literals (1.0f is a
#   float, 1.0 a double, 1 an int), x.size() on the index objects.
# Arithmetic follows C's types: float with float stays float32, a double literal makes
# double, float16 with float gives float (CuPy's float16 converts to float).
# --------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[fF]?)|(?P<id>[A-Za-z_]\w*)"
    r"|(?P<op>[-+*/%(),.=]))"
)
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
    "expf": _float_fn(np.exp, np.float32),
    "logf": _float_fn(np.log, np.float32),
    "sqrtf": _float_fn(np.sqrt, np.float32),
    "rsqrtf": _float_fn(lambda x: 1 / np.sqrt(x), np.float32),
    "tanhf": _float_fn(np.tanh, np.float32),
    "fabsf": _float_fn(np.abs, np.float32),
    "erff": _float_fn(_erf64, np.float32),
    "erfcf": _float_fn(_erfc64, np.float32),
    "fmaxf": _float_fn(np.fmax, np.float32),
    "fminf": _float_fn(np.fmin, np.float32),
    "exp": _overloaded(np.exp),
    "log": _overloaded(np.log),
    "sqrt": _overloaded(np.sqrt),
    "rsqrt": _overloaded(lambda x: 1 / np.sqrt(x)),
    "tanh": _overloaded(np.tanh),
    "erf": _overloaded(_erf64),
    "erfc": _overloaded(_erfc64),
    "abs": _overloaded(np.abs),
    "fabs": _overloaded(np.abs),
    "max": np.maximum,
    "min": np.minimum,
}


class _Program:
    """A kernel body (statements) or a map expression, checked for undefined names up front."""

    def __init__(
        self,
        text: str,
        inputs: list[str],
        outputs: list[str],
        kernel: str,
        type_names: set[str],
        expression: bool = False,
    ) -> None:
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
        scope = {
            **env,
            **outputs,
            **_C_FUNCTIONS,
            "_cast": _cast,
            "_div": _c_div,
            "_t": types_,
            "_dt": _c_dtype,
            "_f32": np.float32,
            "_f64": np.float64,
        }
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


@functools.cache
def _program(
    text: str, inputs: tuple, outputs: tuple, kernel: str, type_names: frozenset, expression: bool
) -> _Program:
    """A translated program, made once per kernel text and argument names (as CuPy caches kernels)."""
    return _Program(text, list(inputs), list(outputs), kernel, set(type_names), expression)


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
