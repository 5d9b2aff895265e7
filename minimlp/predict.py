"""Classify image files with a checkpoint: ``python -m minimlp.predict``.

    python -m minimlp.predict --checkpoint runs/fmnist/best.npz shirt.png boot.jpg

Each image is opened with Pillow, converted to the model's channels (grayscale or RGB),
its shorter side resized to ``img_size / crop_pct`` and the centre cropped to the model's
size, normalised with the training statistics stored in the checkpoint, and the five most
likely classes are printed with their probabilities.  Fashion-MNIST shows light clothes
on a black background: ``--invert`` turns a photo on a white background into that form.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from minimlp.backend import to_numpy
from minimlp.data import normalize

__all__ = ["load_image", "predict", "main"]


def load_image(path: str | Path, channels: int, size: int, crop_pct: float = 1.0, invert: bool = False) -> np.ndarray:
    """An image file as uint8 (C, size, size): converted, resized (bicubic), centre-cropped."""
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
    if invert:
        image = ImageOps.invert(image)
    scaled = int(round(size / crop_pct))
    w, h = image.size
    ratio = scaled / min(w, h)
    image = image.resize((max(scaled, round(w * ratio)), max(scaled, round(h * ratio))), Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.uint8)  # (H, W) or (H, W, C)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)  # (C, H, W)


def predict(model: Any, images_u8: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Class probabilities (B, K) for uint8 images (B, C, H, W)."""
    x = normalize(images_u8, mean, std, model.xp, model.dtype)
    logits, _ = model.forward(x, train=False)
    logits = to_numpy(logits).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minimlp.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a minimlp .npz checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--top", type=int, default=5, help="how many classes to show per image (default: 5)")
    p.add_argument("--invert", action="store_true", help="invert brightness before classifying")
    p.add_argument("--gpu", action="store_true", help="run on the GPU (CuPy)")
    return p


def main(argv: list[str] | None = None) -> int:
    from minimlp.io.files import CheckpointError
    from minimlp.io.weights import model_from_checkpoint

    args = build_parser().parse_args(argv)
    try:
        model, info = model_from_checkpoint(args.checkpoint, device="gpu" if args.gpu else "cpu")
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = info.meta or {}
    info = meta.get("data", {})
    C, size = model.config.in_chans, model.config.img_size
    mean, std = tuple(info.get("mean", (0.5,) * C)), tuple(info.get("std", (0.5,) * C))
    classes = meta.get("classes") or [str(i) for i in range(model.config.num_classes)]
    images = []
    for path in args.images:
        try:
            images.append(load_image(path, C, size, float(info.get("crop_pct", 1.0)), args.invert))
        except (OSError, UnidentifiedImageError) as exc:
            print(f"error: {path}: cannot read this image ({exc})", file=sys.stderr)
            return 2
    probs = predict(model, np.stack(images), mean, std)  # (B, K)
    for path, p in zip(args.images, probs, strict=True):
        print(path)
        for k in np.argsort(-p)[: max(1, min(args.top, len(classes)))]:
            print(f"  {100 * p[k]:6.2f}%  {classes[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
