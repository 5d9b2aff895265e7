"""Parallel batch loading: worker processes decode images into shared memory, the trainer gets uint8 batches.

A :class:`BatchLoader` owns a ring of shared-memory slots, each big enough for one batch
(B, C, H, W) of uint8, and a few worker processes.  The main process hands out batch
tasks (which items, which slot, which seed); a worker decodes and crops each item straight
into the slot and answers with the positions it filled; the main process copies the batch
out of the slot, frees the slot for the next task and yields the batch.  Up to
``workers * prefetch`` batches are in flight, so decoding runs ahead of training.  With
``workers=0`` the same code runs in the calling process, which is what tests and
debugging want.  Lesson 12's appendix (12a) shows it at work.

Reproducibility: batch number b of a pass with seed s draws all its random numbers from
``np.random.default_rng([s, b])``, inside whichever process decodes it, so the same seed
gives the same batches whatever the number of workers.

Failure handling:

* an item that cannot be decoded (truncated, corrupt, not an image) raises
  :class:`~minimlp.data.transforms.BadImageError` in the worker; the item is left out of its
  batch (which is one smaller), counted, and reported when the pass ends.  When more
  distinct files than ``max_bad`` have failed, the pass stops with :class:`TooManyBadImagesError`
  listing them.
* any other exception in a worker is sent back and raised in the main process as
  :class:`LoaderError` with the item (file path) that caused it and the worker's traceback.
* a worker that dies (killed, out of memory) is noticed within a second; no batch for
  ``timeout`` seconds is an error too.  Nothing waits forever.
* Ctrl-C (or any exception, or ``close()``) stops the workers, joins them (terminating any
  that do not stop) and unlinks the shared memory.  Workers ignore SIGINT themselves so a
  terminal Ctrl-C does not spray tracebacks, and exit on their own if the main process dies.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import traceback
import warnings
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, Protocol

import numpy as np

from minimlp.data.base import Dataset, shown
from minimlp.data.classes import ClassMap
from minimlp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, BadImageError

__all__ = [
    "BatchLoader",
    "ItemReader",
    "LoaderError",
    "TooManyBadImagesError",
    "BadImagesWarning",
    "LoaderDataset",
    "default_workers",
    "fill_batch",
    "batch_rng",
]


class ItemReader(Protocol):
    """What a worker needs to turn one item (a path, a record index) into pixels; must pickle."""

    def load(self, item: Any, train: bool, rng: np.random.Generator) -> np.ndarray:  # (H, W, C) uint8
        ...


class LoaderError(RuntimeError):
    """A data worker failed (an exception other than an undecodable image), died, or stopped answering."""


class TooManyBadImagesError(RuntimeError):
    """More files than allowed could not be decoded; the message lists them."""


class BadImagesWarning(UserWarning):
    """Some files were skipped this pass because they could not be decoded."""


def default_workers() -> int:
    """One worker per CPU core available to this process, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def batch_rng(seed: int, batch_number: int) -> np.random.Generator:
    """The random stream of one batch: a function of (seed, batch number) only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, int(batch_number)])


class _ItemFailure(Exception):
    """An unexpected exception while loading ``item``, carried to the main process as text."""

    def __init__(self, item: str, kind: str, message: str, trace: str):
        super().__init__(item, kind, message, trace)
        self.item, self.kind, self.message, self.trace = item, kind, message, trace


def fill_batch(
    reader: ItemReader, items: Sequence[Any], train: bool, rng: np.random.Generator, out: np.ndarray
) -> tuple[list[int], list[tuple[str, str]]]:
    """Load ``items`` into ``out`` (B, C, H, W) front to back, leaving undecodable ones out.

    Returns (kept, bad): the positions in ``items`` that were filled, in order (``out[:len(kept)]``
    holds them), and (item, reason) for each undecodable one.
    """
    kept: list[int] = []
    bad: list[tuple[str, str]] = []
    for position, item in enumerate(items):
        try:
            pixels = reader.load(item, train, rng)  # (H, W, C)
        except BadImageError as exc:
            bad.append((exc.path, exc.reason))
            continue
        except Exception as exc:
            raise _ItemFailure(shown(str(item)), type(exc).__name__, str(exc), traceback.format_exc()) from exc
        if pixels.shape != (out.shape[2], out.shape[3], out.shape[1]):
            raise _ItemFailure(
                shown(str(item)),
                "ValueError",
                f"reader returned shape {pixels.shape}, expected {(out.shape[2], out.shape[3], out.shape[1])}",
                "",
            )
        out[len(kept)] = pixels.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
        kept.append(position)
    return kept, bad


@dataclass
class _Task:
    generation: int  # which pass the task belongs to; results of abandoned passes are dropped
    batch_number: int
    slot: int
    items: list
    train: bool
    seed: int


def _worker_main(reader, tasks, results, slot_names, slot_shape) -> None:
    """A worker process: take tasks, fill slots, answer; stop on None or when the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    parent = mp.parent_process()  # the process that started us (not the forkserver that forked us)
    slots = [shared_memory.SharedMemory(name=name) for name in slot_names]
    views = [np.ndarray(slot_shape, dtype=np.uint8, buffer=s.buf) for s in slots]
    try:
        while True:
            try:
                task = tasks.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():  # orphaned: the main process died
                    return
                continue
            if task is None:
                return
            try:
                kept, bad = fill_batch(
                    reader, task.items, task.train, batch_rng(task.seed, task.batch_number), views[task.slot]
                )
                results.put((task.generation, task.batch_number, task.slot, kept, bad, None))
            except _ItemFailure as failure:
                results.put(
                    (
                        task.generation,
                        task.batch_number,
                        task.slot,
                        None,
                        None,
                        (failure.item, failure.kind, failure.message, failure.trace),
                    )
                )
            except Exception as exc:  # outside any one item (should not happen): still report, never hang
                results.put(
                    (
                        task.generation,
                        task.batch_number,
                        task.slot,
                        None,
                        None,
                        ("?", type(exc).__name__, str(exc), traceback.format_exc()),
                    )
                )
    finally:
        del views
        for s in slots:
            s.close()


