"""Image decoding and the ImageNet crops: RandomResizedCrop + flip to train, resize + center crop to evaluate.

Everything here works on one image and returns uint8 pixels (H, W, 3); normalisation by
the ImageNet mean and std happens later, on the device, so only uint8 crosses to the GPU.
Lesson 12 explains the pipeline.

* Opening goes by content, never by extension: Pillow reads the file's magic bytes, so a
  PNG named ``.JPEG`` opens as a PNG.  CMYK, grayscale, palette, 16-bit and alpha images
  become RGB (alpha is dropped, as torchvision does, so pixels match what the released
  checkpoints were trained on).  EXIF is never parsed, so broken EXIF blocks cannot stop a
  run; the EXIF orientation tag is ignored, as in torchvision and timm.
* RandomResizedCrop samples its box exactly as torchvision does: up to 10 tries of an area
  fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``; if none fits, a center
  crop clamped to the ratio range.  The crop and the resize are one bicubic resample
  (Pillow's ``resize(box=...)``), which skips copying the crop.
* ``Image.draft`` asks the JPEG decoder to decode at 1/2, 1/4 or 1/8 scale in the DCT
  domain when the crop still has at least the target size at that scale, i.e. for small
  targets or large originals; the box is sampled on the full-size geometry first, so the
  random numbers, and therefore the crop, do not depend on whether drafting happened.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "BadImageError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEFAULT_CROP_PCT",
    "decode",
    "open_rgb",
    "to_rgb",
    "random_resized_crop_box",
    "center_crop_box",
    "check_crop_pct",
    "train_image",
    "eval_image",
    "train_crop",
    "eval_crop",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # eval: resize to size / 0.875 (256 for 224), then center-crop size
BICUBIC = Image.Resampling.BICUBIC

# What Pillow raises on a truncated, corrupt or unrecognised file.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


class BadImageError(Exception):
    """A file that cannot be decoded as an image; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # crosses process boundaries intact
        return (BadImageError, (self.path, self.reason))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (CMYK, L, 1, P, LA, RGBA, I;16, I, F ...)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # 16/32-bit grayscale: scale the 16-bit range to 8 bits (Pillow's convert would clip).
        values = np.asarray(img, dtype=np.float32)
        scale = 1.0 if img.mode == "F" else 1.0 / 257.0
        img = Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8))
    elif (img.mode == "P" and "transparency" in img.info) or img.mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")  # palette transparency must go through RGBA; alpha is then dropped
    return img.convert("RGB")


def decode(
    path: str | Path, plan: Callable[[int, int], tuple[Any, tuple[int, int] | None]] | None = None
) -> tuple[Image.Image, tuple[int, int], Any]:
    """Decode a file as RGB, recognising its format by content -> (image, full size, planned).

    ``plan(width, height) -> (planned, draft)`` runs on the size read from the header, before
    decoding (to sample a crop box, say); ``draft`` is None or a (w, h) that a JPEG may be
    decoded down to, never below.  Raises :class:`BadImageError` naming the file if it cannot
    be decoded.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns about corrupt metadata (a broken EXIF block); the pixels are still fine.
            warnings.simplefilter("ignore", UserWarning)
            with open(path, "rb") as f:
                img = Image.open(f)
                full = img.size
                planned, request = plan(*full) if plan is not None else (None, None)
                if request is not None and img.format == "JPEG":
                    img.draft("RGB", request)
                img.load()
            return to_rgb(img), full, planned
    except DECODE_ERRORS as exc:
        raise BadImageError(str(path), f"{type(exc).__name__}: {exc}") from None


def open_rgb(path: str | Path, draft_to: Callable[[int, int], tuple[int, int]] | None = None) -> Image.Image:
    """Decode a file as RGB; ``draft_to(width, height) -> (w, h)`` lets a JPEG decode down to (at least) w x h."""
    return decode(path, plan=(lambda w, h: (None, draft_to(w, h))) if draft_to is not None else None)[0]


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box as (left, top, w, h) in pixels of a width x height image."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    # Fallback: the whole image, clamped to the ratio range, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def check_crop_pct(crop_pct: float) -> float:
    """``crop_pct`` itself if it is in (0, 1], else ValueError (a checkpoint may carry any value)."""
    if not 0.0 < float(crop_pct) <= 1.0:  # NaN fails too
        raise ValueError(
            f"crop_pct {crop_pct} is not in (0, 1]: the evaluation crop is that fraction of the "
            f"resized image (0.875 for DeiT's 224 of 256)"
        )
    return float(crop_pct)


def center_crop_box(width: int, height: int, size: int, crop_pct: float = DEFAULT_CROP_PCT) -> tuple[float, ...]:
    """The source box (left, top, right, bottom) that "resize short side to size/crop_pct, center-crop size" keeps.

    Same geometry as torchvision's Resize(int(size / crop_pct)) + CenterCrop(size), folded into
    one box so the image is resampled once.
    """
    (rw, rh), (left, top) = _eval_geometry(width, height, size, crop_pct)
    sx, sy = width / rw, height / rh
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def _eval_geometry(width: int, height: int, size: int, crop_pct: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """torchvision's Resize(floor(size / crop_pct)) size (rw, rh) and CenterCrop(size) offset (left, top)."""
    short = math.floor(size / crop_pct)
    if width <= height:
        rw, rh = short, int(short * height / width)
    else:
        rw, rh = int(short * width / height), short
    return (rw, rh), (int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0)))


