"""Train a model: ``python -m minimlp.train``.  Lesson 10 walks through this loop.

With no arguments it trains the Fashion-MNIST recipe below on the CPU and writes a run
directory under ``runs/``.  The same command trains on ImageNet-style folders on a GPU:

    python -m minimlp.train                                   # Fashion-MNIST, a few minutes
    python -m minimlp.train --gpu --data-dir /data/imagenet --model ff_tiny -b 256 --epochs 300
    python -m minimlp.train --resume runs/20250101-120000-ff_fmnist   # continue a run exactly
    mpirun -n 8 python -m minimlp.train --gpu --data-dir /data/imagenet -b 1024   # 8 GPUs: minimlp/ddp.py

One step: uint8 batch -> device -> normalise -> forward -> cross-entropy (label smoothing)
-> backward -> clip the gradient norm -> optimizer step at the scheduled learning rate.
After every epoch the model is evaluated and the run directory gets ``last.npz`` (which
also holds the metrics so far), ``best.npz`` when top-1 improved (a copy of it), a line more
in ``metrics.jsonl`` and ``curves.png``, in that order: a resume rebuilds whatever a kill
left behind from ``last.npz``.

Everything random is a function of ``--seed``: the initial weights, each epoch's order
(``epoch`` mixed into the seed), its augmentation, and the dropout masks (whose generator
state is saved).  A run resumed from an epoch boundary therefore continues bit for bit as
if it had never stopped; one resumed from a Ctrl-C in mid-epoch continues with the same
order of images, with fresh augmentation draws for the rest of that epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import queue
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from minimlp.parallel import ddp, mpi
from minimlp.amp import MixedPrecision
from minimlp.backend import get_backend, num_threads, to_numpy
from minimlp.data import list_datasets, normalize
from minimlp.data.augment import RandAugment
from minimlp.data.loader import BadImagesWarning, LoaderDataset, LoaderError, TooManyBadImagesError, default_workers
from minimlp.evaluate import EvalResult, evaluate
from minimlp.gpu import BatchFeed
from minimlp.io.checkpoint import Checkpoint, decode_meta, load_checkpoint, make_meta, save_checkpoint
from minimlp.io.files import CheckpointError, atomic_write
from minimlp.io.weights import WeightsFile, checked_config, load_pretrained, open_weights, preset_name
from minimlp.loss import cross_entropy_backward, cross_entropy_forward
from minimlp.models.registry import create_model, list_models, model_config, model_from_config, preset_arch
from minimlp.optim import OPTIMIZERS, LRSchedule, clip_grad_norm, create_optimizer, scale_lr
from minimlp.parallel.workers import DataParallel, WorkerError
from minimlp.train.plot import plot_curves
from minimlp.train.progress import Progress, format_duration, print_warning
from minimlp.train.data import (
    RECIPES,
    DeviceAugment,
    apply_recipe,
    epoch_order,
    loader_workers,
    new_bad_files,
    open_datasets,
)

# --------------------------------------------------------------------------------------
# The default run: Fashion-MNIST on a laptop CPU, chosen by measurement (README,
# "Training"): ff_fmnist_small, AdamW at 5e-3 after half an epoch of warmup, cosine to
# 1e-5, label smoothing 0.1, no augmentation (it slows short runs, see data/fmnist.py).
# On short runs the higher rate learned faster (15k-image trials, two epochs: 81.2 % at
# 1e-3, 82.8 % at 5e-3, 82.6 % at 1e-2).
# --------------------------------------------------------------------------------------
DEFAULT_MODEL = "ff_fmnist_small"
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 128
DEFAULT_OPT = "adamw"
# Per optimizer: (learning rate for the batch size given, weight decay).  AdamW's decay
# is DeiT's 0.05; SGD uses the usual 0.1 / 5e-5 of SGD-trained ViTs.
OPT_DEFAULTS = {"adamw": (5e-3, 0.05), "sgd": (0.1, 5e-5)}
DEFAULT_WARMUP_EPOCHS = 0.5
DEFAULT_SMOOTHING = 0.1

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Arguments that describe where and how fast a run executes, not what it computes:
# a resumed run takes them from its own command line, never from the checkpoint.
NOT_RESUMED = {"resume", "output", "eval_only", "gpu", "device", "tf32", "amp", "workers", "procs", "log_interval",
               "download"}


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


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------
def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: parse ``kind`` and check the range, with a message naming it."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"{value} must be {'>' if low_open else '>='} {low}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"{value} must be {'<' if high_open else '<='} {high}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def randaugment_config(text: str) -> str:
    """An argparse type: a RandAugment config string timm understands (rand-m9-mstd0.5-inc1)."""
    try:
        RandAugment.from_config(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


positive_int = _number(int, 1)
non_negative_int = _number(int, 0)
non_negative_float = _number(float, 0.0)
positive_float = _number(float, 0.0, low_open=True)
fraction = _number(float, 0.0, 1.0, high_open=True)  # [0, 1)
probability = _number(float, 0.0, 1.0)  # [0, 1]


def device_name(text: str) -> str:
    if not re.fullmatch(r"cpu|numpy|gpu|cuda|cupy|cuda:\d+", text.lower()):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use cpu, gpu or cuda:N")
    return text.lower()


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Show '(default: X)' only where there is a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not hidden and "default" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minimlp.train", formatter_class=_HelpFormatter,
                                description="Train a feed-forward-only vision transformer (NumPy or CuPy). "
                                            "With no arguments: the Fashion-MNIST recipe on the CPU.",
                                epilog="Exit status: 0 done, 1 training failed (e.g. the loss diverged), "
                                       "2 bad arguments or data, 130 interrupted (resumable).")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"preset name; one of {', '.join(list_models())}")
    g.add_argument("--img-size", type=positive_int, help="input resolution (default: the preset's)")
    g.add_argument("--patch-size", type=positive_int, help="patch size in pixels (default: the preset's)")
    g.add_argument("--in-chans", type=positive_int, help="image channels (default: the dataset's)")
    g.add_argument("--embed-dim", type=positive_int, help="token width D (default: the preset's)")
    g.add_argument("--depth", type=positive_int, help="number of blocks (default: the preset's)")
    g.add_argument("--num-classes", type=positive_int, metavar="K",
                   help="classifier outputs, which is also how many classes of ImageNet-style data to use: the "
                        "first K sorted (K random ones with --class-seed); with --pretrained, a new head of K "
                        "outputs for fine-tuning (default: every class of the data)")
    g.add_argument("--drop", type=fraction, default=0.0, help="dropout rate inside the feed-forward layers")
    g.add_argument("--drop-path", type=fraction, default=0.0,
                   help="stochastic depth: drop rate of the last block, rising linearly from 0")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help=f"dataset name ({', '.join(list_datasets())}) or a directory; "
                        "default: recognised from --data-dir, else fmnist")
    g.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the data is; Fashion-MNIST is also looked for in $MINIMLP_DATA, "
                        "~/.cache/minimlp/fashion-mnist and /usr/share/datasets/fashion-mnist")
    g.add_argument("--download", action="store_true",
                   help="download Fashion-MNIST (MD5-checked) into --data-dir or the cache if it is missing")
    g.add_argument("--train-num-samples", type=positive_int, metavar="N",
                   help="train on a fixed random subset of N images (quick runs)")
    g.add_argument("--eval-num-samples", type=positive_int, metavar="N",
                   help="evaluate on a fixed random subset of N images (quick runs)")
    g.add_argument("--no-aug", action="store_true",
                   help="no training augmentation at all (evaluation crops, no erasing, mixup or repeats)")
    g.add_argument("-j", "--workers", type=non_negative_int, default=None, metavar="N",
                   help="processes that decode image files (0: in the training process); also how many batches "
                        "a background thread prepares ahead. Default: one per core (at most 8) on a GPU; 1 on "
                        "the CPU, where --procs already uses every core and decoding is cheap next to a step")
    g.add_argument("--procs", type=non_negative_int, default=0, metavar="N",
                   help="CPU only: split every batch over N worker processes of one thread each (data "
                        "parallel; about N times faster on N cores); 0 = one per core, at most 8; 1 = no workers")

    g = p.add_argument_group("ImageNet-style data (folders, ImageFolder trees, a prepared cache)")
    g.add_argument("--subset", metavar="NAME",
                   help="train on some classes: imagenette, imagewoof, imagenet100, a comma-separated list of "
                        "wnids, or a file with one wnid per line (labels become 0..K-1 in sorted wnid order)")
    g.add_argument("--class-seed", type=non_negative_int, metavar="SEED",
                   help="with --num-classes: K classes drawn at random with this seed instead of the first K")
    g.add_argument("--per-class", type=positive_int, metavar="N", help="at most N training images per class")
    g.add_argument("--crop-pct", type=_number(float, 0.0, 1.0, low_open=True), metavar="PCT",
                   help="evaluation: resize the short side to img_size / PCT, then center-crop img_size "
                        "(default: 0.875, as DeiT; 1 for square caches)")
    g.add_argument("--train-crop", choices=("rrc", "crop"),
                   help="prepared cache only: RandomResizedCrop + flip (rrc, the default), or a plain random "
                        "window + flip (crop: no resampling, fastest)")

    g = p.add_argument_group("augmentation (each off by default; --recipe deit turns them all on)")
    g.add_argument("--aa", type=randaugment_config, metavar="CONFIG",
                   help="RandAugment where the images are decoded, e.g. rand-m9-mstd0.5-inc1 (DeiT's)")
    g.add_argument("--reprob", type=probability, default=0.0, metavar="P",
                   help="random erasing: probability per image (on the device, after normalisation)")
    g.add_argument("--mixup", type=non_negative_float, default=0.0, metavar="ALPHA",
                   help="mixup with Beta(ALPHA, ALPHA) weights; the loss takes soft targets")
    g.add_argument("--cutmix", type=non_negative_float, default=0.0, metavar="ALPHA",
                   help="cutmix with Beta(ALPHA, ALPHA) box areas; with --mixup too, one of the two per batch")
    g.add_argument("--mixup-prob", type=probability, default=1.0, metavar="P",
                   help="probability of mixing a batch at all")
    g.add_argument("--mixup-switch-prob", type=probability, default=0.5, metavar="P",
                   help="with both --mixup and --cutmix: probability of cutmix for a batch")
    g.add_argument("--repeated-aug", type=positive_int, default=1, metavar="N",
                   help="repeated augmentation: each image N times per epoch, in different crops; 1 = off")
    g.add_argument("--recipe", choices=RECIPES,
                   help="deit: every option not given is DeiT's (AdamW, lr 5e-4 x batch / 512, 300 epochs, 5 warmup, "
                        "cosine, smoothing 0.1, drop path 0.1, dropout 0.1 for the FF models, weight decay 0.05, "
                        "mixup 0.8, cutmix 1.0, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, "
                        "repeated augmentation 3)")

    g = p.add_argument_group("optimization")
    g.add_argument("-b", "--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="images per step")
    g.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS, help="passes over the training set")
    g.add_argument("--opt", default=DEFAULT_OPT, choices=sorted(OPTIMIZERS), help="optimizer")
    g.add_argument("--lr", type=non_negative_float,
                   help="peak learning rate (default: " + ", ".join(f"{k} {v[0]:g}" for k, v in OPT_DEFAULTS.items())
                        + ")")
    g.add_argument("--scale-lr", action="store_true",
                   help="DeiT's rule: the effective learning rate is lr * batch_size / 512")
    g.add_argument("--momentum", type=fraction, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    g.add_argument("--weight-decay", type=non_negative_float,
                   help="weight decay, not on 1-D parameters or the class token (default: "
                        + ", ".join(f"{k} {v[1]:g}" for k, v in OPT_DEFAULTS.items()) + ")")
    g.add_argument("--clip-grad", type=non_negative_float, default=0.0, metavar="NORM",
                   help="clip the global gradient norm to NORM; 0 turns clipping off")
    g.add_argument("--smoothing", type=fraction, default=DEFAULT_SMOOTHING, help="label smoothing")

    g = p.add_argument_group("learning-rate schedule")
    g.add_argument("--sched", default="cosine", choices=LRSchedule.KINDS,
                   help="after warmup: cosine to --min-lr, step decay, or constant; evaluated every step")
    g.add_argument("--warmup-epochs", type=non_negative_float, default=DEFAULT_WARMUP_EPOCHS,
                   help="linear warmup from --warmup-lr (fractions allowed)")
    g.add_argument("--warmup-lr", type=non_negative_float, default=1e-6, help="learning rate at step 0")
    g.add_argument("--min-lr", type=non_negative_float, default=1e-5, help="the cosine's final learning rate")
    g.add_argument("--decay-epochs", type=positive_float, default=30.0, help="step schedule: epochs per decay")
    g.add_argument("--decay-rate", type=positive_float, default=0.1, help="step schedule: factor per decay")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=non_negative_int, default=0, help="seeds weights, data order, augmentation, dropout")
    g.add_argument("--gpu", action="store_true", help="train on the GPU with CuPy (same as --device gpu)")
    g.add_argument("--device", type=device_name, default="cpu", help="cpu, gpu or cuda:N")
    g.add_argument("--tf32", action="store_true",
                   help="GPU: let float32 matrix products use TF32 tensor cores (Ampere and newer; about 1e-3 "
                        "relative error per product, as PyTorch's allow_tf32)")
    g.add_argument("--amp", action="store_true",
                   help="GPU: mixed precision, as PyTorch's autocast + GradScaler: float16 forward and backward, "
                        "float32 master weights and optimizer, dynamic loss scaling (a step whose gradient "
                        "overflows is skipped; the log and metrics.jsonl count them). Without a GPU it is ignored "
                        "with a warning (NumPy has no fast float16 matrix product); not under mpirun. As --tf32, "
                        "a resumed run uses it only when given again")
    g.add_argument("--output", default=None, metavar="DIR",
                   help="run directory (default: runs/<date>-<time>-<model>, or the resumed run's directory)")
    g.add_argument("--resume", default=None, metavar="DIR_OR_FILE",
                   help="continue a run from its last.npz (or the given checkpoint): weights, optimizer, "
                        "epoch, step, schedule and random state; its arguments apply unless given again")
    g.add_argument("--pretrained", default=None, metavar="FILE",
                   help="start from these weights (.pth, .npz or .safetensors): the architecture is the file's "
                        "unless --model is given; --num-classes K starts a new head for fine-tuning")
    g.add_argument("--eval-only", action="store_true",
                   help="evaluate (the --resume checkpoint, or the --pretrained weights) and exit")
    g.add_argument("--log-interval", type=positive_int, default=50, metavar="STEPS",
                   help="progress line every STEPS steps when the output is not a terminal")
    return p


def explicit_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations the command line set explicitly (a resume keeps the rest)."""
    quiet = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:  # argparse has no public list; this mirrors it with no defaults
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            kwargs: dict[str, Any] = {"dest": action.dest, "default": argparse.SUPPRESS}
            if isinstance(action, argparse._StoreTrueAction):
                kwargs["action"] = "store_true"
            else:
                kwargs["nargs"] = action.nargs
            quiet.add_argument(*action.option_strings, **kwargs)
    return set(vars(quiet.parse_known_args(argv)[0]))


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, set[str]]:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit = explicit_arguments(parser, argv)
    if args.gpu:
        args.device = "gpu"
    if args.eval_only and not (args.resume or args.pretrained):
        parser.error("--eval-only needs a checkpoint to evaluate: --resume DIR_OR_FILE or --pretrained FILE")
    if args.resume and args.pretrained:
        parser.error("--resume continues a run with its own weights; --pretrained starts a new one: give one of them")
    if args.class_seed is not None and args.num_classes is None:
        parser.error("--class-seed draws --num-classes K classes at random; give --num-classes too")
    apply_recipe(args, explicit, ff_model=preset_arch(args.model) == "ffvit" if args.model in list_models() else True)
    peak = args.lr if args.lr is not None else OPT_DEFAULTS[args.opt][0]
    if args.warmup_lr > peak > 0:
        parser.error(f"--warmup-lr {args.warmup_lr:g} is above the peak --lr")
    if args.min_lr > peak > 0 and args.sched != "constant":
        parser.error(f"--min-lr {args.min_lr:g} is above the peak --lr {peak:g}: the schedule would rise")
    return args, explicit


