"""Every CuPy kernel of minimlp compiles, on every code path CuPy can give it, without a GPU.

A CuPy kernel is compiled the first time it is called: CuPy writes its CUDA source from
the kernel's expressions and the arguments' types and layouts, compiles it with NVRTC, and
only then loads it on a device.  A reduction over the last, contiguous axis with at least
128 elements and a single input goes another way: CuPy writes a CUB block-reduction
kernel instead, after renaming parameters inside the expressions by plain text
replacement.  Writing and compiling need no GPU, so here CuPy's own code runs up to the
compile, on arrays whose memory is never touched:

- reductions go through ``ReductionKernel._call``, the method ``__call__`` hands the
  broadcast arguments to once it knows the device, so CuPy itself picks the path
  (CUB or not), renames, and writes the source;
- elementwise kernels go through ``ElementwiseKernel._decide_params_type`` and
  ``_get_elementwise_kernel``, with the argument descriptions ``__call__`` would pass: CuPy
  makes them too, in a reduction over the same arguments that runs the same dimension
  merging (``Writer._reduced_arginfos``);
- the memoizing wrappers that would ask the driver for the current device are replaced by
  the functions they wrap, and ``cupy.cuda.compiler._compile_module_with_cache`` by a
  function that hands back the finished source and options instead of compiling.

Each distinct source is then compiled with NVRTC to machine code, as CuPy compiles it for
an A100 (sm_80) and an H100/H200 (sm_90), in every dtype the kernel is used with.  The
calls below are the ones ``minimlp/kernels/cuda.py`` makes, at the feature widths that switch
paths (D = 96 takes the plain reduction, 128 and up take CUB) and over both LayerNorm axes.
The tests marked gpu check what the kernels compute.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import numpy as np
import pytest
from conftest import REQUIRE_CUPY

ARCHS = ("80", "90")  # A100; H100 and H200
FEATURE_WIDTHS = (96, 128, 192, 768)  # ff_fmnist's 128, ff_tiny's 192, ff_base's 768; 96 stays below CUB's 128
ROWS, TOKENS = 130, 197  # rows of the feature-LayerNorm view; tokens of ff_tiny at 224 px


def _cupy_compiler():
    """CuPy's modules that write and compile kernels, or a skip (a failure with MINIMLP_REQUIRE_CUPY=1)."""
    try:
        import cupy
        import cupy._core._accelerator as accelerator
        import cupy._core._cub_reduction as cub_reduction
        import cupy._core._kernel as kernel
        import cupy._core._reduction as reduction
        from cupy._core.core import assemble_cupy_compiler_options
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()  # loads the NVRTC library
        assemble_cupy_compiler_options(())  # finds CUDA's headers
    except Exception as exc:  # ImportError, a missing NVRTC library, RuntimeError for the headers
        message = (
            f"CuPy, NVRTC and CUDA's headers are needed to compile the kernels ({exc}); "
            "pip install -r requirements-gpu-ci.txt"
        )
        if REQUIRE_CUPY:
            pytest.fail(message + "; MINIMLP_REQUIRE_CUPY=1 demands them", pytrace=False)
        pytest.skip(message)
    return cupy, accelerator, cub_reduction, kernel, reduction


class _Source(Exception):
    """Raised where CuPy would compile: the source and options it would compile with."""


@dataclass
class Variant:
    """One CUDA source CuPy writes for a kernel, and the calls that lead to it."""

    source: str
    options: tuple
    path: str  # "elementwise", "reduction" or "CUB"
    calls: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _sources_instead_of_compiling(cupy, accelerator, cub_reduction, kernel, reduction):
    def hand_back(source, options=(), **_):
        raise _Source(source, options)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cupy.cuda.compiler, "_compile_module_with_cache", hand_back)
        for module, name in (
            (kernel, "_get_elementwise_kernel"),
            (reduction, "_ReductionKernel_get_cached_function"),
            (cub_reduction, "_SimpleCubReductionKernel_get_cached_function"),
        ):
            mp.setattr(module, name, getattr(module, name).__wrapped__)  # without the device lookup
        previous = accelerator.get_reduction_accelerators()
        accelerator.set_reduction_accelerators(["cub"])  # CuPy's default on CUDA (CUPY_ACCELERATORS unset)
        try:
            yield
        finally:
            accelerator.set_reduction_accelerators(previous)


