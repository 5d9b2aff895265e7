"""The MPI job a process belongs to: ranks, the few collectives the trainer needs, failure.

    mpirun -n 8 python -m minimlp.train --gpu --data-dir /data/imagenet -b 1024   # 8 GPUs, 128 images each
    mpirun -n 2 python -m minimlp.train                                          # 2 CPU processes

Nothing needs a flag: a process started by ``mpirun`` (or ``srun``) finds the launcher's
variables in its environment, and :func:`world` returns its :class:`MPIWorld` (rank, size,
local rank); without a launcher it is a one-process :class:`World` whose collectives are
the identity, so the trainer calls the same methods either way.  :mod:`minimlp.parallel.ddp`
builds data-parallel training on this: each rank holds a replica, trains on its shard of
every batch (:mod:`minimlp.parallel.sharding`) and the gradients are summed over the ranks.

What keeps the ranks together:

* only rank 0 writes (logs, progress bar, metrics, checkpoints, the run directory), into
  the directory rank 0 chose;
* what the trainer decides from is shared: each step's loss, accuracy and image count
  are summed over the ranks, and whether to stop is agreed after every step;
* at start-up every rank's arguments, model configuration, data, code and parameters are
  compared, and a difference is reported by name on every rank;
* a rank that fails takes the job down: an error calls ``MPI_Abort`` (a rank that simply
  exited would leave the others waiting forever), ``mpirun`` notices a killed rank, and a
  rank left waiting in a collective for ``$MINIMLP_COLLECTIVE_TIMEOUT`` seconds (600 by
  default) aborts the job saying where it waited.

Host-side messages carry raw bytes or NumPy buffers, never pickles.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from minimlp.backend import NCCL_INSTALL, array_module
from minimlp.parallel.sharding import rank_indices, seed_for, shard_bounds

__all__ = [
    "World",
    "MPIWorld",
    "Watchdog",
    "DistributedError",
    "world",
    "current_world",
    "launched_by_mpi",
    "checksum",
    "per_rank_batch",
    "describe_differences",
]

# Variables that MPI launchers set in every process they start: Open MPI, MPICH / Intel MPI
# (Hydra), MVAPICH2, and PMIx launchers such as Slurm's srun --mpi=pmix.
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_RANK")
DEFAULT_TIMEOUT_S = 600.0  # as PyTorch's NCCL default: long enough for a slow first step or a slow file system


class DistributedError(RuntimeError):
    """A problem every rank detects at the same point (from shared data), so all stop together.

    ``usage``: the job was started wrongly (exit status 2) rather than failed while training.
    """

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def launched_by_mpi(environ: Any = None) -> bool:
    """True when this process was started by an MPI launcher (mpirun, mpiexec, srun)."""
    environ = os.environ if environ is None else environ
    return any(key in environ for key in LAUNCHER_VARIABLES)


def env_float(name: str, default: float) -> float:
    """A number from the environment (a ValueError naming the variable if it is not one)."""
    text = os.environ.get(name, "")
    try:
        return float(text) if text else default
    except ValueError:
        raise ValueError(f"${name} must be a number, got {text!r}") from None


def checksum(a: Any) -> int:
    """An exact fingerprint of an array's bits: the sum of its words modulo 2**64.

    Integer sums do not depend on the order of summation, so NumPy and CuPy, one thread
    or many, give the same number, and any changed element changes it.
    """
    xp = array_module(a)
    word = {2: xp.uint16, 4: xp.uint32, 8: xp.uint64}[a.dtype.itemsize]
    return int(a.reshape(-1).view(word).sum(dtype=xp.uint64))


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """B / N, or an error (a usage error every rank raises alike) saying which sizes would split evenly."""
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        upper = lower + world_size
        raise DistributedError(
            f"the batch size {batch_size} does not split evenly over {world_size} ranks; use a "
            f"multiple of {world_size} (e.g. -b {lower or upper} or -b {upper})",
            usage=True,
        )
    return batch_size // world_size


def source_fingerprint() -> str:
    """A short hash of minimlp's own source files: ranks running different code disagree here."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def describe_differences(items_per_rank: list[dict[str, Any]], limit: int = 20) -> list[str]:
    """One line per item on which some rank disagrees with rank 0, naming the ranks and values."""
    reference = items_per_rank[0]
    keys = list(reference) + sorted({k for items in items_per_rank[1:] for k in items} - set(reference))
    lines = []
    for key in keys:
        values: dict[str, list[int]] = {}
        for rank, items in enumerate(items_per_rank):
            shown = json.dumps(items[key], sort_keys=True) if key in items else "(missing)"
            values.setdefault(shown[:80] + ("..." if len(shown) > 80 else ""), []).append(rank)
        if len(values) > 1:
            parts = [f"{value} on {_ranks(ranks)}" for value, ranks in values.items()]
            lines.append(f"  {key}: " + ", ".join(parts))
    if len(lines) > limit:
        lines = lines[:limit] + [f"  ... and {len(lines) - limit} more"]
    return lines


