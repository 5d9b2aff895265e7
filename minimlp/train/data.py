"""The data side of ``python -m minimlp.train``: datasets from the command line, each epoch's order,
and the augmentations that run on the device.  Lesson 10 walks through the training loop.

* :func:`apply_recipe` fills the options a command line left unset from DeiT's recipe
  (``--recipe deit``), the learning rate scaled to the batch size.
* :func:`open_datasets` opens the training and validation splits of whatever ``--data-dir``
  holds (Fashion-MNIST, ImageNet-style folders, an ImageFolder tree, a prepared cache), with
  the subset, per-class cap, RandAugment and crop options passed only when they are set,
  so a dataset that has no use for one says so.
* :func:`loader_workers` decides how many decoding processes to start.  On a GPU: one per
  core (at most 8).  On the CPU the data-parallel workers (``--procs``) already use every
  core, and a training step costs far more per image than decoding one (``python -m
  minimlp.bench.loaders`` and ``python -m minimlp.bench`` measure both), so one decoding
  process keeps up and is mostly idle, waiting for a free slot:
  the two pools together keep the cores busy without running several heavy processes per
  core.
* :func:`epoch_order` is each epoch's permutation of the training indices, a function of
  (seed, epoch) only, so a resumed run sees the same batches; with repeated augmentation
  each image appears ``repeats`` times in a row (DeiT's sampler), the epoch keeping its length.
* :class:`DeviceAugment` is what happens to a normalised batch on the device, in timm's
  order: random erasing, then mixup or cutmix, which turn the labels into soft targets
  (B, K) that already include the label smoothing (so the loss then takes smoothing 0).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import numpy as np

from minimlp.data import Dataset, open_dataset
from minimlp.data.augment import MixupCutmix, RandomErasing, deit_recipe, recipe_lr, repeated_augmentation_indices
from minimlp.data.loader import default_workers

__all__ = [
    "RECIPES",
    "apply_recipe",
    "open_datasets",
    "loader_workers",
    "epoch_order",
    "fixed_subset",
    "DeviceAugment",
    "new_bad_files",
]

# Which of deit_recipe()'s entries are trainer options, under the trainer's names.
RECIPE_ARGS = (
    "opt",
    "weight_decay",
    "epochs",
    "sched",
    "warmup_epochs",
    "warmup_lr",
    "min_lr",
    "smoothing",
    "drop_path",
    "drop",
    "mixup",
    "cutmix",
    "mixup_prob",
    "mixup_switch_prob",
    "aa",
    "reprob",
    "repeated_aug",
)
RECIPES = ("deit",)


def apply_recipe(args: argparse.Namespace, explicit: set[str], ff_model: bool = True) -> list[str]:
    """Set every recipe option the command line did not give; returns the names set.

    ``lr`` becomes the recipe's 5e-4 scaled to the batch size (``recipe_lr``) unless given.
    ``ff_model``: the feed-forward models use dropout 0.1, the attention models none.
    """
    if args.recipe is None:
        return []
    recipe = deit_recipe(ff_model)
    changed = []
    for name in RECIPE_ARGS:
        if name not in explicit:
            setattr(args, name, recipe[name])
            changed.append(name)
    if "lr" not in explicit:
        args.lr = recipe_lr(args.batch_size, recipe)
        changed.append("lr")
    if "min_lr" not in explicit and args.lr is not None and args.min_lr > args.lr:
        # DeiT's floor, 1e-5, is 1/50 of its peak at batch 512; a small batch scales the peak
        # below it, and the cosine would then climb.  Keep the ratio instead.
        args.min_lr = args.lr * recipe["min_lr"] / recipe["lr"]
    return changed


def loader_workers(requested: int | None, is_gpu: bool) -> int:
    """Decoding processes: as asked, else one per core (at most 8) on a GPU and 1 on the CPU (see above)."""
    if requested is not None:
        return requested
    return default_workers() if is_gpu else 1


def dataset_options(args: argparse.Namespace, split: str) -> dict[str, Any]:
    """The image options the command line set, for ``open_dataset`` (unset ones are left out)."""
    options = {
        "subset": args.subset,
        "num_classes": args.num_classes,
        "class_seed": args.class_seed,
        "per_class": args.per_class if split == "train" else None,
        "randaugment": args.aa if split == "train" and not args.no_aug else None,
        "crop_pct": args.crop_pct,
        "train_crop": args.train_crop,
    }
    return {k: v for k, v in options.items() if v is not None}


def open_datasets(args: argparse.Namespace, img_size: int, workers: int) -> tuple[Dataset, Dataset]:
    """The training and validation splits the command line names; the caller closes both."""
    train_set = open_dataset(
        args.dataset,
        "train",
        data_dir=args.data_dir,
        download=args.download,
        workers=workers,
        img_size=img_size,
        **dataset_options(args, "train"),
    )
    try:
        eval_set = open_dataset(
            args.dataset,
            "val",
            data_dir=args.data_dir,
            download=args.download,
            workers=workers,
            img_size=img_size,
            **dataset_options(args, "val"),
        )
    except BaseException:
        train_set.close()
        raise
    if list(eval_set.classes) != list(train_set.classes):
        train_set.close()
        eval_set.close()
        raise ValueError(
            f"the validation split has other classes than the training split ({len(eval_set.classes)} "
            f"vs {len(train_set.classes)}); both must come from the same class folders"
        )
    return train_set, eval_set


def fixed_subset(n: int, count: int | None, salt: int) -> np.ndarray:
    """The same ``count`` of ``n`` indices for every seed (so seeds compare on the same data)."""
    if count is None or count >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(salt).permutation(n)[:count])


def epoch_order(indices: np.ndarray, seed: int, repeats: int = 1) -> np.ndarray:
    """One epoch's order of ``indices`` from ``seed``; ``repeats`` > 1: each image ``repeats`` times in a row."""
    if repeats > 1:
        return indices[repeated_augmentation_indices(len(indices), seed, repeats)]
    return np.random.default_rng(seed).permutation(indices)


