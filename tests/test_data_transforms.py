"""Decoding and the crops: awkward files become RGB, RandomResizedCrop's box follows torchvision's rules,
the eval crop matches resize-then-center-crop, drafting changes neither the box nor (much) the pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from support.data_trees import build_tree

from minimlp.data import transforms
from minimlp.data.synthetic import photo_like
from minimlp.data.transforms import BadImageError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    return root, build_tree(root, train_per_class=2, val_per_class=1)


@pytest.mark.parametrize("kind", ["cmyk", "gray", "palette", "rgba", "png_as_jpeg", "bad_exif"])
def test_awkward_files_decode_to_rgb(tree, kind, recwarn):
    _, special = tree
    img = transforms.open_rgb(special[kind])
    assert img.mode == "RGB" and img.size == (150, 110)
    out = transforms.train_image(special[kind], 32, np.random.default_rng(0))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert not [w for w in recwarn if "EXIF" in str(w.message) or "Palette" in str(w.message)]


def test_cmyk_and_gray_keep_their_content(tree):
    _, special = tree
    cmyk = np.asarray(transforms.open_rgb(special["cmyk"]), np.float32)
    reference = np.asarray(Image.open(special["cmyk"]).convert("RGB"), np.float32)
    assert np.abs(cmyk - reference).mean() < 1.0  # not inverted, not garbled
    gray = np.asarray(transforms.open_rgb(special["gray"]))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    rgb = np.asarray(transforms.open_rgb(path))
    assert rgb.max() == 255 and rgb.min() == 0 and 100 < rgb.mean() < 155


@pytest.mark.parametrize("kind", ["truncated", "non_image"])
def test_undecodable_files_raise_bad_image_naming_the_path(tree, kind):
    _, special = tree
    with pytest.raises(BadImageError) as info:
        transforms.train_image(special[kind], 32, np.random.default_rng(0))
    assert str(special[kind]) in str(info.value) and info.value.path == str(special[kind])
    with pytest.raises(BadImageError):
        transforms.eval_image(special[kind], 32)


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 900), height=st.integers(1, 900), seed=st.integers(0, 2**32 - 1))
def test_random_resized_crop_box_is_inside_and_within_the_ratio(width, height, seed):
    left, top, w, h = transforms.random_resized_crop_box(width, height, np.random.default_rng(seed))
    assert 0 <= left and 0 <= top and 0 < w and 0 < h and left + w <= width and top + h <= height
    full = (w, h) == (width, height)
    if not full and min(w, h) > 10:  # rounding aside, sampled boxes keep the ratio range
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_random_resized_crop_box_area_distribution():
    rng = np.random.default_rng(0)
    areas = [
        w * h / (500 * 375) for _, _, w, h in (transforms.random_resized_crop_box(500, 375, rng) for _ in range(4000))
    ]
    assert 0.08 * 0.95 <= min(areas) and max(areas) <= 1.0
    assert 0.40 < np.mean(areas) < 0.60  # uniform in [0.08, 1] minus the tries that did not fit


def test_random_resized_crop_falls_back_to_a_centered_ratio_clamped_crop():
    class NeverFits:  # an area fraction > 1 never fits, so all 10 tries fail
        def uniform(self, lo, hi):
            return 2.0 if lo == 0.08 else 0.0

        def integers(self, lo, hi):
            raise AssertionError("no position is drawn in the fallback")

    assert transforms.random_resized_crop_box(1000, 100, NeverFits()) == (433, 0, 133, 100)  # too wide: 4/3 ratio
    assert transforms.random_resized_crop_box(100, 1000, NeverFits()) == (0, 433, 100, 133)  # too tall: 3/4 ratio
    assert transforms.random_resized_crop_box(400, 350, NeverFits()) == (0, 0, 400, 350)  # in range: whole image


@pytest.mark.parametrize("size, wh", [(224, (500, 375)), (224, (375, 500)), (64, (300, 300)), (32, (50, 80))])
def test_center_crop_box_matches_resize_then_crop(size, wh):
    width, height = wh
    left, top, right, bottom = transforms.center_crop_box(width, height, size)
    short = math.floor(size / 0.875)
    scale = short / min(width, height)
    # (the long side is int()-rounded after resizing, as in torchvision, hence the 2%)
    assert right - left == pytest.approx(size / scale, rel=0.02)
    assert bottom - top == pytest.approx(size / scale, rel=0.02)
    assert left + right == pytest.approx(width, abs=2 / scale) and top + bottom == pytest.approx(height, abs=2 / scale)


@pytest.mark.parametrize("wh", [(500, 375), (375, 500), (333, 500), (640, 427), (1200, 900)])
def test_eval_image_is_the_two_step_reference_exactly(tmp_path, wh):
    """torchvision's Resize(256) + CenterCrop(224), written out: the paper's evaluation, pixel for pixel."""
    width, height = wh
    img = photo_like(width, height, np.random.default_rng(1))
    path = tmp_path / "a.JPEG"
    img.save(path, quality=95)
    decoded = Image.open(path).convert("RGB")
    size = (256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256)
    two_step = decoded.resize(size, Image.Resampling.BICUBIC)  # torchvision's Resize(256)
    left = int(round((two_step.size[0] - 224) / 2.0))
    top = int(round((two_step.size[1] - 224) / 2.0))
    reference = np.asarray(two_step.crop((left, top, left + 224, top + 224)), np.float32)
    ours = transforms.eval_image(path, 224, draft=False).astype(np.float32)
    assert ours.shape == (224, 224, 3)
    assert np.abs(ours - reference).mean() < 2.0
    assert np.array_equal(ours, reference)
    assert np.array_equal(transforms.eval_crop(decoded, 224), reference)  # the same from a decoded image


def test_draft_keeps_the_box_and_the_picture(tmp_path):
    img = photo_like(1200, 900, np.random.default_rng(2))
    path = tmp_path / "big.JPEG"
    img.save(path, quality=90)
    full = transforms.train_image(path, 64, np.random.default_rng(5), draft=False).astype(np.float32)
    drafted = transforms.train_image(path, 64, np.random.default_rng(5), draft=True).astype(np.float32)
    assert np.abs(full - drafted).mean() < 6.0  # same crop; DCT-domain downscaling differs only slightly
    other = transforms.train_image(path, 64, np.random.default_rng(6), draft=False).astype(np.float32)
    assert np.abs(full - other).mean() > 2 * np.abs(full - drafted).mean()


def test_train_crop_flip_and_determinism():
    img = photo_like(200, 150, np.random.default_rng(3))
    a = transforms.train_crop(img, 48, np.random.default_rng(9))
    b = transforms.train_crop(img, 48, np.random.default_rng(9))
    assert a.shape == (48, 48, 3) and (a == b).all()
    no_flip = transforms.train_crop(img, 48, np.random.default_rng(9), hflip=0.0)
    always = transforms.train_crop(img, 48, np.random.default_rng(9), hflip=1.0)
    assert (no_flip[:, ::-1] == always).all()
