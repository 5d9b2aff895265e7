"""End to end: train and evaluate a tiny model on an ImageNet-style tree of real, awkward image files
(CMYK, grayscale, palette, alpha, a PNG named .JPEG, a truncated JPEG, a non-image file, an empty
class folder), from the folders and from a prepared cache, with subsets, the DeiT augmentations,
data parallelism, exact resume, fine-tuning from a .pth, and the evaluate / predict commands on the
checkpoints it writes."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from support.data_trees import EMPTY_WNID, WNIDS, build_tree
from support.pth_craft import state_dict, write_pth

import minimlp
from minimlp import evaluate, predict, train
from minimlp.data.cache_writer import prepare
from minimlp.data.classes import SUBSETS, imagenet_name
from minimlp.data.folders import DataLayoutWarning
from minimlp.data.synthetic import photo_like
from minimlp.io.checkpoint import load_checkpoint

ALL_WNIDS = sorted([*WNIDS, EMPTY_WNID])  # the empty train folder stays a class (indices do not shift)
TINY = [
    "--model",
    "ff_tiny",
    "--img-size",
    "32",
    "--patch-size",
    "8",
    "--embed-dim",
    "32",
    "--depth",
    "2",
    "-b",
    "8",
    "--epochs",
    "1",
    "--log-interval",
    "1",
]


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
    augment = [
        "--aa",
        "rand-m9-mstd0.5-inc1",
        "--reprob",
        "0.5",
        "--mixup",
        "0.8",
        "--cutmix",
        "1.0",
        "--repeated-aug",
        "2",
        "--train-crop",
        "crop",
    ]
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
    augment = [
        "--aa",
        "rand-m9-mstd0.5-inc1",
        "--reprob",
        "0.5",
        "--mixup",
        "0.8",
        "--cutmix",
        "1.0",
        "--repeated-aug",
        "2",
        "--drop-path",
        "0.1",
        "--epochs",
        "2",
    ]
    straight, _ = train_run(cache, tmp_path / "straight", *augment)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        argv = [
            "--data-dir",
            str(cache),
            *TINY,
            "--procs",
            "1",
            "-j",
            "0",
            "--output",
            str(tmp_path / "split"),
            *augment,
        ]
        first = train.run(argv, on_epoch_end=lambda record: True, log=lambda s: None)
        assert first.status == "interrupted"
        resumed = train.run(["--resume", str(tmp_path / "split"), "--procs", "1", "-j", "0"], log=lambda s: None)
    assert resumed.status == "done" and resumed.state.step == straight.state.step
    a = load_checkpoint(tmp_path / "straight" / "last.npz").params
    b = load_checkpoint(tmp_path / "split" / "last.npz").params
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def imagenette_and_more(tmp_path_factory):
    """The 10 Imagenette classes and 2 others, 2 training images and 1 validation image each."""
    root = tmp_path_factory.mktemp("imagenette")
    rng = np.random.default_rng(0)
    for wnid in [*SUBSETS["imagenette"], "n01443537", "n01484850"]:  # + goldfish, great white shark
        for split, count in (("train", 2), ("val", 1)):
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                photo_like(48, 40, rng).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return root


def test_fine_tuning_from_a_pth_starts_a_new_head(imagenette_and_more, tmp_path, capsys):
    """``train --pretrained X.pth --num-classes 10 --subset imagenette``: a 1000-class .pth of the same
    architecture gets a new 10-class head (seeded), the rest comes from the file (checked with lr 0),
    and the architecture is the file's when --model is not given. Without --num-classes the error
    names the file, the mismatched head and the flag to use."""
    root = imagenette_and_more
    source = minimlp.create_model("ff_tiny", img_size=32, patch_size=8, embed_dim=32, depth=2, seed=5)
    obj, storages = state_dict(source.state_dict())
    write_pth(tmp_path / "pretrained.pth", obj, storages)
    tune = [
        "--data-dir",
        str(root),
        "--pretrained",
        str(tmp_path / "pretrained.pth"),
        "--subset",
        "imagenette",
        "-b",
        "8",
        "--epochs",
        "1",
        "--procs",
        "1",
        "-j",
        "0",
    ]
    lines: list[str] = []
    result = train.run(
        [
            *tune,
            "--num-classes",
            "10",
            "--lr",
            "0",
            "--warmup-lr",
            "0",
            "--min-lr",
            "0",
            "--output",
            str(tmp_path / "tuned"),
        ],
        log=lines.append,
    )
    log = "\n".join(lines)
    assert result.status == "done"
    assert "pretrained: loaded 33 tensors from" in log and "new head.weight, head.bias for fine-tuning" in log
    assert "ffvit(img_size=32, in_chans=3, num_classes=10)" in log and "training on 20, evaluating on 10" in log
    tuned = load_checkpoint(tmp_path / "tuned" / "last.npz")
    assert tuned.meta["class_map"]["wnids"] == sorted(SUBSETS["imagenette"])
    for name, p in source.state_dict().items():  # lr 0: every loaded tensor is still the file's
        if not name.startswith("head."):
            np.testing.assert_array_equal(tuned.params[name], p, err_msg=name)
    assert tuned.params["head.weight"].shape == (10, 32)

    trained = train.run([*tune, "--num-classes", "10", "--output", str(tmp_path / "trained")], log=lambda s: None)
    moved = load_checkpoint(tmp_path / "trained" / "last.npz").params
    assert not np.array_equal(moved["blocks.0.mlp1.fc1.weight"], source.params["blocks.0.mlp1.fc1.weight"])
    assert trained.metrics[0]["eval_top1"] >= 0  # trained and evaluated

    capsys.readouterr()
    assert train.main([*tune, "--output", str(tmp_path / "no")]) == train.EXIT_USAGE
    err = capsys.readouterr().err
    assert "pretrained.pth" in err and "head.weight: checkpoint (1000, 32) vs model (10, 32)" in err
    assert "--num-classes 10" in err

    assert (
        train.main(
            [
                "--data-dir",
                str(root),
                "--pretrained",
                str(tmp_path / "pretrained.pth"),
                "--eval-only",
                "--procs",
                "1",
                "-j",
                "0",
                "--output",
                str(tmp_path / "eval"),
                "--subset",
                "imagenette",
                "--num-classes",
                "10",
            ]
        )
        == 0
    )
    assert "eval: loss" in capsys.readouterr().out

    # evaluate scores the 1000-class file on this 12-class tree: its labels are matched by wnid.
    assert evaluate.main(["--pretrained", str(tmp_path / "pretrained.pth"), "--data-dir", str(root), "-j", "0"]) == 0
    out = capsys.readouterr().out
    assert "12 images, 12 classes" in out and "1000 classes)" in out and "tench" in out
    assert "(988 of the model's 1000 classes have no images here)" in out
