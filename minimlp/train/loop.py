"""The epoch loop: train, evaluate, record, checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import math
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from minimlp.backend import to_numpy
from minimlp.data import normalize
from minimlp.evaluate import EvalResult, evaluate
from minimlp.io.checkpoint import Checkpoint, make_meta, save_checkpoint
from minimlp.kernels import cross_entropy_backward, cross_entropy_forward
from minimlp.kernels.amp import MixedPrecision
from minimlp.kernels.gpu import BatchFeed
from minimlp.optim import LRSchedule, clip_grad_norm
from minimlp.parallel.ddp import DistributedDataParallel
from minimlp.parallel.mpi import World
from minimlp.parallel.sharding import seed_for
from minimlp.parallel.workers import DataParallel
from minimlp.train.data import DeviceAugment, epoch_order, new_bad_files
from minimlp.train.plot import plot_curves
from minimlp.train.progress import Progress, format_duration
from minimlp.train.state import (
    Diverged,
    RunResult,
    RunState,
    copy_file,
    data_transform,
    json_record,
    read_metrics,
    repair_best,
    rng_state,
    write_json,
    write_metrics,
    writing,
)


@dataclasses.dataclass
class Run:
    """Everything :func:`minimlp.train.command.run` prepares for the loop, and what the loop keeps."""

    args: argparse.Namespace
    model: Any
    optimizer: Any
    schedule: LRSchedule
    state: RunState
    train_set: Any
    eval_set: Any
    train_idx: np.ndarray
    eval_idx: np.ndarray
    eval_batch: int
    steps_per_epoch: int
    lr: float  # the peak learning rate
    weight_decay: float
    checkpoint: Checkpoint | None  # the one resumed from
    run_dir: Path
    augment: DeviceAugment
    workers: int  # decoding processes, and how many batches a background thread prepares ahead
    world: World  # the MPI job (or one process): who writes, and the sums and votes over the ranks
    log: Callable[[str], None]
    parallel: DataParallel | DistributedDataParallel | None = None  # the batch split over processes or ranks
    mixed: MixedPrecision | None = None  # --amp on a GPU
    feed: BatchFeed | None = None  # on a GPU: batches uploaded one step ahead
    metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one record per epoch
    bad_seen: set[str] = dataclasses.field(default_factory=set)  # files that could not be decoded
    session_start: float = 0.0  # perf_counter() when this session's training began
    elapsed_before: float = 0.0  # training time of the run's earlier sessions

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def elapsed(self) -> float:
        """Wall time spent in this run, over all its sessions."""
        return self.elapsed_before + time.perf_counter() - self.session_start


@dataclasses.dataclass
class EpochTraining:
    """How an epoch's training part went: its last learning rate, speed and duration."""

    lr: float
    images_per_second: float
    seconds: float


def train(
    run: Run,
    on_step: Callable[[RunState], bool | None] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], bool | None] | None = None,
) -> RunResult:
    """The epochs: train, evaluate, record, checkpoint (the second half of :func:`run`).

    ``on_step(state)`` and ``on_epoch_end(record)`` returning True stop the run as Ctrl-C does.
    """
    state = run.state
    open_run_dir(run)
    run.session_start, run.elapsed_before = time.perf_counter(), state.elapsed_s
    with StopRequest(announce=run.world.is_main) as stop:
        for epoch in range(state.epoch, run.args.epochs):
            trained = train_epoch(run, epoch, stop, on_step)
            check_finite(run, epoch)
            state.elapsed_s = run.elapsed()
            if run.world.any(stop.requested):
                return interrupted(run)
            eval_start = time.perf_counter()
            result = evaluate(
                run.parallel or run.model, run.eval_set, run.eval_batch, run.eval_idx, should_stop=stop, world=run.world
            )
            if result is None:
                return interrupted(run)
            record = end_epoch(run, epoch, trained, result, time.perf_counter() - eval_start)
            if on_epoch_end is not None and on_epoch_end(record):
                return interrupted(run)
    best = (
        f"best top-1 {state.best_top1:.2f}% at epoch {state.best_epoch}"
        if state.best_epoch is not None
        else "no epoch evaluated to a finite loss, so there is no best.npz"
    )
    run.log(f"done: {best}; {format_duration(state.elapsed_s)} in all; checkpoints and curves in {run.run_dir}")
    return RunResult(run.run_dir, "done", run.metrics, run.model, state)