class Writer:
    """Calls kernels the way ``minimlp.kernels.cuda`` does and collects the sources CuPy writes."""

    def __init__(self, cupy, reduction_module, names):
        self.cupy, self.reduction = cupy, reduction_module
        self.variants: dict[str, dict[tuple, Variant]] = {name: {} for name in names}

    def array(self, shape, dtype):
        """A CuPy array over memory that is never read: nothing is launched."""
        from cupy.cuda import memory

        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        held = memory.UnownedMemory(1 << 40, nbytes, None, device_id=0)
        return self.cupy.ndarray(shape, dtype, memptr=memory.MemoryPointer(held, 0))

    def _record(self, kernel, call, write):
        try:
            write()
        except _Source as captured:
            source, options = captured.args
        else:
            raise AssertionError(f"{kernel.name}: CuPy compiled nothing for {call}")
        path = "CUB" if "cub::BlockReduce" in source else "reduction" if "_REDUCE(" in source else "elementwise"
        variant = self.variants[kernel.name].setdefault((source, options), Variant(source, options, path))
        variant.calls.append(call)

    def reduce(self, kernel, *args, axis=None, keepdims=False):
        """``kernel(*args, axis=axis, keepdims=keepdims)``: ReductionKernel.__call__ after its device lookup."""
        ins = list(self.cupy.broadcast_arrays(*args))
        shape = ins[0].shape
        axes = range(len(shape)) if axis is None else [axis % len(shape)]
        out_shape = tuple(1 if i in axes else n for i, n in enumerate(shape) if keepdims or i not in axes)
        out_param = kernel.out_params[0]
        out = self.array(out_shape, out_param.dtype if out_param.dtype is not None else ins[0].dtype)
        call = f"{'x'.join(map(str, shape))} {args[0].dtype} axis={axis}"
        self._record(
            kernel,
            call,
            lambda: kernel._call(ins, [out], shape, axis, None, keepdims, kernel.reduce_dims, 0, None, True, True),
        )

    def elementwise(self, kernel, *args):
        """``kernel(*args)``: ElementwiseKernel.__call__ after its device lookup."""
        cupy = self.cupy
        ins, outs = list(args[: kernel.nin]), list(args[kernel.nin :])
        arrays = [a for a in ins if isinstance(a, cupy.ndarray)]
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        in_types, out_types, type_map = kernel._decide_params_type(
            tuple(a.dtype if isinstance(a, cupy.ndarray) else None for a in ins), tuple(a.dtype for a in outs)
        )
        outs = outs or [self.array(shape, t) for t in out_types]
        ins = [
            cupy.broadcast_to(a, shape) if isinstance(a, cupy.ndarray) else cupy._core._scalar.CScalar(a) for a in ins
        ]
        infos = self._reduced_arginfos(ins + outs, in_types + out_types, shape)
        call = f"{'x'.join(map(str, shape))} {arrays[0].dtype}"
        self._record(kernel, call, lambda: kernel._get_elementwise_kernel(0, infos, type_map))

    def _reduced_arginfos(self, args, types, shape):
        """The argument descriptions ElementwiseKernel.__call__ makes of ``args`` and its index over
        ``shape``, after merging the dimensions it can (``_reduce_dims``).  A reduction over all of
        them runs the same ``_reduce_dims`` first, so they are read off one that never compiles."""
        params = ", ".join(f"{np.dtype(t).name} p{i}" for i, t in enumerate(types))
        probe = self.cupy.ReductionKernel(params, "float32 q", "0", "a + b", "q = a", "0", "minimlp_layout_probe")
        seen = []

        def look(nin, nout, params, arginfos, *_):
            seen.append(arginfos)
            raise _Source("", ())

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(self.reduction, "_ReductionKernel_get_cached_function", look)
            with contextlib.suppress(_Source):
                probe._call(
                    list(args), [self.array((), np.float32)], shape, None, None, False, True, 0, None, False, True
                )
        arginfos = seen[0]  # the arguments, the output q, the index over the arguments, ...
        return arginfos[: len(args)] + arginfos[len(args) + 1 : len(args) + 2]


def write_all_sources(w: Writer, fc) -> None:
    """Every kernel call ``minimlp.kernels.cuda`` makes, over the dtypes and shapes it meets."""
    ln, ce = fc._ln_kernels(1e-6), fc._ce_kernels()
    for dtype in (np.float32, np.float16):
        for D in FEATURE_WIDTHS:
            for red, (rows, cols) in ((1, (ROWS, D)), (0, (TOKENS, 4 * D))):  # feature, token LayerNorm
                x = w.array((rows, cols), dtype)  # the 2-D view; `red` is the normalised axis
                groups = (rows, 1) if red == 1 else (1, cols)
                n = cols if red == 1 else rows
                wv, bv = w.array((n,), dtype), w.array((n,), dtype)
                w2, b2 = (wv, bv) if red == 1 else (wv[:, None], bv[:, None])
                stat = w.array(groups, np.float32)
                # layernorm
                w.reduce(ln["mean"], x, axis=red, keepdims=True)
                w.reduce(ln["rstd"], x, stat, axis=red, keepdims=True)
                w.elementwise(ln["normalise"], x, stat, stat, w2, b2)
                # layernorm_backward
                w.reduce(fc._mul_sum_kernel(), x, x, axis=1 - red)
                w.reduce(ln["mean_of_product"], x, w2, axis=red, keepdims=True)
                w.reduce(ln["mean_of_product3"], x, w2, x, axis=red, keepdims=True)
                w.elementwise(ln["dx"], x, w2, x, stat, stat, stat)
                # bias_gelu, bias_gelu_inference (the bias runs along the last axis or the first)
                w.elementwise(fc._bias_gelu_kernel(), x, bv if red == 1 else bv[:, None], x, w.array(x.shape, dtype))
                w.elementwise(
                    fc._bias_gelu_value_kernel(), x, bv if red == 1 else bv[:, None], x, w.array(x.shape, dtype)
                )
        w.elementwise(fc._gelu_kernel(), w.array((4, TOKENS, 192), dtype))
    # Cross-entropy: float32 logits only (mixed precision casts them up before the loss).
    for B, K in ((128, 10), (64, 1000)):
        z, q = w.array((B, K), np.float32), w.array((B, K), np.float32)
        zmax = s = w.array((B, 1), np.float32)
        w.reduce(ce["sumexp"], z, zmax, axis=1, keepdims=True)
        w.reduce(ce["loss"], q, z, zmax, s)
        w.elementwise(ce["probs"], z, zmax, s)
        w.elementwise(ce["grad"], z, q, np.float32(1.0 / B))


