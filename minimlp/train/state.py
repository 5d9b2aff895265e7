"""Where a run is and what it leaves behind: its state, the run directory, metrics, checkpoints, resume.

A run directory holds ``last.npz`` (the state after the last epoch or stop, with the metrics so
far), ``best.npz``, ``metrics.jsonl``, ``curves.png`` and ``args.json``; every file is replaced
atomically, and ``last.npz`` is the record the others are rebuilt from on ``--resume``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from minimlp.evaluate import EvalResult
from minimlp.io.checkpoint import Checkpoint, decode_meta, load_checkpoint
from minimlp.io.files import CheckpointError, atomic_write
from minimlp.io.weights import checked_config
from minimlp.parallel.sharding import seed_for
from minimlp.train.args import NOT_RESUMED, argument_problem, build_parser


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class Diverged(TrainingError):
    pass


class RunDirError(TrainingError):
    """The run directory cannot be written (disk full, read-only, a file in its place).

    ``usage`` marks a bad ``--output``; otherwise the run failed part-way, with every file
    written before intact (each write replaces its file atomically).
    """

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclasses.dataclass
class RunState:
    """Where a run is; stored in every checkpoint's meta record under "run"."""

    epoch: int = 0  # epochs completed (training and evaluation)
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of epoch ``epoch`` already trained (after a Ctrl-C)
    loss_sum: float = 0.0  # the current epoch's running sums, so a resumed epoch reports right
    correct: int = 0
    seen: int = 0
    skipped: int = 0  # --amp: steps of this epoch skipped because the float16 gradient overflowed
    best_top1: float | None = None
    best_epoch: int | None = None
    elapsed_s: float = 0.0  # wall time spent in this run, over all its sessions


@dataclasses.dataclass
class RunResult:
    """What :func:`run` returns: where it wrote, how it ended, and the metrics per epoch."""

    run_dir: Path
    status: str  # "done", "interrupted" or "evaluated"
    metrics: list[dict[str, Any]]
    model: Any
    state: RunState
    eval_result: EvalResult | None = None


def rng_state(rng: Any) -> Any:
    """The generator's state as JSON-able data, or None where the backend cannot export it."""
    try:
        state = rng.bit_generator.state
        json.dumps(state)
        return state
    except (AttributeError, NotImplementedError, TypeError, ValueError):  # CuPy's generators keep theirs
        return None


