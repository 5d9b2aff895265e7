"""End to end: train and evaluate a tiny model on an ImageNet-style tree of real, awkward image files
(CMYK, grayscale, palette, alpha, a PNG named .JPEG, a truncated JPEG, a non-image file, an empty
class folder), from the folders and from a prepared cache, with subsets, the DeiT augmentations,
data parallelism, exact resume, and the evaluate / predict commands on the checkpoints it writes."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from data_trees import EMPTY_WNID, WNIDS, build_tree

from minimlp import evaluate, predict, train
from minimlp.data.cache_writer import prepare
from minimlp.data.classes import imagenet_name
from minimlp.data.folders import DataLayoutWarning
from minimlp.io.checkpoint import load_checkpoint

ALL_WNIDS = sorted([*WNIDS, EMPTY_WNID])  # the empty train folder stays a class (indices do not shift)
TINY = ["--model", "ff_tiny", "--img-size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "2",
        "-b", "8", "--epochs", "1", "--log-interval", "1"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    special = build_tree(root, train_per_class=4, val_per_class=2)
    return root, special


@pytest.fixture(scope="module")
def cache(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        prepare(tree[0], out, 36, workers=0, log=lambda s: None)
    return out


def train_run(data_dir, output, *extra, procs="1", workers="0"):
    """train.run on the tree; returns (result, the log lines)."""
    lines: list[str] = []
    argv = ["--data-dir", str(data_dir), *TINY, "--procs", procs, "-j", workers, "--output", str(output), *extra]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        result = train.run(argv, log=lines.append)
    return result, "\n".join(lines)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_and_evaluate_from_folders(tree, tmp_path, capsys):
    root, special = tree
    result, log = train_run(root, tmp_path / "run")
    assert result.status == "done"
    # 12 JPEGs, CMYK, gray, palette, alpha, PNG-as-JPEG, broken EXIF, truncated; not notes.txt
    assert "19 images, 4 classes" in log
    # The truncated JPEG is skipped, counted and named; the non-image file never enters the list.
    assert "skipped 1 file(s) that could not be decoded" in log and str(special["truncated"]) in log
    assert metrics(tmp_path / "run")[0]["skipped_files"] == 1
    ckpt = load_checkpoint(tmp_path / "run" / "last.npz")
    assert ckpt.meta["class_map"]["wnids"] == ALL_WNIDS
    assert ckpt.meta["classes"] == [imagenet_name(w) for w in ALL_WNIDS] and ckpt.meta["classes"][0] == "tench"
    assert ckpt.meta["data"]["crop_pct"] == 0.875 and ckpt.meta["data"]["mean"] == [0.485, 0.456, 0.406]

    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(tmp_path / "run" / "best.npz"), "-j", "0"]) == 0
    out = capsys.readouterr().out
    assert "6 images" in out and "tench" in out and "cassette_player" in out and "top-1" in out
    image = root / "val" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG"
    assert predict.main(["--checkpoint", str(tmp_path / "run" / "best.npz"), "--top", "4", str(image)]) == 0
    out = capsys.readouterr().out
    assert out.count("%") == 4 and all(imagenet_name(w) in out for w in ALL_WNIDS)


def test_subsets_select_exactly_the_listed_classes(tree, tmp_path):
    root, _ = tree
    chosen = [WNIDS[2], WNIDS[0]]  # any order; labels follow the sorted wnids
    result, log = train_run(root, tmp_path / "subset", "--subset", ",".join(chosen))
    assert result.status == "done" and "2 classes" in log
    ckpt = load_checkpoint(tmp_path / "subset" / "last.npz")
    assert ckpt.meta["class_map"]["wnids"] == sorted(chosen)
    assert ckpt.meta["class_map"]["source_index"] == [ALL_WNIDS.index(w) for w in sorted(chosen)]
    assert ckpt.meta["model"]["num_classes"] == 2
    assert "evaluating on 4" in log  # val keeps the same two classes, 2 images each

    result, log = train_run(root, tmp_path / "first2", "--num-classes", "2")
    assert load_checkpoint(tmp_path / "first2" / "last.npz").meta["class_map"]["wnids"] == ALL_WNIDS[:2]
    result, log = train_run(root, tmp_path / "random2", "--num-classes", "2", "--class-seed", "3")
    drawn = load_checkpoint(tmp_path / "random2" / "last.npz").meta["class_map"]["wnids"]
    assert len(drawn) == 2 and set(drawn) <= set(ALL_WNIDS) and drawn == sorted(drawn)

    with pytest.raises(ValueError, match="n09999999"):
        train_run(root, tmp_path / "bad", "--subset", f"{WNIDS[0]},n09999999")


def test_train_from_a_prepared_cache_with_the_deit_augmentations_data_parallel(cache, tmp_path, capsys):
    """Workers decoding from the cache, two data-parallel processes, RandAugment, random erasing,
    mixup/cutmix soft targets (which must reach the workers' loss), repeated augmentation."""
    augment = ["--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.5", "--mixup", "0.8", "--cutmix", "1.0",
               "--repeated-aug", "2", "--train-crop", "crop"]
    result, log = train_run(cache, tmp_path / "cached", *augment, procs="2", workers="1")
    assert result.status == "done"
    assert "prepared cache" in log and "data parallel" in log and "1 decoding process" in log
    assert "RandAugment rand-m9-mstd0.5-inc1" in log and "soft targets" in log and "repeated augmentation x2" in log
    record = metrics(tmp_path / "cached")[0]
    assert np.isfinite(record["train_loss"]) and record["train_loss"] < np.log(4) + 0.5
    ckpt = load_checkpoint(tmp_path / "cached" / "best.npz")
    assert ckpt.meta["class_map"]["wnids"] == ALL_WNIDS
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(tmp_path / "cached" / "best.npz"), "-j", "0"]) == 0
    assert "prepared cache" in capsys.readouterr().out


def test_resume_with_the_augmentations_is_bitwise_identical(cache, tmp_path):
    """Erasing noise, mixing weights and boxes, the repeated-augmentation order and RandAugment
    are all functions of (seed, epoch, batch) or saved state: a resumed run continues exactly."""
    augment = ["--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.5", "--mixup", "0.8", "--cutmix", "1.0",
               "--repeated-aug", "2", "--drop-path", "0.1", "--epochs", "2"]
    straight, _ = train_run(cache, tmp_path / "straight", *augment)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        argv = ["--data-dir", str(cache), *TINY, "--procs", "1", "-j", "0", "--output", str(tmp_path / "split"),
                *augment]
        first = train.run(argv, on_epoch_end=lambda record: True, log=lambda s: None)
        assert first.status == "interrupted"
        resumed = train.run(["--resume", str(tmp_path / "split"), "--procs", "1", "-j", "0"], log=lambda s: None)
    assert resumed.status == "done" and resumed.state.step == straight.state.step
    a = load_checkpoint(tmp_path / "straight" / "last.npz").params
    b = load_checkpoint(tmp_path / "split" / "last.npz").params
    assert all(np.array_equal(a[k], b[k]) for k in a)
