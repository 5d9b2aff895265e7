"""python -m minimlp.bench.gpu_check: everything worth knowing from a first run on a GPU, in one go.

For a machine with a GPU, CuPy and (for the comparison) a CUDA build of PyTorch, that may
have no network: it installs nothing.  Each step runs in its own process with its own
time limit, so that a hang or a crash costs that step only, and the whole run stays
within ``--budget`` seconds (8 minutes by default):

1. the environment: GPU, driver, CUDA runtime, NVRTC, CuPy, PyTorch and NumPy versions;
2. kernel smoke tests at ff_tiny's shapes (T = 197, D = 192, hidden 768 and 788): every
   fused op's forward and backward, a matrix product and a whole ff_tiny forward pass, in
   float32, TF32 and float16, each against the same computation in float64 on the CPU;
3. ``python -m minimlp.bench`` for ff_tiny (batch 128) and ff_base (batch 64) in float32,
   TF32 and float16 against PyTorch eager on the same card: images/s and the ratio per
   round, GFLOP/s as a share of the matmul peak measured in the same precision, peak
   memory, host syncs per step and the largest logit difference to PyTorch;
4. ``pytest -m gpu`` with what time is left (and a per-test limit where pytest-timeout is
   installed): last, so that a slow test suite cannot crowd out the measurements.

Everything (logs, JSON) is packed into ``OUT/gpu-check.tar.gz``; a short table, printed
last, is also written to ``OUT/summary.txt``.  The exit status is 0 when every step
passed, 1 otherwise.  Lesson 11 explains the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the directory holding the minimlp package
PRECISIONS = ("float32", "tf32", "float16")
RUNS = "ff_tiny:128:20,ff_base:64:10"  # model:batch:timed steps
BENCH_ARGS = "--warmup 3 --rounds 3 --profile-steps 1"
# Relative error (max |error| / max |reference|) a precision is expected to stay within.
TOLERANCE = {"float32": 1e-4, "tf32": 2e-2, "float16": 5e-2}
# Step time limits in seconds (each also capped by what is left of the budget).
LIMITS = {"environment": 60, "smoke": 120, "pytest": 150, "bench": 90}


# --------------------------------------------------------------------------------------
# Running a step: its own process (and process group, so a hang is killed whole).
# --------------------------------------------------------------------------------------
def run_step(
    name: str, cmd: list[str], timeout: float, work: Path, env: dict[str, str] | None = None, quiet_ok: bool = False
) -> dict:
    """Run ``cmd`` with a time limit, its output in ``work/<name>.log``; never raises.

    The record's note is the log's last line (for a step that passed: unless ``quiet_ok``)."""
    log = work / f"{name.replace(' ', '-')}.log"
    start = time.perf_counter()
    record = {"step": name, "command": shlex.join(cmd), "log": log.name}
    if timeout < 2:
        return {**record, "status": "skipped", "seconds": 0.0, "note": "out of time"}
    try:
        with open(log, "w") as out:
            # Unbuffered, so that the log of a step killed in a hang shows how far it got.
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
                env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
            )
            try:
                rc = proc.wait(timeout=timeout)
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
            finally:  # a timeout, or this process interrupted: nothing of the step may live on
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    except OSError as exc:
        rc, status = None, "error"
        log.write_text(f"could not start: {exc}\n")
    if status == "timeout":
        note = f"killed after {timeout:.0f} s"
    else:
        note = "" if status == "ok" and quiet_ok else _last_line(log)
    return {**record, "status": status, "rc": rc, "seconds": round(time.perf_counter() - start, 1), "note": note}


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:100] if lines else ""


# --------------------------------------------------------------------------------------
# Step 1: versions.
# --------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """What this machine runs; each probe on its own, so one failure leaves the others."""
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "numpy": np.__version__}

    def probe(key: str, fn: Any) -> None:
        try:
            info[key] = fn()
        except Exception as exc:  # any failure is itself the finding
            info[key] = f"unavailable: {type(exc).__name__}: {exc}"[:300]

    def cupy_info() -> dict[str, Any]:
        import cupy

        rt = cupy.cuda.runtime
        props = rt.getDeviceProperties(0)
        return {
            "version": cupy.__version__,
            "devices": rt.getDeviceCount(),
            "gpu": props["name"].decode(),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_gb": round(props["totalGlobalMem"] / 2**30, 1),
            "driver": rt.driverGetVersion(),
            "runtime": rt.runtimeGetVersion(),
            "nvrtc": ".".join(map(str, cupy.cuda.nvrtc.getVersion())),
        }

    def torch_info() -> dict[str, Any]:
        import torch

        return {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}

    def pytest_timeout() -> bool:
        import importlib.util

        return importlib.util.find_spec("pytest_timeout") is not None

    probe("cupy", cupy_info)
    probe("torch", torch_info)
    probe("pytest_timeout", pytest_timeout)
    probe("nvidia_smi", lambda: subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout)
    return info


# --------------------------------------------------------------------------------------
# Step 2: kernel smoke tests at ff_tiny's shapes against float64.
# --------------------------------------------------------------------------------------
def kernel_smoke(precision: str, batch: int, img_size: int = 224) -> list[dict[str, Any]]:
    """Each fused op on the GPU in ``precision`` against the plain ops in float64 on the CPU."""
    from minimlp import backend, kernels
    from minimlp.kernels import cross_entropy_backward, cross_entropy_forward, gpu
    from minimlp.models import create_model

    gpu.set_tf32(precision == "tf32")  # before the first product in this process
    xp = backend.get_backend("gpu").xp
    if xp is np:
        raise SystemExit("no usable GPU: " + backend.get_backend("gpu").reason)
    dtype = np.float16 if precision == "float16" else np.float32
    rng = np.random.default_rng(0)
    T, D = (img_size // 16) ** 2 + 1, 192  # ff_tiny: 197 tokens at 224 px, 192 features
    H, P = 4 * D, int(4 * T)  # the two hidden sizes

    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        return rng.standard_normal(shape) * scale

    def layernorm(xp_, axis, x, w, b, dy):
        dw, db = xp_.zeros_like(w), xp_.zeros_like(b)
        y, cache = kernels.layernorm_forward(x, w, b, axis)
        return y, kernels.layernorm_backward(dy, cache, w, dw, db), dw, db

    def linear_gelu(xp_, axis, x, w, b, dh):
        dw, db = xp_.zeros_like(w), xp_.zeros_like(b)
        h, cache = kernels.linear_gelu_forward(x, w, b, axis)
        return h, kernels.linear_gelu_backward(dh, cache, w, dw, db), dw, db

    def gelu(xp_, x, dout):
        h, cache = kernels.gelu_forward(x)
        return h, kernels.gelu_backward(dout, cache)

    def matmul(xp_, a, b):
        return (a @ b,)

    def loss(xp_, logits, q):  # in float32 on the GPU, as mixed precision computes it
        wide = np.float64 if xp_ is np else np.float32
        value, cache = cross_entropy_forward(logits.astype(wide), q.astype(wide))
        return value, cross_entropy_backward(cache)

    x = normal(T, batch, D, scale=2.0) + 0.5
    cases = {
        "layernorm features": (
            lambda m, *a: layernorm(m, -1, *a),
            [x, 1 + normal(D, scale=0.3), normal(D, scale=0.2), normal(T, batch, D)],
        ),
        "layernorm tokens": (
            lambda m, *a: layernorm(m, 0, *a),
            [x, 1 + normal(T, scale=0.3), normal(T, scale=0.2), normal(T, batch, D)],
        ),
        "linear+gelu features": (
            lambda m, *a: linear_gelu(m, -1, *a),
            [normal(T, batch, D), normal(H, D, scale=D**-0.5), normal(H), normal(T, batch, H)],
        ),
        "linear+gelu tokens": (
            lambda m, *a: linear_gelu(m, 0, *a),
            [normal(T, batch, D), normal(P, T, scale=T**-0.5), normal(P), normal(P, batch, D)],
        ),
        "gelu": (gelu, [normal(T, batch, H, scale=3.0), normal(T, batch, H)]),
        "matmul": (matmul, [normal(T * batch, D), normal(D, H)]),
        "cross-entropy": (loss, [normal(batch, 1000, scale=3.0), rng.dirichlet(np.ones(1000), batch)]),
    }
    results = []
    for name, (fn, inputs) in cases.items():
        results.append(
            _compare(
                name, precision, lambda m, dt, f=fn, a=inputs: f(m, *(m.asarray(v.astype(dt)) for v in a)), xp, dtype
            )
        )

    def model_logits(m, dt):
        model = create_model(
            "ff_tiny", device="cpu" if m is np else "gpu", seed=0, img_size=img_size, dtype=np.dtype(dt).name
        )
        images = np.random.default_rng(1).standard_normal((min(batch, 8), 3, img_size, img_size))
        return (model.forward(m.asarray(images.astype(dt)))[0],)

    results.append(_compare("ff_tiny forward", precision, model_logits, xp, dtype))
    return results


def _compare(name: str, precision: str, fn: Any, xp: Any, dtype: Any) -> dict[str, Any]:
    from minimlp import backend

    record: dict[str, Any] = {"op": name, "precision": precision, "tolerance": TOLERANCE[precision]}
    try:
        reference = [np.asarray(r, np.float64) for r in fn(np, np.float64)]
        got = fn(xp, dtype)
        errors = []
        for g, r in zip(got, reference, strict=True):
            if g.dtype != dtype and g.ndim > 0 and name != "cross-entropy":
                raise TypeError(f"returned {g.dtype}, not {np.dtype(dtype).name}")
            g = backend.to_numpy(g).astype(np.float64)
            errors.append(float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-30)))
        record["rel_error"] = max(errors)
        record["ok"] = bool(np.isfinite(record["rel_error"]) and record["rel_error"] <= TOLERANCE[precision])
    except Exception as exc:  # a kernel that does not compile is a finding, not the end of the step
        record.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:400])
    return record


# --------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m minimlp.bench.gpu_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="gpu-check", help="directory for the tarball and summary.txt (default gpu-check)")
    p.add_argument("--budget", type=float, default=450, help="seconds for the whole run (default 450)")
    p.add_argument("--runs", default=RUNS, help=f"benchmarks as model:batch:steps, comma-separated (default {RUNS})")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="of float32, tf32, float16 (default all)")
    p.add_argument(
        "--bench-args", default=BENCH_ARGS, help=f"more arguments for each benchmark (default {BENCH_ARGS!r})"
    )
    p.add_argument("--smoke-batch", type=int, default=32, help="batch size of the kernel smoke tests (default 32)")
    p.add_argument("--smoke-img-size", type=int, default=224, help="image size of the smoke tests (default 224)")
    p.add_argument("--pytest-args", default="", help="more arguments for pytest -m gpu (e.g. a test file)")
    p.add_argument(
        "--per-test-timeout", type=int, default=60, help="seconds per test, with pytest-timeout (default 60)"
    )
    p.add_argument("--child", choices=("environment", "smoke"), help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.run_list = [(m, int(b), int(s)) for m, b, s in (spec.split(":") for spec in args.runs.split(",") if spec)]
    except ValueError:
        p.error(f"--runs {args.runs!r}: expected model:batch:steps[,model:batch:steps...], e.g. {RUNS}")
    args.precision_list = [x for x in args.precisions.split(",") if x]
    if not set(args.precision_list) <= set(PRECISIONS):
        p.error(f"--precisions {args.precisions!r}: choose from {', '.join(PRECISIONS)}")
    return args


def _child(args: argparse.Namespace) -> int:
    if args.child == "environment":
        result: Any = environment()
    else:
        result = kernel_smoke(args.precision, args.smoke_batch, args.smoke_img_size)
    Path(args.json_out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    if args.child == "environment":
        print("recorded: " + ", ".join(k for k, v in result.items() if not str(v).startswith("unavailable")))
        return 0
    bad = [r for r in result if not r["ok"]]
    print(
        f"{len(result) - len(bad)}/{len(result)} within tolerance"
        + "".join(f"; {r['op']}: {r.get('error') or format(r['rel_error'], '.1e')}" for r in bad)
    )
    return 1 if bad else 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _precision_flags(precision: str) -> list[str]:
    return {"float32": [], "tf32": ["--tf32"], "float16": ["--dtype", "float16"]}[precision]


def run(args: argparse.Namespace) -> tuple[str, bool]:
    """All the steps; returns the summary text and whether every step passed."""
    deadline = time.monotonic() + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    py = [sys.executable, "-m", "minimlp.bench.gpu_check"]
    steps: list[dict] = []

    def left(limit: float) -> float:
        return min(limit, deadline - time.monotonic() - 15)  # 15 s kept for packing up

    try:
        steps.append(
            run_step(
                "environment",
                [*py, "--child", "environment", "--json-out", str(work / "env.json")],
                left(LIMITS["environment"]),
                work,
            )
        )
        env = _read_json(work / "env.json") or {}
        smoke: list[dict] = []
        found = env.get("cupy")  # CuPy's versions and devices, or why it is unavailable
        if not (isinstance(found, dict) and found.get("devices", 0) > 0):  # nothing more can run
            steps.append({"step": "everything else", "status": "skipped", "note": f"no usable GPU: CuPy {found}"[:200]})
            args.precision_list, args.run_list, args.pytest_args = [], [], None
        for precision in args.precision_list:
            path = work / f"smoke-{precision}.json"
            steps.append(
                run_step(
                    f"smoke {precision}",
                    [
                        *py,
                        "--child",
                        "smoke",
                        "--precision",
                        precision,
                        "--smoke-batch",
                        str(args.smoke_batch),
                        "--smoke-img-size",
                        str(args.smoke_img_size),
                        "--json-out",
                        str(path),
                    ],
                    left(LIMITS["smoke"]),
                    work,
                )
            )
            smoke += _read_json(path) or []
        torch = env.get("torch") if isinstance(env.get("torch"), dict) else None
        compare = [] if torch is None else ["--compare", "torch"]
        if torch is not None and not torch.get("cuda_available"):
            compare += ["--compare-device", "cpu"]  # a dry run without a GPU: PyTorch on the CPU
        for model, batch, n in args.run_list:
            for precision in args.precision_list:
                name = f"bench-{model}-{precision}"
                cmd = [
                    sys.executable,
                    "-m",
                    "minimlp.bench",
                    "--gpu",
                    "--model",
                    model,
                    "-b",
                    str(batch),
                    "--steps",
                    str(n),
                    *compare,
                    *_precision_flags(precision),
                    *shlex.split(args.bench_args),
                    "--out",
                    str(work / f"{name}.json"),
                ]
                steps.append(run_step(f"bench {model} {precision}", cmd, left(LIMITS["bench"]), work, quiet_ok=True))
        if args.pytest_args is not None:
            pytest_cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
            if env.get("pytest_timeout") is True:
                pytest_cmd.append(f"--timeout={args.per_test_timeout}")
            steps.append(
                run_step("pytest -m gpu", pytest_cmd + shlex.split(args.pytest_args), left(LIMITS["pytest"]), work)
            )
        summary = format_report(env, steps, smoke, work)
    except Exception as exc:  # the report is written whatever happened
        summary = f"gpu-check failed in its own code: {type(exc).__name__}: {exc}"
        steps.append({"step": "gpu-check", "status": "error", "note": summary})
    (work / "steps.json").write_text(json.dumps(steps, indent=1))
    (work / "summary.txt").write_text(summary + "\n")
    tarball = out / "gpu-check.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for path in sorted(work.iterdir()):
            tar.add(path, arcname=f"gpu-check/{path.name}")
            path.unlink()
    work.rmdir()
    summary += f"\nlogs and JSON: {tarball}"
    (out / "summary.txt").write_text(summary + "\n")
    return summary, all(s["status"] == "ok" for s in steps)


def format_report(env: dict, steps: list[dict], smoke: list[dict], work: Path) -> str:
    from minimlp import bench

    cupy, torch = env.get("cupy"), env.get("torch")
    if isinstance(cupy, dict):
        head = (
            f"{cupy['gpu']} (sm {cupy['compute_capability']}, {cupy['memory_gb']} GB): driver {cupy['driver']}, "
            f"CUDA runtime {cupy['runtime']}, NVRTC {cupy['nvrtc']}, CuPy {cupy['version']}"
        )
    else:
        head = f"CuPy: {cupy}"
    if isinstance(torch, dict):
        head += f", PyTorch {torch['version']} (CUDA {torch['cuda']}, {'GPU' if torch['cuda_available'] else 'CPU'})"
    lines = [f"gpu-check: {head}; NumPy {env.get('numpy')}", "", f"{'step':28s}{'status':>8s}{'seconds':>9s}  note"]
    for s in steps:
        lines.append(f"{s['step']:28s}{s['status']:>8s}{s.get('seconds', 0):9.1f}  {s.get('note', '')}")
    if smoke:
        lines += ["", f"kernel smoke against float64 ({sum(r['ok'] for r in smoke)}/{len(smoke)} within tolerance):"]
        for precision in PRECISIONS:
            rows = [r for r in smoke if r["precision"] == precision]
            measured = [r for r in rows if "rel_error" in r]
            if measured:
                worst = max(measured, key=lambda r: r["rel_error"])
                product = next((r["rel_error"] for r in measured if r["op"] == "matmul"), float("nan"))
                lines.append(
                    f"  {precision:8s} worst {worst['rel_error']:.1e} ({worst['op']}; tolerance "
                    f"{TOLERANCE[precision]:.0e}); matmul {product:.1e}"
                )  # TF32 shows here, ~1e-3
            for r in rows:
                if not r["ok"]:
                    found = r.get("error") or format(r["rel_error"], ".1e")
                    lines.append(f"  {precision:8s} FAILED {r['op']}: {found}")
    runs = bench.summarise_runs(str(work))
    (work / "summary.json").write_text(
        json.dumps({"environment": env, "steps": steps, "smoke": smoke, **runs}, indent=1)
    )
    if runs["runs"]:
        lines += ["", bench.format_summary(runs)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return _child(args)
    summary, passed = run(args)
    print(summary)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
