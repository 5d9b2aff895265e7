"""The trainer's command line: every flag, its checks, and the defaults of the Fashion-MNIST run."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from typing import Any

from minimlp.data import list_datasets
from minimlp.data.augment import RandAugment
from minimlp.models.registry import list_models, preset_arch
from minimlp.optim import OPTIMIZERS, LRSchedule
from minimlp.train.data import RECIPES, apply_recipe

DEFAULT_MODEL = "ff_fmnist_small"
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 128
DEFAULT_OPT = "adamw"
# Per optimizer: (learning rate for the batch size given, weight decay).  AdamW's decay
# is DeiT's 0.05; SGD uses the usual 0.1 / 5e-5 of SGD-trained ViTs.
OPT_DEFAULTS = {"adamw": (5e-3, 0.05), "sgd": (0.1, 5e-5)}
DEFAULT_WARMUP_EPOCHS = 0.5
DEFAULT_SMOOTHING = 0.1
# Arguments that describe where and how fast a run executes, not what it computes:
# a resumed run takes them from its own command line, never from the checkpoint.
NOT_RESUMED = {
    "resume",
    "output",
    "eval_only",
    "gpu",
    "device",
    "tf32",
    "amp",
    "workers",
    "procs",
    "log_interval",
    "download",
}


def _number(
    kind: type, low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> Callable[[str], Any]:
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
    p = argparse.ArgumentParser(
        prog="python -m minimlp.train",
        formatter_class=_HelpFormatter,
        description="Train a feed-forward-only vision transformer (NumPy or CuPy). "
        "With no arguments: the Fashion-MNIST recipe on the CPU.",
        epilog="Exit status: 0 done, 1 training failed (e.g. the loss diverged), "
        "2 bad arguments or data, 130 interrupted (resumable).",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"preset name; one of {', '.join(list_models())}")
    g.add_argument("--img-size", type=positive_int, help="input resolution (default: the preset's)")
    g.add_argument("--patch-size", type=positive_int, help="patch size in pixels (default: the preset's)")
    g.add_argument("--in-chans", type=positive_int, help="image channels (default: the dataset's)")
    g.add_argument("--embed-dim", type=positive_int, help="token width D (default: the preset's)")
    g.add_argument("--depth", type=positive_int, help="number of blocks (default: the preset's)")
    g.add_argument(
        "--num-classes",
        type=positive_int,
        metavar="K",
        help="classifier outputs, which is also how many classes of ImageNet-style data to use: the "
        "first K sorted (K random ones with --class-seed); with --pretrained, a new head of K "
        "outputs for fine-tuning (default: every class of the data)",
    )
    g.add_argument("--drop", type=fraction, default=0.0, help="dropout rate inside the feed-forward layers")
    g.add_argument(
        "--drop-path",
        type=fraction,
        default=0.0,
        help="stochastic depth: drop rate of the last block, rising linearly from 0",
    )

    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=None,
        help=f"dataset name ({', '.join(list_datasets())}) or a directory; "
        "default: recognised from --data-dir, else fmnist",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where the data is; Fashion-MNIST is also looked for in $MINIMLP_DATA, "
        "~/.cache/minimlp/fashion-mnist and /usr/share/datasets/fashion-mnist",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="download Fashion-MNIST (MD5-checked) into --data-dir or the cache if it is missing",
    )
    g.add_argument(
        "--train-num-samples",
        type=positive_int,
        metavar="N",
        help="train on a fixed random subset of N images (quick runs)",
    )
    g.add_argument(
        "--eval-num-samples",
        type=positive_int,
        metavar="N",
        help="evaluate on a fixed random subset of N images (quick runs)",
    )
    g.add_argument(
        "--no-aug",
        action="store_true",
        help="no training augmentation at all (evaluation crops, no erasing, mixup or repeats)",
    )
    g.add_argument(
        "-j",
        "--workers",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="processes that decode image files (0: in the training process); also how many batches "
        "a background thread prepares ahead. Default: one per core (at most 8) on a GPU; 1 on "
        "the CPU, where --procs already uses every core and decoding is cheap next to a step",
    )
    g.add_argument(
        "--procs",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="CPU only: split every batch over N worker processes of one thread each (data "
        "parallel; about N times faster on N cores); 0 = one per core, at most 8; 1 = no workers",
    )

    g = p.add_argument_group("ImageNet-style data (folders, ImageFolder trees, a prepared cache)")
    g.add_argument(
        "--subset",
        metavar="NAME",
        help="train on some classes: imagenette, imagewoof, imagenet100, a comma-separated list of "
        "wnids, or a file with one wnid per line (labels become 0..K-1 in sorted wnid order)",
    )
    g.add_argument(
        "--class-seed",
        type=non_negative_int,
        metavar="SEED",
        help="with --num-classes: K classes drawn at random with this seed instead of the first K",
    )
    g.add_argument("--per-class", type=positive_int, metavar="N", help="at most N training images per class")
    g.add_argument(
        "--crop-pct",
        type=_number(float, 0.0, 1.0, low_open=True),
        metavar="PCT",
        help="evaluation: resize the short side to img_size / PCT, then center-crop img_size "
        "(default: 0.875, as DeiT; 1 for square caches)",
    )
    g.add_argument(
        "--train-crop",
        choices=("rrc", "crop"),
        help="prepared cache only: RandomResizedCrop + flip (rrc, the default), or a plain random "
        "window + flip (crop: no resampling, fastest)",
    )

    g = p.add_argument_group("augmentation (each off by default; --recipe deit turns them all on)")
    g.add_argument(
        "--aa",
        type=randaugment_config,
        metavar="CONFIG",
        help="RandAugment where the images are decoded, e.g. rand-m9-mstd0.5-inc1 (DeiT's)",
    )
    g.add_argument(
        "--reprob",
        type=probability,
        default=0.0,
        metavar="P",
        help="random erasing: probability per image (on the device, after normalisation)",
    )
    g.add_argument(
        "--mixup",
        type=non_negative_float,
        default=0.0,
        metavar="ALPHA",
        help="mixup with Beta(ALPHA, ALPHA) weights; the loss takes soft targets",
    )
    g.add_argument(
        "--cutmix",
        type=non_negative_float,
        default=0.0,
        metavar="ALPHA",
        help="cutmix with Beta(ALPHA, ALPHA) box areas; with --mixup too, one of the two per batch",
    )
    g.add_argument(
        "--mixup-prob", type=probability, default=1.0, metavar="P", help="probability of mixing a batch at all"
    )
    g.add_argument(
        "--mixup-switch-prob",
        type=probability,
        default=0.5,
        metavar="P",
        help="with both --mixup and --cutmix: probability of cutmix for a batch",
    )
    g.add_argument(
        "--repeated-aug",
        type=positive_int,
        default=1,
        metavar="N",
        help="repeated augmentation: each image N times per epoch, in different crops; 1 = off",
    )
    g.add_argument(
        "--recipe",
        choices=RECIPES,
        help="deit: every option not given is DeiT's (AdamW, lr 5e-4 x batch / 512, 300 epochs, 5 warmup, "
        "cosine, smoothing 0.1, drop path 0.1, dropout 0.1 for the FF models, weight decay 0.05, "
        "mixup 0.8, cutmix 1.0, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, "
        "repeated augmentation 3)",
    )

    g = p.add_argument_group("optimization")
    g.add_argument("-b", "--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="images per step")
    g.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS, help="passes over the training set")
    g.add_argument("--opt", default=DEFAULT_OPT, choices=sorted(OPTIMIZERS), help="optimizer")
    g.add_argument(
        "--lr",
        type=non_negative_float,
        help="peak learning rate (default: " + ", ".join(f"{k} {v[0]:g}" for k, v in OPT_DEFAULTS.items()) + ")",
    )
    g.add_argument(
        "--scale-lr", action="store_true", help="DeiT's rule: the effective learning rate is lr * batch_size / 512"
    )
    g.add_argument("--momentum", type=fraction, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    g.add_argument(
        "--weight-decay",
        type=non_negative_float,
        help="weight decay, not on 1-D parameters or the class token (default: "
        + ", ".join(f"{k} {v[1]:g}" for k, v in OPT_DEFAULTS.items())
        + ")",
    )
    g.add_argument(
        "--clip-grad",
        type=non_negative_float,
        default=0.0,
        metavar="NORM",
        help="clip the global gradient norm to NORM; 0 turns clipping off",
    )
    g.add_argument("--smoothing", type=fraction, default=DEFAULT_SMOOTHING, help="label smoothing")

    g = p.add_argument_group("learning-rate schedule")
    g.add_argument(
        "--sched",
        default="cosine",
        choices=LRSchedule.KINDS,
        help="after warmup: cosine to --min-lr, step decay, or constant; evaluated every step",
    )
    g.add_argument(
        "--warmup-epochs",
        type=non_negative_float,
        default=DEFAULT_WARMUP_EPOCHS,
        help="linear warmup from --warmup-lr (fractions allowed)",
    )
    g.add_argument("--warmup-lr", type=non_negative_float, default=1e-6, help="learning rate at step 0")
    g.add_argument("--min-lr", type=non_negative_float, default=1e-5, help="the cosine's final learning rate")
    g.add_argument("--decay-epochs", type=positive_float, default=30.0, help="step schedule: epochs per decay")
    g.add_argument("--decay-rate", type=positive_float, default=0.1, help="step schedule: factor per decay")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=non_negative_int, default=0, help="seeds weights, data order, augmentation, dropout")
    g.add_argument("--gpu", action="store_true", help="train on the GPU with CuPy (same as --device gpu)")
    g.add_argument("--device", type=device_name, default="cpu", help="cpu, gpu or cuda:N")
    g.add_argument(
        "--tf32",
        action="store_true",
        help="GPU: let float32 matrix products use TF32 tensor cores (Ampere and newer; about 1e-3 "
        "relative error per product, as PyTorch's allow_tf32)",
    )
    g.add_argument(
        "--amp",
        action="store_true",
        help="GPU: mixed precision, as PyTorch's autocast + GradScaler: float16 forward and backward, "
        "float32 master weights and optimizer, dynamic loss scaling (a step whose gradient "
        "overflows is skipped; the log and metrics.jsonl count them). Without a GPU it is ignored "
        "with a warning (NumPy has no fast float16 matrix product); not under mpirun. As --tf32, "
        "a resumed run uses it only when given again",
    )
    g.add_argument(
        "--output",
        default=None,
        metavar="DIR",
        help="run directory (default: runs/<date>-<time>-<model>, or the resumed run's directory)",
    )
    g.add_argument(
        "--resume",
        default=None,
        metavar="DIR_OR_FILE",
        help="continue a run from its last.npz (or the given checkpoint): weights, optimizer, "
        "epoch, step, schedule and random state; its arguments apply unless given again",
    )
    g.add_argument(
        "--pretrained",
        default=None,
        metavar="FILE",
        help="start from these weights (.pth, .npz or .safetensors): the architecture is the file's "
        "unless --model is given; --num-classes K starts a new head for fine-tuning",
    )
    g.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate (the --resume checkpoint, or the --pretrained weights) and exit",
    )
    g.add_argument(
        "--log-interval",
        type=positive_int,
        default=50,
        metavar="STEPS",
        help="progress line every STEPS steps when the output is not a terminal",
    )
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
