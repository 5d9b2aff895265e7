"""Item readers for the loader tests; module level so worker processes can unpickle them."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import numpy as np

from minimlp.data.transforms import BadImageError


@dataclass(frozen=True)
class NoiseReader:
    """Item i -> an (S, S, 3) image from the batch generator; items named 'bad*' fail to decode;
    'boom' raises an unexpected error, 'die' kills the worker, 'slow' sleeps ``sleep`` seconds."""

    size: int = 8
    sleep: float = 0.0

    def load(self, item, train, rng):
        if str(item).startswith("bad"):
            raise BadImageError(str(item), "OSError: image file is truncated")
        if item == "boom":
            raise RuntimeError("the reader broke")
        if item == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if item == "slow" or self.sleep:
            time.sleep(self.sleep or 60)
        value = rng.integers(0, 256, size=(self.size, self.size, 3), dtype=np.uint8)
        if not train:
            value[:] = item_value(item)
        return value


def item_value(item) -> int:
    """The pixel value an item gets in eval mode: a function of the item alone."""
    return int("".join(c for c in str(item) if c.isdigit()) or 0) * 7 % 256
