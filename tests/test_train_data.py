"""The data side of the trainer: the DeiT recipe filling unset options, each epoch's order with
repeated augmentation, the device augmentations (soft targets that already hold the smoothing),
the loader-worker policy, and clear refusals of image-only options for Fashion-MNIST."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from minimlp import train
from minimlp.data.augment import deit_recipe
from minimlp.optim import LRSchedule
from minimlp.train.data import DeviceAugment, epoch_order, loader_workers


def test_recipe_fills_what_the_command_line_left_unset():
    args, explicit = train.parse_args(["--recipe", "deit", "-b", "128", "--epochs", "3", "--mixup", "0"])
    recipe = deit_recipe()
    assert args.lr == pytest.approx(5e-4 * 128 / 512)  # scaled to the batch size
    assert args.epochs == 3 and args.mixup == 0.0  # given: kept
    for name in (
        "opt",
        "weight_decay",
        "warmup_epochs",
        "smoothing",
        "drop_path",
        "cutmix",
        "aa",
        "reprob",
        "repeated_aug",
        "mixup_prob",
        "mixup_switch_prob",
        "min_lr",
        "warmup_lr",
        "sched",
    ):
        assert getattr(args, name) == recipe[name], name
    assert args.drop == 0.1  # the FF models' dropout
    vit, _ = train.parse_args(["--recipe", "deit", "--model", "deit_tiny", "--lr", "1e-3"])
    assert vit.drop == 0.0 and vit.lr == 1e-3
    plain, _ = train.parse_args([])
    assert plain.mixup == 0 and plain.reprob == 0 and plain.aa is None and plain.repeated_aug == 1


def test_recipe_floor_stays_below_a_small_batch_peak():
    """At batch 8 the scaled peak (7.8e-6) is below DeiT's floor of 1e-5: the floor keeps its ratio."""
    args, _ = train.parse_args(["--recipe", "deit", "-b", "8"])
    assert args.min_lr == pytest.approx(args.lr / 50) and args.min_lr < args.lr
    schedule = LRSchedule(args.sched, args.lr, args.epochs, args.warmup_epochs, args.warmup_lr, args.min_lr)
    peak_epoch = args.warmup_epochs
    assert all(schedule(e) <= schedule(peak_epoch) for e in np.linspace(peak_epoch, args.epochs, 50))


def test_epoch_order_is_a_function_of_the_seed_and_repeats_in_a_row():
    indices = np.arange(100, 130)
    a, b = epoch_order(indices, 7), epoch_order(indices, 7)
    assert np.array_equal(a, b) and sorted(a) == list(indices) and not np.array_equal(a, epoch_order(indices, 8))
    repeated = epoch_order(indices, 7, repeats=3)
    assert len(repeated) == len(indices)  # an epoch keeps its length ...
    assert (repeated[0::3] == repeated[1::3]).all() and (repeated[0::3] == repeated[2::3]).all()  # ... in threes
    assert set(repeated) <= set(indices)


def _args(**kw):
    base = dict(no_aug=False, reprob=0.0, mixup=0.0, cutmix=0.0, mixup_prob=1.0, mixup_switch_prob=0.5, smoothing=0.1)
    return argparse.Namespace(**{**base, **kw})


def test_device_augment_gives_soft_targets_with_the_smoothing_inside():
    x = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0])
    augment = DeviceAugment.from_args(_args(mixup=0.8, cutmix=1.0, reprob=0.5), num_classes=5)
    out, targets, smoothing = augment(x.copy(), labels, np.random.default_rng(1), np.random.default_rng(2), 0.1)
    assert smoothing == 0.0, "the soft targets hold the smoothing: the loss must not add it again"
    assert targets.shape == (6, 5) and targets.dtype == np.float32
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert targets.min() >= 0.1 / 5 * 0.999  # smoothing mass on every class
    assert not np.array_equal(out, x)
    again = augment(x.copy(), labels, np.random.default_rng(1), np.random.default_rng(2), 0.1)
    assert np.array_equal(again[0], out) and np.array_equal(again[1], targets)  # reproducible from the rngs

    erase_only = DeviceAugment.from_args(_args(reprob=1.0), num_classes=5)
    out, targets, smoothing = erase_only(x.copy(), labels, np.random.default_rng(1), np.random.default_rng(2), 0.1)
    assert targets is labels and smoothing == 0.1 and not np.array_equal(out, x)
    off = DeviceAugment.from_args(_args(mixup=0.8, reprob=1.0, no_aug=True), num_classes=5)
    assert off.erase is None and off.mix is None and off.describe() == ""


def test_loader_workers_leave_the_cpu_to_the_data_parallel_processes(monkeypatch):
    monkeypatch.setattr("minimlp.train.data.default_workers", lambda: 6)
    assert loader_workers(None, is_gpu=False) == 1
    assert loader_workers(None, is_gpu=True) == 6
    assert loader_workers(0, is_gpu=True) == 0 and loader_workers(3, is_gpu=False) == 3


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--subset", "imagenette"], "subset='imagenette': options of ImageNet-style data, not of Fashion-MNIST"),
        (["--aa", "rand-m9-mstd0.5-inc1"], "randaugment="),
        (["--num-classes", "5"], "Fashion-MNIST has 10 classes"),
        (["--train-crop", "crop"], "train_crop='crop'"),
    ],
)
def test_image_options_on_fashion_mnist_are_refused_by_name(flags, message, fmnist_dir, tmp_path, capsys):
    code = train.main(["--data-dir", str(fmnist_dir), "--procs", "1", "--output", str(tmp_path / "run"), *flags])
    assert code == train.EXIT_USAGE and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--aa", "rand-x9"], "argument --aa: unknown section 'x9'"),
        (["--reprob", "1.5"], "argument --reprob: 1.5 must be <= 1.0"),
        (["--repeated-aug", "0"], "argument --repeated-aug: 0 must be >= 1"),
        (["--recipe", "vit"], "argument --recipe: invalid choice"),
        (["--train-crop", "center"], "argument --train-crop: invalid choice"),
        (["--class-seed", "1"], "--class-seed draws --num-classes K classes at random"),
        (["--crop-pct", "0"], "argument --crop-pct: 0.0 must be > 0.0"),
        (["--lr", "1e-4", "--min-lr", "1e-3"], "--min-lr 0.001 is above the peak --lr 0.0001"),
    ],
)
def test_bad_data_arguments_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        train.parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
