"""Evaluate a checkpoint or released weights: top-1, top-5 and per-class accuracy.  ``python -m minimlp.evaluate``.

    python -m minimlp.evaluate --checkpoint runs/fmnist/best.npz [--data-dir DIR] [--gpu]
    python -m minimlp.evaluate --pretrained linear-base-checkpoint.pth --data-dir /data/imagenet --gpu

``--checkpoint`` and ``--pretrained`` are the same option: any file minimlp reads (its own
``.npz``, ``.safetensors``, a PyTorch ``.pth``).  The dataset is the one a minimlp checkpoint
was trained on (its ``--dataset`` / ``--data-dir`` arguments are stored in it), unless
``--dataset`` or ``--data-dir`` say otherwise; its validation split is used ("val", which
for Fashion-MNIST is the test set).  Image files are read with the checkpoint's evaluation
transform, the paper's for files without one: resize the short side to img_size / crop_pct
(256 for 224, bicubic, without JPEG draft decoding), center-crop img_size, normalise with
the ImageNet mean and std.  Dataset labels are matched to the model's outputs by wnid, so a
1000-class model can be scored on a subset tree, and a subset model on full ImageNet (the
images of classes it does not know are left out, and counted).
:func:`evaluate` is also what the trainer calls after every epoch.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minimlp.backend import to_numpy
from minimlp.data import Dataset, normalize, open_dataset
from minimlp.kernels import cross_entropy_forward

__all__ = ["EvalResult", "evaluate", "main"]


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy (no smoothing)
    top1: float  # percent
    top5: float | None  # percent; None with 5 classes or fewer
    num_samples: int
    class_correct: np.ndarray = field(repr=False)  # (K,) correct top-1 predictions per true class
    class_total: np.ndarray = field(repr=False)  # (K,) samples per true class

    def per_class(self) -> np.ndarray:
        """Top-1 accuracy of each class in percent (NaN for a class with no samples)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * self.class_correct / self.class_total


def evaluate(
    model: Any,
    dataset: Dataset,
    batch_size: int = 256,
    indices: np.ndarray | None = None,
    should_stop: Callable[[], bool] | None = None,
    label_map: np.ndarray | None = None,
    world: Any = None,
) -> EvalResult | None:
    """Run ``model`` over ``dataset`` (or ``indices`` of it) without augmentation.

    ``label_map[k]`` is the model output that dataset label k stands for (default: k itself);
    leave out the samples it maps to -1.  Returns None when ``should_stop()`` turns true
    between batches (Ctrl-C in the trainer).
    ``world`` (a :class:`minimlp.parallel.mpi.World`, under mpirun): each rank evaluates its
    share of the images and the sums are added over the ranks, so every rank returns the
    whole result; ``should_stop`` is then not consulted (the ranks must agree on stopping,
    which the trainer does between steps).
    """
    xp = model.xp
    K = model.config.num_classes
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    if world is not None and world.size > 1:
        indices, should_stop = world.shard(indices), None
    loss_sum, correct1, correct5, seen = 0.0, 0, 0, 0
    class_correct = np.zeros(K, dtype=np.int64)
    class_total = np.zeros(K, dtype=np.int64)
    for images, labels in dataset.batches(indices, batch_size, train=False, seed=0):
        if should_stop is not None and should_stop():
            return None
        if len(labels) == 0:  # every file of the batch failed to decode (the loader reports them)
            continue
        if label_map is not None:
            labels = label_map[labels]
        x = normalize(images, dataset.mean, dataset.std, xp, model.dtype)
        logits, _ = model.forward(x, train=False)  # (B, K)
        y = xp.asarray(labels)
        loss, _ = cross_entropy_forward(logits, y)
        top = to_numpy(xp.argsort(-logits, axis=1)[:, :5])  # (B, 5) best classes first
        hit1 = top[:, 0] == labels
        loss_sum += float(to_numpy(loss)) * len(labels)  # an explicit read: on a GPU, a wait per batch
        correct1 += int(hit1.sum())
        correct5 += int((top == labels[:, None]).any(axis=1).sum())
        seen += len(labels)
        np.add.at(class_total, labels, 1)
        np.add.at(class_correct, labels[hit1], 1)
    if world is not None and world.size > 1:  # the sums over every rank's share
        totals = world.sum(np.concatenate([[loss_sum, correct1, correct5, seen], class_correct, class_total]))
        loss_sum, (correct1, correct5, seen) = float(totals[0]), (int(t) for t in totals[1:4])
        class_correct, class_total = totals[4 : 4 + K].astype(np.int64), totals[4 + K :].astype(np.int64)
    if seen == 0:
        raise ValueError("nothing to evaluate: the dataset (or the index subset) is empty")
    top5 = 100.0 * correct5 / seen if K > 5 else None
    return EvalResult(
        loss=loss_sum / seen,
        top1=100.0 * correct1 / seen,
        top5=top5,
        num_samples=seen,
        class_correct=class_correct,
        class_total=class_total,
    )