# --------------------------------------------------------------------------------------
# Run state, random state, run directory
# --------------------------------------------------------------------------------------
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


def seed_for(*words: int) -> int:
    """A 63-bit seed mixed from several integers (the run seed, the epoch, ...)."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def rng_state(rng: Any) -> Any:
    """The generator's state as JSON-able data, or None where the backend cannot export it."""
    try:
        state = rng.bit_generator.state
        json.dumps(state)
        return state
    except (AttributeError, NotImplementedError, TypeError, ValueError):  # CuPy's generators keep theirs
        return None


def fixed_subset(n: int, count: int | None, salt: int) -> np.ndarray:
    """The same ``count`` of ``n`` indices for every seed (so seeds compare on the same data)."""
    if count is None or count >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(salt).permutation(n)[:count])


def new_run_dir(model_name: str) -> Path:
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{model_name}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def read_metrics(path: Path, before_epoch: int | None = None) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (up to ``before_epoch``).

    A last line without its newline is one a kill cut off (files older than atomic
    rewrites were appended to); it is dropped, since the epoch is trained again.
    Any other bad line is an error naming the file and the line.
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
            raise TrainingError(f"{path}, line {number}: not a JSON record ({exc.msg}); delete the line or the "
                                "file to resume") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise TrainingError(f"{path}, line {number}: not an epoch's record (no integer 'epoch'); delete the "
                                "line or the file to resume")
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
        hint = (f"; continue with --resume {run_dir} once it can be written" if (run_dir / "last.npz").is_file()
                else "")
        raise RunDirError(f"cannot write {path}: {reason}. Nothing saved before is lost (each file is replaced "
                          f"only once its new version is complete){hint}") from None


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
            print(f"\n{what}: stopping after this step and saving a resumable checkpoint "
                  "(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunResult:
    """What :func:`run` returns: where it wrote, how it ended, and the metrics per epoch."""

    run_dir: Path
    status: str  # "done", "interrupted" or "evaluated"
    metrics: list[dict[str, Any]]
    model: Any
    state: RunState
    eval_result: EvalResult | None = None


def worker_processes(requested: int, backend: Any) -> int:
    """How many data-parallel processes: 1 on a GPU, else ``requested`` or one per core (<= 8)."""
    if backend.is_gpu:
        return 1
    return requested or default_workers()


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


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
                raise CheckpointError(f"{checkpoint.path}: the run's argument {key} = {value!r} is invalid "
                                      f"({problem}); give --{key.replace('_', '-')} on the command line")
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
            isinstance(m, dict) and isinstance(m.get("epoch"), int) for m in meta.get("metrics", [])):
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
        if (isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value)
                or value < 0):
            refuse(f"its 'run' record has {name} = {value!r}, not a non-negative {fields[name]}")
    if not all(np.isfinite(a).all() for a in checkpoint.params.values()):
        raise CheckpointError(f"{path}: its weights are not finite (saved by a run that diverged); resume from an "
                              "earlier checkpoint, such as best.npz")


