"""``python -m minimlp.train``: build the run from the command line, train it, report errors in one line."""

from __future__ import annotations

import argparse
import math
import os
import signal
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from minimlp.backend import get_backend
from minimlp.data.loader import BadImagesWarning, LoaderDataset, LoaderError, TooManyBadImagesError, default_workers
from minimlp.evaluate import evaluate
from minimlp.io.checkpoint import Checkpoint
from minimlp.io.files import CheckpointError
from minimlp.io.weights import WeightsFile, load_pretrained, open_weights, preset_name
from minimlp.kernels.amp import MixedPrecision
from minimlp.kernels.gpu import BatchFeed
from minimlp.kernels.threads import num_threads
from minimlp.models.registry import create_model, model_config, model_from_config
from minimlp.optim import LRSchedule, create_optimizer, scale_lr
from minimlp.parallel import ddp, mpi
from minimlp.parallel.workers import DataParallel, WorkerError
from minimlp.train.args import OPT_DEFAULTS, parse_args
from minimlp.train.data import DeviceAugment, fixed_subset, loader_workers, open_datasets
from minimlp.train.loop import Run, train
from minimlp.train.progress import print_warning
from minimlp.train.state import (
    Diverged,
    RunDirError,
    RunResult,
    RunState,
    TrainingError,
    new_run_dir,
    restore_state,
    resume_checkpoint,
    writing,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def worker_processes(requested: int, backend: Any) -> int:
    """How many data-parallel processes: 1 on a GPU, else ``requested`` or one per core (<= 8)."""
    if backend.is_gpu:
        return 1
    return requested or default_workers()


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def input_size(
    args: argparse.Namespace, explicit: set[str], checkpoint: Checkpoint | None, pretrained: WeightsFile | None
) -> int:
    """The model's input size, which the datasets crop to: known before the model is built."""
    if checkpoint is not None:
        return checkpoint.meta["model"]["img_size"]
    if args.img_size:
        return args.img_size
    if pretrained is not None and "model" not in explicit:
        return pretrained.config()["img_size"]
    return model_config(args.model).img_size


def build_model(
    args: argparse.Namespace,
    explicit: set[str],
    checkpoint: Checkpoint | None,
    pretrained: WeightsFile | None,
    train_set: Any,
    log: Callable[[str], None],
) -> Any:
    """The model to train: the checkpoint's (resume), or a preset with the command line's changes,
    then the --pretrained weights (the architecture is the file's unless --model is given)."""
    if checkpoint is not None:
        model = model_from_config(checkpoint.meta["model"], device=args.device, seed=args.seed)
        model.load_state_dict(checkpoint.params)
        return model
    overrides = dict(
        img_size=args.img_size,
        patch_size=args.patch_size,
        embed_dim=args.embed_dim,
        depth=args.depth,
        in_chans=args.in_chans or train_set.image_shape[0],
        num_classes=args.num_classes or len(train_set.classes),
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
    )
    if pretrained is not None and "model" not in explicit:
        config = {**pretrained.config(), **{k: v for k, v in overrides.items() if v is not None}}
        args.model = preset_name(config) or args.model
        model = model_from_config(config, device=args.device, seed=args.seed)
    else:
        model = create_model(args.model, device=args.device, seed=args.seed, **overrides)
    if pretrained is not None:
        # num_classes only when asked for: otherwise a head that does not fit is an error (with a hint)
        log(f"pretrained: {load_pretrained(model, pretrained, num_classes=args.num_classes, seed=args.seed)}")
    return model


def check_model_fits_data(model: Any, train_set: Any, pretrained: WeightsFile | None) -> None:
    if tuple(model.expected_input_shape()) != tuple(train_set.image_shape):
        raise TrainingError(
            f"{model.describe()} expects images {model.expected_input_shape()}, the dataset gives "
            f"{train_set.image_shape}; set --img-size / --in-chans to match"
        )
    K = len(train_set.classes)
    if model.config.num_classes != K:
        hint = f"; --num-classes {K} starts a new head for fine-tuning" if pretrained is not None else ""
        raise TrainingError(f"the model has {model.config.num_classes} outputs but the dataset {K} classes{hint}")


def make_optimizer(args: argparse.Namespace, model: Any) -> tuple[Any, float, float]:
    """(optimizer, peak learning rate, weight decay) from the command line and the defaults."""
    default_lr, default_wd = OPT_DEFAULTS[args.opt]
    lr = default_lr if args.lr is None else args.lr
    lr = scale_lr(lr, args.batch_size) if args.scale_lr else lr
    weight_decay = default_wd if args.weight_decay is None else args.weight_decay
    hyper: dict[str, Any] = dict(lr=lr, weight_decay=weight_decay)
    if args.opt == "sgd":
        hyper.update(momentum=args.momentum, nesterov=args.nesterov)
    return create_optimizer(args.opt, model, **hyper), lr, weight_decay


def start_backend(args: argparse.Namespace, world: mpi.World, log: Callable[[str], None]) -> Any:
    """NumPy or CuPy, as asked and as found, with the GPU-only options checked; logs the choice."""
    backend = get_backend(args.device)  # first: a GPU that is asked for but unusable means NumPy, with one warning
    if args.tf32 and backend.is_gpu:
        from minimlp.kernels import gpu

        gpu.set_tf32(True)  # before the first float32 product
    if args.amp and not backend.is_gpu:
        warnings.warn(
            "--amp needs a GPU (NumPy has no fast float16 matrix product); training in float32",
            RuntimeWarning,
            stacklevel=3,
        )
    if args.amp and backend.is_gpu and world.active:
        raise mpi.DistributedError(
            "--amp trains in one process only: the gradient sum over the ranks has "
            "no loss scaling yet; run without --amp under mpirun",
            usage=True,
        )
    threads = (
        f"; {num_threads()} threads for elementwise kernels, BLAS threads: "
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'the library default')}"
    )
    log(f"backend: {backend.reason}" + ("" if backend.is_gpu else threads))
    return backend


