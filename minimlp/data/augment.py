"""The DeiT recipe's augmentations, each optional and off by default.  Lesson 12.

* :class:`RandAugment` (on a Pillow image, in the data workers): ``rand-m9-mstd0.5-inc1`` means
  2 operations per image, each drawn uniformly from 15 and applied with probability 0.5, at
  magnitude 9 out of 10 plus Gaussian noise of std 0.5 (clipped to [0, 10]); ``inc1`` picks the
  variants whose strength grows with the magnitude.  Level l = magnitude / 10 maps to:
  rotate ±30·l degrees, shear ±0.3·l, translate ±0.45·l of the side, colour / contrast /
  brightness / sharpness factor 1 ± 0.9·l (at least 0.1), posterize to 4 - int(4·l) bits,
  solarize above 256 - int(256·l), solarize-add int(110·l) below 128; autocontrast,
  equalize and invert take no level.  Signs are random; geometric operations are bicubic and
  fill with the dataset mean.
* :class:`MixupCutmix` (on the device batch): per batch, cutmix (α 1.0) or mixup (α 0.8), 50/50;
  each image is mixed with the batch reversed; cutmix's λ is corrected to the pasted area.
  The soft targets already include label smoothing, so the loss must not smooth them again.
* :class:`RandomErasing` (on the device batch, after normalisation): with p 0.25 per image, a box
  of area 2%..1/3 and aspect 0.3..3.3 filled with N(0, 1) noise per pixel and channel.
* :func:`repeated_augmentation_indices`: each sampled image appears ``repeats`` times in a row,
  so one batch sees several augmentations of it (DeiT's repeated augmentation, ×3).
* :func:`deit_recipe`: the whole training recipe as data.

Random numbers: operations on Pillow images draw from the NumPy generator they are given (the
loader's per-batch generator, so runs are reproducible); device operations take a host NumPy
generator for their few scalars and draw noise on the device.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from minimlp.backend import Array, array_module
from minimlp.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "RandAugment",
    "MixupCutmix",
    "RandomErasing",
    "repeated_augmentation_indices",
    "deit_recipe",
    "recipe_lr",
]


# ------------------------------------------------------------------------------------------------
# RandAugment

INCREASING_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
ORIGINAL_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
MAX_LEVEL = 10.0
_ENHANCERS = {
    "Color": ImageEnhance.Color,
    "Contrast": ImageEnhance.Contrast,
    "Brightness": ImageEnhance.Brightness,
    "Sharpness": ImageEnhance.Sharpness,
}


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(img: Image.Image, matrix: tuple[float, ...], fill: tuple[int, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BICUBIC, fillcolor=fill)


def apply_op(
    name: str,
    img: Image.Image,
    level: float,
    rng: np.random.Generator,
    fill: tuple[int, ...],
    translate_pct: float = 0.45,
) -> Image.Image:
    """One RandAugment operation at ``level`` in [0, 1] on an RGB image."""
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(_signed(30.0 * level, rng), resample=Image.Resampling.BICUBIC, fillcolor=fill)
    if name in ("Posterize", "PosterizeIncreasing"):
        bits = int(4 * level)
        bits = 4 - bits if name == "PosterizeIncreasing" else bits
        if bits >= 8:
            return img
        keep = ~(2 ** (8 - bits) - 1) & 0xFF  # the top `bits` bits; 0 bits keeps nothing (black)
        return img.point([i & keep for i in range(256)] * len(img.getbands()))
    if name in ("Solarize", "SolarizeIncreasing"):
        threshold = min(256, int(256 * level))
        threshold = 256 - threshold if name == "SolarizeIncreasing" else threshold
        return ImageOps.solarize(img, threshold)
    if name == "SolarizeAdd":
        add = min(128, int(110 * level))
        lut = [min(255, i + add) if i < 128 else i for i in range(256)]
        return img.point(lut * len(img.getbands()))
    base = name.removesuffix("Increasing")
    if base in _ENHANCERS:
        if name.endswith("Increasing"):  # 1.0 is "no change"; the level moves away from it either way
            factor = max(0.1, 1.0 + _signed(0.9 * level, rng))
        else:
            factor = 1.8 * level + 0.1
        return _ENHANCERS[base](img).enhance(factor)
    if name == "ShearX":
        return _affine(img, (1, _signed(0.3 * level, rng), 0, 0, 1, 0), fill)
    if name == "ShearY":
        return _affine(img, (1, 0, 0, _signed(0.3 * level, rng), 1, 0), fill)
    if name == "TranslateXRel":
        return _affine(img, (1, 0, _signed(translate_pct * level, rng) * img.size[0], 0, 1, 0), fill)
    if name == "TranslateYRel":
        return _affine(img, (1, 0, 0, 0, 1, _signed(translate_pct * level, rng) * img.size[1]), fill)
    raise ValueError(f"unknown RandAugment operation {name!r}")


@dataclass(frozen=True)
class RandAugment:
    """RandAugment on Pillow images; ``RandAugment.from_config("rand-m9-mstd0.5-inc1")`` is DeiT's."""

    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.5
    prob: float = 0.5
    ops: tuple[str, ...] = INCREASING_OPS
    fill: tuple[int, int, int] = tuple(round(255 * m) for m in IMAGENET_MEAN)
    translate_pct: float = 0.45

    @classmethod
    def from_config(cls, config: str, mean: tuple[float, ...] = IMAGENET_MEAN) -> RandAugment:
        """Parse timm's config string: ``rand`` then ``-m<magnitude>``, ``-n<ops>``, ``-mstd<std>``,
        ``-inc<0|1>``, ``-p<prob>``, in any order."""
        sections = config.strip().split("-")
        if sections[0] != "rand":
            raise ValueError(f"RandAugment config must start with 'rand', got {config!r}")
        fields: dict[str, Any] = {
            "ops": ORIGINAL_OPS,
            "fill": tuple(round(255 * m) for m in mean),
            "magnitude": MAX_LEVEL,
        }
        for section in sections[1:]:
            match = re.fullmatch(r"(mstd|inc|m|n|p)([\d.]+)", section)
            if match is None:
                raise ValueError(
                    f"unknown section {section!r} in RandAugment config {config!r} "
                    f"(known: m<magnitude>, n<ops>, mstd<std>, inc<0|1>, p<prob>)"
                )
            key, value = match.groups()
            if key == "m":
                fields["magnitude"] = float(value)
            elif key == "n":
                fields["num_ops"] = int(value)
            elif key == "mstd":
                fields["magnitude_std"] = float(value)
            elif key == "p":
                fields["prob"] = float(value)
            elif key == "inc":
                fields["ops"] = INCREASING_OPS if int(value) else ORIGINAL_OPS
        fields.setdefault("magnitude_std", 0.0)
        return cls(**fields)

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        chosen = rng.integers(0, len(self.ops), size=self.num_ops)  # with replacement, uniform
        for k in chosen:
            if rng.random() >= self.prob:
                continue
            magnitude = self.magnitude
            if self.magnitude_std > 0:
                magnitude = rng.normal(magnitude, self.magnitude_std)
            level = min(MAX_LEVEL, max(0.0, magnitude)) / MAX_LEVEL
            img = apply_op(self.ops[k], img, level, rng, self.fill, self.translate_pct)
        return img