def argument_problem(action: argparse.Action | None, value: Any) -> str | None:
    """Why a stored argument value would not come out of the command line, or None if it would."""
    if action is None:
        return None
    if isinstance(action, argparse._StoreTrueAction):
        return None if isinstance(value, bool) else "not true or false"
    if value is None:
        return None if action.default is None else "missing"
    if action.type is None:
        problem = None if isinstance(value, str) else "not a string"
    elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
        problem = f"not {getattr(action.type, '__name__', 'a value')}"
    else:
        try:
            parsed = action.type(str(value))
            same_kind = type(parsed) is type(value) or (type(parsed) is float and type(value) is int)
            problem = None if same_kind else f"a {type(value).__name__}, not a {type(parsed).__name__}"
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            problem = str(exc)
    if problem is None and action.choices is not None and value not in action.choices:
        problem = f"not one of {', '.join(map(str, action.choices))}"
    return problem


def input_size(args: argparse.Namespace, explicit: set[str], checkpoint: Checkpoint | None,
               pretrained: WeightsFile | None) -> int:
    """The model's input size, which the datasets crop to: known before the model is built."""
    if checkpoint is not None:
        return checkpoint.meta["model"]["img_size"]
    if args.img_size:
        return args.img_size
    if pretrained is not None and "model" not in explicit:
        return pretrained.config()["img_size"]
    return model_config(args.model).img_size


