"""Small ImageNet-style trees of real image files for the data tests.

``build_tree`` writes ROOT/train/<wnid>/ and ROOT/val/<wnid>/ with photo-like JPEGs of
several sizes and aspect ratios, and, with ``awkward=True``, the files real loaders meet:
a CMYK JPEG, a grayscale JPEG, a palette PNG with transparency, an RGBA PNG, a PNG named
.JPEG, a JPEG with a broken EXIF block, a truncated JPEG, a non-image file and an empty
class folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from minimlp.data.synthetic import photo_like

WNIDS = ["n01440764", "n02102040", "n02979186"]  # tench, English springer, cassette player
EMPTY_WNID = "n03000684"  # chain saw: a train folder with no images
SIZES = ((160, 120), (96, 144), (200, 90), (128, 128), (300, 225))


def build_tree(
    root: Path, train_per_class: int = 5, val_per_class: int = 2, awkward: bool = True, seed: int = 0
) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    n = 0
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for wnid in WNIDS:
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = SIZES[n % len(SIZES)]
                photo_like(w, h, rng).save(folder / f"{wnid}_{i}.JPEG", quality=90)
                n += 1
    special: dict[str, Path] = {}
    if not awkward:
        return special
    train = root / "train"
    rgb = photo_like(150, 110, rng)
    special["cmyk"] = train / WNIDS[0] / "cmyk.JPEG"
    rgb.convert("CMYK").save(special["cmyk"], quality=90)
    special["gray"] = train / WNIDS[0] / "gray.JPEG"
    rgb.convert("L").save(special["gray"], quality=90)
    special["palette"] = train / WNIDS[1] / "palette.png"
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(special["palette"], transparency=0)
    special["rgba"] = train / WNIDS[1] / "alpha.png"
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(special["rgba"])
    special["png_as_jpeg"] = train / WNIDS[2] / "n02979186_png.JPEG"
    rgb.save(special["png_as_jpeg"], format="PNG")
    special["bad_exif"] = train / WNIDS[2] / "bad_exif.JPEG"
    rgb.save(special["bad_exif"], quality=90, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff garbage")
    special["truncated"] = train / WNIDS[2] / "truncated.JPEG"
    data = (train / WNIDS[2] / f"{WNIDS[2]}_0.JPEG").read_bytes()
    special["truncated"].write_bytes(data[: len(data) // 3])
    special["non_image"] = train / WNIDS[2] / "notes.txt"
    special["non_image"].write_text("not an image\n")
    special["empty"] = train / EMPTY_WNID
    special["empty"].mkdir()
    return special