def open_run_dir(run: Run) -> None:
    """Load the metrics so far, write ``args.json``, and bring the directory in line with the checkpoint."""
    state, checkpoint, run_dir = run.state, run.checkpoint, run.run_dir
    # The checkpoint is the run's record: metrics.jsonl and best.npz are brought in line with
    # it, whatever instant a kill left them at (checkpoints older than the "metrics" record
    # fall back on the file).
    if checkpoint is not None and "metrics" in checkpoint.meta:
        run.metrics = [m for m in checkpoint.meta["metrics"] if m["epoch"] <= state.epoch]
    else:
        run.metrics = read_metrics(run.metrics_path, before_epoch=state.epoch)
    if run.world.is_main:
        path = run_dir / "args.json"
        with writing(path, run_dir):
            write_json(path, {**vars(run.args), "effective_lr": run.lr, "effective_weight_decay": run.weight_decay})
        if checkpoint is not None:  # drop lines of epochs the checkpoint had not finished, add those it had
            with writing(run.metrics_path, run_dir):
                write_metrics(run.metrics_path, run.metrics)
            repair_best(checkpoint, state, run_dir, run.log)
    run.log(f"run directory: {run_dir}")


def train_epoch(
    run: Run, epoch: int, stop: StopRequest, on_step: Callable[[RunState], bool | None] | None
) -> EpochTraining:
    """Train epoch ``epoch`` from where ``run.state`` is, until its end or a stop that every rank agrees on."""
    args, state, world, model = run.args, run.state, run.world, run.model
    order = epoch_order(run.train_idx, seed_for(args.seed, epoch, 0), args.repeated_aug)
    first = state.batch_in_epoch
    batches = world.batches(
        run.train_set,
        order[first * args.batch_size :],
        args.batch_size,
        train=not args.no_aug,
        seed=seed_for(args.seed, epoch, first + 1),
    )  # this rank's shard of each batch
    bar = Progress(
        run.steps_per_epoch,
        f"epoch {epoch + 1}/{args.epochs}",
        args.log_interval,
        done=first,
        stream=world.progress_stream(),
    )
    lr = run.schedule(state.step / run.steps_per_epoch)
    totals = StepTotals(model.xp)
    # How often the step loop reads its sums back (see StepTotals): every step on NumPy, where
    # reading is free and a diverged loss stops the run at once; every log interval on a GPU.
    sync_every = 1 if not model.backend.is_gpu else args.log_interval
    stream = prefetch(batches, run.workers)
    fed = run.feed(stream) if run.feed is not None else stream
    for images, labels in fed:
        if len(labels) == 0 and not world.active:  # every file failed to decode (reported after the epoch)
            state.batch_in_epoch += 1
            continue
        lr = run.schedule(state.step / run.steps_per_epoch)
        # The device augmentations' boxes and mixing weights: a function of (seed, epoch, batch).
        rng = np.random.default_rng(seed_for(args.seed, epoch, state.batch_in_epoch, 2))
        loss, logits, ok = train_step(run, images, labels, rng)
        norm = None
        if ok:
            if args.clip_grad:
                norm = clip_grad_norm(model.store.flat_grads, args.clip_grad)
            run.optimizer.step(lr)
        totals.add(loss, logits, labels, norm)
        state.step += 1
        state.batch_in_epoch += 1
        if not ok:  # --amp: the float16 gradient overflowed; the loss scale was halved
            state.skipped += 1
            if run.mixed.scaler.scale < MIN_LOSS_SCALE:
                raise Diverged(
                    divergence_message(
                        run.mixed.scaler.scale, state, epoch, run.steps_per_epoch, lr, run.run_dir, what="loss scale"
                    )
                )
        images_done = 0
        if totals.steps == sync_every or state.batch_in_epoch == run.steps_per_epoch:
            images_done = read_totals(totals, run, epoch, lr)
        bar.update(images_done, lr=lr, **({"loss": state.loss_sum / state.seen} if images_done else {}))
        if on_step is not None and on_step(state):
            stop.requested = True
        if world.any(stop.requested):  # every rank stops after the same step
            stop.requested = True
            break
    fed.close()  # now, not when collected: a second Ctrl-C while they stop then quits cleanly
    stream.close()
    bar.images += read_totals(totals, run, epoch, lr)  # an early stop
    bar.close()
    return EpochTraining(lr, bar.images_per_second, bar.elapsed)