def build_model(args: argparse.Namespace, explicit: set[str], checkpoint: Checkpoint | None,
                pretrained: WeightsFile | None, train_set: Any, log: Callable[[str], None]) -> Any:
    """The model to train: the checkpoint's (resume), or a preset with the command line's changes,
    then the --pretrained weights (the architecture is the file's unless --model is given)."""
    if checkpoint is not None:
        model = model_from_config(checkpoint.meta["model"], device=args.device, seed=args.seed)
        model.load_state_dict(checkpoint.params)
        return model
    overrides = dict(img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.embed_dim,
                     depth=args.depth, in_chans=args.in_chans or train_set.image_shape[0],
                     num_classes=args.num_classes or len(train_set.classes), drop_rate=args.drop,
                     drop_path_rate=args.drop_path)
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
        raise TrainingError(f"{model.describe()} expects images {model.expected_input_shape()}, the dataset gives "
                            f"{train_set.image_shape}; set --img-size / --in-chans to match")
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


def restore_state(checkpoint: Checkpoint, model: Any, optimizer: Any, args: argparse.Namespace,
                  steps_per_epoch: int, log: Callable[[str], None]) -> RunState:
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
    log(f"resumed from {checkpoint.path}: epoch {state.epoch}, step {state.step}"
        + (f", batch {state.batch_in_epoch}/{steps_per_epoch}" if state.batch_in_epoch else ""))
    return state


