"""Data parallelism on the CPU: each batch split over worker processes, one core each.

The model's matrix products are small (a few hundred rows), and a BLAS library spreads such
products over cores badly: two BLAS threads in one process run a training step barely
faster than one.  Two *processes*, each with one thread and half of the batch, run it
almost twice as fast.  This is PyTorch's DistributedDataParallel in miniature:

    main process                         worker k (of N), one thread each
    ------------                         --------------------------------
    x (B, C, H, W) -> shared memory      copy the shared parameters into its model
    send "train", shard k           ->   forward + backward on rows [lo_k, hi_k)
                                    <-   its gradient (shard mean) -> shared memory
    grad = sum_k (B_k / B) grad_k        (the mean over the whole batch)
    clip, optimizer step (main's model)

Only the main process's model is ever updated; workers copy its parameters at every
step (a few MB, far cheaper than the step itself).  Dropout masks come from a generator
each worker reseeds from (seed, step, k), so a run is reproducible and resumes exactly
even though no worker state is saved.  Workers ignore Ctrl-C and SIGUSR1, which a
terminal or a batch system sends to the whole process group: the trainer decides when to
stop, and saves.  :mod:`minimlp.parallel.sharding` holds the split and the weights (and why the gradient
of a mean is the weighted mean of the shards' gradients), which the
MPI ranks of :mod:`minimlp.parallel.mpi` share (each rank may split its own shard
over worker processes in turn).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import traceback
from collections.abc import Iterator
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from minimlp.kernels import cross_entropy_backward, cross_entropy_forward
from minimlp.parallel.sharding import shard_bounds, shard_weight

__all__ = ["DataParallel", "WorkerError"]

# The signals that ask the trainer to stop (Ctrl-C; SIGUSR1 from mpirun or a batch system).
STOP_SIGNALS = {s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGUSR1", None)) if s is not None}


class WorkerError(RuntimeError):
    """A worker process failed or died; the run cannot go on."""


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold the stop signals back while processes start: a child inherits the blocked mask, so
    one arriving before it has set its handlers waits, and is then ignored, instead of killing it.
    The parent gets any that arrived once the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no process groups to signal
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals() -> None:
    """In a worker: ignore the stop signals, then let them through (any held back are dropped)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class _Shared:
    """Named shared-memory arrays, created by the main process and attached by workers."""

    def __init__(self, specs: dict[str, tuple[tuple[int, ...], str]], names: dict[str, str] | None = None) -> None:
        self.blocks: dict[str, shared_memory.SharedMemory] = {}
        self.arrays: dict[str, np.ndarray] = {}
        for key, (shape, dtype) in specs.items():
            size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
            if names is None:
                block = shared_memory.SharedMemory(create=True, size=size)
            else:
                block = shared_memory.SharedMemory(name=names[key])
            self.blocks[key] = block
            self.arrays[key] = np.ndarray(shape, dtype=dtype, buffer=block.buf)

    def names(self) -> dict[str, str]:
        return {key: block.name for key, block in self.blocks.items()}

    def close(self, unlink: bool = False) -> None:
        self.arrays.clear()
        for block in self.blocks.values():
            block.close()
            if unlink:
                block.unlink()
        self.blocks.clear()


def _worker(rank: int, config: dict[str, Any], specs: dict, names: dict[str, str], seed: int, conn: Any) -> None:
    """A worker's loop: wait for a command, compute on its shard, answer."""
    ignore_stop_signals()  # stopping is the main process's business
    from minimlp.models.registry import model_from_config

    shared = _Shared(specs, names)
    a = shared.arrays
    model = model_from_config(config, device="cpu", seed=seed)
    flat = model.store.flat_params
    try:
        while True:
            try:
                command = conn.recv()
            except EOFError:  # the main process is gone
                break
            if command is None:
                break
            try:
                kind, lo, hi = command[:3]
                np.copyto(flat, a["params"])
                x = a["images"][lo:hi]
                if kind == "train":
                    smoothing, step, soft = command[3:]
                    model.seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))
                    logits, cache = model.forward(x, train=True)  # (B_k, K)
                    target = a["targets"][lo:hi] if soft else a["labels"][lo:hi]  # (B_k, K) or (B_k,)
                    loss, loss_cache = cross_entropy_forward(logits, target, smoothing)
                    model.zero_grad()
                    model.backward(cross_entropy_backward(loss_cache), cache, input_grad=False)
                    np.copyto(a["grads"][rank], model.store.flat_grads)
                    a["logits"][lo:hi] = logits
                    conn.send(("ok", float(loss)))
                else:  # "eval"
                    logits, _ = model.forward(x, train=False)
                    a["logits"][lo:hi] = logits
                    conn.send(("ok", 0.0))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        shared.close()


