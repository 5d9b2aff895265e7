"""The prepared cache: a dataset decoded and resized once, stored as uint8 pixels in a memory-mapped file.

``python -m minimlp.prepare ROOT OUT --size S`` writes it; ``--data-dir OUT`` reads it with
random crops and flips at memory speed (no JPEG decoding).  The README's "A prepared cache
for fast low-resolution training" measures what that buys.

Stored geometry (``--size S``):

* ``short`` (default): the image is resized so its short side is S, and its long side is
  center-cropped to at most ``ceil(4/3 · S)`` (so the common 4:3 photo is kept whole, and
  wider panoramas lose their edges).  Records are (h, w, 3) with min(h, w) = S.
* ``square`` (``--square``): the whole image is squashed to S×S with a box filter, as
  Downsampled ImageNet is made.

Reading: training applies RandomResizedCrop (scale, ratio) to the stored image and resizes
to ``img_size`` (bicubic) + a horizontal flip, like the folder pipeline; ``train_crop="crop"``
instead takes a plain random img_size×img_size window (padded when the stored image is
smaller) + flip, with no resampling at all.  Evaluation resizes the short side to
``img_size / crop_pct`` and center-crops, as for folders; prepare with
``S = floor(img_size / 0.875)`` (73 for 64 px) to make that a pure crop.  Square caches are
evaluated on the whole image (crop_pct 1), as Downsampled ImageNet is.

Files in OUT, one set per split (``train_*``, ``val_*``)::

    minimlp_cache.json     header: format, version, geometry, size, max_long, class map, the options
                           used, per split its count, chunk size and whether it is complete
    <split>_images.u8      N fixed-size slots of max_long·size·3 bytes (square: size·size·3); record i
                           fills the start of slot i, (h, w, 3) row-major
    <split>_shapes.npy     (N, 2) int32: (h, w) of each record; (0, 0) = the source could not be decoded
    <split>_labels.npy     (N,) int64 labels 0..K-1
    <split>_files.txt      the source path of each record, one per line, as the file system's bytes (a
                           backslash in a name is written \\\\, a line break \\n)
    <split>_done.npy       (chunks,) uint8: 1 once a chunk of records is written and flushed (resume)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from minimlp.data import transforms
from minimlp.data.augment import RandAugment
from minimlp.data.base import ImageOptions, image_options
from minimlp.data.classes import ClassMap, cap_samples, select_classes
from minimlp.data.loader import LoaderDataset, default_workers
from minimlp.data.transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN

__all__ = [
    "CACHE_HEADER",
    "FORMAT",
    "VERSION",
    "CacheReader",
    "PreparedDataset",
    "max_long_side",
    "resize_for_cache",
    "load_record",
    "open_prepared",
    "read_header",
    "split_paths",
]

CACHE_HEADER = "minimlp_cache.json"
FORMAT = "minimlp-prepared"
VERSION = 1
MAX_ASPECT = 4 / 3  # short geometry: the long side is cropped to at most 4/3 of the short side


def max_long_side(size: int, square: bool) -> int:
    return size if square else math.ceil(MAX_ASPECT * size)


def split_paths(out: str | os.PathLike, split: str) -> dict[str, Path]:
    out = Path(out)
    return {
        kind: out / f"{split}_{kind}{ext}"
        for kind, ext in (
            ("images", ".u8"),
            ("shapes", ".npy"),
            ("labels", ".npy"),
            ("files", ".txt"),
            ("done", ".npy"),
        )
    }


def resize_for_cache(img: Image.Image, size: int, square: bool, full_size: tuple[int, int] | None = None) -> np.ndarray:
    """An RGB image -> the stored record (h, w, 3) uint8 (see the module docstring for the geometry).

    ``full_size`` is the original (width, height) when ``img`` was decoded at a reduced (draft)
    scale: the geometry follows the original, so drafting never changes a record's shape.
    """
    width, height = full_size or img.size
    sx, sy = img.size[0] / width, img.size[1] / height  # drafted pixels per original pixel
    if square:
        return np.asarray(img.resize((size, size), Image.Resampling.BOX))
    if width <= height:
        new_w, new_h = size, max(size, round(height * size / width))
    else:
        new_w, new_h = max(size, round(width * size / height)), size
    limit = max_long_side(size, square)
    keep_w, keep_h = min(new_w, limit), min(new_h, limit)
    # The center region of the resized image, mapped back to source pixels: one resample does both.
    left, top = (new_w - keep_w) / 2 * width / new_w, (new_h - keep_h) / 2 * height / new_h
    right, bottom = left + keep_w * width / new_w, top + keep_h * height / new_h
    box = (left * sx, top * sy, right * sx, bottom * sy)
    return np.asarray(img.resize((keep_w, keep_h), Image.Resampling.BICUBIC, box=box))


def draft_size_for_cache(width: int, height: int, size: int, square: bool) -> tuple[int, int]:
    """How small a JPEG may be decoded (``Image.draft``) for its record: twice the record's size, so the
    final resize still averages at least 2x2 decoded pixels per stored pixel."""
    if square:
        return 2 * size, 2 * size
    short = min(width, height)
    return math.ceil(2 * width * size / short), math.ceil(2 * height * size / short)


def load_record(path: str | os.PathLike, size: int, square: bool) -> np.ndarray:
    """Decode a source file (drafting where it pays) and make its record; BadImageError if undecodable."""
    img, full, _ = transforms.decode(path, lambda w, h: (None, draft_size_for_cache(w, h, size, square)))
    return resize_for_cache(img, size, square, full)


def read_header(out: str | os.PathLike) -> dict:
    path = Path(out) / CACHE_HEADER
    try:
        header = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable cache header ({exc}); prepare the cache again") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(
            f"{path} is not a {FORMAT} v{VERSION} header (found {header.get('format')} "
            f"v{header.get('version')}); prepare the cache again"
        )
    return header


@dataclass(frozen=True)
class CacheReader:
    """Reads and crops records of one split (the picklable part a worker needs; the file is mapped lazily)."""

    images_path: str
    slot_bytes: int
    img_size: int
    train_crop: str = "rrc"  # "rrc": RandomResizedCrop + flip; "crop": random window + flip, no resampling
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    crop_pct: float = DEFAULT_CROP_PCT
    randaugment: RandAugment | None = None

    def _images(self) -> np.memmap:
        mapped = self.__dict__.get("_mapped")
        if mapped is None:
            mapped = np.memmap(self.images_path, dtype=np.uint8, mode="r")
            object.__setattr__(self, "_mapped", mapped)
        return mapped

    def record(self, item: tuple[int, int, int]) -> np.ndarray:
        index, h, w = item
        start = index * self.slot_bytes
        return self._images()[start : start + h * w * 3].reshape(h, w, 3)  # (h, w, 3), a view of the file

    def load(self, item: tuple[int, int, int], train: bool, rng: np.random.Generator) -> np.ndarray:
        pixels = self.record(item)
        if not train:
            h, w = pixels.shape[:2]
            left, top, right, bottom = transforms.center_crop_box(w, h, self.img_size, self.crop_pct)
            if (
                (right - left, bottom - top) == (self.img_size, self.img_size)
                and float(left).is_integer()
                and float(top).is_integer()
            ):  # stored at size / crop_pct: a plain crop, no resampling
                return pixels[int(top) : int(top) + self.img_size, int(left) : int(left) + self.img_size]
            return transforms.eval_crop(Image.fromarray(pixels), self.img_size, self.crop_pct)
        if self.train_crop == "crop":
            return self._window(pixels, rng)
        return transforms.train_crop(
            Image.fromarray(pixels), self.img_size, rng, self.scale, self.ratio, self.hflip, self.randaugment
        )

    def _window(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random img_size window (zero-padded where the record is smaller) + flip: pure memory copies."""
        s = self.img_size
        h, w = pixels.shape[:2]
        if h < s or w < s:
            padded = np.zeros((max(h, s), max(w, s), 3), np.uint8)
            top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
            padded[top : top + h, left : left + w] = pixels
            pixels, h, w = padded, *padded.shape[:2]
        top = int(rng.integers(0, h - s + 1))
        left = int(rng.integers(0, w - s + 1))
        window = pixels[top : top + s, left : left + s]
        if rng.random() < self.hflip:
            window = window[:, ::-1]
        if self.randaugment is not None:
            window = np.asarray(self.randaugment(Image.fromarray(np.ascontiguousarray(window)), rng))
        return window

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_mapped", None)  # each process maps the file itself
        return state

    def __setstate__(self, state):
        for key, value in state.items():
            object.__setattr__(self, key, value)