def run(argv: list[str] | None = None, *, on_step: Callable[[RunState], bool | None] | None = None,
        on_epoch_end: Callable[[dict[str, Any]], bool | None] | None = None,
        log: Callable[[str], None] = print) -> RunResult:
    """Train as ``python -m minimlp.train argv`` would, and return what happened.

    Hooks (for tests and scripts): ``on_step(state)`` runs after every optimizer step and
    ``on_epoch_end(record)`` after every epoch's checkpoint; either returning True stops
    the run exactly as Ctrl-C does, with a resumable checkpoint.  Errors propagate
    (:class:`TrainingError`, ``FileNotFoundError`` for missing data, ...); :func:`main`
    turns them into messages and exit codes.
    """
    args, explicit = parse_args(argv)
    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise RunDirError(f"--output {args.output} is a file; the run directory must be a directory (new or "
                          "existing)", usage=True)
    world = mpi.world()  # under mpirun: this rank's place in the job (else one process)
    if not world.is_main:
        log = _quiet  # only rank 0 logs
    world.select_gpu(args.device)  # one GPU per rank, by local rank
    checkpoint = resume_checkpoint(args, explicit)
    pretrained = open_weights(args.pretrained) if args.pretrained and checkpoint is None else None

    backend = get_backend(args.device)  # first: a GPU that is asked for but unusable means NumPy, with one warning
    if args.tf32 and backend.is_gpu:
        from minimlp import gpu

        gpu.set_tf32(True)  # before the first float32 product
    if args.amp and not backend.is_gpu:
        warnings.warn("--amp needs a GPU (NumPy has no fast float16 matrix product); training in float32",
                      RuntimeWarning, stacklevel=2)
    amp = args.amp and backend.is_gpu
    if amp and world.active:
        raise mpi.DistributedError("--amp trains in one process only: the gradient sum over the ranks has "
                                           "no loss scaling yet; run without --amp under mpirun", usage=True)
    threads = (f"; {num_threads()} threads for elementwise kernels, BLAS threads: "
               f"{os.environ.get('OPENBLAS_NUM_THREADS', 'the library default')}")
    log(f"backend: {backend.reason}" + ("" if backend.is_gpu else threads))
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
        log(f"model: {args.model}, {model.describe()}, patch {c.patch_size}, dim {c.embed_dim}, depth {c.depth}: "
            f"{model.num_params():,} parameters")
        train_idx = fixed_subset(len(train_set), args.train_num_samples, salt=1)
        eval_idx = fixed_subset(len(eval_set), args.eval_num_samples, salt=2)
        log(f"data: {train_set.describe()}; training on {len(train_idx)}, evaluating on {len(eval_idx)}")

        # -- optimizer and schedule ------------------------------------------------------
        optimizer, lr, weight_decay = make_optimizer(args, model)
        schedule = LRSchedule(args.sched, lr, args.epochs, args.warmup_epochs, args.warmup_lr, args.min_lr,
                              args.decay_epochs, args.decay_rate)
        steps_per_epoch = math.ceil(len(train_idx) / args.batch_size)
        augment = DeviceAugment.from_args(args, c.num_classes)
        augmentation = "off (--no-aug)" if args.no_aug else ", ".join(
            filter(None, [getattr(train_set, "augmentation", "the dataset default"), augment.describe(),
                          f"repeated augmentation x{args.repeated_aug}" if args.repeated_aug > 1 else ""]))
        log(f"optimizer: {args.opt} {optimizer.hyperparameters()}; schedule: {args.sched}, "
            f"{args.warmup_epochs:g} warmup epochs, {args.epochs} epochs x {steps_per_epoch} steps of "
            f"{args.batch_size}; label smoothing {args.smoothing:g}, augmentation: {augmentation}")

        state = RunState()
        if checkpoint is not None:
            state = restore_state(checkpoint, model, optimizer, args, steps_per_epoch, log)
        mixed = None
        if amp:  # after restore_state, which may give the model a new dropout generator to share
            mixed = MixedPrecision(model)
            if checkpoint is not None and checkpoint.meta.get("amp"):
                mixed.scaler.load_state_dict(checkpoint.meta["amp"])  # the loss scale carries on
            log(f"mixed precision: float16 forward and backward, float32 master weights and optimizer, "
                f"loss scale {mixed.scaler.scale:g}")
        if world.active:  # every rank must run the same job: compare, and name what differs
            world.check_same(argument=vars(args), model=model.config_dict(),
                             data={"training images": len(train_idx), "evaluation images": len(eval_idx),
                                   "classes": train_set.classes},
                             state={"step": state.step, "parameters": mpi.checksum(model.store.flat_params),
                                    "optimizer": [mpi.checksum(a) for a in optimizer.state.values()]})
        run_dir = Path(args.output) if args.output else (checkpoint.path.parent if checkpoint
                                                          else new_run_dir(args.model))
        run_dir = Path(world.from_main(str(run_dir)))  # rank 0's choice; only rank 0 writes there
        if world.is_main:
            with writing(run_dir, run_dir):
                run_dir.mkdir(parents=True, exist_ok=True)

        eval_batch = max(args.batch_size, 256)
        if procs > 1:
            parallel = DataParallel(model, procs, eval_batch, seed=world.rank_seed(args.seed))
            log(f"data parallel: every batch is split over {procs} worker processes of one thread each"
                + (f"; {workers} decoding process(es)" if isinstance(train_set, LoaderDataset) else ""))
        if world.active:  # the ranks' shards of each batch; gradients summed over the ranks
            mpi.per_rank_batch(args.batch_size, world.size)  # refuses a batch that does not split evenly
            parallel = ddp.DistributedDataParallel(world, model, parallel, seed=args.seed)
            log(f"{parallel.describe()}; a batch of {args.batch_size} is {args.batch_size // world.size} per rank")
        if args.eval_only:
            result = evaluate(parallel or model, eval_set, eval_batch, eval_idx, world=world)
            log(f"eval: loss {result.loss:.4f}  top-1 {result.top1:.2f}%"
                + (f"  top-5 {result.top5:.2f}%" if result.top5 is not None else ""))
            return RunResult(run_dir, "evaluated", [], model, state, result)
        setup = Setup(args, model, parallel, optimizer, schedule, state, train_set, eval_set, train_idx, eval_idx,
                      eval_batch, steps_per_epoch, lr, weight_decay, checkpoint, run_dir, train_set.classes,
                      augment, workers, mixed=mixed, feed=BatchFeed() if backend.is_gpu else None)
        with warnings.catch_warnings():  # the epoch summary names undecodable files (once, not every pass)
            warnings.simplefilter("ignore", BadImagesWarning)
            return _train(setup, on_step, on_epoch_end, log)
    finally:
        if parallel is not None:
            parallel.close()
        train_set.close()
        eval_set.close()


