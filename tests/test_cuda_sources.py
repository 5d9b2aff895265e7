"""The CUDA code of minimlp's CuPy kernels compiles, for float32 and float16, without a GPU.

Without a GPU nothing can run a kernel, but NVRTC (CUDA's runtime compiler, which CuPy
uses) can still compile one.  This wraps each kernel's expressions in a minimal CUDA
kernel laid out the way CuPy lays its kernels out (one element, or one reduction loop,
per thread), includes CuPy's own headers, and compiles it with T = float and T = float16.
That catches typos and type errors in the kernel code; the tests marked gpu check what
the kernels compute.  Skipped unless CuPy and NVRTC are installed.
"""

from __future__ import annotations

import os

import pytest

cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="NVRTC is not available")

from minimlp import fused_cuda  # noqa: E402

HEADER = "#include <cupy/carray.cuh>\n#include <cupy/float16.cuh>\n"


def _ctype(param, T):
    return T if param.ctype == "T" else param.ctype


def elementwise_source(kernel, T):
    args, lines = [], []
    for p in kernel.in_params:
        args.append(f"const {_ctype(p, T)}* _raw_{p.name}")
        lines.append(f"const {_ctype(p, T)} {p.name} = _raw_{p.name}[i];")
    for p in kernel.out_params:
        args.append(f"{_ctype(p, T)}* _raw_{p.name}")
        lines.append(f"{_ctype(p, T)}& {p.name} = _raw_{p.name}[i];")
    body = "\n".join(lines)
    return (f"{HEADER}typedef {T} T;\n"
            f'extern "C" __global__ void test_kernel({", ".join(args)}, long long n) {{\n'
            f"long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;\nif (i >= n) return;\n"
            f"{body}\n{kernel.operation};\n}}\n")


def reduction_source(kernel, T):
    args, loads, stores = [], [], []
    for p in kernel.in_params:
        args.append(f"const {_ctype(p, T)}* _raw_{p.name}")
        loads.append(f"const {_ctype(p, T)} {p.name} = _raw_{p.name}[j];")
    for p in kernel.out_params:
        args.append(f"{_ctype(p, T)}* _raw_{p.name}")
        stores.append(f"{_ctype(p, T)}& {p.name} = _raw_{p.name}[0];")
    reduce_type = T if kernel.reduce_type == "T" else kernel.reduce_type
    return (f"{HEADER}typedef {T} T;\ntypedef {reduce_type} _type_reduce;\n"
            "struct Indexer { long long n; __device__ long long size() const { return n; } };\n"
            f"#define REDUCE(a, b) ({kernel.reduce_expr})\n#define POST_MAP(a) ({kernel.post_map_expr})\n"
            f'extern "C" __global__ void test_kernel({", ".join(args)}, long long n) {{\n'
            "const Indexer _in_ind{n}, _out_ind{1};\n"
            f"_type_reduce _s = _type_reduce({kernel.identity});\n"
            "for (long long j = 0; j < n; ++j) {\n" + "\n".join(loads)
            + f"\n_type_reduce _a = static_cast<_type_reduce>({kernel.map_expr});\n_s = REDUCE(_s, _a);\n}}\n"
            + "\n".join(stores) + "\nPOST_MAP(_s);\n}\n")


def include_dirs():
    """CuPy's headers, and CUDA's (cuda_fp16.h): from CUDA_PATH or NVIDIA's pip wheels."""
    dirs = [os.path.join(os.path.dirname(cupy.__file__), "_core", "include")]
    candidates = [os.path.join(os.environ.get("CUDA_PATH", "/usr/local/cuda"), "include")]
    try:
        import nvidia.cuda_runtime

        candidates += [os.path.join(p, "include") for p in nvidia.cuda_runtime.__path__]
    except ImportError:
        pass
    dirs += [d for d in candidates if os.path.exists(os.path.join(d, "cuda_fp16.h"))]
    return dirs


def compile_source(source):
    program = nvrtc.createProgram(source, "minimlp_test.cu", [], [])
    try:
        nvrtc.compileProgram(program, ["-arch=compute_80", "--std=c++17", *(f"-I{d}" for d in include_dirs())])
    except Exception as exc:  # NVRTCError: show the compiler's log
        log = nvrtc.getProgramLog(program)
        if "cannot open source file" in log or "could not open" in log:
            pytest.skip(f"a header was not found (CUDA's headers: set CUDA_PATH): {log[:300]}")
        raise AssertionError(f"{exc}\n{log}\n--- source ---\n{source}") from exc
    finally:
        nvrtc.destroyProgram(program)


def kernels():
    ln = fused_cuda._ln_kernels(1e-6)
    ce = fused_cuda._ce_kernels()
    half_too = ("float", "float16")
    return [
        ("gelu", fused_cuda._gelu_kernel(), half_too),
        ("bias_gelu", fused_cuda._bias_gelu_kernel(), half_too),
        ("bias_gelu_value", fused_cuda._bias_gelu_value_kernel(), half_too),
        ("mul_sum", fused_cuda._mul_sum_kernel(), half_too),
        *((f"layernorm_{name}", k, half_too) for name, k in ln.items()),
        *((f"cross_entropy_{name}", k, ("float", "double")) for name, k in ce.items()),
    ]


@pytest.mark.parametrize("name, kernel, types", kernels(), ids=[k[0] for k in kernels()])
def test_kernel_compiles(name, kernel, types):
    for T in types:
        if isinstance(kernel, cupy.ElementwiseKernel):
            compile_source(elementwise_source(kernel, T))
        else:
            compile_source(reduction_source(kernel, T))
