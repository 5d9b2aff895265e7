"""How a batch is split between data-parallel processes, and how their gradients combine.

Both kinds of data parallelism in minimlp use this module: the worker processes of one
machine (:mod:`minimlp.parallel.workers`, ``--procs``) and the MPI ranks of one or many machines
(:mod:`minimlp.parallel.mpi`, ``mpirun``).  Each process computes the gradient of the
*mean* loss over its shard of ``B_k`` rows; the gradient of the mean over the whole batch
of ``B`` rows is the weighted sum

    grad = sum_k (B_k / B) * grad_k

(the batch loss is (1/B) Σ over rows = Σ_k (B_k/B) · (1/B_k) Σ over shard k's rows, and
the gradient is linear).  With equal shards the weights are all 1/N and this is the
plain average; with a short last batch they differ, and a rank whose shard is empty
contributes nothing but still takes part in the sum.

Every epoch has one order of the training images, the same in every process (a
permutation drawn from the seed).  Batch ``s`` is ``order[s*B : (s+1)*B]`` exactly as in a
single process, and rank ``r`` of ``N`` takes the slice ``shard_bounds(len(batch), N)[r]``
of it.  So the ranks never see the same image in one epoch, together they see every
image, and one step of N ranks consumes the images one step of one process would.
"""

from __future__ import annotations

import numpy as np

__all__ = ["shard_bounds", "shard_weight", "rank_indices", "seed_for"]


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Split ``n`` rows into ``parts`` contiguous shards ``[lo, hi)`` whose sizes differ by at most one.

    Integer arithmetic, so every process computes the same bounds; shards are empty
    when ``n < parts``.
    """
    if parts < 1 or n < 0:
        raise ValueError(f"cannot split {n} rows into {parts} parts")
    return [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]


def shard_weight(shard_rows: int, batch_rows: int) -> float:
    """The weight of a shard's mean-loss gradient in the batch's mean-loss gradient."""
    return shard_rows / batch_rows if batch_rows else 0.0


def rank_indices(order: np.ndarray, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s part of every batch of ``order``, concatenated in step order.

    Read in chunks of ``batch_size // world_size`` this gives the rank's shard of each
    batch in turn: full batches give every rank exactly that many rows, and the short
    last batch gives each at most that many (perhaps none).
    """
    order = np.asarray(order)
    parts = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        lo, hi = shard_bounds(len(batch), world_size)[rank]
        parts.append(batch[lo:hi])
    return np.concatenate(parts) if parts else order[:0]


def seed_for(*words: int) -> int:
    """A 63-bit seed mixed from several integers (the run seed, the epoch, the step, the rank, ...).

    Every process derives the seeds it needs from the same words, so no message is needed
    to agree on an epoch's order, a batch's augmentation or a rank's dropout masks.
    """
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0] >> np.uint64(1))
