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
  copies, loss, optimizer ...), from :mod:`minimlp.profiling`; both measured on the whole
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
import math
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import minimlp
from minimlp import backend, fused, profiling
from minimlp import functional as F
from minimlp.loss import cross_entropy_backward, cross_entropy_forward
from minimlp.models import create_model, list_models
from minimlp.parallel.workers import DataParallel


# --------------------------------------------------------------------------------------
# FLOPs.  Only the matrix products are counted (2 FLOPs per multiply-add), as MFU figures
# usually are; the elementwise work is small in FLOPs, though not in time.
# --------------------------------------------------------------------------------------
def ffvit_flops(config: Any) -> dict[str, int]:
    """Matrix-product FLOPs per image of the FF-ViT, from its configuration.

    forward: patch embedding + per block (feature FF + patch FF) + head (class token only).
    train: forward + backward, where backward costs two products per forward product
    (dW and dx) except the patch embedding, which needs no image gradient.
    """
    c = config
    n = (c.img_size // c.patch_size) ** 2
    t = n + 1
    hidden = int(c.embed_dim * c.mlp_ratio)
    patch_hidden = c.patch_mlp_dim or int(t * c.mlp_ratio)
    embed = 2 * n * c.embed_dim * c.in_chans * c.patch_size**2
    per_block = 2 * (2 * t * c.embed_dim * hidden) + 2 * (2 * c.embed_dim * t * patch_hidden)
    head = 2 * c.embed_dim * c.num_classes
    forward = embed + c.depth * per_block + head
    return {"forward": forward, "embed": embed, "train": 3 * forward - embed}


def count_flops(model: minimlp.Model, x: Any) -> dict[str, int]:
    """The same count, read off the shapes the linear and attention ops see in one forward pass.

    Works for any model built from ``functional.linear_forward`` and
    ``functional.attention_forward``; used as a check of :func:`ffvit_flops` and for
    models without a formula (ViT/DeiT, the attention-only ablation, MLP-Mixer).
    """
    counts = {"forward": 0, "embed": 0}
    in_embed = [False]
    linear, patch_embed, attention = F.linear_forward, F.patch_embed_forward, F.attention_forward

    def counting_linear(x, w, b, axis=-1):
        flops = 2 * (x.size // w.shape[1]) * w.shape[0] * w.shape[1]
        counts["forward"] += flops
        counts["embed"] += flops if in_embed[0] else 0
        return linear(x, w, b, axis)

    def counting_attention(q, k, v, *args, **kwargs):
        # q kᵀ: (S, d) x (d, S) and probs v: (S, S) x (S, d), for each of the (B, h) matrices.
        # Their backward is four products of the same sizes, so "train" below stays right.
        queries, keys = q.size // q.shape[-1], k.shape[-2]  # B·h·S query rows, S keys each
        counts["forward"] += 2 * queries * keys * q.shape[-1] + 2 * queries * keys * v.shape[-1]
        return attention(q, k, v, *args, **kwargs)

    def counting_patch_embed(*args, **kwargs):
        in_embed[0] = True
        try:
            return patch_embed(*args, **kwargs)
        finally:
            in_embed[0] = False

    F.linear_forward, F.patch_embed_forward = counting_linear, counting_patch_embed
    F.attention_forward = counting_attention
    try:
        model.forward(x)
    finally:
        F.linear_forward, F.patch_embed_forward, F.attention_forward = linear, patch_embed, attention
    batch = x.shape[0]
    forward, embed = counts["forward"] // batch, counts["embed"] // batch
    return {"forward": forward, "embed": embed, "train": 3 * forward - embed}


# --------------------------------------------------------------------------------------
# The optimizer step.  A plain SGD pass over the flat parameter buffer, in place and on
# all cores: the benchmark's stand-in for a real optimizer, kept in one function so that
# one can replace it.
# --------------------------------------------------------------------------------------
def sgd_update(store: Any, lr: float) -> None:
    """params -= lr * grads over the flat buffers."""
    params, grads = store.flat_params, store.flat_grads
    if backend.array_module(params) is not np:
        params -= lr * grads
        return
    scale = params.dtype.type(lr)

    def piece(p: np.ndarray, g: np.ndarray) -> None:
        p -= g * scale

    backend.parallel_chunks(piece, params, grads)


# --------------------------------------------------------------------------------------
# Clocks: wall time on the CPU; CUDA events on a GPU (a CPU timer would only see the
# kernel launches).
# --------------------------------------------------------------------------------------
def _cupy_clock(cupy: Any) -> Callable[[Callable[[], Any]], float]:
    def clock(fn: Callable[[], Any]) -> float:
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3

    return clock


def _torch_clock(torch: Any, device: str) -> Callable[[Callable[[], Any]], float]:
    if device == "cpu":
        return _wall_clock
    def clock(fn: Callable[[], Any]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return clock


def _wall_clock(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_peak(matmul: Callable[[Any, Any], Any], a: Any, b: Any, clock: Callable, repeats: int = 5) -> float:
    """GFLOP/s of one square matrix product, the median of ``repeats`` after a warm-up."""
    n = a.shape[0]
    matmul(a, b)
    times = [clock(lambda: matmul(a, b)) for _ in range(repeats)]
    return 2 * n**3 / statistics.median(times) / 1e9


# --------------------------------------------------------------------------------------
# The two contenders.  Each offers train_step(), forward_step(), a clock, its matmul peak
# and its peak memory.
# --------------------------------------------------------------------------------------
class MinimlpRunner:
    name = "minimlp"

    def __init__(self, model: minimlp.Model, batch: int, lr: float, dtype: str, seed: int = 0,
                 procs: int = 1) -> None:
        self.model, self.lr = model, lr
        xp = model.xp
        c = model.config
        rng = np.random.default_rng(seed)
        self.x_host = rng.standard_normal((batch, c.in_chans, c.img_size, c.img_size)).astype(np.float32)
        self.y_host = rng.integers(0, c.num_classes, batch)
        self.x, self.y = xp.asarray(self.x_host), xp.asarray(self.y_host)
        self.gpu = model.backend.is_gpu
        self.clock = _cupy_clock(xp) if self.gpu else _wall_clock
        self.mixed = None
        if dtype == "float16":
            from minimlp.amp import MixedPrecision

            self.mixed = MixedPrecision(model)
        # As the trainer does on the CPU: worker processes of one thread each, every batch
        # split over them (minimlp.parallel.workers); started last, after everything that can fail.
        self.parallel = DataParallel(model, procs, batch, seed) if procs > 1 else None
        self.steps_taken = 0

    def close(self) -> None:
        if self.parallel is not None:
            self.parallel.close()

    def train_step(self) -> None:
        """One training step, as the trainer takes it: forward, backward, SGD."""
        if self.parallel is None:
            self.step_in_process()
            return
        self.steps_taken += 1  # reseeds the workers' dropout, as the trainer's step count does
        self.parallel.train_step(self.x, self.y, 0.0, self.steps_taken)
        sgd_update(self.model.store, self.lr)

    def step_in_process(self, timer: profiling.OpTimer | None = None) -> None:
        """One training step on the whole batch in this process; with ``timer``, the
        optimizer's share is charged to it."""
        m = self.model
        if self.mixed is not None:
            m.zero_grad()
            self.mixed.forward_backward(self.x, self.y)
        else:
            logits, cache = m.forward(self.x, train=True)
            _, loss_cache = cross_entropy_forward(logits, self.y)
            self._optimizer_part(m.zero_grad, timer)
            m.backward(cross_entropy_backward(loss_cache), cache, input_grad=False)
        self._optimizer_part(lambda: sgd_update(m.store, self.lr), timer)

    @staticmethod
    def _optimizer_part(fn: Callable[[], None], timer: profiling.OpTimer | None) -> None:
        if timer is None:
            fn()
            return
        if timer.sync is not None:
            timer.sync()
        start = time.perf_counter()
        fn()
        if timer.sync is not None:
            timer.sync()
        timer.charge("optimizer", time.perf_counter() - start)

    def forward_step(self) -> None:
        if self.parallel is not None:
            self.parallel.forward(self.x)
            return
        model = self.mixed.half if self.mixed is not None else self.model
        model.forward(self.x, train=False)

    def logits(self) -> np.ndarray:
        """The logits of the model the timed steps run: in float16, the half copy of the weights."""
        if self.mixed is None:
            return backend.to_numpy(self.model.forward(self.x)[0])
        half = self.mixed.half
        half.store.flat_params[...] = self.model.store.flat_params
        return backend.to_numpy(half.forward(self.x)[0]).astype(np.float32)

    def breakdown(self, steps: int) -> dict[str, float]:
        """Milliseconds per training step by category; 'other' is the rest (Python, glue)."""
        sync = self.model.xp.cuda.Device().synchronize if self.gpu else None
        total = 0.0
        with profiling.recording(sync) as timer:
            for _ in range(steps):
                total += self.clock(lambda: self.step_in_process(timer))
        seconds = {k: v / steps for k, v in timer.seconds.items()}
        seconds["other"] = max(0.0, total / steps - sum(seconds.values()))
        return {k: 1e3 * v for k, v in seconds.items()}

    def peak_memory(self) -> dict[str, float]:
        """MiB held at the peak of one training step (parameters, gradients, activations)."""
        store = self.model.store
        resident = store.flat_params.nbytes + store.flat_grads.nbytes
        if self.gpu:
            pool = self.model.xp.get_default_memory_pool()
            self.model.xp.cuda.Device().synchronize()
            pool.free_all_blocks()
            self.step_in_process()
            self.model.xp.cuda.Device().synchronize()
            return {"peak_mb": pool.total_bytes() / 2**20, "parameters_and_grads_mb": resident / 2**20}
        tracemalloc.start()
        try:
            self.step_in_process()
            _, step_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return {"peak_mb": (resident + step_peak) / 2**20, "parameters_and_grads_mb": resident / 2**20}

    def matmul_peak(self, n: int, dtype: str) -> float:
        """The faster of the BLAS's own threading and minimlp's split products (on the CPU)."""
        xp = self.model.xp
        rng = np.random.default_rng(1)
        a = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
        b = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
        peak = matmul_peak(lambda p, q: p @ q, a, b, self.clock)
        if fused.applies_matmul(a, b):
            peak = max(peak, matmul_peak(fused.matmul, a, b, self.clock))
        return peak


class TorchRunner:
    name = "torch"

    def __init__(self, minimlp_runner: MinimlpRunner, device: str, dtype: str, lr: float, threads: int) -> None:
        try:
            from minimlp.bench import torch_baseline
        except ImportError as exc:
            raise SystemExit(str(exc)) from exc
        torch = torch_baseline.torch
        self.torch, self.device = torch, device
        if device == "cpu":
            torch.set_num_threads(threads)
        self.model = torch_baseline.from_minimlp(minimlp_runner.model, device)
        self.x = torch.from_numpy(minimlp_runner.x_host).to(device)
        self.y = torch.from_numpy(minimlp_runner.y_host).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.amp = dtype == "float16"
        self.scaler = torch.amp.GradScaler(device) if self.amp else None
        self.clock = _torch_clock(torch, device)

    def train_step(self) -> None:
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device, dtype=torch.float16, enabled=self.amp):
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()

    def forward_step(self) -> None:
        torch = self.torch
        with torch.inference_mode(), torch.autocast(self.device, dtype=torch.float16, enabled=self.amp):
            self.model(self.x)

    def logits(self) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode(), torch.autocast(self.device, dtype=torch.float16, enabled=self.amp):
            return self.model(self.x).float().cpu().numpy()

    def peak_memory(self) -> dict[str, float] | None:
        torch = self.torch
        if self.device == "cpu":
            return None  # PyTorch's CPU allocator keeps no statistics
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.train_step()
        torch.cuda.synchronize()
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20}

    def matmul_peak(self, n: int, dtype: str) -> float:
        torch = self.torch
        gen = torch.Generator().manual_seed(1)
        a = torch.randn(n, n, generator=gen).to(self.device, getattr(torch, dtype))
        b = torch.randn(n, n, generator=gen).to(self.device, getattr(torch, dtype))
        return matmul_peak(torch.matmul, a, b, self.clock)


# --------------------------------------------------------------------------------------
# Timing: warm up, then take turns.
# --------------------------------------------------------------------------------------
def timed_rounds(runners: list, step: str, warmup: int, steps: int, rounds: int) -> dict[str, list[list[float]]]:
    """Seconds per step for each runner, as rounds of steps; the runners take turns."""
    for runner in runners:
        for _ in range(warmup):
            getattr(runner, step)()
    per_round = max(1, math.ceil(steps / rounds))
    times: dict[str, list[list[float]]] = {r.name: [] for r in runners}
    for _ in range(rounds if len(runners) > 1 else 1):
        for runner in runners:
            fn = getattr(runner, step)
            n = per_round if len(runners) > 1 else steps
            times[runner.name].append([runner.clock(fn) for _ in range(n)])
    return times


def summarise(rounds: list[list[float]], batch: int, train_flops: int | None, peak: float | None) -> dict[str, Any]:
    samples = [t for r in rounds for t in r]
    median = statistics.median(samples)
    out = {
        "images_per_s": batch / median,
        "step_ms": {"median": 1e3 * median, "min": 1e3 * min(samples), "max": 1e3 * max(samples),
                    "steps": len(samples)},
    }
    if train_flops is not None:
        gflops = train_flops * batch / median / 1e9
        out["gflops"] = gflops
        if peak:
            out["fraction_of_peak"] = gflops / peak
    return out


# --------------------------------------------------------------------------------------
# The command.
# --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minimlp.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="float16: float16 compute with float32 master weights and loss scaling (GPU only)")
    p.add_argument("--tf32", action="store_true", help="let float32 matrix products use TF32 tensor cores (GPU)")
    p.add_argument("--compare", choices=("torch",), help="also run PyTorch eager, side by side")
    p.add_argument("--compare-device", choices=("cpu", "cuda"),
                   help="where PyTorch runs (default: where minimlp runs; cpu only for a dry run without a GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for BLAS, minimlp's elementwise kernels and PyTorch (default: all cores)")
    p.add_argument("--procs", type=int, default=0,
                   help="CPU only, as for train: split every batch over N worker processes of one thread "
                        "each; 0 (default) = one per thread of --threads, at most 8; 1 = one process whose "
                        "threads share each operation")
    p.add_argument("--profile-steps", type=int, default=2, help="extra steps for the time breakdown (0: skip)")
    p.add_argument("--peak-size", type=int, default=None,
                   help="side of the square matmul that measures the peak (default 2048 on the CPU, 8192 on a GPU)")
    p.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate of the timed steps")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", help="also write the JSON object to this file")
    p.add_argument("--summary", metavar="DIR",
                   help="do not benchmark: summarise the JSON files in DIR (from --out) as one table")
    return p.parse_args(argv)


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return {"cpu": cpu, "cores": backend.num_threads(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": f"{blas.get('name', '?')} {blas.get('version', '')}".strip()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    kept_memory = backend.keep_freed_memory()  # no page faults for reused activations (both contenders)
    device = "gpu" if args.gpu else (args.device or "cpu")
    threads = args.threads or backend.num_threads()
    backend.set_num_threads(threads)
    blas_threads = backend.blas_threads(threads)
    if args.tf32:
        from minimlp import gpu

        gpu.set_tf32(True)  # before the first float32 product
    overrides = {"img_size": args.img_size, "patch_size": args.patch_size, "in_chans": args.in_chans,
                 "embed_dim": args.embed_dim, "depth": args.depth, "num_classes": args.num_classes}
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


def _measure(args: argparse.Namespace, model: Any, ours: MinimlpRunner, threads: int, blas_threads: Any,
             procs: int, kept_memory: bool) -> dict[str, Any]:
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
        "model": args.model, "config": model.config_dict(), "batch_size": args.batch_size,
        "device": "gpu" if on_gpu else "cpu", "backend": model.backend.reason, "dtype": args.dtype,
        "tf32": bool(args.tf32 and on_gpu), "machine": _machine(),
        "threads": {"elementwise": threads, "blas": blas_threads, "procs": procs,
                    "torch": theirs.torch.get_num_threads() if theirs and theirs.device == "cpu" else None},
        "flops_per_image": flops, "steps": args.steps, "warmup": args.warmup, "keep_freed_memory": kept_memory,
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
        entry = {"train": summarise(train[r.name], args.batch_size, flops["train"], peak),
                 "forward": summarise(forward[r.name], args.batch_size, None, None)}
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
            "train_per_round": [statistics.median(t) / statistics.median(m)
                                for m, t in zip(train["minimlp"], train["torch"], strict=True)],
        }
    return result


def format_table(r: dict[str, Any]) -> str:
    c = r["config"]
    th = r["threads"]
    over_procs = th["procs"] > 1  # the step ran in worker processes; memory and breakdown did not
    lines = [
        f"minimlp bench: {r['model']} ({c['img_size']} px, patch {c['patch_size']}, dim {c['embed_dim']}, "
        f"depth {c['depth']}), batch {r['batch_size']}, {r['dtype']}{' + TF32' if r['tf32'] else ''}",
        f"device: {r['backend']}; {r['machine'].get('gpu') or r['machine']['cpu']}",
        (f"minimlp: {th['procs']} processes of one thread each (data parallel, as train); "
         if over_procs else f"minimlp threads: BLAS {th['blas']}, elementwise {th['elementwise']}; ")
        + (f"PyTorch threads: {th['torch']}; " if th.get("torch") else "")
        + f"NumPy {r['machine']['numpy']} ({r['machine']['blas']})"
        + (f", PyTorch {r['machine']['torch']}" if "torch" in r["machine"] else ""),
        f"FLOPs per image (matrix products): forward {r['flops_per_image']['forward'] / 1e9:.3f} G, "
        f"training step {r['flops_per_image']['train'] / 1e9:.3f} G",
        "matmul peak (" + r["matmul_peak_shape"] + ", this run): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in r["matmul_peak_gflops"].items()),
    ]
    if "logits_max_abs_diff" in r:
        lines.append(f"same function: max |logits minimlp - PyTorch| = {r['logits_max_abs_diff']:.2e}")
    names = [n for n in ("minimlp", "torch") if n in r]
    header = f"\n{'':24s}" + "".join(f"{n:>14s}" for n in names) + ("      ratio" if len(names) == 2 else "")
    lines.append(header)

    def row(label: str, values: list, fmt: str, ratio: float | None = None) -> None:
        cells = "".join(f"{format(v, fmt) if v is not None else '-':>14s}" for v in values)
        lines.append(f"{label:24s}{cells}" + (f"{ratio:10.2f}x" if ratio is not None else ""))

    ratio = r.get("ratio", {})
    row("train images/s", [r[n]["train"]["images_per_s"] for n in names], ".2f", ratio.get("train"))
    row("train ms/step (median)", [r[n]["train"]["step_ms"]["median"] for n in names], ".1f")
    row("forward images/s", [r[n]["forward"]["images_per_s"] for n in names], ".2f", ratio.get("forward"))
    row("train GFLOP/s", [r[n]["train"]["gflops"] for n in names], ".1f")
    row("% of matmul peak", [100 * r[n]["train"].get("fraction_of_peak", float("nan")) for n in names], ".1f")
    row("peak memory, 1 proc (MB)" if over_procs else "peak memory (MB)",
        [(r[n]["memory"] or {}).get("peak_mb") for n in names], ".0f")
    if "host_syncs_per_step" in r["minimlp"]:
        row("host syncs per step", [r["minimlp"]["host_syncs_per_step"]] + [None] * (len(names) - 1), ".2f")
    steps = r["minimlp"]["train"]["step_ms"]["steps"]
    lines.append(f"(median of {steps} timed steps each after {r['warmup']} warm-up steps"
                 + (f", in {r['rounds']} alternating rounds; per-round ratios "
                    + " ".join(f"{x:.2f}" for x in ratio["train_per_round"]) if ratio else "") + ")")
    if "breakdown_ms" in r["minimlp"]:
        b = r["minimlp"]["breakdown_ms"]
        total = sum(b.values())
        where = ", in one process" if over_procs else ""
        lines.append(f"\nminimlp training step by category ({total:.1f} ms, profiled separately{where}):")
        for k in sorted(b, key=b.get, reverse=True):
            lines.append(f"  {k:12s}{b[k]:10.1f} ms  {100 * b[k] / total:5.1f}%")
    return "\n".join(lines)


def summarise_runs(directory: str) -> dict[str, Any]:
    """One row per benchmark JSON file in ``directory``: throughputs, % of peak, ratio,
    memory, host syncs and the logits' agreement with PyTorch."""
    rows = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(r, dict) or "minimlp" not in r:
            continue  # not a benchmark result (e.g. an earlier summary)
        ours = r["minimlp"]
        row = {"file": path.name, "model": r["model"], "batch_size": r["batch_size"], "device": r["device"],
               "dtype": r["dtype"], "tf32": r["tf32"], "gpu": r["machine"].get("gpu"),
               "procs": r["threads"].get("procs", 1),
               "minimlp_train_images_per_s": ours["train"]["images_per_s"],
               "minimlp_gflops": ours["train"].get("gflops"),
               "minimlp_fraction_of_peak": ours["train"].get("fraction_of_peak"),
               "minimlp_peak_mb": (ours.get("memory") or {}).get("peak_mb"),
               "host_syncs_per_step": ours.get("host_syncs_per_step"),
               "matmul_peak_gflops": r["matmul_peak_gflops"]["minimlp"]}
        if "torch" in r:
            row.update(torch_train_images_per_s=r["torch"]["train"]["images_per_s"],
                       torch_fraction_of_peak=r["torch"]["train"].get("fraction_of_peak"),
                       torch_peak_mb=(r["torch"].get("memory") or {}).get("peak_mb"),
                       ratio_train=r["ratio"]["train"], ratio_forward=r["ratio"]["forward"],
                       ratio_train_per_round=r["ratio"]["train_per_round"],
                       logits_max_abs_diff=r.get("logits_max_abs_diff"))
        rows.append(row)
    return {"runs": rows}


def format_summary(summary: dict[str, Any]) -> str:
    """The rows as a table: minimlp and PyTorch images/s, their ratio (and per round), % of the
    matmul peak in the run's precision, peak MB, minimlp's host syncs per step, max |Δ logits|."""
    def cell(value: Any, fmt: str, width: int) -> str:
        return f"{'-' if value is None else format(value, fmt):>{width}s}"

    lines = [f"{'model':9s}{'batch':>6s} {'precision':10s}{'img/s':>9s}{'PyTorch':>9s}{'ratio':>7s}  "
             f"{'per round':18s}{'% peak':>7s}{'PyT %':>7s}{'MB':>7s}{'PyT MB':>7s}{'syncs':>6s}{'|dlogit|':>9s}"]
    for row in summary["runs"]:
        precision = "tf32" if row["tf32"] else row["dtype"]
        percent = [None if row.get(k) is None else 100 * row[k]
                   for k in ("minimlp_fraction_of_peak", "torch_fraction_of_peak")]
        rounds = " ".join(f"{x:.2f}" for x in row.get("ratio_train_per_round", []))
        lines.append(f"{row['model']:9s}{row['batch_size']:6d} {precision:10s}"
                     + cell(row["minimlp_train_images_per_s"], ".1f", 9)
                     + cell(row.get("torch_train_images_per_s"), ".1f", 9)
                     + cell(row.get("ratio_train"), ".2f", 7) + f"  {rounds[:18]:18s}"
                     + cell(percent[0], ".1f", 7) + cell(percent[1], ".1f", 7)
                     + cell(row.get("minimlp_peak_mb"), ".0f", 7) + cell(row.get("torch_peak_mb"), ".0f", 7)
                     + cell(row.get("host_syncs_per_step"), ".2f", 6) + cell(row.get("logits_max_abs_diff"), ".1e", 9))
    return "\n".join(lines)


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
    threads, env_threads, blas = backend.num_threads(), os.environ.get("MINIMLP_NUM_THREADS"), backend.blas_threads()
    try:
        result = run(args)
    finally:  # leave the process as we found it (tests call main() in-process)
        backend.set_num_threads(int(env_threads) if env_threads else None)
        if blas is not None:
            backend.blas_threads(blas)
        if "torch" in sys.modules and args.threads:
            sys.modules["torch"].set_num_threads(threads)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return result

