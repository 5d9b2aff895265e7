"""Data-parallel training over MPI ranks: the gradient sum, by MPI on CPUs and NCCL on GPUs.

One training step on rank k of N, whose shard of the batch of B images has B_k rows:

    forward + backward on its B_k rows, with dloss = B_k / B     (its weighted part of the mean)
    sum of the flat gradient buffer over the ranks               (= the whole batch's gradient)
    clip + optimizer step: the same code on the same numbers     (so the replicas stay equal)

Every gradient is a view into one flat buffer (``model.store.flat_grads``), so the sum is
one in-place ``MPI_Allreduce`` over one buffer on the CPU (:class:`MPIGradients`), and a
few NCCL all-reduces on the GPU (:class:`NcclGradients`), where the buffer is cut into
buckets whose sums start while the backward pass is still computing the earlier blocks
(:func:`gradient_buckets`).  :class:`DistributedDataParallel` has the interface of
:class:`minimlp.parallel.DataParallel`, so the trainer uses either the same way.  The
ranks, the job and its failure handling are :mod:`minimlp.parallel.mpi`; the split of the
batch and the weights, derived there, are :mod:`minimlp.parallel.sharding`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from minimlp.backend import array_module
from minimlp.kernels import cross_entropy_backward, cross_entropy_forward
from minimlp.parallel.mpi import MPIWorld, env_float
from minimlp.parallel.sharding import seed_for, shard_weight

__all__ = [
    "DistributedDataParallel",
    "MPIGradients",
    "NcclGradients",
    "Bucket",
    "gradient_buckets",
    "notify_after_block_backward",
]

DEFAULT_CHECK_EVERY = 1000  # steps between replica checks ($MINIMLP_CHECK_REPLICAS); one pass over the parameters
DEFAULT_BUCKET_MB = 25.0  # $MINIMLP_BUCKET_MB; PyTorch DDP's default bucket size


class Bucket(NamedTuple):
    after_block: int | None  # launched once this block's backward is done; None: after the whole backward
    ranges: list[tuple[int, int]]  # [lo, hi) element ranges of the flat gradient buffer


def _offset(view: Any, flat: Any) -> int:
    """Where a parameter view starts in its flat buffer, in elements."""
    if array_module(flat) is np:
        return (view.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // flat.itemsize
    return (view.data.ptr - flat.data.ptr) // flat.itemsize


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def gradient_buckets(model: Any, bucket_bytes: float) -> list[Bucket]:
    """Split the flat gradient buffer into buckets that can be reduced during the backward pass.

    The backward pass runs the blocks last to first, and block k's backward writes only
    block k's gradients, so once it returns the gradients of blocks k..depth-1 are final.
    Blocks are grouped, from the last, into buckets of at least ``bucket_bytes``; each is
    launched right after the backward of its lowest block.  Everything else (the first
    blocks, the embeddings, the final norm and the head) forms the last bucket, reduced
    when the backward pass has returned.  In the flat buffer a group of blocks is two
    contiguous ranges (its matrices in the weight-decay part, its vectors in the rest).
    A model without ``blocks`` gets one bucket.
    """
    store = model.store
    flat = store.flat_grads
    total = int(flat.size)
    blocks = getattr(model, "blocks", None)
    if not blocks:
        return [Bucket(None, [(0, total)])]
    per_block: list[list[tuple[int, int]]] = [[] for _ in blocks]
    for name, grad in store.grads.items():
        parts = name.split(".")
        if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
            lo = _offset(grad, flat)
            per_block[int(parts[1])].append((lo, lo + int(grad.size)))
    itemsize = flat.itemsize
    buckets, current, size = [], [], 0
    for k in range(len(blocks) - 1, 0, -1):  # block 0 always joins the last bucket
        current += per_block[k]
        size += sum(hi - lo for lo, hi in per_block[k]) * itemsize
        if size >= bucket_bytes:
            buckets.append(Bucket(k, _merge(current)))
            current, size = [], 0
    taken = sorted(r for b in buckets for r in b.ranges)
    rest, start = [], 0
    for lo, hi in taken:
        if lo > start:
            rest.append((start, lo))
        start = hi
    if start < total:
        rest.append((start, total))
    return buckets + [Bucket(None, rest)]


def notify_after_block_backward(model: Any, block_index: int, callback: Callable[[], None]) -> None:
    """Call ``callback()`` each time block ``block_index`` of ``model`` finishes its backward.

    The model's backward loop calls ``block.backward`` on each block instance, so wrapping
    that one instance's method is enough; the model's code is untouched.
    """
    block = model.blocks[block_index]
    backward = block.backward

    def backward_then_notify(*args: Any, **kwargs: Any) -> Any:
        dx = backward(*args, **kwargs)
        callback()
        return dx

    block.backward = backward_then_notify


class MPIGradients:
    """CPU: one in-place ``MPI_Allreduce`` over the whole flat buffer after the backward pass.

    (No overlap: Open MPI makes progress on a non-blocking reduction only inside MPI
    calls, and the CPU is busy with the backward pass anyway.)
    """

    def __init__(self, world: MPIWorld, model: Any) -> None:
        self.world, self.grads = world, model.store.flat_grads

    def describe(self) -> str:
        return "summed with one MPI_Allreduce per step"

    def begin(self) -> None:
        pass

    def finish(self) -> None:
        self.world.allreduce_(self.grads, "the gradient all-reduce (MPI)")


class NcclGradients:
    """GPU: NCCL all-reduces on a side stream, bucket by bucket, overlapping the backward pass.

    When a bucket's gradients are final, an event recorded on the compute stream lets the
    communication stream start their reduction while the compute stream goes on with the
    earlier blocks.  At the end the compute stream waits for the communication stream, so
    the optimizer (on the compute stream) reads summed gradients.  Only the gradient
    buffer, which lives as long as the model, is touched by the side stream: no memory is
    allocated or freed there.
    """

    def __init__(self, world: MPIWorld, model: Any, bucket_bytes: float) -> None:
        import cupy
        from cupy.cuda import nccl

        self.cupy, self.nccl, self.world = cupy, nccl, world
        self.comm = world.nccl_communicator()
        self.grads = model.store.flat_grads
        types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64, "float16": nccl.NCCL_FLOAT16}
        self.nccl_type = types[self.grads.dtype.name]
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.buckets = gradient_buckets(model, bucket_bytes)
        self.launched = [False] * len(self.buckets)
        self.armed = False
        for i, bucket in enumerate(self.buckets):
            if bucket.after_block is not None:
                notify_after_block_backward(model, bucket.after_block, lambda i=i: self._launch(i))

    def describe(self) -> str:
        overlapped = len(self.buckets) - 1
        return f"summed with NCCL in {len(self.buckets)} bucket{'s' if len(self.buckets) > 1 else ''}" + (
            f", {overlapped} of them during the backward pass" if overlapped else ""
        )

    def begin(self) -> None:
        self.launched = [False] * len(self.buckets)
        self.armed = True

    def _launch(self, i: int) -> None:
        if not self.armed or self.launched[i]:
            return
        self.launched[i] = True
        compute = self.cupy.cuda.get_current_stream()
        self.stream.wait_event(compute.record())  # the bucket's gradients are written
        base, itemsize = self.grads.data.ptr, self.grads.itemsize
        self.nccl.groupStart()  # the bucket's ranges as one NCCL launch
        for lo, hi in self.buckets[i].ranges:
            ptr = base + lo * itemsize
            self.comm.allReduce(ptr, ptr, hi - lo, self.nccl_type, self.nccl.NCCL_SUM, self.stream.ptr)
        self.nccl.groupEnd()

    def finish(self) -> None:
        for i in range(len(self.buckets)):
            self._launch(i)  # the last bucket, and all of them if there was no backward (an empty shard)
        self.armed = False
        compute = self.cupy.cuda.get_current_stream()
        compute.wait_event(self.stream.record())
        with self.world.guard("the gradient all-reduce (NCCL)"):
            compute.synchronize()  # the trainer reads the loss next anyway; waiting here puts the wait under guard


class DistributedDataParallel:
    """One model replica per rank, trained on the rank's shard; gradients summed over ranks.

    Has the interface the trainer uses for :class:`minimlp.parallel.DataParallel`:
    ``train_step(x, labels, smoothing, step) -> (loss, logits)`` leaves the *whole batch's*
    mean-loss gradient in ``model.grads`` on every rank and returns this rank's loss and
    logits; ``forward`` and ``xp``/``dtype``/``config`` make it usable by ``evaluate``.
    ``local`` computes the rank's shard: the model itself, or a ``DataParallel`` that
    splits the shard again over worker processes (CPU, ``--procs N`` under mpirun).
    """

    def __init__(self, world: MPIWorld, model: Any, local: Any = None, seed: int = 0) -> None:
        self.world, self.model, self.local = world, model, local or model
        self.seed = int(seed)
        self.check_every = int(env_float("MINIMLP_CHECK_REPLICAS", DEFAULT_CHECK_EVERY))
        self.dropout = bool(getattr(model.config, "drop_rate", 0) or getattr(model.config, "drop_path_rate", 0))
        self._seeded = False
        if model.xp is np:
            self.gradients: Any = MPIGradients(world, model)
        else:
            if self.local is not model:
                raise ValueError("worker processes (--procs) are for the CPU; on a GPU each rank runs one process")
            bucket_bytes = env_float("MINIMLP_BUCKET_MB", DEFAULT_BUCKET_MB) * 2**20
            self.gradients = NcclGradients(world, model, bucket_bytes)

    def describe(self) -> str:
        return (
            f"data parallel over {self.world.describe()}, one model replica each; gradients {self.gradients.describe()}"
        )

    @property
    def xp(self) -> Any:
        return self.model.xp

    @property
    def dtype(self) -> Any:
        return self.model.dtype

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, x: Any, train: bool = False) -> tuple[Any, Any]:
        return self.local.forward(x, train=train)

    def _seed_dropout(self, step: int) -> None:
        # Each rank draws its own masks from (seed, step, rank).  On the CPU the generator is
        # reseeded every step, so a resumed run draws what the straight run drew; on the GPU
        # (whose generators cannot be saved and cost more to make) once, from the first step.
        if not self.dropout or self.local is not self.model:  # worker processes seed their own
            return
        if self.model.xp is np or not self._seeded:
            self.model.seed(seed_for(self.seed, step, self.world.rank))
            self._seeded = True

    def train_step(self, x: Any, labels: np.ndarray, smoothing: float, step: int) -> tuple[Any, Any]:
        model, xp = self.model, self.model.xp
        rows = int(len(labels))
        batch_rows = int(self.world.sum(np.array([rows]), f"counting the images of step {step + 1}")[0])
        weight = shard_weight(rows, batch_rows)
        if self.check_every and step % self.check_every == 0:
            self.world.check_replicas(model.store.flat_params, step)
        self._seed_dropout(step)
        self.gradients.begin()
        if rows == 0:  # nothing to compute, but the sum still needs this rank's (zero) part
            model.zero_grad()
            loss, logits = 0.0, xp.zeros((0, model.config.num_classes), dtype=model.dtype)
        elif self.local is not model:  # worker processes leave the shard's mean-loss gradient
            loss, logits = self.local.train_step(x, labels, smoothing, step)
            model.store.flat_grads *= weight
        else:
            logits, cache = model.forward(x, train=True)  # (B_k, K)
            loss, loss_cache = cross_entropy_forward(logits, xp.asarray(labels), smoothing)
            model.zero_grad()
            # dloss = B_k / B weights this shard's mean-loss gradient (see minimlp.parallel.sharding); the sum over
            # ranks is then the whole batch's mean-loss gradient.
            model.backward(cross_entropy_backward(loss_cache, dloss=weight), cache, input_grad=False)
        self.gradients.finish()
        return loss, logits

    def close(self) -> None:
        if self.local is not self.model:
            self.local.close()