def end_epoch(run: Run, epoch: int, trained: EpochTraining, result: EvalResult, eval_time: float) -> dict[str, Any]:
    """Record epoch ``epoch`` (evaluated as ``result``), advance the state, and save: its metrics record."""
    args, state, run_dir = run.args, run.state, run.run_dir
    bad = {**new_bad_files(run.train_set, run.bad_seen), **new_bad_files(run.eval_set, run.bad_seen)}
    if bad:
        shown = "\n  ".join(f"{path} ({reason})" for path, reason in list(bad.items())[:20])
        run.log(
            f"skipped {len(bad)} file(s) that could not be decoded ({len(run.bad_seen)} in this run so far; "
            f"each is left out of its batch):\n  {shown}" + ("\n  ..." if len(bad) > 20 else "")
        )
    record = {
        "epoch": epoch + 1,
        "step": state.step,
        "train_loss": state.loss_sum / max(1, state.seen),
        "train_top1": 100.0 * state.correct / max(1, state.seen),
        "eval_loss": result.loss,
        "eval_top1": result.top1,
        "eval_top5": result.top5,
        "lr": trained.lr,
        "img_per_s": trained.images_per_second,
        "epoch_time_s": trained.seconds,
        "eval_time_s": eval_time,
        "skipped_files": len(run.bad_seen),
        "elapsed_s": run.elapsed(),
    }
    if run.mixed is not None:
        record.update(amp_skipped_steps=state.skipped, loss_scale=run.mixed.scaler.scale)
    record = json_record(record)  # a NaN evaluation loss becomes null
    # An evaluation whose loss is not finite (overflowing logits) is never the best.
    improved = math.isfinite(result.loss) and (state.best_top1 is None or result.top1 > state.best_top1)
    state.epoch, state.batch_in_epoch = epoch + 1, 0
    state.loss_sum, state.correct, state.seen, state.skipped = 0.0, 0, 0, 0
    if improved:
        state.best_top1, state.best_epoch = result.top1, epoch + 1
    state.elapsed_s = record["elapsed_s"]
    run.metrics.append(record)
    # The order keeps the directory resumable at every instant: last.npz (which holds the
    # metrics and names the best epoch) first, then what can be rebuilt from it.
    save(run, run_dir / "last.npz")
    if run.world.is_main:
        if improved:
            with writing(run_dir / "best.npz", run_dir):
                copy_file(run_dir / "last.npz", run_dir / "best.npz")
        with writing(run.metrics_path, run_dir):
            write_metrics(run.metrics_path, run.metrics)
        with writing(run_dir / "curves.png", run_dir):
            plot_curves(run.metrics, run_dir / "curves.png")
    top5 = f"  top-5 {result.top5:.2f}%" if result.top5 is not None else ""
    run.log(
        f"epoch {epoch + 1}/{args.epochs}: train loss {record['train_loss']:.4f}  "
        f"eval loss {result.loss:.4f}  top-1 {result.top1:.2f}%{top5}  ({record['img_per_s']:.0f} img/s, "
        f"epoch {format_duration(trained.seconds)}, eval {format_duration(eval_time)}, "
        f"total {format_duration(record['elapsed_s'])})"
        + (
            f"  [float16: {record['amp_skipped_steps']} step(s) skipped for overflow, loss scale "
            f"{record['loss_scale']:g}]"
            if run.mixed is not None
            else ""
        )
        + ("  * best" if improved else "")
    )
    return record


def save(run: Run, path: Path) -> None:
    """Write the run's checkpoint to ``path`` (rank 0 only)."""
    if not run.world.is_main:
        return
    args, state, model, optimizer = run.args, run.state, run.model, run.optimizer
    class_map = run.train_set.class_info() if hasattr(run.train_set, "class_info") else None
    meta = make_meta(
        model.config_dict(),
        epoch=state.epoch,
        step=state.step,
        classes=run.train_set.classes,
        rng={
            "model": rng_state(model.rng),
            "data": {"seed": args.seed, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch},
        },
        args=vars(args),
        optimizer={"name": optimizer.name, "hyperparameters": optimizer.hyperparameters(), "step": optimizer.steps},
        data=data_transform(args, run.train_set, run.eval_set),
        class_map=class_map,
        run=dataclasses.asdict(state),
        metrics=run.metrics,
        **({"amp": run.mixed.scaler.state_dict()} if run.mixed is not None else {}),
    )
    with writing(path, run.run_dir):
        save_checkpoint(path, model.params, meta, optimizer.state_dict())