def _resize_center_crop(img: Image.Image, full_size: tuple[int, int], size: int, crop_pct: float) -> Image.Image:
    """The evaluation crop of a possibly drafted ``img``: resize the whole image, then cut the centre.

    Two steps, as torchvision does them, so an undrafted result is torchvision's pixel for
    pixel: resampling only the crop box (one step) rounds some pixels one or two levels
    differently, which is enough to move a released model's logits.
    """
    (rw, rh), (left, top) = _eval_geometry(*full_size, size, crop_pct)
    return img.resize((rw, rh), BICUBIC).crop((left, top, left + size, top + size))


def _draft_request(width: int, height: int, box_w: float, box_h: float, size: int) -> tuple[int, int] | None:
    """Smallest decode size at which a box_w x box_h crop still covers size x size; None if drafting cannot help."""
    if min(box_w, box_h) < 2 * size:  # the DCT scales are 1/2, 1/4, 1/8: nothing to gain below 2x
        return None
    return math.ceil(width * size / box_w), math.ceil(height * size / box_h)


def _resample(img: Image.Image, full_size: tuple[int, int], box: tuple[float, ...], size: int) -> Image.Image:
    """Resize ``box`` (in full-size coordinates) of a possibly drafted ``img`` to size x size, bicubic."""
    sx, sy = img.size[0] / full_size[0], img.size[1] / full_size[1]
    left, top, right, bottom = box
    return img.resize((size, size), BICUBIC, box=(left * sx, top * sy, right * sx, bottom * sy))


AugmentFn = Callable[[Image.Image, np.random.Generator], Image.Image]


def _finish_train(img, full_size, box, size, rng, hflip, augment) -> np.ndarray:
    """Flip draw, the one resample, then ``augment``: the part of the training crop after the box is chosen."""
    flip = rng.random() < hflip
    left, top, w, h = box
    out = _resample(img, full_size, (left, top, left + w, top + h), size)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if augment is not None:
        out = augment(out, rng)
    return np.asarray(out)


def train_crop(
    img: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    augment: AugmentFn | None = None,
) -> np.ndarray:
    """RandomResizedCrop + horizontal flip (+ ``augment``, e.g. RandAugment) of an RGB image -> (size, size, 3) uint8.

    Random numbers are drawn in a fixed order: the box, the flip, then ``augment``'s own.
    """
    box = random_resized_crop_box(img.size[0], img.size[1], rng, scale, ratio)
    return _finish_train(img, img.size, box, size, rng, hflip, augment)


def eval_crop(img: Image.Image, size: int, crop_pct: float = DEFAULT_CROP_PCT) -> np.ndarray:
    """Resize the short side to size/crop_pct (bicubic) and center-crop size x size -> (size, size, C) uint8.

    torchvision's ``Resize(int(size / crop_pct))`` + ``CenterCrop(size)``, pixel for pixel.
    """
    return np.asarray(_resize_center_crop(img, img.size, size, crop_pct))


def train_image(
    path: str | Path,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    augment: AugmentFn | None = None,
    draft: bool = True,
) -> np.ndarray:
    """Decode ``path`` and apply the training crop -> (size, size, 3) uint8; BadImageError if undecodable."""

    def plan(width: int, height: int):
        box = random_resized_crop_box(width, height, rng, scale, ratio)  # (left, top, w, h)
        return box, _draft_request(width, height, box[2], box[3], size) if draft else None

    img, full, box = decode(path, plan)
    return _finish_train(img, full, box, size, rng, hflip, augment)


def eval_image(path: str | Path, size: int, crop_pct: float = DEFAULT_CROP_PCT, draft: bool = True) -> np.ndarray:
    """Decode ``path`` and apply the evaluation crop -> (size, size, 3) uint8; BadImageError if undecodable.

    Without ``draft`` this is torchvision's Resize + CenterCrop pixel for pixel (the paper's
    evaluation); with it, a large JPEG may be decoded at 1/2 to 1/8 scale first (faster, and
    a level or so different in places).
    """

    def plan(width: int, height: int):
        box = center_crop_box(width, height, size, crop_pct)  # (left, top, right, bottom)
        return None, _draft_request(width, height, box[2] - box[0], box[3] - box[1], size) if draft else None

    img, full, _ = decode(path, plan)
    return np.asarray(_resize_center_crop(img, full, size, crop_pct))
