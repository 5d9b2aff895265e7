"""GPU settings and transfers: TF32 matrix products, and image batches uploaded on a side stream.

* :func:`set_tf32` lets CuPy's float32 matrix products use TF32 tensor cores (10-bit
  mantissa inputs, float32 accumulation; A100/H100 and newer).  It is off by default, as
  in PyTorch, because it changes results at the 1e-3 level.
* :class:`BatchUploader` copies uint8 image batches from pinned host memory to the GPU on
  its own CUDA stream, so the copy of the next batch overlaps the compute of this one;
  uint8 is a quarter of the bytes of float32, and the conversion to float happens on the
  GPU.
* :class:`BatchFeed` runs a stream of (images, labels) batches through a ``BatchUploader``,
  one batch ahead: this is how ``python -m minimlp.train --gpu`` feeds its steps.

CuPy is imported only inside these functions.  Lesson 11 covers the GPU path and the
uploads; its appendix (11a), TF32.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["set_tf32", "BatchUploader", "BatchFeed"]

# cuBLAS compute types as CuPy numbers them (cupy/_core/_routines_linalg.pyx).
_COMPUTE_TYPE_DEFAULT = 1
_COMPUTE_TYPE_TF32 = 7


def set_tf32(enabled: bool = True) -> None:
    """Allow (or forbid) TF32 for CuPy's float32 matrix products from now on.

    CuPy reads ``CUPY_TF32`` once, at its first float32 matrix product, and caches the
    answer; so this sets the variable (enough when no product has run yet) and also
    updates CuPy's cached choice where this CuPy exposes it.  TF32 needs compute
    capability 8.0 or newer; elsewhere CuPy warns and keeps float32.
    """
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    try:
        import cupy
        from cupy._core import _routines_linalg
    except ImportError:
        return
    try:
        _routines_linalg.set_compute_type(cupy.float32, _COMPUTE_TYPE_TF32 if enabled else _COMPUTE_TYPE_DEFAULT)
    except (AttributeError, TypeError, ValueError):  # another CuPy: the environment variable does the job
        pass


class BatchUploader:
    """uint8 batches to the GPU on a side stream, double-buffered.

        uploader = BatchUploader((B, C, H, W))
        uploader.put(batch0)               # starts copying, returns at once
        for next_batch in rest:
            x = uploader.get()             # the oldest batch, ready for the current stream
            uploader.put(next_batch)       # its copy overlaps the step below
            train_step(x.astype(cupy.float32) / 255)
        x = uploader.get()

    ``put`` copies the batch into pinned host memory (the only memory the GPU can read
    asynchronously) and queues the transfer on the copy stream; ``get`` makes the
    current stream wait for that transfer, on the GPU, without blocking the host.  A
    device buffer is refilled only after the work queued after its ``get`` has finished.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any = np.uint8, buffers: int = 2) -> None:
        import cupy
        import cupyx

        self.cupy, self.shape, self.dtype = cupy, tuple(shape), np.dtype(dtype)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.host = [cupyx.empty_pinned(self.shape, self.dtype) for _ in range(buffers)]
        self.device = [cupy.empty(self.shape, self.dtype) for _ in range(buffers)]
        self.copied: list[Any] = [None] * buffers  # event: the transfer into device[i] is done
        self.released: list[Any] = [None] * buffers  # event: the work that read device[i] is done
        self.pending: deque[int] = deque()  # buffers put but not yet got, oldest first
        self.in_use: int | None = None  # the buffer the last get() handed out
        self.next = 0

    def put(self, batch: np.ndarray) -> None:
        """Start copying ``batch`` (host, ``shape``, ``dtype``) to the GPU."""
        if batch.shape != self.shape or batch.dtype != self.dtype:
            raise ValueError(f"expected a {self.dtype} batch of shape {self.shape}, got {batch.dtype} {batch.shape}")
        if len(self.pending) + (self.in_use is not None) >= len(self.device):
            raise RuntimeError("all buffers are waiting to be read: call get() before putting another batch")
        i = self.next
        while i in self.pending or i == self.in_use:
            i = (i + 1) % len(self.device)
        self.next = (i + 1) % len(self.device)
        if self.copied[i] is not None:
            self.copied[i].synchronize()  # the previous transfer out of host[i] has finished reading it
        np.copyto(self.host[i], batch)
        if self.released[i] is not None:
            self.stream.wait_event(self.released[i])  # on the GPU: do not overwrite data still being read
        self.device[i].set(self.host[i], stream=self.stream)
        self.copied[i] = self.stream.record()
        self.pending.append(i)

    def get(self) -> Any:
        """The oldest batch put, as a device array the current stream may use."""
        if not self.pending:
            raise RuntimeError("no batch was put")
        current = self.cupy.cuda.get_current_stream()
        if self.in_use is not None:  # its reader is queued by now: mark where it ends
            self.released[self.in_use] = current.record()
        i = self.pending.popleft()
        current.wait_event(self.copied[i])
        self.in_use = i
        return self.device[i]


class BatchFeed:
    """Host (images, labels) batches -> (device images, labels), each copy overlapping the step before.

        feed = BatchFeed()
        for x, labels in feed(batches):    # x: uint8 on the GPU, for the work queued before the next batch
            train_step(x, labels)

    While the caller works on batch i, batch i + 1 is already on its way.  The uploader is made
    for the first batch's shape and dtype and kept from one call (epoch) to the next; a batch of
    another shape (a short last batch) is copied plainly.  Labels stay on the host.
    """

    def __init__(self, buffers: int = 2) -> None:
        self.buffers = buffers
        self.uploader: BatchUploader | None = None

    def __call__(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
        import cupy

        started: deque[tuple[Any, np.ndarray]] = deque()  # (device array, or None: the uploader's next; labels)

        def start(images: np.ndarray, labels: np.ndarray) -> None:
            if self.uploader is None and len(images):
                self.uploader = BatchUploader(images.shape, images.dtype, self.buffers)
            up = self.uploader
            if up is not None and images.shape == up.shape and images.dtype == up.dtype:
                up.put(images)
                started.append((None, labels))
            else:
                started.append((cupy.asarray(images), labels))

        def ready() -> tuple[Any, np.ndarray]:
            x, labels = started.popleft()
            return (self.uploader.get() if x is None else x), labels

        try:
            for images, labels in batches:
                if not started:
                    start(images, labels)
                    continue
                batch = ready()
                start(images, labels)  # its copy overlaps the work the caller queues on ``batch``
                yield batch
            while started:
                yield ready()
        finally:  # a loop left early: nothing stays queued for the next call
            while self.uploader is not None and self.uploader.pending:
                self.uploader.get()
