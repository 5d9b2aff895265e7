"""An opt-in stopwatch around the ops of the speed layer: where does a training step go?

Each op in :mod:`minimlp.kernels` (the fast ones, the plain ones it passes on, and the
loss) is marked with the category it belongs to — ``@timed("matmul")``, ``@timed("gelu")``
... .  Normally the mark costs one extra function call and nothing is measured.  Inside ``with recording()
as timer:`` every call adds its wall time to ``timer.seconds[category]``; ops called from
inside another timed op are charged to the outer one only.  ``minimlp.bench`` uses this
for its per-layer breakdown.  On a GPU, pass ``sync`` (e.g. the device's synchronize) so
that each op's time includes its kernels, not just their launch.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["OpTimer", "timed", "recording"]


class OpTimer:
    """Seconds and calls per category, accumulated while recording."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.sync = sync
        self.depth = 0  # > 0 while a timed op runs

    def charge(self, category: str, seconds: float) -> None:
        self.seconds[category] += seconds
        self.calls[category] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


_active: OpTimer | None = None


def timed(category: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a function as an op of ``category`` for the breakdown."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            timer = _active
            if timer is None or timer.depth:
                return fn(*args, **kwargs)
            timer.depth += 1
            try:
                if timer.sync is not None:
                    timer.sync()
                start = time.perf_counter()
                result = fn(*args, **kwargs)
                if timer.sync is not None:
                    timer.sync()
                timer.charge(category, time.perf_counter() - start)
            finally:
                timer.depth -= 1
            return result

        return wrapper

    return decorate


@contextmanager
def recording(sync: Callable[[], None] | None = None) -> Iterator[OpTimer]:
    """Time every marked op until the block ends."""
    global _active
    previous, _active = _active, OpTimer(sync)
    try:
        yield _active
    finally:
        _active = previous