def check_finite(run: Run, epoch: int) -> None:
    """No checkpoint of non-finite weights: the step that made them is the failure."""
    if not weights_finite(run.model):
        raise Diverged(nonfinite_message(run.state, epoch, run.steps_per_epoch, run.run_dir))


def interrupted(run: Run) -> RunResult:
    """Save where the run stopped (Ctrl-C, SIGUSR1, a hook) so that --resume continues it."""
    check_finite(run, run.state.epoch)
    save(run, run.run_dir / "last.npz")
    run.log(
        f"stopped at epoch {run.state.epoch + 1}, step {run.state.step}; saved {run.run_dir / 'last.npz'}. "
        f"Continue with: python -m minimlp.train --resume {run.run_dir}"
    )
    return RunResult(run.run_dir, "interrupted", run.metrics, run.model, run.state)


def train_step(run: Run, images: Any, labels: np.ndarray, rng: np.random.Generator) -> tuple[Any, Any, bool]:
    """Forward and backward of one batch, the gradient left in ``model.grads``: (loss, logits (B, K), ok).

    uint8 images (host, or already on the device) -> normalise -> random erasing -> mixup/cutmix
    (timm's order) -> forward -> cross-entropy (against soft targets with mixup/cutmix) -> backward.
    The loss and logits stay where they were computed.  ``ok`` is False only with --amp, for a
    step whose float16 gradient overflowed: the optimizer must skip it.
    """
    model, xp, args = run.model, run.model.xp, run.args
    x = normalize(images, run.train_set.mean, run.train_set.std, xp, model.dtype)  # (B, C, H, W) on the device
    x, targets, smoothing = run.augment(x, labels, rng, model.rng, args.smoothing)
    if run.parallel is not None:  # the workers leave the batch-mean gradient in model.grads
        loss, logits = run.parallel.train_step(x, targets, smoothing, run.state.step)
        return loss, logits, True
    if run.mixed is not None:  # float16 forward and backward; float32 gradients into model.grads
        model.zero_grad()
        return run.mixed.train_step(x, targets, smoothing)
    logits, cache = model.forward(x, train=True)  # (B, K)
    loss, loss_cache = cross_entropy_forward(logits, targets, smoothing)  # host labels are checked on the host
    model.zero_grad()
    model.backward(cross_entropy_backward(loss_cache), cache, input_grad=False)
    return loss, logits, True


# A loss scale this small means that even the unscaled float16 gradient overflows: the run diverged.
MIN_LOSS_SCALE = 2.0**-24


class StepTotals:
    """The loss, correct predictions and gradient norms of the steps since the last read, summed
    where the model computes.

    Reading a number that a GPU computed makes the host wait until the GPU has finished all the
    work queued so far; doing it every step leaves the GPU idle while the host prepares the next
    step.  So the sums stay on the device and :meth:`read` fetches them in one copy, once per log
    interval (on NumPy, where reading is free, every step).
    """

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self.zero = xp.zeros((), dtype=xp.float64)
        self.clear()

    def clear(self) -> None:
        self.loss_sum = self.correct = self.norm_sum = self.zero
        self.steps = self.count = 0

    def add(self, loss: Any, logits: Any, labels: np.ndarray, norm: Any = None) -> None:
        """One step: its mean ``loss``, ``logits`` (B, K), host ``labels`` (B,), gradient ``norm`` (or None)."""
        xp = self.xp
        count = len(labels)
        self.loss_sum = self.loss_sum + xp.asarray(loss, dtype=xp.float64) * count
        self.correct = self.correct + (logits.argmax(axis=1) == xp.asarray(labels)).sum()
        if norm is not None:
            self.norm_sum = self.norm_sum + xp.asarray(norm, dtype=xp.float64)
        self.steps += 1
        self.count += count

    def read(self) -> tuple[float, int, float]:
        """(loss sum, correct, norm sum) on the host, the step loop's one wait for the GPU."""
        loss_sum, correct, norm_sum = to_numpy(self.xp.stack([self.loss_sum, self.correct, self.norm_sum]))
        return float(loss_sum), int(correct), float(norm_sum)