class DataParallel:
    """Run a model's forward and backward over ``num_procs`` worker processes.

    ``forward(x, train=False)`` has the model's signature (so :func:`minimlp.evaluate.evaluate`
    takes a ``DataParallel`` as it takes a model); ``train_step(x, targets, smoothing, step)``
    leaves the batch-mean gradient in ``model.grads`` and returns (loss, logits); targets are
    labels or soft targets (mixup/cutmix), which reach every worker's loss.
    """

    def __init__(self, model: Any, num_procs: int, max_batch: int, seed: int = 0) -> None:
        if model.xp is not np:
            raise ValueError("data parallelism over processes is for the CPU; a GPU runs one process")
        self.model, self.num_procs = model, int(num_procs)
        C, H, W = model.expected_input_shape()
        P, K = model.num_params(), model.config.num_classes
        dtype = model.dtype.name
        specs = {
            "params": ((P,), dtype),
            "grads": ((self.num_procs, P), dtype),
            "images": ((max_batch, C, H, W), dtype),
            "labels": ((max_batch,), "int64"),
            "targets": ((max_batch, K), dtype),
            "logits": ((max_batch, K), dtype),
        }
        self.max_batch = max_batch
        self.conns, self.procs = [], []
        with stop_signals_blocked():  # the resource tracker that shared memory may start is spared too
            self.shared = _Shared(specs)
        try:
            with stop_signals_blocked():  # again: starting that tracker unblocks SIGINT
                self._start(model, specs, seed)
        except BaseException:  # a Ctrl-C held back until now, or a failed start: no process or memory left behind
            self.close()
            raise

    def _start(self, model: Any, specs: dict, seed: int) -> None:
        # Workers start with Python's "spawn" (a fresh interpreter: no inherited thread pools
        # or BLAS state) and one thread each, which is the point of using processes.
        context = mp.get_context("spawn")
        saved_env = {
            k: os.environ.get(k)
            for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MINIMLP_NUM_THREADS")
        }
        os.environ.update({k: "1" for k in saved_env})
        try:
            for rank in range(self.num_procs):
                parent, child = context.Pipe()
                proc = context.Process(
                    target=_worker,
                    name=f"minimlp-worker-{rank}",
                    daemon=True,
                    args=(rank, model.config_dict(), specs, self.shared.names(), seed, child),
                )
                proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # The attributes evaluate() reads from a model.
    @property
    def xp(self) -> Any:
        return np

    @property
    def dtype(self) -> np.dtype:
        return self.model.dtype

    @property
    def config(self) -> Any:
        return self.model.config

    def _shards(self, B: int) -> list[tuple[int, int]]:
        return shard_bounds(B, min(self.num_procs, B))  # no empty shards: an idle worker is not asked

    def _run(self, x: np.ndarray, commands: list[tuple]) -> list[float]:
        B = x.shape[0]
        if B > self.max_batch:
            raise ValueError(f"batch of {B} is larger than the {self.max_batch} this DataParallel was built for")
        np.copyto(self.shared.arrays["params"], self.model.store.flat_params)
        self.shared.arrays["images"][:B] = x
        for rank, (conn, command) in enumerate(zip(self.conns, commands, strict=False)):
            try:
                conn.send(command)
            except (BrokenPipeError, ConnectionError):
                raise WorkerError(
                    f"worker process {rank} died (killed, or out of memory?); the run cannot go on"
                ) from None
        results = []
        for rank, conn in enumerate(self.conns[: len(commands)]):
            try:
                status, value = conn.recv()
            except (EOFError, ConnectionError):
                raise WorkerError(
                    f"worker process {rank} died (killed, or out of memory?); the run cannot go on"
                ) from None
            if status == "error":
                raise WorkerError(f"worker process {rank} failed:\n{value}")
            results.append(value)
        return results

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, None]:
        """Logits (B, K) for a float batch (B, C, H, W), without dropout."""
        x = self.model.prepare_input(x)
        self._run(x, [("eval", lo, hi) for lo, hi in self._shards(x.shape[0])])
        return self.shared.arrays["logits"][: x.shape[0]].copy(), None

    def train_step(self, x: np.ndarray, targets: np.ndarray, smoothing: float, step: int) -> tuple[float, np.ndarray]:
        """Forward and backward over the shards; ``model.grads`` gets the batch-mean gradient.

        ``targets`` are int labels (B,) or soft targets (B, K) (mixup/cutmix), as for
        :func:`minimlp.loss.cross_entropy_forward`.
        """
        x = self.model.prepare_input(x)
        B = x.shape[0]
        shards = self._shards(B)
        soft = np.ndim(targets) == 2
        self.shared.arrays["targets" if soft else "labels"][:B] = targets
        losses = self._run(x, [("train", lo, hi, smoothing, step, soft) for lo, hi in shards])
        grads = self.shared.arrays["grads"]
        total = self.model.store.flat_grads
        total.fill(0)
        loss = 0.0
        for rank, ((lo, hi), shard_loss) in enumerate(zip(shards, losses, strict=True)):
            weight = shard_weight(hi - lo, B)  # each shard's loss is a mean over its rows
            total += weight * grads[rank]
            loss += weight * shard_loss
        return loss, self.shared.arrays["logits"][:B].copy()

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        self.conns, self.procs = [], []
        if self.shared.blocks:
            self.shared.close(unlink=True)

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