@dataclasses.dataclass(frozen=True)
class DeviceAugment:
    """Random erasing and mixup/cutmix on a normalised batch on the device (either may be None)."""

    erase: RandomErasing | None = None
    mix: MixupCutmix | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, num_classes: int) -> DeviceAugment:
        if args.no_aug:
            return cls()
        erase = RandomErasing(prob=args.reprob) if args.reprob > 0 else None
        mix = None
        if args.mixup > 0 or args.cutmix > 0:
            mix = MixupCutmix(
                num_classes, args.mixup, args.cutmix, args.mixup_switch_prob, args.mixup_prob, args.smoothing
            )
        return cls(erase, mix)

    def describe(self) -> str:
        words = []
        if self.erase is not None:
            words.append(f"random erasing {self.erase.prob:g}")
        if self.mix is not None:
            m = self.mix
            kinds = " / ".join(
                f"{name} {alpha:g}"
                for name, alpha in (("mixup", m.mixup_alpha), ("cutmix", m.cutmix_alpha))
                if alpha > 0
            )
            words.append(f"{kinds} (p {m.prob:g}, soft targets)")
        return ", ".join(words)

    def __call__(
        self, x: Any, labels: np.ndarray, rng: np.random.Generator, noise_rng: Any, smoothing: float
    ) -> tuple[Any, Any, float]:
        """x (B, C, H, W) normalised on the device, labels (B,) -> (x, targets, smoothing for the loss).

        Targets are the labels, or (B, K) soft targets when mixup/cutmix is on; those already
        hold the label smoothing, so the loss gets smoothing 0.  ``rng`` draws the boxes and
        mixing weights on the host; ``noise_rng`` the erasing noise on the device.
        """
        if len(labels) == 0:  # a rank's empty share of a short last batch (mpirun)
            return x, labels, smoothing
        if self.erase is not None:
            x = self.erase(x, rng, noise_rng=noise_rng)
        if self.mix is None:
            return x, labels, smoothing
        x, targets, _ = self.mix(x, labels, rng)
        return x, targets, 0.0


def new_bad_files(dataset: Any, already: set[str]) -> dict[str, str]:
    """The files of ``dataset`` that failed to decode and are not in ``already`` (which is updated)."""
    bad = {path: reason for path, reason in getattr(dataset, "bad_files", {}).items() if path not in already}
    already.update(bad)
    return bad
