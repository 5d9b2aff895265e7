"""Console output of the commands: a small progress bar (position, loss, learning rate, images
per second and time left), durations, and warnings as plain lines.

On a terminal the bar redraws one line in place (at most a few times a second); into a
file or a pipe (a log, CI) it prints a plain line every ``interval`` steps instead, so
logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


def format_duration(seconds: float) -> str:
    """3725 -> '1:02:05', 65 -> '1:05'."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def print_warning(
    message: Any, category: type, filename: str, lineno: int, file: Any = None, line: str | None = None
) -> None:
    """A ``warnings.showwarning`` for the commands: one plain line (a left-out file, an empty class folder)."""
    print(f"warning: {message}", file=sys.stderr)


class Progress:
    """``bar = Progress(total, "epoch 1/10")``; ``bar.update(images=B, loss=..., lr=...)``; ``bar.close()``."""

    def __init__(
        self, total: int, prefix: str, interval: int = 50, stream: IO[str] | None = None, done: int = 0, width: int = 24
    ) -> None:
        self.total, self.prefix, self.interval, self.width = total, prefix, max(1, interval), width
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = done  # steps finished (a resumed epoch starts part-way)
        self.start_done = done
        self.images = 0
        self.start = time.perf_counter()
        self.stop: float | None = None  # set by close(): the epoch's speed is not diluted by what follows
        self.last_draw = 0.0
        self.fields: dict[str, Any] = {}

    @property
    def elapsed(self) -> float:
        """Seconds since the bar was made, up to close() once it is closed."""
        return (time.perf_counter() if self.stop is None else self.stop) - self.start

    @property
    def images_per_second(self) -> float:
        return self.images / self.elapsed if self.elapsed > 0 else 0.0

    def eta(self) -> float:
        steps = self.done - self.start_done
        return (self.total - self.done) * self.elapsed / steps if steps else 0.0

    def line(self) -> str:
        filled = int(self.width * self.done / self.total) if self.total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        parts = [f"{self.prefix} [{bar}] {self.done}/{self.total}"]
        if "loss" in self.fields:
            parts.append(f"loss {self.fields['loss']:.4f}")
        if "lr" in self.fields:
            parts.append(f"lr {self.fields['lr']:.2e}")
        parts.append(f"{self.images_per_second:.0f} img/s")
        parts.append(
            f"ETA {format_duration(self.eta())}" if self.done < self.total else f"in {format_duration(self.elapsed)}"
        )
        return "  ".join(parts)

    def update(self, images: int = 0, **fields: Any) -> None:
        self.done += 1
        self.images += images
        self.fields.update(fields)
        if self.tty:
            now = time.perf_counter()
            if now - self.last_draw > 0.2 or self.done == self.total:
                self.stream.write("\r" + self.line() + "\033[K")
                self.stream.flush()
                self.last_draw = now
        elif self.done % self.interval == 0 or self.done == self.total:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        self.stop = time.perf_counter()
        if self.tty:
            self.stream.write("\r" + self.line() + "\033[K\n")
            self.stream.flush()