def _start_method() -> str:
    # fork would copy a CUDA context and locked thread pools into the workers; forkserver starts
    # them from a clean process, quickly.  spawn where forkserver does not exist.
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


class _Pool:
    """The processes, queues and shared-memory slots of one running loader."""

    def __init__(self, reader: ItemReader, slot_shape: tuple[int, ...], workers: int, num_slots: int):
        ctx = mp.get_context(_start_method())
        nbytes = int(np.prod(slot_shape))
        self.slots: list[shared_memory.SharedMemory] = []
        self.procs: list[mp.process.BaseProcess] = []
        self.tasks = ctx.Queue()
        self.results = ctx.Queue()
        try:
            for _ in range(num_slots):
                self.slots.append(shared_memory.SharedMemory(create=True, size=nbytes))
            self.views = [np.ndarray(slot_shape, dtype=np.uint8, buffer=s.buf) for s in self.slots]
            names = [s.name for s in self.slots]
            for i in range(workers):
                p = ctx.Process(
                    target=_worker_main,
                    name=f"minimlp-data-{i}",
                    daemon=True,
                    args=(reader, self.tasks, self.results, names, slot_shape),
                )
                p.start()
                self.procs.append(p)
        except BaseException:
            self.shutdown()
            raise

    def dead_worker(self) -> str | None:
        for p in self.procs:
            if not p.is_alive():
                code = p.exitcode
                how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
                if code == -signal.SIGKILL:
                    hint = " (out of memory? try fewer workers or a smaller batch)"
                else:
                    hint = (
                        " (its error, if any, is printed above; a script that uses workers must start its work "
                        'under `if __name__ == "__main__":`)'
                    )
                return f"data worker {p.name} (pid {p.pid}) {how}{hint}"
        return None

    def shutdown(self) -> None:
        """Stop workers (politely, then by force), drop queues, unlink shared memory. Idempotent."""
        for _ in self.procs:
            try:
                self.tasks.put_nowait(None)
            except Exception:
                pass
        deadline = time.monotonic() + 1.0  # a worker mid-batch is then terminated
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=1.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=1.0)
        self.procs = []
        for q in (self.tasks, self.results):
            q.cancel_join_thread()  # never block interpreter exit on an unread queue
            q.close()
        self.views = []
        for s in self.slots:
            try:
                s.close()
                s.unlink()
            except FileNotFoundError:
                pass
        self.slots = []


def _shutdown_pool(holder: dict) -> None:
    pool = holder.pop("pool", None)
    if pool is not None:
        pool.shutdown()