def mixed_precision(model: Any, checkpoint: Checkpoint | None, log: Callable[[str], None]) -> MixedPrecision:
    """--amp: float16 copies of the model for the step, the loss scale carried on from the checkpoint."""
    mixed = MixedPrecision(model)
    if checkpoint is not None and checkpoint.meta.get("amp"):
        mixed.scaler.load_state_dict(checkpoint.meta["amp"])  # the loss scale carries on
    log(
        f"mixed precision: float16 forward and backward, float32 master weights and optimizer, "
        f"loss scale {mixed.scaler.scale:g}"
    )
    return mixed


def make_run_dir(args: argparse.Namespace, checkpoint: Checkpoint | None, world: mpi.World) -> Path:
    """--output, the resumed run's directory, or a new one under runs/; rank 0 chooses and creates it."""
    run_dir = Path(args.output) if args.output else (checkpoint.path.parent if checkpoint else new_run_dir(args.model))
    run_dir = Path(world.from_main(str(run_dir)))  # rank 0's choice; only rank 0 writes there
    if world.is_main:
        with writing(run_dir, run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def describe_augmentation(args: argparse.Namespace, train_set: Any, augment: DeviceAugment) -> str:
    """The training augmentation in words: the dataset's, the device's, repeated augmentation."""
    if args.no_aug:
        return "off (--no-aug)"
    return ", ".join(
        filter(
            None,
            [
                getattr(train_set, "augmentation", "the dataset default"),
                augment.describe(),
                f"repeated augmentation x{args.repeated_aug}" if args.repeated_aug > 1 else "",
            ],
        )
    )


def check_same_job(
    world: mpi.World,
    args: argparse.Namespace,
    model: Any,
    optimizer: Any,
    state: RunState,
    train_set: Any,
    train_idx: np.ndarray,
    eval_idx: np.ndarray,
) -> None:
    """Every rank must run the same job: compare what each built, and name what differs."""
    world.check_same(
        argument=vars(args),
        model=model.config_dict(),
        data={"training images": len(train_idx), "evaluation images": len(eval_idx), "classes": train_set.classes},
        state={
            "step": state.step,
            "parameters": mpi.checksum(model.store.flat_params),
            "optimizer": [mpi.checksum(a) for a in optimizer.state.values()],
        },
    )


def run(
    argv: list[str] | None = None,
    *,
    on_step: Callable[[RunState], bool | None] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], bool | None] | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train as ``python -m minimlp.train argv`` would, and return what happened.

    Hooks (for tests and scripts): ``on_step(state)`` runs after every optimizer step and
    ``on_epoch_end(record)`` after every epoch's checkpoint; either returning True stops
    the run exactly as Ctrl-C does, with a resumable checkpoint.  Errors propagate
    (:class:`TrainingError`, ``FileNotFoundError`` for missing data, ...); :func:`main`
    turns them into messages and exit codes.
    """
    args, explicit = parse_args(argv)
    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise RunDirError(
            f"--output {args.output} is a file; the run directory must be a directory (new or existing)", usage=True
        )
    world = mpi.world()  # under mpirun: this rank's place in the job (else one process)
    if not world.is_main:
        log = _quiet  # only rank 0 logs
    world.select_gpu(args.device)  # one GPU per rank, by local rank
    checkpoint = resume_checkpoint(args, explicit)
    pretrained = open_weights(args.pretrained) if args.pretrained and checkpoint is None else None

    backend = start_backend(args, world, log)
    amp = args.amp and backend.is_gpu
    # Worker processes per rank: under mpirun one unless --procs asks for more, else one per core.
    procs = max(1, args.procs) if world.active else worker_processes(args.procs, backend)
    workers = loader_workers(args.workers, backend.is_gpu)

    # -- data and model ------------------------------------------------------------------
    train_set, eval_set = open_datasets(args, input_size(args, explicit, checkpoint, pretrained), workers)
    parallel: DataParallel | None = None
    try:
        model = build_model(args, explicit, checkpoint, pretrained, train_set, log)
        check_model_fits_data(model, train_set, pretrained)
        c = model.config
        log(
            f"model: {args.model}, {model.describe()}, patch {c.patch_size}, dim {c.embed_dim}, depth {c.depth}: "
            f"{model.num_params():,} parameters"
        )
        train_idx = fixed_subset(len(train_set), args.train_num_samples, salt=1)
        eval_idx = fixed_subset(len(eval_set), args.eval_num_samples, salt=2)
        log(f"data: {train_set.describe()}; training on {len(train_idx)}, evaluating on {len(eval_idx)}")

        # -- optimizer and schedule ------------------------------------------------------
        optimizer, lr, weight_decay = make_optimizer(args, model)
        schedule = LRSchedule(
            args.sched,
            lr,
            args.epochs,
            args.warmup_epochs,
            args.warmup_lr,
            args.min_lr,
            args.decay_epochs,
            args.decay_rate,
        )
        steps_per_epoch = math.ceil(len(train_idx) / args.batch_size)
        augment = DeviceAugment.from_args(args, c.num_classes)
        log(
            f"optimizer: {args.opt} {optimizer.hyperparameters()}; schedule: {args.sched}, "
            f"{args.warmup_epochs:g} warmup epochs, {args.epochs} epochs x {steps_per_epoch} steps of "
            f"{args.batch_size}; label smoothing {args.smoothing:g}, "
            f"augmentation: {describe_augmentation(args, train_set, augment)}"
        )

        state = RunState()
        if checkpoint is not None:
            state = restore_state(checkpoint, model, optimizer, args, steps_per_epoch, log)
        # after restore_state, which may give the model a new dropout generator to share
        mixed = mixed_precision(model, checkpoint, log) if amp else None
        if world.active:
            check_same_job(world, args, model, optimizer, state, train_set, train_idx, eval_idx)
        run_dir = make_run_dir(args, checkpoint, world)

        eval_batch = max(args.batch_size, 256)
        if procs > 1:
            parallel = DataParallel(model, procs, eval_batch, seed=world.rank_seed(args.seed))
            log(
                f"data parallel: every batch is split over {procs} worker processes of one thread each"
                + (f"; {workers} decoding process(es)" if isinstance(train_set, LoaderDataset) else "")
            )
        if world.active:  # the ranks' shards of each batch; gradients summed over the ranks
            mpi.per_rank_batch(args.batch_size, world.size)  # refuses a batch that does not split evenly
            parallel = ddp.DistributedDataParallel(world, model, parallel, seed=args.seed)
            log(f"{parallel.describe()}; a batch of {args.batch_size} is {args.batch_size // world.size} per rank")
        if args.eval_only:
            result = evaluate(parallel or model, eval_set, eval_batch, eval_idx, world=world)
            log(
                f"eval: loss {result.loss:.4f}  top-1 {result.top1:.2f}%"
                + (f"  top-5 {result.top5:.2f}%" if result.top5 is not None else "")
            )
            return RunResult(run_dir, "evaluated", [], model, state, result)
        loop = Run(
            args=args,
            model=model,
            optimizer=optimizer,
            schedule=schedule,
            state=state,
            train_set=train_set,
            eval_set=eval_set,
            train_idx=train_idx,
            eval_idx=eval_idx,
            eval_batch=eval_batch,
            steps_per_epoch=steps_per_epoch,
            lr=lr,
            weight_decay=weight_decay,
            checkpoint=checkpoint,
            run_dir=run_dir,
            augment=augment,
            workers=workers,
            world=world,
            log=log,
            parallel=parallel,
            mixed=mixed,
            feed=BatchFeed() if backend.is_gpu else None,
        )
        with warnings.catch_warnings():  # the epoch summary names undecodable files (once, not every pass)
            warnings.simplefilter("ignore", BadImagesWarning)
            return train(loop, on_step, on_epoch_end)
    finally:
        if parallel is not None:
            parallel.close()
        train_set.close()
        eval_set.close()


def main(argv: list[str] | None = None) -> int:
    """The command line: run, print errors as one clear message, return the exit status."""
    # Before and after the training loop (which stops cleanly, see StopRequest) SIGUSR1 quits
    # as Ctrl-C does, with a message, instead of killing the process silently.
    usr1 = getattr(signal, "SIGUSR1", None)
    handle_usr1 = usr1 is not None and threading.current_thread() is threading.main_thread()
    previous = signal.signal(usr1, _interrupt) if handle_usr1 else None
    # Under mpirun an error is reported by fail(): one that every rank met at the same point
    # from shared numbers (collective) ends all of them normally; one rank's own error aborts the job.
    try:
        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = print_warning
            result = run(argv)
    except mpi.DistributedError as exc:
        return mpi.current_world().fail(f"error: {exc}", EXIT_USAGE if exc.usage else EXIT_FAILED, True)
    except RunDirError as exc:  # only rank 0 writes the run directory
        return mpi.current_world().fail(f"error: {exc}", EXIT_USAGE if exc.usage else EXIT_FAILED)
    except (Diverged, TrainingError) as exc:  # a diverged loss is the whole batch's: every rank sees it
        return mpi.current_world().fail(f"error: {exc}", EXIT_FAILED, collective=isinstance(exc, Diverged))
    except (TooManyBadImagesError, LoaderError, WorkerError) as exc:  # the data or a worker failed during the run
        return mpi.current_world().fail(f"error: {exc}", EXIT_FAILED)
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        return mpi.current_world().fail(f"error: {exc}", EXIT_USAGE)
    except KeyboardInterrupt:
        return mpi.current_world().fail("aborted (the last checkpoint written is intact)", EXIT_INTERRUPTED)
    finally:
        if handle_usr1:
            signal.signal(usr1, previous)
    return EXIT_INTERRUPTED if result.status == "interrupted" else EXIT_OK


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