class PreparedDataset(LoaderDataset):
    """A split of a prepared cache; its reader crops records of the memory-mapped file."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        img_size: int,
        header: dict,
        records: np.ndarray,
        labels: np.ndarray,
        class_map: ClassMap,
        reader: CacheReader,
        workers: int,
        prefetch: int = 2,
        augmentation: str = "none",
    ):
        self.root = Path(root)
        self.split = split
        self.header = header
        self.records = records  # (N,) indices into the split's slots
        self.shapes = np.load(split_paths(root, split)["shapes"], mmap_mode="r")
        super().__init__(
            labels,
            class_map,
            reader,
            img_size,
            workers,
            prefetch,
            description=f"prepared cache {self.root} {split} (stored {header['geometry']} {header['size']} px)",
            augmentation=augmentation,
        )

    def _items(self, indices: np.ndarray) -> list[tuple[int, int, int]]:
        records = self.records[indices]
        shapes = self.shapes[records]  # (n, 2)
        return list(zip(records.tolist(), shapes[:, 0].tolist(), shapes[:, 1].tolist(), strict=True))


def open_prepared(
    root: str | os.PathLike, split: str, img_size: int, options: ImageOptions | None = None, **keywords: Any
) -> PreparedDataset:
    """One split of a prepared cache, optionally narrowed further to a subset of its classes.

    ``options`` as for :func:`minimlp.data.folders.open_folder_dataset` (``holdout``, ``draft`` and
    ``max_bad`` mean nothing here and are ignored); ``train_crop`` picks "rrc" or "crop" (see the module
    docstring).  ``crop_pct`` defaults to 0.875, and to 1 (the whole image) for square caches, which are
    whole images already, as Downsampled ImageNet is evaluated.
    """
    o = image_options(options, keywords)
    root = Path(root)
    header = read_header(root)
    if split not in header["splits"]:
        raise FileNotFoundError(
            f"the cache {root} has no {split} split (it holds {', '.join(header['splits'])}); "
            f"prepare it from a dataset that has one"
        )
    info = header["splits"][split]
    if not info.get("complete"):
        raise ValueError(
            f"the {split} split of the cache {root} is incomplete: rerun the same "
            f"python -m minimlp.prepare command to finish it"
        )
    if o.train_crop not in ("rrc", "crop"):
        raise ValueError(f"train_crop must be 'rrc' or 'crop', got {o.train_crop!r}")
    paths = split_paths(root, split)
    stored_map = ClassMap.from_dict(header["classes"])
    shapes = np.load(paths["shapes"], mmap_mode="r")
    stored_labels = np.load(paths["labels"])
    valid = np.flatnonzero(shapes[:, 0] > 0)  # records whose source decoded
    class_map = select_classes(stored_map.wnids, o.subset, o.num_classes, o.class_seed)
    labels = class_map.remap(stored_labels[valid])
    keep = labels >= 0
    records, labels = valid[keep], labels[keep]
    if split == "train" and (o.per_class is not None or o.train_num_samples is not None):
        chosen = cap_samples(labels, o.per_class, o.train_num_samples, o.sample_seed)
        records, labels = records[chosen], labels[chosen]
    # Report class names of the original data set (the cache may itself be a subset).
    class_map = ClassMap(
        class_map.wnids, class_map.names, tuple(stored_map.source_index[i] for i in class_map.source_index)
    )
    slot_bytes = header["max_long"] * header["size"] * 3
    crop_pct = o.crop_pct
    if crop_pct is None:
        crop_pct = 1.0 if header["geometry"] == "square" else DEFAULT_CROP_PCT
    crop_pct = transforms.check_crop_pct(crop_pct)
    augment = RandAugment.from_config(o.randaugment, mean=IMAGENET_MEAN) if o.randaugment else None
    reader = CacheReader(
        str(paths["images"]),
        slot_bytes,
        img_size,
        o.train_crop,
        tuple(o.scale),
        tuple(o.ratio),
        o.hflip,
        crop_pct,
        augment,
    )
    crop = "RandomResizedCrop + flip" if o.train_crop == "rrc" else "random crop + flip"
    return PreparedDataset(
        root,
        split,
        img_size,
        header,
        records,
        labels,
        class_map,
        reader,
        workers=default_workers() if o.workers is None else o.workers,
        prefetch=o.prefetch,
        augmentation=crop + (f" + RandAugment {o.randaugment}" if o.randaugment else ""),
    )
