"""What every dataset gives the trainer: uint8 batches, labels, class names, statistics.  Lesson 10.

A dataset hands out batches of **uint8** images (B, C, H, W) and int64 labels (B,), in the
order of the indices it is asked for.  Only those uint8 bytes travel to the device, where
:func:`normalize` turns them into floats: four times less to copy than float32, and the
arithmetic runs where it is cheapest.  Training augmentation happens inside ``batches``,
drawn from the ``seed`` it is given, so a run is reproducible batch for batch.

Fashion-MNIST (:mod:`minimlp.data.fmnist`) and ImageNet-style folders implement this
interface; :func:`minimlp.data.open_dataset` picks one by name or by what a directory holds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["Dataset", "ArrayDataset", "ImageOptions", "normalize", "shown"]

Batch = tuple[np.ndarray, np.ndarray]  # uint8 images (B, C, H, W), int64 labels (B,)


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How a dataset of image files or a prepared cache is opened: which classes and images, how
    they are decoded and augmented.  The openers take these as keywords; an unknown one is an error.

    subset / num_classes / class_seed   which classes (see ``select_classes``); val gets the same ones
    train_num_samples / per_class       caps on the train split (seeded by ``sample_seed``)
    holdout                             ImageFolder trees without train/val: fraction of each class held out as val
    workers                             decoding processes (None: one per core, at most 8; 0: in this process)
    prefetch                            batches each decoding process prepares ahead
    train_crop                          prepared caches: "rrc" (RandomResizedCrop) or "crop" (a plain random window)
    scale, ratio, hflip, randaugment    the training augmentation (randaugment: e.g. "rand-m9-mstd0.5-inc1")
    crop_pct                            the evaluation crop (None: the dataset's default)
    draft                               image files: JPEG draft decoding (a speed setting)
    max_bad                             image files: how many undecodable files a run tolerates (None: the default)
    """

    subset: str | None = None
    num_classes: int | None = None
    class_seed: int | None = None
    train_num_samples: int | None = None
    per_class: int | None = None
    sample_seed: int = 0
    holdout: float = 0.1
    workers: int | None = None
    prefetch: int = 2
    train_crop: str = "rrc"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    crop_pct: float | None = None
    randaugment: str | None = None
    draft: bool = True
    max_bad: int | None = None


def image_options(options: ImageOptions | None, keywords: dict[str, Any]) -> ImageOptions:
    """``options`` (or the defaults) with ``keywords`` replacing its fields; an unknown keyword is a TypeError."""
    unknown = sorted(set(keywords) - {f.name for f in dataclasses.fields(ImageOptions)})
    if unknown:
        raise TypeError(f"unknown image dataset option(s): {', '.join(unknown)}")
    return dataclasses.replace(options or ImageOptions(), **keywords)


def shown(path: str | os.PathLike) -> str:
    """A path as a message shows it: bytes that are not UTF-8 as ``\\xe9``, control characters
    as ``\\n``, so any file name prints on any terminal, on one line.

    Python hands out such names with the undecodable bytes as lone surrogates, which a UTF-8
    stream refuses to print; :func:`os.fsencode` gives the bytes back.
    """
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Dataset:
    """The interface the trainer, ``evaluate`` and ``predict`` use.

    Attributes:
        classes:     class names; the label of a sample is an index into this list.
        image_shape: (C, H, W) of the uint8 images that ``batches`` yields.
        mean, std:   per channel, in pixel units scaled to [0, 1]; ``normalize`` applies them.
        labels:      (N,) int64, the label of every sample, so samplers and per-class
                     statistics need not read any image.
    """

    classes: list[str]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: np.ndarray
    augmentation: str = "none"  # optional: the training augmentation, in words, for logs

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, indices: np.ndarray, batch_size: int, train: bool, seed: int) -> Iterator[Batch]:
        """Yield (images uint8 (B, C, H, W), labels int64 (B,)) for ``indices``, in that order.

        Every batch holds ``batch_size`` samples except perhaps the last.  ``train=True``
        applies the training augmentation, drawn reproducibly from ``seed``.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release files, worker threads or processes (a no-op for in-memory data)."""

    def describe(self) -> str:
        C, H, W = self.image_shape
        return f"{type(self).__name__}: {len(self)} images of {C}x{H}x{W}, {len(self.classes)} classes"

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ArrayDataset(Dataset):
    """A dataset held in memory as one uint8 array (N, C, H, W), with optional augmentation.

    ``augment(images, rng) -> images`` receives a uint8 batch and a NumPy generator and
    returns the augmented uint8 batch (same shape); it runs only when ``train`` is true.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: Any = None,
        augmentation: str | None = None,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {labels.shape}")
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)
        self.classes = list(classes)
        self.image_shape = tuple(int(s) for s in images.shape[1:])
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self.augmentation = augmentation or ("none" if augment is None else "yes")

    def batches(self, indices: np.ndarray, batch_size: int, train: bool, seed: int) -> Iterator[Batch]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        indices = np.asarray(indices, dtype=np.int64)
        rng = np.random.default_rng(seed)
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            images = self.images[idx]  # (B, C, H, W), a copy
            if train and self.augment is not None:
                images = self.augment(images, rng)
            yield images, self.labels[idx]


def normalize(
    images_u8: Any, mean: tuple[float, ...], std: tuple[float, ...], xp: Any = np, dtype: Any = np.float32
) -> Any:
    """uint8 (B, C, H, W) -> ``dtype`` on ``xp``'s device: (x / 255 - mean) / std per channel.

    The uint8 batch is moved first and converted there, so only one byte per pixel crosses
    to a GPU.  Written as one multiply-add with per-channel constants.
    """
    x = xp.asarray(images_u8)
    C = x.shape[1]
    if len(mean) != C or len(std) != C:
        raise ValueError(f"mean and std need one value per channel ({C}), got {len(mean)} and {len(std)}")
    scale = xp.asarray([1.0 / (255.0 * s) for s in std], dtype=dtype).reshape(1, C, 1, 1)
    shift = xp.asarray([-m / s for m, s in zip(mean, std, strict=True)], dtype=dtype).reshape(1, C, 1, 1)
    out = x.astype(dtype)
    out *= scale
    out += shift
    return out
