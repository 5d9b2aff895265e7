"""Datasets: the interface (:mod:`.base`), Fashion-MNIST (:mod:`.fmnist`), image folders and
the prepared cache (:mod:`.folders`, :mod:`.cache`), and ``open_dataset``.

``open_dataset(name_or_path, split)`` is what the commands call.  A *name* picks a
registered dataset (``"fmnist"``, ``"imagenet"``); a *path* to a directory is recognised by
its contents: each registered format has a detector, asked in turn (Fashion-MNIST's
recognises the four IDX files; the image detector ImageNet-style ``train/``/``val/``
folders, any ImageFolder tree, a flat ``val/`` with a label file, a prepared cache and
Downsampled ImageNet's npz batches).  New formats join with :func:`register_dataset` and
:func:`register_format`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from minimlp.data import fmnist
from minimlp.data.base import ArrayDataset, Dataset, normalize

__all__ = [
    "Dataset",
    "ArrayDataset",
    "normalize",
    "open_dataset",
    "register_dataset",
    "register_format",
    "list_datasets",
]

Opener = Callable[..., Dataset]  # opener(split, data_dir=None, download=False, **options) -> Dataset

_DATASETS: dict[str, Opener] = {}
_FORMATS: list[tuple[str, Callable[[Path], bool]]] = []  # (dataset name, detector(directory) -> bool)


def register_dataset(name: str, opener: Opener, aliases: tuple[str, ...] = ()) -> None:
    """Make ``open_dataset(name, split, ...)`` call ``opener(split, data_dir=..., download=..., **options)``."""
    for key in (name, *aliases):
        _DATASETS[key] = opener


def register_format(name: str, detector: Callable[[Path], bool]) -> None:
    """Let a directory that ``detector(directory)`` accepts open as dataset ``name``.

    Detectors are asked in registration order; the first that says yes wins.
    """
    _FORMATS.append((name, detector))


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def detect_format(directory: str | os.PathLike) -> str | None:
    """The registered dataset whose detector recognises ``directory``, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    for name, detector in _FORMATS:
        if detector(directory):
            return name
    return None


def open_dataset(
    name_or_path: str | None,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    **options: Any,
) -> Dataset:
    """Open ``split`` ("train" or "val") of a dataset given by name, or by a directory.

    ``name_or_path`` None or "auto": recognise ``data_dir`` from its contents; without
    ``data_dir``, Fashion-MNIST from the usual places.
    ``options`` go to the dataset's opener; the commands pass ``workers`` (decoding
    processes) and ``img_size`` (the model's input size, or None), which every opener must
    accept, and the image options (``subset``, ``num_classes``, ``class_seed``, ``per_class``,
    ``randaugment``, ``crop_pct``, ``train_crop``) when they are set: an opener refuses any it
    has no use for, naming it.  ``draft`` (JPEG draft decoding) is a speed setting that
    in-memory data ignores.
    """
    if name_or_path in (None, "auto"):
        if data_dir and not download and not Path(data_dir).exists():
            raise FileNotFoundError(f"data directory {data_dir} does not exist")
        name = detect_format(data_dir) if data_dir else None
        if (
            name is None
            and data_dir
            and not download
            and Path(data_dir).is_dir()
            and len(fmnist.missing_files(Path(data_dir))) == len(fmnist.MD5)
        ):
            raise ValueError(
                f"{data_dir} holds no dataset minimlp knows: expected Fashion-MNIST's four files "
                f"({', '.join(fmnist.MD5)}), train/<class>/ and val/<class>/ folders (ImageNet), class "
                f"folders (ImageFolder), or a cache written by python -m minimlp.prepare"
            )
        name = name or "fmnist"
    elif name_or_path in _DATASETS:
        name = name_or_path
    elif Path(name_or_path).is_dir():
        name = detect_format(name_or_path)
        if name is None:
            raise ValueError(f"{name_or_path}: no known dataset layout (known: {', '.join(list_datasets())})")
        data_dir = name_or_path
    else:
        raise ValueError(
            f"unknown dataset {name_or_path!r}; known: {', '.join(list_datasets())}, or a directory holding one"
        )
    return _DATASETS[name](split, data_dir=data_dir, download=download, **options)


IMAGE_OPTIONS = ("subset", "class_seed", "per_class", "randaugment", "crop_pct", "train_crop")


def _open_fmnist(
    split: str,
    data_dir: Any = None,
    download: bool = False,
    workers: int | None = 0,
    img_size: int | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> Dataset:
    if img_size not in (None, 28):
        raise ValueError(f"Fashion-MNIST images are 28x28; the model asks for {img_size}x{img_size} (--img-size)")
    if num_classes not in (None, len(fmnist.CLASSES)):
        raise ValueError(
            f"Fashion-MNIST has {len(fmnist.CLASSES)} classes; choosing {num_classes} of them "
            "(--num-classes) works for ImageNet-style data only"
        )
    unknown = [f"{k}={options[k]!r}" for k in IMAGE_OPTIONS if options.get(k) is not None]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: options of ImageNet-style data, not of Fashion-MNIST")
    options = {k: v for k, v in options.items() if k not in (*IMAGE_OPTIONS, "draft")}  # nothing to decode
    return fmnist.open_fmnist(split, data_dir, download, **options)  # in memory: no workers needed


def _open_images(
    split: str,
    data_dir: Any = None,
    download: bool = False,
    workers: int | None = None,
    img_size: int | None = None,
    **options: Any,
) -> Dataset:
    from minimlp.data.folders import open_image_dataset, recognise

    if data_dir is None:
        raise ValueError("image folders and prepared caches are opened from a directory: give --data-dir ROOT")
    if download:
        raise ValueError("--download fetches Fashion-MNIST only; ImageNet has to be obtained from image-net.org")
    if img_size is None:
        raise ValueError("image folders are cropped to the model's input size; img_size is needed")
    if options.get("train_crop") not in (None, "rrc") and recognise(data_dir) != "prepared":
        raise ValueError(
            f"train_crop={options['train_crop']!r} (--train-crop) applies to a prepared cache only; "
            f"{data_dir} holds image files, which are always cropped with RandomResizedCrop"
        )
    options = {k: v for k, v in options.items() if k != "train_crop" or recognise(data_dir) == "prepared"}
    return open_image_dataset(data_dir, split, img_size, workers=workers, **options)


def _is_image_data(directory: Path) -> bool:
    from minimlp.data.folders import recognise

    return recognise(directory) is not None


register_dataset("fmnist", _open_fmnist, aliases=("fashion-mnist", "fashion_mnist"))
register_format("fmnist", fmnist.has_files)
register_dataset("imagenet", _open_images, aliases=("images", "imagefolder", "prepared"))
register_format("imagenet", _is_image_data)