# ------------------------------------------------------------------------------------------------
# Mixup / CutMix on the device


def smoothed_one_hot(labels: Array, num_classes: int, smoothing: float, dtype: Any = "float32") -> Array:
    """(B,) int labels -> (B, K) rows of (1 - ε) one-hot + ε / K."""
    xp = array_module(labels)
    off = smoothing / num_classes
    q = xp.full((labels.shape[0], num_classes), off, dtype=dtype)
    q[xp.arange(labels.shape[0]), labels] = 1.0 - smoothing + off
    return q


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box covering about 1 - lam of the image, centred uniformly (it may be clipped at the border)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(y0), int(y1), int(x0), int(x1)


@dataclass(frozen=True)
class MixupCutmix:
    """Mix each image of a batch with the batch reversed; targets become soft (B, K) rows summing to 1."""

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5  # probability of cutmix when both are on
    prob: float = 1.0  # probability of mixing a batch at all
    smoothing: float = 0.1

    def __call__(self, images: Array, labels: Array, rng: np.random.Generator) -> tuple[Array, Array, float]:
        """images (B, C, H, W) float, labels (B,) int -> (mixed images, soft targets (B, K), lam).

        The images are changed in place for cutmix and replaced for mixup; ``lam`` is the weight
        of each image's own label.  Targets include the smoothing: use them with smoothing 0.
        """
        xp = array_module(images)
        labels = xp.asarray(labels)
        lam, use_cutmix = 1.0, False
        if rng.random() < self.prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = rng.random() < self.switch_prob
            elif self.cutmix_alpha > 0:
                use_cutmix = True
            elif self.mixup_alpha <= 0:
                raise ValueError("MixupCutmix needs mixup_alpha > 0 or cutmix_alpha > 0")
            lam = float(
                rng.beta(self.cutmix_alpha, self.cutmix_alpha)
                if use_cutmix
                else rng.beta(self.mixup_alpha, self.mixup_alpha)
            )
        if lam < 1.0:
            if use_cutmix:
                H, W = images.shape[2:]
                y0, y1, x0, x1 = cutmix_box(H, W, lam, rng)
                # copy first: the source and destination are views of the same array
                images[:, :, y0:y1, x0:x1] = images[::-1, :, y0:y1, x0:x1].copy()
                lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)
            else:
                images = images * images.dtype.type(lam) + images[::-1] * images.dtype.type(1.0 - lam)
        dtype = images.dtype if images.dtype.kind == "f" else "float32"
        own = smoothed_one_hot(labels, self.num_classes, self.smoothing, dtype)
        targets = own * dtype_scalar(lam, dtype) + own[::-1] * dtype_scalar(1.0 - lam, dtype)  # (B, K)
        return images, targets, lam