def _ranks(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if ranks == list(range(ranks[0], ranks[-1] + 1)) and len(ranks) > 2:
        return f"ranks {ranks[0]}-{ranks[-1]}"
    return "ranks " + ", ".join(map(str, ranks))


def _flatten(groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    flat = {}
    for group, items in groups.items():
        for key, value in items.items():
            name = f"--{key.replace('_', '-')}" if group == "argument" else key
            flat[f"{group} {name}"] = value
    return flat


class _Discard(io.TextIOBase):
    """A text stream that drops what is written (the progress bar of ranks other than 0)."""

    def write(self, text: str) -> int:
        return len(text)


# --------------------------------------------------------------------------------------
# The world: who we are, and the few host-side collectives the trainer needs
# --------------------------------------------------------------------------------------
class World:
    """A job of one process (no MPI): every collective is the identity.

    :class:`MPIWorld` has the same methods; the trainer calls them unconditionally.
    """

    rank, size, local_rank = 0, 1, 0
    active = False  # launched by MPI (even with one rank): data-parallel training is on

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes files."""
        return self.rank == 0

    def describe(self) -> str:
        return "one process"

    def guard(self, what: str) -> contextlib.AbstractContextManager:
        """Context for a blocking collective (the watchdog's unit of waiting)."""
        return contextlib.nullcontext()

    def select_gpu(self, device: str) -> None:
        """Make this rank's GPU the current CuPy device (one GPU per rank)."""

    def rank_seed(self, seed: int) -> int:
        """A seed for this rank's own random draws (augmentation, dropout), different on every rank."""
        return seed

    def batches(
        self, dataset: Any, order: np.ndarray, batch_size: int, train: bool, seed: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This rank's shard of every batch of ``order`` (the whole batch with one process)."""
        return dataset.batches(order, batch_size, train=train, seed=seed)

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of ``indices`` (evaluation)."""
        return indices

    def sum(self, values: np.ndarray, what: str = "a sum over the ranks") -> np.ndarray:
        """Element-wise sum over the ranks of a small float64 host array (``what`` names it in errors)."""
        return values

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on some rank (to stop together)."""
        return bool(flag)

    def batch_totals(self, loss: float, correct: int, count: int) -> tuple[float, int, int]:
        """The whole batch's mean loss, correct predictions and images, from each rank's own."""
        return loss, correct, count

    def from_main(self, text: str) -> str:
        """Rank 0's value of ``text`` on every rank."""
        return text

    def check_same(self, **groups: dict[str, Any]) -> None:
        """Raise :class:`DistributedError` naming every item on which the ranks differ."""

    def progress_stream(self) -> Any:
        """Where the progress bar draws: the default (stderr) on rank 0, nowhere elsewhere."""
        return None

    def fail(self, message: str, code: int, collective: bool = False) -> int:
        """Report an error that ends the run and return the exit status (see :class:`MPIWorld`)."""
        print(message, file=sys.stderr)
        return code


class MPIWorld(World):
    """This process's place in an MPI job, with a watchdog around every blocking collective."""

    active = True

    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            found = ", ".join(f"{k}={os.environ[k]}" for k in LAUNCHER_VARIABLES if k in os.environ)
            raise DistributedError(
                f"this process was started by an MPI launcher ({found}) but mpi4py cannot be imported in "
                f"{sys.executable} ({exc}). Install it: pip install mpi4py (make mpi-setup installs Open MPI "
                "and mpi4py), or run without mpirun"
            ) from exc
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks sharing this machine's memory
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.timeout = env_float("MINIMLP_COLLECTIVE_TIMEOUT", DEFAULT_TIMEOUT_S)
        self.nccl: Any = None  # the NCCL communicator, once the GPU path creates one
        self.gpu: int | None = None
        self.watchdog = Watchdog(self.timeout, self._timed_out)
        self.hostname = socket.gethostname()
        self.hosts = [b.decode() for b in self.allgather_bytes(self.hostname.encode(), "learning the ranks' hosts")]
        sys.excepthook = self._excepthook
        if hasattr(sys.stdout, "reconfigure"):  # mpirun pipes our output: show each line as it comes
            sys.stdout.reconfigure(line_buffering=True)

    # -- naming and failing ------------------------------------------------------------
    def describe(self) -> str:
        nodes = sorted(set(self.hosts))
        names = ", ".join(nodes[:4]) + (", ..." if len(nodes) > 4 else "")
        ranks, machines = ("rank" if self.size == 1 else "ranks"), ("node" if len(nodes) == 1 else "nodes")
        return f"{self.size} MPI {ranks} on {len(nodes)} {machines} ({names})"

    def _who(self) -> str:
        return f"rank {self.rank} of {self.size} ({self.hostname})"

    def abort(self, code: int) -> None:
        """End the whole job now: stop NCCL, then MPI_Abort (mpirun kills every rank)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.nccl is not None:
            with contextlib.suppress(Exception):
                self.nccl.abort()
        self.comm.Abort(code)

    def fail(self, message: str, code: int, collective: bool = False) -> int:
        """An error ends the run.  ``collective``: every rank raised it at the same point from
        shared numbers (a diverged loss, a mismatch found by comparing all ranks), so all
        return and exit together and only rank 0 prints.  Otherwise this rank alone failed:
        the others would wait for it forever, so the job is aborted."""
        if collective:
            if self.is_main:
                print(message, file=sys.stderr, flush=True)
            return code
        print(f"{self._who()}: {message}\nstopping the whole job (MPI_Abort)", file=sys.stderr, flush=True)
        self.abort(code)
        return code  # not reached

    def _excepthook(self, kind: type, value: BaseException, tb: Any) -> None:
        text = "".join(traceback.format_exception(kind, value, tb))
        print(f"{self._who()} failed:\n{text}stopping the whole job (MPI_Abort)", file=sys.stderr, flush=True)
        self.abort(1)

    def _timed_out(self, what: str, why: str) -> None:
        print(
            f"{self._who()}: {why} in {what}; another rank has probably died, hung or gone a different way. "
            f"Stopping the whole job (the limit is $MINIMLP_COLLECTIVE_TIMEOUT={self.timeout:g} s).",
            file=sys.stderr,
            flush=True,
        )
        self.abort(1)

    def guard(self, what: str) -> contextlib.AbstractContextManager:
        return self.watchdog.guard(what)

    # -- devices and seeds -------------------------------------------------------------
    def select_gpu(self, device: str) -> None:
        device = device.lower()
        if device in ("cpu", "numpy"):
            return
        if device.startswith("cuda:") and self.size > 1:
            raise ValueError(
                f"--device {device}: under mpirun every rank takes the GPU of its local rank; use "
                "--gpu (choose the GPUs with CUDA_VISIBLE_DEVICES)"
            )
        try:
            import cupy

            count = cupy.cuda.runtime.getDeviceCount()
        except Exception:  # no CuPy or no GPU: get_backend says so and falls back to NumPy
            return
        if count == 1:  # the launcher gave each rank its own GPU (CUDA_VISIBLE_DEVICES per rank)
            index = 0
        elif self.local_rank < count:
            index = self.local_rank
        else:
            raise ValueError(
                f"{self.local_size} ranks on {self.hostname} but only {count} GPUs are visible: "
                "start one rank per GPU (mpirun -n / --map-by ppr:GPUS:node)"
            )
        cupy.cuda.Device(index).use()
        self.gpu = index

    def rank_seed(self, seed: int) -> int:
        return seed_for(seed, self.rank, 0x5EED)

    # -- data ----------------------------------------------------------------------------
    def batches(
        self, dataset: Any, order: np.ndarray, batch_size: int, train: bool, seed: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        per_rank = per_rank_batch(batch_size, self.size)
        steps = math.ceil(len(order) / batch_size)
        mine = rank_indices(order, batch_size, self.rank, self.size)
        done = 0
        for batch in dataset.batches(mine, per_rank, train=train, seed=self.rank_seed(seed)):
            done += 1
            yield batch
        # A short last batch can leave this rank without a row; it still takes part in the step.
        C, H, W = dataset.image_shape
        for _ in range(steps - done):
            yield np.zeros((0, C, H, W), np.uint8), np.zeros(0, np.int64)

    def shard(self, indices: np.ndarray) -> np.ndarray:
        lo, hi = shard_bounds(len(indices), self.size)[self.rank]
        return np.asarray(indices)[lo:hi]

    # -- host collectives ----------------------------------------------------------------
    def sum(self, values: np.ndarray, what: str = "a sum over the ranks") -> np.ndarray:
        values = np.array(values, dtype=np.float64)  # a copy: summed in place
        with self.guard(what):
            self.comm.Allreduce(self.MPI.IN_PLACE, values, op=self.MPI.SUM)
        return values

    def any(self, flag: bool) -> bool:
        value = np.array([1 if flag else 0], dtype=np.int32)
        with self.guard("agreeing whether to stop"):
            self.comm.Allreduce(self.MPI.IN_PLACE, value, op=self.MPI.MAX)
        return bool(value[0])

    def batch_totals(self, loss: float, correct: int, count: int) -> tuple[float, int, int]:
        loss_sum, correct, count = self.sum(
            np.array([loss * count if count else 0.0, correct, count]), "summing the step's loss and accuracy"
        )
        return (loss_sum / count if count else 0.0), int(correct), int(count)

    def allreduce_(self, array: np.ndarray, what: str) -> None:
        """Sum a NumPy buffer over the ranks, in place."""
        with self.guard(what):
            self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)

    def broadcast_bytes(self, data: bytes | None, what: str) -> bytes:
        size = np.array([len(data) if self.rank == 0 else 0], dtype=np.int64)
        with self.guard(what):
            self.comm.Bcast(size, root=0)
            buffer = np.frombuffer(data, np.uint8).copy() if self.rank == 0 else np.empty(int(size[0]), np.uint8)
            self.comm.Bcast(buffer, root=0)
        return buffer.tobytes()

    def allgather_bytes(self, data: bytes, what: str) -> list[bytes]:
        """Every rank's ``data``, in rank order (raw bytes: nothing is unpickled)."""
        sizes = np.zeros(self.size, dtype=np.int64)
        with self.guard(what):
            self.comm.Allgather(np.array([len(data)], dtype=np.int64), sizes)
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            gathered = np.empty(int(sizes.sum()), np.uint8)
            self.comm.Allgatherv(np.frombuffer(data, np.uint8), [gathered, sizes, offsets, self.MPI.BYTE])
        return [gathered[o : o + s].tobytes() for o, s in zip(offsets, sizes, strict=True)]

    def from_main(self, text: str) -> str:
        return self.broadcast_bytes(text.encode() if self.rank == 0 else None, "sharing rank 0's choices").decode()

    # -- checks ----------------------------------------------------------------------------
    def check_same(self, **groups: dict[str, Any]) -> None:
        items = _flatten(groups)
        items.update(_flatten({"software": _software()}))
        text = json.dumps(items, sort_keys=False, default=str)
        gathered = self.allgather_bytes(text.encode(), "the start-up check that every rank runs the same job")
        problems = describe_differences([json.loads(t) for t in gathered])
        if problems:
            raise DistributedError(
                "the ranks were not started on the same job; every rank must run the same "
                "command with the same code, data and checkpoint. They differ in:\n" + "\n".join(problems),
                usage=True,
            )

    def check_replicas(self, params: Any, step: int) -> None:
        """Compare every rank's parameters (an exact checksum); a difference stops every rank."""
        mine = np.array([checksum(params)], dtype=np.uint64)
        everyone = np.zeros(self.size, dtype=np.uint64)
        with self.guard("the replica check"):
            self.comm.Allgather(mine, everyone)
        drifted = [r for r in range(self.size) if everyone[r] != everyone[0]]
        if drifted:
            raise DistributedError(
                f"the model replicas have drifted apart before step {step + 1}: the parameters "
                f"of {_ranks(drifted)} differ from rank 0's. The gradient reduction or the "
                "optimizer gave different results on different ranks; please report this with "
                "the MPI/NCCL versions"
            )

    def progress_stream(self) -> Any:
        return None if self.is_main else _Discard()

    # -- NCCL ------------------------------------------------------------------------------
    def nccl_communicator(self) -> Any:
        """One NCCL communicator over all ranks (one GPU each): rank 0 makes the id, MPI carries it."""
        from cupy.cuda import nccl

        if not getattr(nccl, "available", False):
            raise DistributedError(f"CuPy cannot load NCCL, so GPUs cannot sum gradients: {NCCL_INSTALL}")
        message = None
        if self.rank == 0:
            uid = nccl.get_unique_id()
            # CuPy 14 gives the 128-byte id as bytes; older versions as a tuple of signed chars.
            form, raw = (
                (b"b", bytes(uid))
                if isinstance(uid, (bytes, bytearray))
                else (b"t", np.asarray(uid, dtype=np.int64).astype(np.int8).tobytes())
            )
            message = form + raw
        shared = self.broadcast_bytes(message, "sharing the NCCL unique id")
        form, raw = shared[:1], shared[1:]
        uid = raw if form == b"b" else tuple(np.frombuffer(raw, np.int8).tolist())
        with self.guard("creating the NCCL communicator (every rank must join)"):
            self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        self.watchdog.checks = [self.nccl.check_async_error]  # the newest communicator (one per run)
        return self.nccl


def _software() -> dict[str, Any]:
    versions = {"minimlp source": source_fingerprint(), "numpy": np.__version__, "python": sys.version.split()[0]}
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        versions["cupy"] = cupy.__version__
    return versions


class Watchdog:
    """Ends the job when one blocking collective waits longer than ``timeout`` seconds.

    ``with watchdog.guard("the gradient all-reduce"):`` marks the wait; a daemon thread
    looks every second and, past the limit (or when one of ``checks`` raises, e.g. NCCL's
    asynchronous error check), calls ``on_timeout(what, why)``, which aborts.  A rank that
    dies outright is noticed by ``mpirun`` itself; this covers the rank that is alive but
    never arrives (a hung loader, a deadlock, a rank that took another branch).
    """

    def __init__(self, timeout: float, on_timeout: Callable[[str, str], None]) -> None:
        self.timeout, self.on_timeout = float(timeout), on_timeout
        self.checks: list[Callable[[], None]] = []
        self._what: str | None = None
        self._since = 0.0
        if self.timeout > 0:
            self._poll = min(1.0, self.timeout / 4)
            threading.Thread(target=self._watch, name="minimlp-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        self._since = time.monotonic()  # before _what, so the thread never pairs a new wait with an old time
        self._what = what
        try:
            yield
        finally:
            self._what = None

    def _watch(self) -> None:
        while True:
            time.sleep(self._poll)
            what, since = self._what, self._since
            if what is None:
                continue
            for check in self.checks:
                try:
                    check()
                except Exception as exc:
                    self.on_timeout(what, f"NCCL reported an error ({exc})")
            waited = time.monotonic() - since
            if waited > self.timeout and self._what is what:
                self.on_timeout(what, f"waited {waited:.0f} s")


_WORLD: World | None = None


def world() -> World:
    """This process's world: an :class:`MPIWorld` when launched by MPI, else a one-process :class:`World`."""
    global _WORLD
    if _WORLD is None:
        _WORLD = MPIWorld() if launched_by_mpi() else World()
    return _WORLD


def current_world() -> World:
    """The world if one was made, else a one-process world (never starts MPI: safe in error paths)."""
    return _WORLD if _WORLD is not None else World()