@dataclasses.dataclass
class Setup:
    """Everything :func:`run` prepares for the training loop."""

    args: argparse.Namespace
    model: Any
    parallel: DataParallel | None
    optimizer: Any
    schedule: LRSchedule
    state: RunState
    train_set: Any
    eval_set: Any
    train_idx: np.ndarray
    eval_idx: np.ndarray
    eval_batch: int
    steps_per_epoch: int
    lr: float
    weight_decay: float
    checkpoint: Checkpoint | None
    run_dir: Path
    classes: list[str]
    augment: DeviceAugment
    workers: int  # decoding processes, and how many batches a background thread prepares ahead
    mixed: MixedPrecision | None = None  # --amp on a GPU
    feed: BatchFeed | None = None  # on a GPU: batches uploaded one step ahead


def _train(setup: Setup, on_step: Callable[[RunState], bool | None] | None,
           on_epoch_end: Callable[[dict[str, Any]], bool | None] | None, log: Callable[[str], None]) -> RunResult:
    """The epochs: train, evaluate, record, checkpoint (the second half of :func:`run`)."""
    args, model, parallel, optimizer = setup.args, setup.model, setup.parallel, setup.optimizer
    schedule, state, train_set, eval_set = setup.schedule, setup.state, setup.train_set, setup.eval_set
    train_idx, eval_idx, eval_batch = setup.train_idx, setup.eval_idx, setup.eval_batch
    steps_per_epoch, lr, weight_decay = setup.steps_per_epoch, setup.lr, setup.weight_decay
    checkpoint, run_dir, classes = setup.checkpoint, setup.run_dir, setup.classes
    world = mpi.world()
    metrics_path = run_dir / "metrics.jsonl"
    # The checkpoint is the run's record: metrics.jsonl and best.npz are brought in line with
    # it, whatever instant a kill left them at (checkpoints older than the "metrics" record
    # fall back on the file).
    if checkpoint is not None and "metrics" in checkpoint.meta:
        metrics = [m for m in checkpoint.meta["metrics"] if m["epoch"] <= state.epoch]
    else:
        metrics = read_metrics(metrics_path, before_epoch=state.epoch)
    if world.is_main:
        path = run_dir / "args.json"
        with writing(path, run_dir):
            write_json(path, {**vars(args), "effective_lr": lr, "effective_weight_decay": weight_decay})
        if checkpoint is not None:  # drop lines of epochs the checkpoint had not finished, add those it had
            with writing(metrics_path, run_dir):
                write_metrics(metrics_path, metrics)
            repair_best(checkpoint, state, run_dir, log)
    log(f"run directory: {run_dir}")

    data_info = data_transform(args, train_set, eval_set)
    class_map = train_set.class_info() if hasattr(train_set, "class_info") else None

    def check_finite(epoch: int) -> None:
        """No checkpoint of non-finite weights: the step that made them is the failure."""
        if not weights_finite(model):
            raise Diverged(nonfinite_message(state, epoch, steps_per_epoch, run_dir))

    def save(path: Path) -> None:
        if not world.is_main:
            return
        meta = make_meta(model.config_dict(), epoch=state.epoch, step=state.step, classes=classes,
                         rng={"model": rng_state(model.rng), "data": {"seed": args.seed, "epoch": state.epoch,
                                                                      "batch_in_epoch": state.batch_in_epoch}},
                         args=vars(args),
                         optimizer={"name": optimizer.name, "hyperparameters": optimizer.hyperparameters(),
                                    "step": optimizer.steps},
                         data=data_info, class_map=class_map, run=dataclasses.asdict(state), metrics=metrics,
                         **({"amp": setup.mixed.scaler.state_dict()} if setup.mixed is not None else {}))
        with writing(path, run_dir):
            save_checkpoint(path, model.params, meta, optimizer.state_dict())

    def interrupted() -> RunResult:
        check_finite(state.epoch)
        save(run_dir / "last.npz")
        log(f"stopped at epoch {state.epoch + 1}, step {state.step}; saved {run_dir / 'last.npz'}. "
            f"Continue with: python -m minimlp.train --resume {run_dir}")
        return RunResult(run_dir, "interrupted", metrics, model, state)

    session_start = time.perf_counter()
    elapsed_before = state.elapsed_s
    bad_seen: set[str] = set()
    # How often the step loop reads its sums back (see StepTotals): every step on NumPy, where
    # reading is free and a diverged loss stops the run at once; every log interval on a GPU.
    sync_every = 1 if not model.backend.is_gpu else args.log_interval
    with StopRequest(announce=world.is_main) as stop:
        for epoch in range(state.epoch, args.epochs):
            # -- one epoch of training ---------------------------------------------------
            order = epoch_order(train_idx, seed_for(args.seed, epoch, 0), args.repeated_aug)
            first = state.batch_in_epoch
            batches = world.batches(train_set, order[first * args.batch_size:], args.batch_size, train=not args.no_aug,
                                    seed=seed_for(args.seed, epoch, first + 1))  # this rank's shard of each batch
            bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{args.epochs}", args.log_interval, done=first,
                           stream=world.progress_stream())
            lr_now = schedule(state.step / steps_per_epoch)
            totals = StepTotals(model.xp)
            stream = prefetch(batches, setup.workers)
            fed = setup.feed(stream) if setup.feed is not None else stream
            for images, labels in fed:
                if len(labels) == 0 and not world.active:  # every file failed to decode (reported after the epoch)
                    state.batch_in_epoch += 1
                    continue
                lr_now = schedule(state.step / steps_per_epoch)
                # The device augmentations' boxes and mixing weights: a function of (seed, epoch, batch).
                rng = np.random.default_rng(seed_for(args.seed, epoch, state.batch_in_epoch, 2))
                loss, logits, ok = train_step(setup, images, labels, rng)
                norm = None
                if ok:
                    if args.clip_grad:
                        norm = clip_grad_norm(model.store.flat_grads, args.clip_grad)
                    optimizer.step(lr_now)
                totals.add(loss, logits, labels, norm)
                state.step += 1
                state.batch_in_epoch += 1
                if not ok:  # --amp: the float16 gradient overflowed; the loss scale was halved
                    state.skipped += 1
                    if setup.mixed.scaler.scale < MIN_LOSS_SCALE:
                        raise Diverged(divergence_message(setup.mixed.scaler.scale, state, epoch, steps_per_epoch,
                                                          lr_now, run_dir, what="loss scale"))
                images_done = 0
                if totals.steps == sync_every or state.batch_in_epoch == steps_per_epoch:
                    images_done = read_totals(totals, state, epoch, steps_per_epoch, lr_now, run_dir)
                bar.update(images_done, lr=lr_now, **({"loss": state.loss_sum / state.seen} if images_done else {}))
                if on_step is not None and on_step(state):
                    stop.requested = True
                if world.any(stop.requested):  # every rank stops after the same step
                    stop.requested = True
                    break
            fed.close()  # now, not when collected: a second Ctrl-C while they stop then quits cleanly
            stream.close()
            bar.images += read_totals(totals, state, epoch, steps_per_epoch, lr_now, run_dir)  # an early stop
            bar.close()
            train_time = bar.elapsed
            check_finite(epoch)
            state.elapsed_s = elapsed_before + time.perf_counter() - session_start
            if world.any(stop.requested):
                return interrupted()

            # -- evaluation, metrics, checkpoints --------------------------------------------
            eval_start = time.perf_counter()
            result = evaluate(parallel or model, eval_set, eval_batch, eval_idx, should_stop=stop, world=world)
            if result is None:
                return interrupted()
            eval_time = time.perf_counter() - eval_start
            bad = {**new_bad_files(train_set, bad_seen), **new_bad_files(eval_set, bad_seen)}
            if bad:
                shown = "\n  ".join(f"{path} ({reason})" for path, reason in list(bad.items())[:20])
                log(f"skipped {len(bad)} file(s) that could not be decoded ({len(bad_seen)} in this run so far; "
                    f"each is left out of its batch):\n  {shown}" + ("\n  ..." if len(bad) > 20 else ""))
            record = {"epoch": epoch + 1, "step": state.step,
                      "train_loss": state.loss_sum / max(1, state.seen),
                      "train_top1": 100.0 * state.correct / max(1, state.seen),
                      "eval_loss": result.loss, "eval_top1": result.top1, "eval_top5": result.top5,
                      "lr": lr_now, "img_per_s": bar.images_per_second, "epoch_time_s": train_time,
                      "eval_time_s": eval_time, "skipped_files": len(bad_seen),
                      "elapsed_s": elapsed_before + time.perf_counter() - session_start}
            if setup.mixed is not None:
                record.update(amp_skipped_steps=state.skipped, loss_scale=setup.mixed.scaler.scale)
            record = json_record(record)  # a NaN evaluation loss becomes null
            # An evaluation whose loss is not finite (overflowing logits) is never the best.
            improved = math.isfinite(result.loss) and (state.best_top1 is None or result.top1 > state.best_top1)
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            state.loss_sum, state.correct, state.seen, state.skipped = 0.0, 0, 0, 0
            if improved:
                state.best_top1, state.best_epoch = result.top1, epoch + 1
            state.elapsed_s = record["elapsed_s"]
            metrics.append(record)
            # The order keeps the directory resumable at every instant: last.npz (which holds the
            # metrics and names the best epoch) first, then what can be rebuilt from it.
            save(run_dir / "last.npz")
            if world.is_main:
                if improved:
                    with writing(run_dir / "best.npz", run_dir):
                        copy_file(run_dir / "last.npz", run_dir / "best.npz")
                with writing(metrics_path, run_dir):
                    write_metrics(metrics_path, metrics)
                with writing(run_dir / "curves.png", run_dir):
                    plot_curves(metrics, run_dir / "curves.png")
            top5 = f"  top-5 {result.top5:.2f}%" if result.top5 is not None else ""
            log(f"epoch {epoch + 1}/{args.epochs}: train loss {record['train_loss']:.4f}  "
                f"eval loss {result.loss:.4f}  top-1 {result.top1:.2f}%{top5}  ({record['img_per_s']:.0f} img/s, "
                f"epoch {format_duration(train_time)}, eval {format_duration(eval_time)}, "
                f"total {format_duration(record['elapsed_s'])})"
                + (f"  [float16: {record['amp_skipped_steps']} step(s) skipped for overflow, loss scale "
                   f"{record['loss_scale']:g}]" if setup.mixed is not None else "")
                + ("  * best" if improved else ""))
            if on_epoch_end is not None and on_epoch_end(record):
                return interrupted()
    best = (f"best top-1 {state.best_top1:.2f}% at epoch {state.best_epoch}" if state.best_epoch is not None
            else "no epoch evaluated to a finite loss, so there is no best.npz")
    log(f"done: {best}; {format_duration(state.elapsed_s)} in all; checkpoints and curves in {run_dir}")
    return RunResult(run_dir, "done", metrics, model, state)


