"""Photo-like test images: smooth gradients, blobs and sensor-like noise, saved as real JPEGs.

Used by the tests and the loader benchmark, so both decode files that cost what real photos
cost (a 500x375 image at quality 90 is about 80-110 KB and decodes at a rate close to an
ImageNet photo's), without shipping or downloading any data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["photo_like", "make_image_tree"]


def photo_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An RGB image with the statistics that make JPEG decoding cost what it costs on photos."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, phase = rng.uniform(-1, 1, 3)
        pixels[..., c] = 128 + 60 * np.sin(a * x / 40 + b * y / 50 + phase) + 40 * np.cos((x * b - y * a) / 90)
    for _ in range(12):  # flat-coloured blobs give edges
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.02, 0.25) * max(width, height)
        pixels[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    pixels += rng.normal(0, 18, pixels.shape)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
    grain = np.asarray(img, np.float32) + rng.normal(0, 11, pixels.shape)
    return Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8))


def make_image_tree(
    root: str | os.PathLike,
    classes: list[str],
    per_class: int,
    splits=("train", "val"),
    sizes: tuple[tuple[int, int], ...] = ((500, 375),),
    quality: int = 90,
    seed: int = 0,
) -> Path:
    """ROOT/<split>/<class>/<class>_<i>.JPEG, per_class JPEGs per class, cycling through ``sizes``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    n = 0
    for split in splits:
        for wnid in classes:
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = sizes[n % len(sizes)]
                photo_like(w, h, rng).save(folder / f"{wnid}_{i}.JPEG", quality=quality)
                n += 1
    return root
