"""Evaluate a checkpoint: top-1, top-5 and per-class accuracy.  ``python -m minimlp.evaluate``.

    python -m minimlp.evaluate --checkpoint runs/fmnist/best.npz [--data-dir DIR] [--gpu]

The dataset is the one the checkpoint was trained on (its ``--dataset`` / ``--data-dir``
arguments are stored in it), unless ``--dataset`` or ``--data-dir`` say otherwise; its
validation split is used ("val", which for Fashion-MNIST is the test set).
:func:`evaluate` is also what the trainer calls after every epoch.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minimlp.backend import to_numpy
from minimlp.data import Dataset, normalize, open_dataset
from minimlp.loss import cross_entropy_forward

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


def evaluate(model: Any, dataset: Dataset, batch_size: int = 256, indices: np.ndarray | None = None,
             should_stop: Callable[[], bool] | None = None, world: Any = None) -> EvalResult | None:
    """Run ``model`` over ``dataset`` (or ``indices`` of it) without augmentation.

    Returns None when ``should_stop()`` turns true between batches (Ctrl-C in the trainer).
    ``world`` (a :class:`minimlp.distributed.World`, under mpirun): each rank evaluates its
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
        x = normalize(images, dataset.mean, dataset.std, xp, model.dtype)
        logits, _ = model.forward(x, train=False)  # (B, K)
        y = xp.asarray(labels)
        loss, _ = cross_entropy_forward(logits, y)
        top = to_numpy(xp.argsort(-logits, axis=1)[:, :5])  # (B, 5) best classes first
        hit1 = top[:, 0] == labels
        loss_sum += float(loss) * len(labels)
        correct1 += int(hit1.sum())
        correct5 += int((top == labels[:, None]).any(axis=1).sum())
        seen += len(labels)
        np.add.at(class_total, labels, 1)
        np.add.at(class_correct, labels[hit1], 1)
    if world is not None and world.size > 1:  # the sums over every rank's share
        totals = world.sum(np.concatenate([[loss_sum, correct1, correct5, seen], class_correct, class_total]))
        loss_sum, (correct1, correct5, seen) = float(totals[0]), (int(t) for t in totals[1:4])
        class_correct, class_total = totals[4:4 + K].astype(np.int64), totals[4 + K:].astype(np.int64)
    if seen == 0:
        raise ValueError("nothing to evaluate: the dataset (or the index subset) is empty")
    top5 = 100.0 * correct5 / seen if K > 5 else None
    return EvalResult(loss=loss_sum / seen, top1=100.0 * correct1 / seen, top5=top5, num_samples=seen,
                      class_correct=class_correct, class_total=class_total)


def format_per_class(result: EvalResult, classes: list[str]) -> str:
    width = max(len(c) for c in classes) if classes else 5
    lines = [f"  {'class':<{width}}  top-1 %   samples"]
    for name, acc, n in zip(classes, result.per_class(), result.class_total, strict=True):
        shown = "     -" if math.isnan(acc) else f"{acc:6.2f}"
        lines.append(f"  {name:<{width}}  {shown}   {n:7d}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minimlp.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a minimlp .npz checkpoint (best.npz, last.npz)")
    p.add_argument("--dataset", default=None, help="dataset name or directory (default: the checkpoint's)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="where the data is (default: the checkpoint's)")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--gpu", action="store_true", help="run on the GPU (CuPy), same as --device gpu")
    p.add_argument("--device", default="cpu", help="cpu, gpu or cuda:N")
    p.add_argument("-j", "--workers", type=int, default=2, help="loader threads (for datasets that decode files)")
    return p


def main(argv: list[str] | None = None) -> int:
    from minimlp.io.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        build_parser().error(f"--batch-size must be positive, got {args.batch_size}")
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(checkpoint, device="gpu" if args.gpu else args.device)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"backend: {model.backend.reason}")
    saved = checkpoint.meta.get("args", {})
    data_dir = args.data_dir or saved.get("data_dir")
    dataset_name = args.dataset or (None if args.data_dir else saved.get("dataset"))
    try:
        dataset = open_dataset(dataset_name, "val", data_dir=data_dir, workers=args.workers,
                               img_size=model.config.img_size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    classes = checkpoint.meta.get("classes") or dataset.classes
    if len(classes) != model.config.num_classes:
        print(f"error: the checkpoint has {model.config.num_classes} classes, the dataset {len(dataset.classes)}",
              file=sys.stderr)
        return 2
    print(f"checkpoint: {checkpoint.path} (epoch {checkpoint.meta.get('epoch')}, {model.num_params():,} parameters)")
    print(f"data: {dataset.describe()}")
    start = time.perf_counter()
    with dataset:
        result = evaluate(model, dataset, args.batch_size)
    elapsed = time.perf_counter() - start
    top5 = f"  top-5 {result.top5:.2f}%" if result.top5 is not None else ""
    print(f"top-1 {result.top1:.2f}%{top5}  loss {result.loss:.4f}  "
          f"({result.num_samples} images in {elapsed:.1f} s, {result.num_samples / elapsed:.0f} img/s)")
    print(format_per_class(result, classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