def train_step(setup: Setup, images: Any, labels: np.ndarray, rng: np.random.Generator) -> tuple[Any, Any, bool]:
    """Forward and backward of one batch, the gradient left in ``model.grads``: (loss, logits (B, K), ok).

    uint8 images (host, or already on the device) -> normalise -> random erasing -> mixup/cutmix
    (timm's order) -> forward -> cross-entropy (against soft targets with mixup/cutmix) -> backward.
    The loss and logits stay where they were computed.  ``ok`` is False only with --amp, for a
    step whose float16 gradient overflowed: the optimizer must skip it.
    """
    model, xp, args = setup.model, setup.model.xp, setup.args
    x = normalize(images, setup.train_set.mean, setup.train_set.std, xp, model.dtype)  # (B, C, H, W) on the device
    x, targets, smoothing = setup.augment(x, labels, rng, model.rng, args.smoothing)
    if setup.parallel is not None:  # the workers leave the batch-mean gradient in model.grads
        loss, logits = setup.parallel.train_step(x, targets, smoothing, setup.state.step)
        return loss, logits, True
    if setup.mixed is not None:  # float16 forward and backward; float32 gradients into model.grads
        model.zero_grad()
        return setup.mixed.train_step(x, targets, smoothing)
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


def read_totals(totals: StepTotals, state: RunState, epoch: int, steps_per_epoch: int, lr: float,
                run_dir: Path) -> int:
    """Add the steps since the last read into ``state`` (summed over the ranks under mpirun) and
    return how many images they trained on; a loss or gradient norm that is not finite ends the run."""
    if totals.steps == 0:
        return 0
    steps = totals.steps
    loss_sum, correct, norm_sum = totals.read()
    loss_sum, correct, count = mpi.world().sum(np.array([loss_sum, correct, totals.count]),
                                                       "summing the loss and accuracy")
    totals.clear()
    if not math.isfinite(loss_sum):
        raise Diverged(divergence_message(loss_sum / max(count, 1), state, epoch, steps_per_epoch, lr, run_dir,
                                          steps=steps))
    if not math.isfinite(norm_sum):
        raise Diverged(divergence_message(norm_sum / steps, state, epoch, steps_per_epoch, lr, run_dir,
                                          what="gradient norm", steps=steps))
    state.loss_sum += float(loss_sum)
    state.correct += int(correct)
    state.seen += int(count)
    return int(count)