class BatchLoader:
    """Decodes batches of items with ``reader`` in ``workers`` processes (0: in this process).

    image_shape  (C, H, W) of one decoded item
    prefetch     batches in flight per worker
    max_bad      stop when more than this many distinct items have failed to decode
    timeout      seconds without any batch before giving up (a worker stuck on a dead network disk)
    """

    def __init__(
        self,
        reader: ItemReader,
        image_shape: tuple[int, int, int],
        workers: int = 0,
        prefetch: int = 2,
        max_bad: int = 10,
        timeout: float = 600.0,
    ):
        self.reader = reader
        self.image_shape = tuple(image_shape)
        self.workers = int(workers)
        self.prefetch = max(1, int(prefetch))
        self.max_bad = int(max_bad)
        self.timeout = float(timeout)
        self.bad_files: dict[str, str] = {}  # every item that failed to decode so far (as shown) -> reason
        self._holder: dict = {}  # {"pool": _Pool, "batch_size": B}; a dict so the finalizer does not keep self alive
        self._generation = 0
        self._in_flight: dict[int, int] = {}  # generation -> results still owed by the workers
        self._active: int | None = None  # the generation of the pass now using the workers
        self._finalizer = weakref.finalize(self, _shutdown_pool, self._holder)

    # ----------------------------------------------------------------------------------------------
    def batches(
        self, items: Sequence[Any], labels: np.ndarray, batch_size: int, train: bool, seed: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (images (B, C, H, W) uint8, labels (B,) int64) for ``items`` in order; last batch may be smaller."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(items):
            raise ValueError(f"{len(items)} items but {len(labels)} labels")
        skipped: dict[str, str] = {}
        if self.workers <= 0 or self._active is not None:
            # A second pass while one is still running on the workers (say, an evaluation in the middle
            # of a training epoch) runs here, in this process: same batches, no contention for slots.
            batches = self._batches_here(items, labels, batch_size, train, seed, skipped)
        else:
            batches = self._batches_workers(items, labels, batch_size, train, seed, skipped)
        yield from batches
        if skipped:
            names = "\n  ".join(f"{path} ({reason})" for path, reason in list(skipped.items())[:20])
            more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
            warnings.warn(
                f"skipped {len(skipped)} file(s) that could not be decoded in this pass "
                f"(they are left out of their batches):\n  {names}{more}",
                BadImagesWarning,
                stacklevel=2,
            )

    def _note_bad(self, bad: list[tuple[str, str]], skipped: dict[str, str]) -> None:
        for path, reason in bad:
            skipped[shown(path)] = reason  # reports only: names that print anywhere, on one line
            self.bad_files[shown(path)] = reason
        if len(self.bad_files) > self.max_bad:
            names = "\n  ".join(f"{path} ({reason})" for path, reason in list(self.bad_files.items())[:50])
            raise TooManyBadImagesError(
                f"{len(self.bad_files)} files could not be decoded (more than the {self.max_bad} allowed); "
                f"fix or remove them, or raise the limit:\n  {names}"
            )

    def _batches_here(self, items, labels, batch_size, train, seed, skipped):
        out = np.empty((batch_size, *self.image_shape), dtype=np.uint8)
        for b, start in enumerate(range(0, len(items), batch_size)):
            chunk = [items[i] for i in range(start, min(start + batch_size, len(items)))]
            try:
                kept, bad = fill_batch(self.reader, chunk, train, batch_rng(seed, b), out)
            except _ItemFailure as failure:
                raise LoaderError(
                    f"loading {failure.item} failed: {failure.kind}: {failure.message}"
                ) from failure.__cause__
            self._note_bad(bad, skipped)
            yield out[: len(kept)].copy(), labels[start + np.asarray(kept, dtype=np.int64)]

    # ----------------------------------------------------------------------------------------------
    def _pool(self, batch_size: int) -> _Pool:
        pool = self._holder.get("pool")
        if pool is not None and self._holder.get("batch_size", 0) < batch_size:
            self.close()  # slots too small for this batch size: start again with bigger ones
            pool = None
        if pool is None:
            slot_shape = (batch_size, *self.image_shape)
            self._check_shared_memory(int(np.prod(slot_shape)) * self.workers * self.prefetch)
            pool = _Pool(self.reader, slot_shape, self.workers, self.workers * self.prefetch)
            self._holder.update(pool=pool, batch_size=batch_size)
            self._in_flight = {}
        return pool

    @staticmethod
    def _check_shared_memory(needed: int) -> None:
        if not sys.platform.startswith("linux"):
            return
        try:
            free = os.statvfs("/dev/shm")
        except OSError:
            return
        available = free.f_bavail * free.f_frsize
        if available < needed:
            raise LoaderError(
                f"the data workers need {needed / 2**20:.0f} MiB of shared memory but /dev/shm has "
                f"{available / 2**20:.0f} MiB free: use fewer workers (-j), a smaller batch, or a bigger "
                f"/dev/shm (docker run --shm-size=...)"
            )

    def _receive(self, pool: _Pool) -> tuple:
        """The next result from any worker; raise if a worker died or nothing came for ``timeout`` seconds."""
        waited = 0.0
        while True:
            try:
                return pool.results.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                dead = pool.dead_worker()
                if dead is not None:
                    raise LoaderError(dead) from None
                if waited >= self.timeout:
                    raise LoaderError(
                        f"no batch from the data workers for {self.timeout:.0f} s "
                        f"(a stalled disk or network file system?)"
                    ) from None

    def _drain(self, pool: _Pool) -> None:
        """Collect the results still owed from abandoned passes, so their slots can be reused."""
        while sum(self._in_flight.values()):
            generation = self._receive(pool)[0]
            self._in_flight[generation] -= 1

    def _batches_workers(self, items, labels, batch_size, train, seed, skipped):
        pool = self._pool(batch_size)
        self._drain(pool)
        self._generation += 1
        generation = self._active = self._generation
        self._in_flight[generation] = 0
        num_batches = math.ceil(len(items) / batch_size)
        free_slots = deque(range(len(pool.slots)))
        ready: dict[int, tuple] = {}
        sent = done = 0
        finished = False
        try:
            while done < num_batches:
                while free_slots and sent < num_batches:
                    start = sent * batch_size
                    chunk = [items[i] for i in range(start, min(start + batch_size, len(items)))]
                    pool.tasks.put(_Task(generation, sent, free_slots.popleft(), chunk, train, seed))
                    self._in_flight[generation] += 1
                    sent += 1
                while done not in ready:
                    result = self._receive(pool)
                    self._in_flight[result[0]] -= 1
                    if result[0] != generation:
                        continue  # an abandoned pass's batch: its slot was never in this pass's ring
                    failure = result[5]
                    if failure is not None:
                        item, kind, message, trace = failure
                        raise LoaderError(
                            f"loading {item} failed in a data worker: {kind}: {message}\n"
                            f"--- worker traceback ---\n{trace}"
                        )
                    ready[result[1]] = result
                _, _, slot, kept, bad = ready.pop(done)[:5]
                self._note_bad(bad, skipped)
                images = pool.views[slot][: len(kept)].copy()
                batch_labels = labels[done * batch_size + np.asarray(kept, dtype=np.int64)]
                free_slots.append(slot)
                done += 1
                yield images, batch_labels
            finished = True
        finally:
            self._active = None
            if not finished:
                exc = sys.exc_info()[1]
                if not (exc is None or isinstance(exc, GeneratorExit)):
                    self.close()  # Ctrl-C, a worker failure, too many bad files: stop everything now
                # else the caller stopped early: the workers stay; the next pass drains this one's results

    # ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers and free the shared memory (a later ``batches`` starts new ones)."""
        _shutdown_pool(self._holder)
        self._holder.pop("batch_size", None)
        self._in_flight = {}
        self._active = None

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LoaderDataset(Dataset):
    """A dataset whose images a :class:`BatchLoader` decodes: image folders and the prepared cache.

    Labels are 0..K-1 through ``class_map`` (``classes`` are the names, ``wnids`` the folder
    names), images are (3, img_size, img_size) uint8, normalised with the ImageNet mean and
    std.  A subclass says, through ``_items(indices)``, what its reader needs for those
    samples (file paths, cache records).  ``crop_pct`` is the evaluation crop, so a
    checkpoint can record the transform its images went through.
    """

    def __init__(
        self,
        labels: np.ndarray,
        class_map: ClassMap,
        reader: Any,
        img_size: int,
        workers: int,
        prefetch: int = 2,
        max_bad: int | None = None,
        description: str = "",
        augmentation: str = "none",
    ):
        self.labels = np.asarray(labels, dtype=np.int64)  # (N,)
        self.class_map = class_map
        self.classes = list(class_map.names)  # what evaluation and prediction print
        self.wnids = list(class_map.wnids)
        self.image_shape = (3, img_size, img_size)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.reader = reader
        self.crop_pct = float(reader.crop_pct)
        self.description = description
        self.augmentation = augmentation
        if max_bad is None:  # a run stops once more than 0.1% of its files (at least 5) cannot be decoded
            max_bad = max(5, math.ceil(0.001 * len(self.labels)))
        self.loader = BatchLoader(reader, self.image_shape, workers=workers, prefetch=prefetch, max_bad=max_bad)

    def _items(self, indices: np.ndarray) -> list:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        return (
            f"{self.description}: {len(self)} images, {len(self.classes)} classes, {self.image_shape[1]} px, "
            f"{self.loader.workers} decoding worker(s)"
        )

    @property
    def bad_files(self) -> dict[str, str]:
        """Files that failed to decode so far (path, as messages show it -> reason)."""
        return self.loader.bad_files

    def class_info(self) -> dict:
        """The label -> class mapping, JSON-able, for checkpoints."""
        return self.class_map.to_dict()

    def batches(
        self, indices: np.ndarray, batch_size: int, train: bool, seed: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images (B, 3, S, S) uint8, labels (B,) int64) in the order of ``indices``; the last batch may be smaller."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.loader.batches(self._items(indices), self.labels[indices], batch_size, train, seed)

    def close(self) -> None:
        self.loader.close()
