"""The contenders (minimlp and PyTorch eager), their clocks and matmul peaks, and the timed rounds they take in turn."""

from __future__ import annotations

import math
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

import minimlp
from minimlp import backend, kernels
from minimlp.kernels import cpu, cross_entropy_backward, cross_entropy_forward, timing
from minimlp.kernels import threads as cpu_threads
from minimlp.parallel.workers import DataParallel


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

    cpu_threads.parallel_chunks(piece, params, grads)


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

    def __init__(self, model: minimlp.Model, batch: int, lr: float, dtype: str, seed: int = 0, procs: int = 1) -> None:
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
            from minimlp.kernels.amp import MixedPrecision

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

    def step_in_process(self, timer: timing.OpTimer | None = None) -> None:
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
    def _optimizer_part(fn: Callable[[], None], timer: timing.OpTimer | None) -> None:
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
        with timing.recording(sync) as timer:
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
        if kernels.applies_matmul(a, b):
            peak = max(peak, matmul_peak(cpu.matmul, a, b, self.clock))
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
        "step_ms": {
            "median": 1e3 * median,
            "min": 1e3 * min(samples),
            "max": 1e3 * max(samples),
            "steps": len(samples),
        },
    }
    if train_flops is not None:
        gflops = train_flops * batch / median / 1e9
        out["gflops"] = gflops
        if peak:
            out["fraction_of_peak"] = gflops / peak
    return out