def read_totals(totals: StepTotals, run: Run, epoch: int, lr: float) -> int:
    """Add the steps since the last read into ``run.state`` (summed over the ranks under mpirun) and
    return how many images they trained on; a loss or gradient norm that is not finite ends the run."""
    if totals.steps == 0:
        return 0
    steps, state = totals.steps, run.state
    loss_sum, correct, norm_sum = totals.read()
    loss_sum, correct, count = run.world.sum(
        np.array([loss_sum, correct, totals.count]), "summing the loss and accuracy"
    )
    totals.clear()
    if not math.isfinite(loss_sum):
        raise Diverged(
            divergence_message(
                loss_sum / max(count, 1), state, epoch, run.steps_per_epoch, lr, run.run_dir, steps=steps
            )
        )
    if not math.isfinite(norm_sum):
        raise Diverged(
            divergence_message(
                norm_sum / steps, state, epoch, run.steps_per_epoch, lr, run.run_dir, what="gradient norm", steps=steps
            )
        )
    state.loss_sum += float(loss_sum)
    state.correct += int(correct)
    state.seen += int(count)
    return int(count)


def weights_finite(model: Any) -> bool:
    return bool(model.xp.isfinite(model.store.flat_params).all().item())  # one explicit read from the device


def prefetch(batches: Iterator[Any], depth: int) -> Iterator[Any]:
    """Produce ``batches`` in a background thread, ``depth`` ahead (0: in this thread).

    The order is unchanged, so results do not depend on the thread's timing.
    """
    if depth <= 0:
        yield from batches
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(end)
        except BaseException as exc:  # hand the loader's error to the training thread
            slots.put(exc)

    worker = threading.Thread(target=produce, name="minimlp-loader", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


class StopRequest:
    """Ctrl-C asks the loop to stop after the current step (and save); a second one aborts.

    SIGUSR1 asks the same: mpirun forwards it to every rank (Ctrl-C makes mpirun kill the
    job), and a batch system can send it ahead of a time limit (Slurm: --signal=B:USR1@120).
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGUSR1", None)) if s)

    def __init__(self, announce: bool = True) -> None:
        self.requested = False
        self.announce = announce  # print the notice (rank 0 only, under mpirun)
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(
                f"\n{what}: stopping after this step and saving a resumable checkpoint (Ctrl-C again to quit at once)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def last_good_state(state: RunState, run_dir: Path) -> str:
    """What a failed run leaves to resume from, for its error message."""
    last = run_dir / "last.npz"
    if not last.is_file():
        return "no checkpoint had been written yet"
    return (
        f"{last} still holds the last good state (epoch {state.epoch}); continue from it with "
        f"--resume {run_dir} and a lower --lr"
    )


def divergence_message(
    value: float,
    state: RunState,
    epoch: int,
    steps_per_epoch: int,
    lr: float,
    run_dir: Path,
    what: str = "loss",
    steps: int = 1,
) -> str:
    """Why the run stopped, after the step ``state.step``; ``steps`` > 1: somewhere in the last ``steps``
    steps (a GPU run reads its losses once per log interval)."""
    saved = last_good_state(state, run_dir)
    where = f"at step {state.step}" if steps == 1 else f"in one of steps {state.step - steps + 1}-{state.step}"
    return (
        f"the {what} became {value} {where} (epoch {epoch + 1}, batch "
        f"{state.batch_in_epoch}/{steps_per_epoch}, learning rate {lr:.3g}). The learning rate is most "
        f"likely too high for this model and batch size: try --lr {lr / 4:.2g}, a longer --warmup-epochs, "
        f"or --clip-grad 1.0. Nothing was saved after the failure: {saved}."
    )


def nonfinite_message(state: RunState, epoch: int, steps_per_epoch: int, run_dir: Path) -> str:
    saved = last_good_state(state, run_dir)
    return (
        f"the weights became non-finite at step {state.step} (epoch {epoch + 1}, batch "
        f"{state.batch_in_epoch}/{steps_per_epoch}; its loss was finite, its update was not). The learning "
        f"rate is most likely too high for this model and batch size: try a lower --lr, a longer "
        f"--warmup-epochs, or --clip-grad 1.0. Nothing was saved after the failure: {saved}."
    )
