"""Read a weights file in a child process with its memory capped and a time limit, and
report what happened: loaded, refused (CheckpointError), another exception, a crash by
signal, or a timeout; with the time taken and the memory the read added (peak RSS minus
the RSS before it, from /proc: Linux only).  A hostile file can then be tried without endangering the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from minimlp.io.files import CheckpointError
    from minimlp.io import weights

    path, reader, limit_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def status_mb(field):  # this process's own numbers (getrusage's maxrss survives exec)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024
    cap = int((status_mb("VmSize") + limit_mb) * 2**20)  # what is mapped already, plus the budget
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    base = status_mb("VmRSS")
    start = time.perf_counter()
    try:
        getattr(weights, reader)(path)
        outcome, message = "loaded", ""
    except CheckpointError as e:
        outcome, message = "refused", str(e)
    except BaseException as e:
        outcome, message = type(e).__name__, str(e)[:300]
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    print(json.dumps({"outcome": outcome, "message": message[:2000], "lines": message.count("\\n") + 1,
                      "seconds": seconds, "added_mb": peak - base}))
""")


class Outcome(NamedTuple):
    outcome: str  # loaded, refused, an exception's name, "signal N" or "timeout"
    message: str = ""
    lines: int = 0  # lines in the message
    seconds: float = 0.0
    added_mb: float = 0.0

    def __str__(self) -> str:
        if self.outcome in ("loaded", "refused") or self.outcome.startswith("Memory"):
            return f"{self.outcome}, {self.seconds:.2f} s, +{self.added_mb:.0f} MB"
        return self.outcome


def read_in_child(
    path: str | os.PathLike,
    reader: str = "load_weights",
    memory_mb: int = 1000,
    timeout: float = 20,
    root: str | os.PathLike = ROOT,
) -> Outcome:
    """Run ``minimlp.io.weights.<reader>(path)`` in a child process under the given limits.

    ``root`` is the minimlp checkout to import (another one measures how it fares).
    """
    env = {**os.environ, "PYTHONPATH": str(root), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), reader, str(memory_mb)],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return Outcome("timeout", f"still running after {timeout:g} s")
    if done.returncode < 0:
        return Outcome(f"signal {-done.returncode}", done.stderr[-300:])
    try:
        return Outcome(**json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError, TypeError):
        return Outcome(f"exit {done.returncode}", done.stderr[-300:])
