"""The DeiT augmentations: soft targets are distributions with the smoothing folded in, cutmix pastes what it
says, erasing boxes respect their bounds, RandAugment is reproducible from its generator."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_np
from PIL import Image

from minimlp.data import augment
from minimlp.data.augment import MixupCutmix, RandAugment, RandomErasing, deit_recipe, recipe_lr
from minimlp.data.synthetic import photo_like
from minimlp.loss import target_distribution


def batch(xp, B=6, C=3, H=16, W=20, seed=0):
    return xp.asarray(np.random.default_rng(seed).standard_normal((B, C, H, W)).astype(np.float32))


def test_mixup_cutmix_soft_targets_are_distributions(xp):
    K = 7
    labels = xp.asarray(np.array([0, 3, 6, 2, 2, 5]))
    mix = MixupCutmix(num_classes=K)
    rng = np.random.default_rng(1)
    for _ in range(20):
        images, targets, lam = mix(batch(xp), labels, rng)
        targets = to_np(targets)
        assert targets.shape == (6, K) and targets.dtype == np.float32 and images.dtype == np.float32
        assert np.allclose(targets.sum(axis=1), 1.0, atol=1e-6) and (targets > 0).all()
        assert 0.0 <= lam <= 1.0


def test_smoothing_is_folded_in_like_the_loss_would_fold_it(xp):
    K = 5
    labels = xp.asarray(np.array([0, 1, 4, 2]))
    images = batch(xp, B=4)
    _, smoothed, lam = MixupCutmix(K, smoothing=0.1)(images.copy(), labels, np.random.default_rng(3))
    _, plain, lam_plain = MixupCutmix(K, smoothing=0.0)(images.copy(), labels, np.random.default_rng(3))
    assert lam == lam_plain
    np.testing.assert_allclose(to_np(smoothed), to_np(target_distribution(plain, K, smoothing=0.1)), atol=1e-6)


def test_mixup_is_the_convex_combination_with_the_reversed_batch(xp):
    images = batch(xp)
    labels = xp.asarray(np.arange(6))
    mixed, targets, lam = MixupCutmix(6, cutmix_alpha=0.0, smoothing=0.0)(images, labels, np.random.default_rng(4))
    expected = lam * to_np(images) + (1 - lam) * to_np(images)[::-1]
    np.testing.assert_allclose(to_np(mixed), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_np(targets)[0, [0, 5]], [lam, 1 - lam], atol=1e-6)


def test_cutmix_pastes_the_reversed_batch_and_corrects_lam(xp):
    original = to_np(batch(xp))
    images = xp.asarray(original.copy())
    labels = xp.asarray(np.arange(6))
    rng = np.random.default_rng(5)
    mixed, targets, lam = MixupCutmix(6, mixup_alpha=0.0, smoothing=0.0)(images, labels, rng)
    mixed = to_np(mixed)
    changed = (mixed != original).any(axis=(0, 1))  # (H, W): where something was pasted
    area = changed.sum() / changed.size
    assert lam == pytest.approx(1 - area, abs=1e-9) or area == 0
    ys, xs = np.nonzero(changed)
    if len(ys):
        region = (slice(None), slice(None), slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        np.testing.assert_array_equal(mixed[region], original[::-1][region])
    np.testing.assert_allclose(to_np(targets)[1, [1, 4]], [lam, 1 - lam], atol=1e-6)


def test_mixup_or_cutmix_about_half_the_time():
    mix = MixupCutmix(3)
    rng = np.random.default_rng(6)
    kinds = []
    for _ in range(400):
        images = np.ones((2, 1, 8, 8), np.float32)
        images[1] = 0
        mixed, _, _ = mix(images, np.array([0, 1]), rng)
        kinds.append(set(np.unique(mixed[0]).tolist()) <= {0.0, 1.0})  # cutmix keeps the original values
    assert 0.4 < np.mean(kinds) < 0.6


def test_random_erasing_boxes_respect_area_and_aspect_bounds(xp):
    erase = RandomErasing(prob=1.0)
    rng = np.random.default_rng(7)
    for seed in range(10):
        original = to_np(batch(xp, B=8, H=40, W=48, seed=seed))
        images = erase(xp.asarray(original.copy()), rng)
        changed = (to_np(images) != original).any(axis=1)  # (B, H, W)
        for mask in changed:
            if not mask.any():
                continue  # no box fitted in 10 tries (rare)
            ys, xs = np.nonzero(mask)
            h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            assert mask.sum() == h * w  # one rectangle
            assert 0.02 * 0.8 <= h * w / (40 * 48) <= 1 / 3 * 1.2
            assert 0.3 * 0.7 <= h / w <= 3.3 / 0.7
            assert h < 40 and w < 48


def test_random_erasing_probability_and_noise(xp):
    erase = RandomErasing()
    rng = np.random.default_rng(8)
    original = to_np(batch(xp, B=400, C=3, H=12, W=12))
    images = to_np(erase(xp.asarray(original.copy()), rng))
    erased = (images != original).any(axis=(1, 2, 3))
    assert 0.17 < erased.mean() < 0.33
    noise = images[erased][images[erased] != original[erased]]
    assert abs(noise.mean()) < 0.1 and 0.9 < noise.std() < 1.1  # N(0, 1) per pixel and channel


def test_random_erasing_draws_a_batch_of_boxes_as_the_one_image_version():
    """boxes() draws the whole batch at once; per image its (top, left, h, w) follow box()'s
    distribution, the boxes that fit in none of the tries included (a 12 x 20 image misses often)."""
    erase = RandomErasing(prob=0.6)
    n, H, W = 10000, 12, 20
    rng = np.random.default_rng(0)
    one = np.array([erase.box(H, W, rng) or (0, 0, 0, 0) for _ in range(n)])  # (n, 4), h = 0: not erased
    batch_ = erase.boxes(n, H, W, np.random.default_rng(1))
    assert batch_.shape == (n, 4) and batch_.dtype == np.int64
    for boxes in (one, batch_):
        erased = boxes[:, 2] > 0
        top, left, h, w = boxes[erased].T
        assert (top >= 0).all() and (top + h <= H).all() and (left >= 0).all() and (left + w <= W).all()
        assert (h < H).all() and (w < W).all()
    assert abs((one[:, 2] > 0).mean() - (batch_[:, 2] > 0).mean()) < 0.02  # about 0.6 x P(some try fits)
    for column in range(4):  # Kolmogorov-Smirnov distance of each coordinate's distribution
        values = np.union1d(one[:, column], batch_[:, column])
        cdf_one = np.searchsorted(np.sort(one[:, column]), values, side="right") / n
        cdf_batch = np.searchsorted(np.sort(batch_[:, column]), values, side="right") / n
        assert np.abs(cdf_one - cdf_batch).max() < 0.03, column


def test_random_erasing_writes_exactly_the_drawn_boxes(xp):
    erase = RandomErasing(prob=0.7)
    original = to_np(batch(xp, B=32, C=3, H=16, W=20, seed=4))
    boxes = erase.boxes(32, 16, 20, np.random.default_rng(9))
    images = to_np(erase(xp.asarray(original.copy()), np.random.default_rng(9)))
    changed = (images != original).all(axis=1)  # (B, H, W): noise replaces every channel of a pixel
    y, x = np.arange(16)[:, None], np.arange(20)
    for b, (top, left, h, w) in enumerate(boxes):
        inside = (y >= top) & (y < top + h) & (x >= left) & (x < left + w)
        assert np.array_equal(changed[b], inside), b
        assert np.array_equal(images[b][:, ~inside], original[b][:, ~inside])


def test_random_erasing_on_the_device_reads_nothing_back(fake_cupy):
    import cupy

    erase = RandomErasing(prob=0.7)
    original = batch(np, B=32, C=3, H=16, W=20, seed=4)
    boxes = erase.boxes(32, 16, 20, np.random.default_rng(9))
    before = fake_cupy.host_syncs()
    images = erase(cupy.asarray(original.copy()), np.random.default_rng(9), noise_rng=cupy.random.default_rng(0))
    assert fake_cupy.host_syncs() == before
    changed = (images.get() != original).all(axis=1)
    assert changed.sum() == (boxes[:, 2] * boxes[:, 3]).sum()


def test_randaugment_config_parsing():
    ra = RandAugment.from_config("rand-m9-mstd0.5-inc1")
    assert (ra.num_ops, ra.magnitude, ra.magnitude_std, ra.prob) == (2, 9.0, 0.5, 0.5)
    assert ra.ops == augment.INCREASING_OPS and len(ra.ops) == 15 and ra.fill == (124, 116, 104)
    plain = RandAugment.from_config("rand-n3-m5")
    assert plain.ops == augment.ORIGINAL_OPS and plain.num_ops == 3 and plain.magnitude_std == 0.0
    with pytest.raises(ValueError, match="unknown section 'w0'"):
        RandAugment.from_config("rand-m9-w0")
    with pytest.raises(ValueError, match="must start with 'rand'"):
        RandAugment.from_config("augmix-m9")


def test_randaugment_is_reproducible_and_keeps_size_and_mode():
    img = photo_like(64, 48, np.random.default_rng(9))
    ra = RandAugment.from_config("rand-m9-mstd0.5-inc1")
    outs = [np.asarray(ra(img, np.random.default_rng(s))) for s in (1, 1, 2)]
    assert (outs[0] == outs[1]).all()
    assert all(o.shape == (48, 64, 3) and o.dtype == np.uint8 for o in outs)
    differs = [not (np.asarray(ra(img, np.random.default_rng(s))) == np.asarray(img)).all() for s in range(40)]
    assert 0.5 < np.mean(differs) < 1.0  # P(no op applied) = 0.5 ** 2, and some ops are no-ops on some images


@pytest.mark.parametrize("name", augment.INCREASING_OPS + ("Posterize", "Solarize", "Color", "Contrast"))
def test_every_operation_runs(name):
    img = photo_like(40, 30, np.random.default_rng(10))
    out = augment.apply_op(name, img, 0.9, np.random.default_rng(0), (124, 116, 104))
    assert out.size == img.size and out.mode == "RGB"


def test_operation_semantics_at_the_extremes():
    img = photo_like(40, 30, np.random.default_rng(11))
    pixels = np.asarray(img).astype(int)
    rng = np.random.default_rng(0)
    fill = (124, 116, 104)
    assert (np.asarray(augment.apply_op("Invert", img, 0.5, rng, fill)) == 255 - pixels).all()
    assert (np.asarray(augment.apply_op("SolarizeIncreasing", img, 1.0, rng, fill)) == 255 - pixels).all()
    assert (np.asarray(augment.apply_op("SolarizeIncreasing", img, 0.0, rng, fill)) == pixels).all()
    assert (np.asarray(augment.apply_op("PosterizeIncreasing", img, 1.0, rng, fill)) == 0).all()  # 0 bits kept
    assert (np.asarray(augment.apply_op("PosterizeIncreasing", img, 0.0, rng, fill)) == pixels & 0xF0).all()
    added = np.asarray(augment.apply_op("SolarizeAdd", img, 1.0, rng, fill)).astype(int)
    assert (added == np.where(pixels < 128, np.minimum(pixels + 110, 255), pixels)).all()
    for name in ("Rotate", "ShearX", "TranslateYRel", "BrightnessIncreasing"):
        assert (np.asarray(augment.apply_op(name, img, 0.0, rng, fill)) == pixels).all()
    moved = np.asarray(
        augment.apply_op("TranslateXRel", Image.fromarray(pixels.astype(np.uint8)), 1.0, np.random.default_rng(1), fill)
    )
    assert (moved == fill).all(axis=2).any()  # uncovered pixels take the fill colour


def test_repeated_augmentation_indices():
    idx = augment.repeated_augmentation_indices(30, seed=0, repeats=3)
    assert len(idx) == 30 and (idx[0::3] == idx[1::3]).all() and (idx[1::3] == idx[2::3]).all()
    assert len(set(idx.tolist())) == 10
    shares = [augment.repeated_augmentation_indices(30, seed=0, repeats=3, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 15
    assert (augment.repeated_augmentation_indices(30, seed=0) == idx).all()
    assert not (augment.repeated_augmentation_indices(30, seed=1) == idx).all()


def test_deit_recipe():
    recipe = deit_recipe()
    assert recipe["opt"] == "adamw" and recipe["weight_decay"] == 0.05 and recipe["warmup_epochs"] == 5
    assert recipe["smoothing"] == 0.1 and recipe["drop_path"] == 0.1 and recipe["drop"] == 0.1
    assert recipe["aa"] == "rand-m9-mstd0.5-inc1" and recipe["reprob"] == 0.25 and recipe["repeated_aug"] == 3
    assert (recipe["mixup"], recipe["cutmix"]) == (0.8, 1.0)
    assert deit_recipe(ff_model=False)["drop"] == 0.0
    assert recipe_lr(512) == pytest.approx(5e-4) and recipe_lr(128) == pytest.approx(1.25e-4)