def format_per_class(result: EvalResult, classes: list[str]) -> str:
    """A table of per-class top-1 accuracy; classes without samples are counted, not listed."""
    shown = [k for k in range(len(classes)) if result.class_total[k] > 0]
    width = max((len(classes[k]) for k in shown), default=5)
    lines = [f"  {'class':<{width}}  top-1 %   samples"]
    for k in shown:
        acc = result.per_class()[k]
        lines.append(
            f"  {classes[k]:<{width}}  {'     -' if math.isnan(acc) else f'{acc:6.2f}'}   {result.class_total[k]:7d}"
        )
    if len(shown) < len(classes):
        lines.append(f"  ({len(classes) - len(shown)} of the model's {len(classes)} classes have no images here)")
    return "\n".join(lines)


def crop_pct(text: str) -> float:
    """An argparse type: the evaluation crop fraction, in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]: the crop is that fraction of the resized image")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minimlp.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        "--pretrained",
        dest="checkpoint",
        required=True,
        metavar="FILE",
        help="a minimlp checkpoint (best.npz, last.npz) or any weights file minimlp reads (.pth, "
        ".safetensors, .npz); both names are the same option",
    )
    p.add_argument("--ema", action="store_true", help="a DeiT training checkpoint's EMA weights (model_ema)")
    p.add_argument("--dataset", default=None, help="dataset name or directory (default: the checkpoint's)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="where the data is (default: the checkpoint's)")
    p.add_argument(
        "--crop-pct",
        type=crop_pct,
        default=None,
        help="image data: resize to img_size / PCT, center-crop img_size (default: the checkpoint's, else 0.875)",
    )
    p.add_argument("-b", "--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--gpu", action="store_true", help="run on the GPU (CuPy), same as --device gpu")
    p.add_argument("--device", default="cpu", help="cpu, gpu or cuda:N")
    p.add_argument(
        "-j",
        "--workers",
        type=int,
        default=None,
        help="processes that decode image files (default: one per core, at most 8)",
    )
    return p


def open_eval_data(args: argparse.Namespace, meta: dict[str, Any], img_size: int) -> Dataset:
    """The validation split to score: the command line's, else the checkpoint's, with its transform."""
    saved = meta.get("args", {})
    data_dir = args.data_dir or saved.get("data_dir")
    dataset_name = args.dataset or (None if args.data_dir else saved.get("dataset"))
    if data_dir is None and dataset_name is None and meta.get("class_map") is None and not meta.get("classes"):
        raise ValueError("this file says nothing about its data: give --data-dir (e.g. an ImageNet folder)")
    crop_pct = args.crop_pct if args.crop_pct is not None else meta.get("data", {}).get("crop_pct")
    options: dict[str, Any] = {"crop_pct": crop_pct} if crop_pct is not None else {}
    # The exact transform (no drafting) where image files are decoded; in-memory data has no use for it.
    options["draft"] = False
    return open_dataset(dataset_name, "val", data_dir=data_dir, workers=args.workers, img_size=img_size, **options)


def main(argv: list[str] | None = None) -> int:
    from minimlp.train.progress import print_warning  # here: the trainer imports this module

    with warnings.catch_warnings():  # restores showwarning afterwards
        warnings.showwarning = print_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from minimlp.data.classes import label_map, model_classes
    from minimlp.io.files import CheckpointError
    from minimlp.io.weights import model_from_checkpoint

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        build_parser().error(f"--batch-size must be positive, got {args.batch_size}")
    try:
        model, info = model_from_checkpoint(
            args.checkpoint, device="gpu" if args.gpu else args.device, use_ema=args.ema
        )
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # CuPy's out-of-memory error is one too
        print(f"error: {args.checkpoint}: the model does not fit in memory: {exc}", file=sys.stderr)
        return 2
    meta = info.meta or {}
    K = model.config.num_classes
    classes, wnids = model_classes(meta, K)
    print(f"backend: {model.backend.reason}")
    try:
        dataset = open_eval_data(args, meta, model.config.img_size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with dataset:
        try:
            mapping = label_map(getattr(dataset, "wnids", None), wnids, dataset.classes, K)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        indices = np.flatnonzero(mapping[dataset.labels] >= 0)
        epoch = f"epoch {meta['epoch']}, " if "epoch" in meta else ""
        print(
            f"checkpoint: {info.source} ({info.format}{', EMA' if info.ema else ''}, {epoch}"
            f"{model.num_params():,} parameters, {K} classes)"
        )
        print(f"data: {dataset.describe()}")
        if len(indices) < len(dataset):
            print(f"note: {len(dataset) - len(indices)} images of classes the model does not know are left out")
        if len(indices) == 0:
            print("error: none of the dataset's classes is among the model's", file=sys.stderr)
            return 2
        start = time.perf_counter()
        try:
            result = evaluate(model, dataset, args.batch_size, indices, label_map=mapping)
        except MemoryError as exc:
            print(
                f"error: a batch of {args.batch_size} images does not fit in memory with this model ({exc}); "
                f"use a smaller --batch-size",
                file=sys.stderr,
            )
            return 2
    elapsed = time.perf_counter() - start
    top5 = f"  top-5 {result.top5:.2f}%" if result.top5 is not None else ""
    print(
        f"top-1 {result.top1:.2f}%{top5}  loss {result.loss:.4f}  "
        f"({result.num_samples} images in {elapsed:.1f} s, {result.num_samples / elapsed:.0f} img/s)"
    )
    print(format_per_class(result, classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
