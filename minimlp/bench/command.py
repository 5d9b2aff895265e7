"""python -m minimlp.bench: how fast minimlp trains, against the machine and PyTorch.

For one model and batch size, on synthetic data already on the device, the training step
that ``python -m minimlp.train`` takes: on the CPU each batch split over one process per
core, one thread each (:mod:`minimlp.parallel.workers`; ``--procs 1``: one process whose threads
share every product and elementwise pass), on a GPU one process:

* training-step throughput (forward, backward, optimizer) and forward-only throughput,
  in images/s: the median of individually timed steps after warm-up;
* the model's matrix-product FLOPs per image, counted from its shapes; the GFLOP/s a
  training step achieves; the machine's float32 matmul peak measured by the same tool in
  the same run (a 2048² product on the CPU, 8192² on a GPU; the best of the measurements
  before and after the timed steps, by BLAS's own threads, minimlp's split products and,
  when compared, PyTorch) and the ratio of the two;
* peak memory, and where a training step spends its time (matmuls, GELU, LayerNorm,
  copies, loss, optimizer ...), from :mod:`minimlp.kernels.timing`; both measured on the whole
  batch in this process, since the worker processes keep no such records;
* on a GPU, host syncs per training step: the device -> host reads the step makes
  (:func:`minimlp.backend.host_syncs`), each of which stalls the host until the GPU has
  caught up, so that the next step's kernels are not queued ahead;
* with ``--compare torch``: the same architecture in PyTorch eager
  (:mod:`minimlp.bench.torch_baseline`) with minimlp's weights, the same threads, precision, exact
  GELU and SGD step.  minimlp and PyTorch take turns, round by round, so a busy machine
  slows both alike; the ratio of the medians is reported, with the per-round ratios.

The numbers are only as steady as the machine: on a shared machine repeat the run and
compare ratios.  ``--json`` prints one JSON object instead of the table.  Lesson 11's
appendix (11a) explains how the numbers are measured; lesson 11, the fused kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from minimlp import backend
from minimlp.backend import get_backend
from minimlp.bench.flops import count_flops, ffvit_flops
from minimlp.bench.report import format_summary, format_table, summarise_runs
from minimlp.bench.runners import MinimlpRunner, TorchRunner, summarise, timed_rounds
from minimlp.kernels import threads as cpu_threads
from minimlp.models import create_model, list_models


# --------------------------------------------------------------------------------------
# The command.
# --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m minimlp.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="ff_tiny", help=f"model name ({', '.join(list_models())})")
    p.add_argument("--img-size", type=int)
    p.add_argument("--patch-size", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--num-classes", type=int)
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("--gpu", action="store_true", help="run on the GPU (CuPy); same as --device gpu")
    p.add_argument("--device", default=None, help="cpu, gpu or cuda:N (default cpu)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per contender (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--rounds", type=int, default=5, help="turns minimlp and PyTorch take (default 5)")
    p.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="float16: float16 compute with float32 master weights and loss scaling (GPU only)",
    )
    p.add_argument("--tf32", action="store_true", help="let float32 matrix products use TF32 tensor cores (GPU)")
    p.add_argument("--compare", choices=("torch",), help="also run PyTorch eager, side by side")
    p.add_argument(
        "--compare-device",
        choices=("cpu", "cuda"),
        help="where PyTorch runs (default: where minimlp runs; cpu only for a dry run without a GPU)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for BLAS, minimlp's elementwise kernels and PyTorch (default: all cores)",
    )
    p.add_argument(
        "--procs",
        type=int,
        default=0,
        help="CPU only, as for train: split every batch over N worker processes of one thread "
        "each; 0 (default) = one per thread of --threads, at most 8; 1 = one process whose "
        "threads share each operation",
    )
    p.add_argument("--profile-steps", type=int, default=2, help="extra steps for the time breakdown (0: skip)")
    p.add_argument(
        "--peak-size",
        type=int,
        default=None,
        help="side of the square matmul that measures the peak (default 2048 on the CPU, 8192 on a GPU)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate of the timed steps")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", help="also write the JSON object to this file")
    p.add_argument(
        "--summary", metavar="DIR", help="do not benchmark: summarise the JSON files in DIR (from --out) as one table"
    )
    return p.parse_args(argv)


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return {
        "cpu": cpu,
        "cores": cpu_threads.num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": f"{blas.get('name', '?')} {blas.get('version', '')}".strip(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    kept_memory = cpu_threads.keep_freed_memory()  # no page faults for reused activations (both contenders)
    device = "gpu" if args.gpu else (args.device or "cpu")
    threads = args.threads or cpu_threads.num_threads()
    cpu_threads.set_num_threads(threads)
    blas_threads = cpu_threads.blas_threads(threads)
    if args.tf32 and get_backend(device).is_gpu:  # first the backend: an unusable GPU means NumPy, one warning
        from minimlp.kernels import gpu

        gpu.set_tf32(True)  # before the first float32 product
    overrides = {
        "img_size": args.img_size,
        "patch_size": args.patch_size,
        "in_chans": args.in_chans,
        "embed_dim": args.embed_dim,
        "depth": args.depth,
        "num_classes": args.num_classes,
    }
    model = create_model(args.model, device=device, seed=0, **overrides)
    on_gpu = model.backend.is_gpu
    if args.dtype == "float16" and not on_gpu:
        raise SystemExit("--dtype float16 needs a GPU: NumPy has no fast float16 matrix product")
    if args.procs < 0:
        raise SystemExit("--procs must be 0 (one per thread) or more")
    procs = 1 if on_gpu else (args.procs or min(threads, 8))
    ours = MinimlpRunner(model, args.batch_size, args.lr, args.dtype, procs=procs)
    try:
        return _measure(args, model, ours, threads, blas_threads, procs, kept_memory)
    finally:
        ours.close()


def _measure(
    args: argparse.Namespace,
    model: Any,
    ours: MinimlpRunner,
    threads: int,
    blas_threads: Any,
    procs: int,
    kept_memory: bool,
) -> dict[str, Any]:
    """The timings, peaks and memory of one benchmark run, as ``run`` sets it up."""
    on_gpu = model.backend.is_gpu
    runners: list = [ours]
    theirs = None
    if args.compare == "torch":
        theirs = TorchRunner(ours, args.compare_device or ("cuda" if on_gpu else "cpu"), args.dtype, args.lr, threads)
        if theirs.device == "cuda":
            theirs.torch.backends.cuda.matmul.allow_tf32 = args.tf32
            theirs.torch.backends.cudnn.allow_tf32 = args.tf32
        runners.append(theirs)

    flops = ffvit_flops(model.config) if model.arch == "ffvit" else count_flops(model, ours.x[:1])
    peak_n, peak_dtype = (8192, args.dtype) if on_gpu else (2048, "float32")
    peak_n = args.peak_size or peak_n
    peaks = {r.name: r.matmul_peak(peak_n, peak_dtype) for r in runners}

    result: dict[str, Any] = {
        "model": args.model,
        "config": model.config_dict(),
        "batch_size": args.batch_size,
        "device": "gpu" if on_gpu else "cpu",
        "backend": model.backend.reason,
        "dtype": args.dtype,
        "tf32": bool(args.tf32 and on_gpu),
        "machine": _machine(),
        "threads": {
            "elementwise": threads,
            "blas": blas_threads,
            "procs": procs,
            "torch": theirs.torch.get_num_threads() if theirs and theirs.device == "cpu" else None,
        },
        "flops_per_image": flops,
        "steps": args.steps,
        "warmup": args.warmup,
        "keep_freed_memory": kept_memory,
        "rounds": args.rounds if theirs else 1,
    }
    if on_gpu:
        cupy = model.xp
        result["machine"]["gpu"] = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    if theirs is not None:
        result["machine"]["torch"] = theirs.torch.__version__
        diff = np.abs(ours.logits() - theirs.logits())
        result["logits_max_abs_diff"] = float(diff.max())

    syncs = backend.host_syncs()
    train = timed_rounds(runners, "train_step", args.warmup, args.steps, args.rounds)
    syncs_per_step = (backend.host_syncs() - syncs) / (args.warmup + sum(map(len, train["minimlp"])))
    forward = timed_rounds(runners, "forward_step", 1, args.steps, args.rounds)
    peaks_after = {r.name: r.matmul_peak(peak_n, peak_dtype) for r in runners}
    result["matmul_peak_gflops"] = {name: max(peaks[name], peaks_after[name]) for name in peaks}
    peak = max(result["matmul_peak_gflops"].values())  # the machine's best: every tool, measured twice
    result["matmul_peak_shape"] = f"{peak_dtype} {peak_n}x{peak_n}"
    for r in runners:
        entry = {
            "train": summarise(train[r.name], args.batch_size, flops["train"], peak),
            "forward": summarise(forward[r.name], args.batch_size, None, None),
        }
        entry["memory"] = r.peak_memory()
        result[r.name] = entry
    if on_gpu:  # on the CPU nothing waits for a device
        result["minimlp"]["host_syncs_per_step"] = syncs_per_step
    if args.profile_steps > 0:
        result["minimlp"]["breakdown_ms"] = ours.breakdown(args.profile_steps)
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if theirs is not None:
        ours_t, theirs_t = result["minimlp"], result["torch"]
        result["ratio"] = {
            "train": ours_t["train"]["images_per_s"] / theirs_t["train"]["images_per_s"],
            "forward": ours_t["forward"]["images_per_s"] / theirs_t["forward"]["images_per_s"],
            "train_per_round": [
                statistics.median(t) / statistics.median(m)
                for m, t in zip(train["minimlp"], train["torch"], strict=True)
            ],
        }
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.summary:
        summary = summarise_runs(args.summary)
        print(json.dumps(summary) if args.json else format_summary(summary))
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=1))
        return summary
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1 or args.batch_size < 1:
        raise SystemExit("--steps, --rounds and -b must be positive and --warmup not negative")
    threads, env_threads = cpu_threads.num_threads(), os.environ.get("MINIMLP_NUM_THREADS")
    blas = cpu_threads.blas_threads()
    try:
        result = run(args)
    finally:  # leave the process as we found it (tests call main() in-process)
        cpu_threads.set_num_threads(int(env_threads) if env_threads else None)
        if blas is not None:
            cpu_threads.blas_threads(blas)
        if "torch" in sys.modules and args.threads:
            sys.modules["torch"].set_num_threads(threads)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return result