def dtype_scalar(value: float, dtype: Any) -> Any:
    return np.dtype(dtype).type(value)


# ------------------------------------------------------------------------------------------------
# Random erasing on the device


@dataclass(frozen=True)
class RandomErasing:
    """Erase one random box per image (with probability ``prob``) with per-pixel N(0, 1) noise."""

    prob: float = 0.25
    area: tuple[float, float] = (0.02, 1 / 3)
    aspect: tuple[float, float] = (0.3, 1 / 0.3)
    tries: int = 10

    def box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
        """(top, left, h, w) of the box to erase in one image, or None (not this image, or no box
        fitted in ``tries``).  The plain version of :meth:`boxes`, which draws a whole batch at once."""
        if rng.random() >= self.prob:
            return None
        log_aspect = (math.log(self.aspect[0]), math.log(self.aspect[1]))
        for _ in range(self.tries):
            target_area = rng.uniform(self.area[0], self.area[1]) * height * width
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < width and h < height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        return None

    def boxes(self, batch: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """(batch, 4) int64 rows (top, left, h, w), all 0 where nothing is erased.

        The same distribution as :meth:`box` per image: all ``tries`` candidates are drawn at
        once and the first that fits is taken, which is what the loop's first fit is.
        """
        log_aspect = np.log(self.aspect)
        erase = rng.random(batch) < self.prob  # (B,)
        target_area = rng.uniform(self.area[0], self.area[1], (batch, self.tries)) * height * width
        aspect = np.exp(rng.uniform(log_aspect[0], log_aspect[1], (batch, self.tries)))
        h = np.rint(np.sqrt(target_area * aspect)).astype(np.int64)  # (B, tries); rint rounds as round()
        w = np.rint(np.sqrt(target_area / aspect)).astype(np.int64)
        fits = (w < width) & (h < height)
        first = fits.argmax(axis=1)  # the first candidate that fits (0 when none does)
        rows = np.arange(batch)
        erase &= fits[rows, first]
        h, w = np.where(erase, h[rows, first], 0), np.where(erase, w[rows, first], 0)
        top = np.where(erase, rng.integers(0, height - h + 1), 0)  # (B,), each in [0, H - h]
        left = np.where(erase, rng.integers(0, width - w + 1), 0)
        return np.stack([top, left, h, w], axis=1)

    def __call__(self, images: Array, rng: np.random.Generator, noise_rng: Any = None) -> Array:
        """Erase in place in normalised images (B, C, H, W); returns them.

        ``rng`` (host NumPy) draws the boxes; ``noise_rng``, a generator of the images' array
        module with ``standard_normal(size, dtype)``, draws the noise (default: ``rng`` for
        NumPy arrays, CuPy's global generator for CuPy arrays).  The whole batch is erased by a
        handful of array operations, without a loop over images: noise is drawn for every pixel
        of the erased images and kept inside their boxes.
        """
        xp = array_module(images)
        B, C, H, W = images.shape
        boxes = self.boxes(B, H, W, rng)
        erased = np.flatnonzero(boxes[:, 2] > 0)  # (E,)
        if erased.size == 0:
            return images
        box = xp.asarray(boxes[erased].T)[:, :, None, None]  # (4, E, 1, 1): one copy to the device
        top, left, h, w = box[0], box[1], box[2], box[3]  # each (E, 1, 1)
        y, x = xp.arange(H)[:, None], xp.arange(W)  # (H, 1), (W,)
        inside = (y >= top) & (y < top + h) & (x >= left) & (x < left + w)  # (E, H, W)
        if noise_rng is None:
            noise_rng = rng if xp is np else xp.random
        noise = noise_rng.standard_normal((erased.size, C, H, W), dtype=images.dtype)
        index = xp.asarray(erased)
        images[index] = xp.where(inside[:, None], noise, images[index])
        return images


# ------------------------------------------------------------------------------------------------
# Repeated augmentation


def repeated_augmentation_indices(
    num_samples: int, seed: int, repeats: int = 3, num_replicas: int = 1, rank: int = 0
) -> np.ndarray:
    """One epoch's sample order with each image repeated ``repeats`` times in a row.

    Like DeiT's sampler: shuffle, repeat each index, split between ``num_replicas`` processes
    (this is ``rank``'s share) and keep one epoch's worth, ``num_samples // num_replicas`` indices,
    so an epoch costs the same but sees about 1/repeats of the images, each several times.
    (DeiT also rounds the epoch down to a multiple of 256 images; minimlp does not.)
    """
    order = np.random.default_rng(seed).permutation(num_samples)
    repeated = np.repeat(order, repeats)
    total = math.ceil(len(repeated) / num_replicas) * num_replicas
    repeated = np.concatenate([repeated, repeated[: total - len(repeated)]])
    return repeated[rank:total:num_replicas][: num_samples // num_replicas]


# ------------------------------------------------------------------------------------------------
# The recipe


def deit_recipe(ff_model: bool = True) -> dict:
    """DeiT's ImageNet training recipe, as the trainer's option names (timm's) and values.

    ``lr`` is for a total batch of ``lr_base_batch``; scale it with :func:`recipe_lr`.
    ``drop`` (dropout) is 0.1 for the feed-forward-only models, 0 for the attention models.
    """
    return {
        "opt": "adamw",
        "opt_betas": (0.9, 0.999),
        "opt_eps": 1e-8,
        "lr": 5e-4,
        "lr_base_batch": 512,  # lr = 5e-4 * total_batch / 512
        "weight_decay": 0.05,  # not on 1-D parameters or the class token
        "epochs": 300,
        "sched": "cosine",  # stepped per epoch
        "warmup_epochs": 5,
        "warmup_lr": 1e-6,
        "min_lr": 1e-5,
        "smoothing": 0.1,
        "drop_path": 0.1,  # stochastic depth, rising linearly with depth
        "drop": 0.1 if ff_model else 0.0,
        "mixup": 0.8,
        "cutmix": 1.0,
        "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5,
        "aa": "rand-m9-mstd0.5-inc1",
        "reprob": 0.25,
        "remode": "pixel",
        "recount": 1,
        "repeated_aug": 3,
        "train_interpolation": "bicubic",
        "scale": (0.08, 1.0),
        "ratio": (3 / 4, 4 / 3),
        "hflip": 0.5,
        "crop_pct": 0.875,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }


def recipe_lr(total_batch_size: int, recipe: dict | None = None) -> float:
    """The recipe's learning rate scaled linearly to ``total_batch_size``."""
    recipe = recipe or deit_recipe()
    return recipe["lr"] * total_batch_size / recipe["lr_base_batch"]
