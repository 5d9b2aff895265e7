"""Classify image files with a checkpoint or released weights: ``python -m minimlp.predict``.

    python -m minimlp.predict --checkpoint runs/fmnist/best.npz shirt.png boot.jpg
    python -m minimlp.predict --pretrained linear-tiny-checkpoint.pth cat.jpg

Each image goes through the checkpoint's own evaluation transform (the one its validation
images went through in training, stored in the checkpoint): converted to the model's
channels (grayscale or RGB, CMYK and palette images included), the shorter side resized to
``img_size / crop_pct`` (bicubic) and the centre cropped to the model's size, normalised
with the training mean and std.  A file without that record (a PyTorch ``.pth``) gets the
paper's ImageNet transform: crop_pct 0.875 (256 then 224), the ImageNet mean and std.  The
most likely classes are printed with their probabilities, named by the checkpoint's class
map (ImageNet names for a 1000-class file).  Fashion-MNIST shows light clothes on a black
background: ``--invert`` turns a photo on a white background into that form.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageOps

from minimlp.backend import to_numpy
from minimlp.data import normalize
from minimlp.data.transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, BadImageError, decode, eval_crop

__all__ = ["load_image", "predict", "checkpoint_transform", "main"]


def load_image(path: str | Path, channels: int, size: int, crop_pct: float = 1.0, invert: bool = False) -> np.ndarray:
    """An image file as uint8 (C, size, size): converted, resized (bicubic), centre-cropped.

    The resize and crop are :func:`minimlp.data.transforms.eval_crop`, exactly what the
    validation images went through.  Raises :class:`BadImageError` naming an unreadable file.
    """
    image = decode(path)[0]  # RGB, whatever the file's mode and format
    if channels == 1:
        image = image.convert("L")
    if invert:
        image = ImageOps.invert(image)
    pixels = eval_crop(image, size, crop_pct)  # (H, W) or (H, W, C)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)  # (C, H, W)


def checkpoint_transform(
    meta: dict[str, Any] | None, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """(mean, std, crop_pct) of a checkpoint's evaluation transform; the paper's for files without one."""
    data = (meta or {}).get("data")
    if data:
        return tuple(data["mean"]), tuple(data["std"]), float(data.get("crop_pct") or 1.0)
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD, DEFAULT_CROP_PCT
    return (0.5,) * channels, (0.5,) * channels, DEFAULT_CROP_PCT


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
    p.add_argument(
        "--checkpoint",
        "--pretrained",
        dest="checkpoint",
        required=True,
        metavar="FILE",
        help="a minimlp checkpoint (.npz) or any weights file minimlp reads (.pth, .safetensors); "
        "both names are the same option",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--ema", action="store_true", help="a DeiT training checkpoint's EMA weights (model_ema)")
    p.add_argument("--top", type=int, default=5, help="how many classes to show per image (default: 5)")
    p.add_argument("--invert", action="store_true", help="invert brightness before classifying")
    p.add_argument("--gpu", action="store_true", help="run on the GPU (CuPy)")
    return p


def main(argv: list[str] | None = None) -> int:
    from minimlp.data.classes import model_classes
    from minimlp.io.files import CheckpointError
    from minimlp.io.weights import model_from_checkpoint

    args = build_parser().parse_args(argv)
    try:
        model, info = model_from_checkpoint(args.checkpoint, device="gpu" if args.gpu else "cpu", use_ema=args.ema)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    C, size = model.config.in_chans, model.config.img_size
    mean, std, crop_pct = checkpoint_transform(info.meta, C)
    classes, _ = model_classes(info.meta, model.config.num_classes)
    images = []
    for path in args.images:
        try:
            images.append(load_image(path, C, size, crop_pct, args.invert))
        except (OSError, BadImageError) as exc:
            print(f"error: {path}: cannot read this image ({exc})", file=sys.stderr)
            return 2
    probs = predict(model, np.stack(images), mean, std)  # (B, K)
    for path, p in zip(args.images, probs, strict=True):
        print(path)
        for k in np.argsort(-p, kind="stable")[: max(1, min(args.top, len(classes)))]:
            print(f"  {100 * p[k]:6.2f}%  {classes[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