@pytest.fixture(scope="module")
def variants():
    modules = _cupy_compiler()
    from minimlp.kernels import cuda

    names = [k.name for k in cuda.all_kernels()]
    w = Writer(modules[0], modules[4], names)
    with _sources_instead_of_compiling(*modules):
        write_all_sources(w, cuda)
    return w.variants


def _kernel_names():
    try:
        from minimlp.kernels import cuda
    except Exception:  # no CuPy: one placeholder, which the fixture skips
        return ["kernels"]
    return [k.name for k in cuda.all_kernels()]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", _kernel_names())
def test_kernel_compiles(variants, name, arch):
    from cupy.cuda import compiler
    from cupy_backends.cuda.libs import nvrtc

    assert variants[name], f"{name}: no call of this kernel is exercised here; add the calls kernels.cuda makes"
    # What CuPy adds for a device of this compute capability (cupy/cuda/compiler.py), and NVRTC's
    # precompiled headers, which CuPy uses with CUPY_NVRTC_USE_PCH=1: CUB's headers are then
    # parsed once, not once per source (a few times faster).
    added = ("-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")
    if nvrtc.getVersion() >= (12, 8):
        added += ("--pch",)
    failures, body = [], ""
    for v in variants[name].values():
        try:
            compiler._NVRTCProgram(v.source, f"{name}.cu", method="cubin").compile(v.options + added)
        except compiler.CompileException as exc:
            failures.append(f"on CuPy's {v.path} path (calls: {'; '.join(v.calls)}):\n{exc}")
            body = v.source[v.source.find("typedef") :]
    assert not failures, (
        f"kernel {name} does not compile for sm_{arch} " + "\n".join(failures) + f"\n--- the last source ---\n{body}"
    )


def test_cub_path_is_exercised(variants):
    """The LayerNorm mean goes through CUB exactly where CuPy's rule says: over the last axis, D >= 128."""
    paths = {call: v.path for v in variants["minimlp_ln_mean"].values() for call in v.calls}
    for dtype in ("float32", "float16"):
        for D in FEATURE_WIDTHS:
            assert paths[f"{ROWS}x{D} {dtype} axis=1"] == ("CUB" if D >= 128 else "reduction")
            assert paths[f"{TOKENS}x{4 * D} {dtype} axis=0"] == "reduction"


# --------------------------------------------------------------------------------------
# The naming rule of kernels/cuda.py, checked on the kernels' text (no NVRTC needed).
# --------------------------------------------------------------------------------------
_CUPY_NAMES = {"in0", "out0", "a", "b", "i", "T"}


def test_parameter_names_survive_cupys_renaming():
    _cupy_compiler()
    from minimlp.kernels import cuda

    for k in cuda.all_kernels():
        if isinstance(k, cuda.cupy.ElementwiseKernel):
            texts = [k.operation]
        else:  # what the CUB path makes of a "mean" kernel's final expression, and the rest
            texts = [
                k.map_expr,
                k.post_map_expr.replace("_in_ind.size()", "_segment_size").replace("_out_ind.size()", "1.0"),
            ]
        words = set(re.findall(r"[A-Za-z_]\w*", " ".join(texts)))
        for p in k.in_params + k.out_params:
            assert p.name not in _CUPY_NAMES and not p.name.startswith("_"), (
                f"{k.name}: parameter {p.name!r} is a name CuPy uses itself"
            )
            clashes = sorted(word for word in words if p.name in word and word != p.name)
            assert not clashes, (
                f"{k.name}: parameter {p.name!r} is part of {clashes}; CuPy renames parameters "
                "by plain text replacement, so it would rewrite those too"
            )