def new_run_dir(model_name: str) -> Path:
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{model_name}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def read_metrics(path: Path, before_epoch: int | None = None, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (up to ``before_epoch``); none if there is no file.

    A last line without its newline is one a kill cut off (files older than atomic
    rewrites were appended to); it is dropped, since the epoch is trained again.
    Any other bad line, or a record without the ``required`` fields, is an error naming
    the file and the line.
    """
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: cut off mid-write
                break
            raise TrainingError(
                f"{path}, line {number}: not a JSON record ({exc.msg}); delete the line or the file to resume"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise TrainingError(
                f"{path}, line {number}: not an epoch's record (no integer 'epoch'); delete the "
                "line or the file to resume"
            )
        missing = [k for k in required if k not in record]
        if missing:
            raise TrainingError(f"{path}, line {number}: missing {', '.join(missing)}")
        records.append(record)
    return [r for r in records if before_epoch is None or r["epoch"] <= before_epoch]


def json_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with NaN and infinities as None: strict JSON has no NaN."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


@contextlib.contextmanager
def writing(path: Path, run_dir: Path) -> Iterator[None]:
    """Turn a failed write into a :class:`RunDirError` naming the file; the files written before are intact."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = f"; continue with --resume {run_dir} once it can be written" if (run_dir / "last.npz").is_file() else ""
        raise RunDirError(
            f"cannot write {path}: {reason}. Nothing saved before is lost (each file is replaced "
            f"only once its new version is complete){hint}"
        ) from None


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    with atomic_write(path) as f:
        f.write(text.encode())


def write_metrics(path: Path, metrics: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` whole, then rename: a reader never sees half a line."""
    with atomic_write(path) as f:
        f.write("".join(json.dumps(m, allow_nan=False) + "\n" for m in metrics).encode())


def copy_file(source: Path, target: Path) -> None:
    with open(source, "rb") as src, atomic_write(target) as dst:
        shutil.copyfileobj(src, dst)


def resolve_resume(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "last.npz"
        if not p.is_file():
            raise FileNotFoundError(f"{path}: no last.npz in this run directory")
    return p


def resume_checkpoint(args: argparse.Namespace, explicit: set[str]) -> Checkpoint | None:
    """The --resume checkpoint, its run's arguments applied to ``args`` unless given again."""
    if not args.resume:
        return None
    checkpoint = load_checkpoint(resolve_resume(args.resume))
    check_run_records(checkpoint)
    checked_config(checkpoint.meta.get("model"), checkpoint.params, checkpoint.path)  # before it is allocated
    actions = {a.dest: a for a in build_parser()._actions}
    for key, value in checkpoint.meta.get("args", {}).items():  # the run's own settings ...
        if key not in explicit and key not in NOT_RESUMED and hasattr(args, key):
            problem = argument_problem(actions.get(key), value)
            if problem:
                raise CheckpointError(
                    f"{checkpoint.path}: the run's argument {key} = {value!r} is invalid "
                    f"({problem}); give --{key.replace('_', '-')} on the command line"
                )
            setattr(args, key, value)  # ... unless given again on this command line
    return checkpoint


def check_run_records(checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint whose records a resume relies on are missing or malformed, naming the record."""
    path, meta = checkpoint.path, checkpoint.meta

    def refuse(problem: str) -> None:
        raise CheckpointError(f"{path}: {problem}; it cannot be resumed (damaged, or not written by this trainer)")

    if not isinstance(meta.get("model"), dict):
        refuse("no 'model' record (the architecture)" if "model" not in meta else "its 'model' record is not a dict")
    for key in ("args", "run", "optimizer", "rng"):
        if not isinstance(meta.get(key, {}), dict):
            refuse(f"its {key!r} record is a {type(meta[key]).__name__}, not a dict")
    if not isinstance(meta.get("metrics", []), list) or not all(
        isinstance(m, dict) and isinstance(m.get("epoch"), int) for m in meta.get("metrics", [])
    ):
        refuse("its 'metrics' record is not a list of epoch records")
    fields = {f.name: f.type for f in dataclasses.fields(RunState)}
    run = meta.get("run", {})
    unknown = sorted(set(run) - set(fields))
    if unknown:
        refuse(f"its 'run' record has unknown keys {unknown}")
    for name, value in run.items():  # every field is a count or an amount, never negative
        kind = int if fields[name].startswith("int") else (int, float)
        if value is None and "None" in fields[name]:
            continue
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value < 0:
            refuse(f"its 'run' record has {name} = {value!r}, not a non-negative {fields[name]}")
    if not all(np.isfinite(a).all() for a in checkpoint.params.values()):
        raise CheckpointError(
            f"{path}: its weights are not finite (saved by a run that diverged); resume from an "
            "earlier checkpoint, such as best.npz"
        )


def restore_state(
    checkpoint: Checkpoint,
    model: Any,
    optimizer: Any,
    args: argparse.Namespace,
    steps_per_epoch: int,
    log: Callable[[str], None],
) -> RunState:
    """Where the checkpoint's run stopped: its RunState, optimizer state and dropout RNG."""
    state = RunState(**checkpoint.meta.get("run", {}))
    opt_meta = checkpoint.meta.get("optimizer", {})
    if opt_meta.get("name") == optimizer.name and checkpoint.optimizer:
        optimizer.load_state_dict(checkpoint.optimizer, steps=opt_meta.get("step", state.step))
    else:
        log(f"note: the checkpoint's optimizer is {opt_meta.get('name')!r}; starting {optimizer.name} afresh")
    saved_rng = checkpoint.meta.get("rng", {}).get("model")
    if saved_rng is not None and rng_state(model.rng) is not None:
        try:
            model.rng.bit_generator.state = saved_rng
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{checkpoint.path}: its 'rng' record is not a generator state ({exc})") from None
    else:  # no exportable state (CuPy): a fresh stream, still a function of seed and step
        model.seed(seed_for(args.seed, state.step, 3))
    log(
        f"resumed from {checkpoint.path}: epoch {state.epoch}, step {state.step}"
        + (f", batch {state.batch_in_epoch}/{steps_per_epoch}" if state.batch_in_epoch else "")
    )
    return state


def data_transform(args: argparse.Namespace, train_set: Any, eval_set: Any) -> dict[str, Any]:
    """How images become model inputs, for checkpoints: evaluate and predict apply the same.

    Image files are evaluated by resizing the short side to img_size / crop_pct (bicubic) and
    center-cropping img_size (``crop_pct`` is None for in-memory data, used as it is); then
    (x / 255 - mean) / std per channel.
    """
    crop_pct = getattr(eval_set, "crop_pct", None)
    return {
        "name": args.dataset or "auto",
        "mean": list(train_set.mean),
        "std": list(train_set.std),
        "image_shape": list(train_set.image_shape),
        "crop_pct": None if crop_pct is None else float(crop_pct),
        "interpolation": "bicubic",
    }


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint was saved at, reading only its meta record; None if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return decode_meta(archive["meta"], path).get("step")
    except Exception:  # missing, cut off, foreign: in each case not the checkpoint looked for
        return None


def repair_best(checkpoint: Checkpoint, state: RunState, run_dir: Path, log: Callable[[str], None]) -> None:
    """best.npz is written right after last.npz; a kill between the two left it older than the
    best epoch that last.npz names.  That epoch is last.npz's own, so best.npz is a copy of it."""
    if state.best_epoch != state.epoch or state.batch_in_epoch or checkpoint.path is None:
        return
    best = run_dir / "best.npz"
    if checkpoint_step(best) == state.step:
        return
    with writing(best, run_dir):
        copy_file(checkpoint.path, best)
    log(f"note: {best} did not hold the best epoch ({state.best_epoch}); restored it from {checkpoint.path}")