def data_transform(args: argparse.Namespace, train_set: Any, eval_set: Any) -> dict[str, Any]:
    """How images become model inputs, for checkpoints: evaluate and predict apply the same.

    Image files are evaluated by resizing the short side to img_size / crop_pct (bicubic) and
    center-cropping img_size (``crop_pct`` is None for in-memory data, used as it is); then
    (x / 255 - mean) / std per channel.
    """
    crop_pct = getattr(eval_set, "crop_pct", None)
    return {"name": args.dataset or "auto", "mean": list(train_set.mean), "std": list(train_set.std),
            "image_shape": list(train_set.image_shape), "crop_pct": None if crop_pct is None else float(crop_pct),
            "interpolation": "bicubic"}


def divergence_message(value: float, state: RunState, epoch: int, steps_per_epoch: int, lr: float, run_dir: Path,
                       what: str = "loss", steps: int = 1) -> str:
    """Why the run stopped, after the step ``state.step``; ``steps`` > 1: somewhere in the last ``steps``
    steps (a GPU run reads its losses once per log interval)."""
    last = run_dir / "last.npz"
    saved = (f"{last} still holds the last good state (epoch {state.epoch}); continue from it with "
             f"--resume {run_dir} and a lower --lr" if last.is_file() else "no checkpoint had been written yet")
    where = f"at step {state.step}" if steps == 1 else f"in one of steps {state.step - steps + 1}-{state.step}"
    return (f"the {what} became {value} {where} (epoch {epoch + 1}, batch "
            f"{state.batch_in_epoch}/{steps_per_epoch}, learning rate {lr:.3g}). The learning rate is most "
            f"likely too high for this model and batch size: try --lr {lr / 4:.2g}, a longer --warmup-epochs, "
            f"or --clip-grad 1.0. Nothing was saved after the failure: {saved}.")


def nonfinite_message(state: RunState, epoch: int, steps_per_epoch: int, run_dir: Path) -> str:
    last = run_dir / "last.npz"
    saved = (f"{last} still holds the last good state (epoch {state.epoch}); continue from it with "
             f"--resume {run_dir} and a lower --lr" if last.is_file() else "no checkpoint had been written yet")
    return (f"the weights became non-finite at step {state.step} (epoch {epoch + 1}, batch "
            f"{state.batch_in_epoch}/{steps_per_epoch}; its loss was finite, its update was not). The learning "
            f"rate is most likely too high for this model and batch size: try a lower --lr, a longer "
            f"--warmup-epochs, or --clip-grad 1.0. Nothing was saved after the failure: {saved}.")


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

