"""The prepared cache: what it stores, that an interrupted prepare resumes to the same bytes, and that
reading it back gives the folder dataset's classes and labels."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from support.data_trees import WNIDS, build_tree

from minimlp import prepare as prepare_cli
from minimlp.data import cache_writer
from minimlp.data.cache import (
    load_record,
    max_long_side,
    open_prepared,
    read_header,
    resize_for_cache,
    split_paths,
)
from minimlp.data.cache_writer import prepare
from minimlp.data.folders import DataLayoutWarning, detect, list_split, open_image_dataset
from minimlp.data.transforms import open_rgb


def quiet_prepare(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        return prepare(*args, workers=kwargs.pop("workers", 0), log=kwargs.pop("log", lambda s: None), **kwargs)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return root, build_tree(root, train_per_class=3, val_per_class=2)


@pytest.fixture(scope="module")
def cache(tree, tmp_path_factory):
    root, _ = tree
    out = tmp_path_factory.mktemp("cache") / "c"
    logs = []
    quiet_prepare(root, out, 24, log=logs.append, chunk=4)
    return out, logs


def test_header_and_stored_geometry(tree, cache):
    root, special = tree
    out, logs = cache
    header = read_header(out)
    assert detect(out) == "prepared"
    assert header["geometry"] == "short" and header["size"] == 24 and header["max_long"] == math.ceil(24 * 4 / 3)
    assert header["classes"]["wnids"] == sorted([*WNIDS, "n03000684"])
    assert header["splits"]["train"]["complete"] and header["splits"]["val"]["complete"]
    files = split_paths(out, "train")
    shapes = np.load(files["shapes"])
    paths = files["files"].read_text().splitlines()
    bad = paths.index(str(special["truncated"]))
    assert tuple(shapes[bad]) == (0, 0) and header["splits"]["train"]["bad"] == 1
    good = np.delete(shapes, bad, axis=0)
    assert (good.min(axis=1) == 24).all() and (good.max(axis=1) <= 32).all()
    assert any(str(special["truncated"]) in line and "could not be decoded" in line for line in logs)
    assert str(special["non_image"]) not in paths


def test_records_are_the_resized_source_pixels(cache):
    out, _ = cache
    files = split_paths(out, "val")
    paths = files["files"].read_text().splitlines()
    shapes = np.load(files["shapes"])
    images = np.memmap(files["images"], dtype=np.uint8, mode="r")
    slot = read_header(out)["max_long"] * 24 * 3
    for i in (0, len(paths) - 1):
        h, w = shapes[i]
        record = images[i * slot : i * slot + h * w * 3].reshape(h, w, 3)
        np.testing.assert_array_equal(record, load_record(paths[i], 24, square=False))
        undrafted = resize_for_cache(open_rgb(paths[i]), 24, square=False)  # decoded at full size
        assert undrafted.shape == record.shape
        assert np.abs(undrafted.astype(np.float32) - record).mean() < 3.0


def test_wide_images_are_center_cropped_to_four_thirds():
    from PIL import Image

    ramp = (np.arange(400) * 255 // 399).astype(np.uint8)  # brightness = x position
    wide = Image.fromarray(np.tile(ramp[None, :, None], (100, 1, 3)))
    record = resize_for_cache(wide, 30, square=False)
    assert record.shape == (30, 40, 3)  # resized to 30 x 120, the middle 40 columns kept
    assert 80 < record[0, 0, 0] < 95 and 160 < record[0, -1, 0] < 175
    tall = resize_for_cache(wide.transpose(Image.Transpose.TRANSPOSE), 30, square=False)
    assert tall.shape == (40, 30, 3)
    assert resize_for_cache(wide, 30, square=True).shape == (30, 30, 3)


def test_reading_back_matches_the_folder_dataset(tree, cache):
    root, _ = tree
    out, _ = cache
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        paths, labels, cmap = list_split(root, "val")
    ds = open_prepared(out, "val", 20, workers=0)
    assert len(ds) == len(paths) and (ds.labels == labels).all() and ds.classes == list(cmap.names)
    assert ds.image_shape == (3, 20, 20) and ds.class_info() == cmap.to_dict()
    batches = list(ds.batches(np.arange(len(ds)), 4, train=False, seed=0))
    assert [b[0].shape for b in batches] == [(4, 3, 20, 20), (2, 3, 20, 20)]
    train = open_image_dataset(out, "train", 20, workers=0)
    assert len(train) == 3 * 3 + 6  # and the awkward files, less the truncated one
    ds.close()
    train.close()


@pytest.mark.parametrize("train_crop", ["rrc", "crop"])
def test_training_crops_are_reproducible_across_workers(cache, train_crop):
    out, _ = cache
    results = []
    for workers in (0, 2):
        with open_prepared(out, "train", 16, workers=workers, train_crop=train_crop) as ds:
            order = np.random.default_rng(0).permutation(len(ds))
            results.append(list(ds.batches(order, 5, train=True, seed=4)))
    for (a, la), (b, lb) in zip(*results, strict=True):
        assert a.shape[1:] == (3, 16, 16) and (a == b).all() and (la == lb).all()


def test_crop_mode_pads_records_smaller_than_the_target(cache):
    out, _ = cache
    with open_prepared(out, "train", 28, workers=0, train_crop="crop") as ds:
        images, _ = next(iter(ds.batches(np.arange(4), 4, train=True, seed=0)))
    assert images.shape == (4, 3, 28, 28)
    for image in images:  # the 24 px short side is padded to 28 with zeros
        assert (image[:, :2, :] == 0).all() or (image[:, :, :2] == 0).all()


def test_subset_when_reading(cache):
    out, _ = cache
    ds = open_prepared(out, "val", 16, workers=0, subset="n02979186,n01440764")
    assert ds.wnids == ["n01440764", "n02979186"] and ds.classes == ["tench", "cassette_player"]
    assert sorted(set(ds.labels.tolist())) == [0, 1] and len(ds) == 4
    assert ds.class_map.source_index == (0, 2)
    capped = open_prepared(out, "train", 16, workers=0, per_class=1)
    assert np.bincount(capped.labels).max() == 1


def test_square_geometry_and_a_subset_cache(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "sq"
    quiet_prepare(root, out, 12, square=True, subset="n01440764,n02102040", splits=("val",))
    header = read_header(out)
    assert header["geometry"] == "square" and header["max_long"] == max_long_side(12, True) == 12
    assert header["classes"]["wnids"] == ["n01440764", "n02102040"] and list(header["splits"]) == ["val"]
    assert (np.load(split_paths(out, "val")["shapes"]) == 12).all()
    ds = open_prepared(out, "val", 12, workers=0)
    assert len(ds) == 4 and ds.class_map.source_index == (0, 1)
    with pytest.raises(FileNotFoundError, match="no train split"):
        open_prepared(out, "train", 12)


def test_an_interrupted_prepare_resumes_to_the_same_cache(tree, tmp_path, monkeypatch, cache):
    root, _ = tree
    out = tmp_path / "resumed"
    real = cache_writer._prepare_chunk
    calls = []
    interrupt = [True]

    def interrupted(task):
        calls.append((Path(task[3]).name, task[0]))  # (images file, chunk)
        if len(calls) == 3 and interrupt and interrupt.pop():
            raise KeyboardInterrupt  # as if Ctrl-C came while the third chunk was being written
        return real(task)

    monkeypatch.setattr(cache_writer, "_prepare_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quiet_prepare(root, out, 24, chunk=4)
    header = read_header(out)
    assert not header["splits"]["train"]["complete"]
    assert np.load(split_paths(out, "train")["done"]).tolist()[:2] == [1, 1]
    with pytest.raises(ValueError, match="incomplete"):
        open_prepared(out, "train", 16)

    calls.clear()
    logs = []
    quiet_prepare(root, out, 24, chunk=4, log=logs.append)
    assert calls == [
        ("train_images.u8", 2),
        ("train_images.u8", 3),
        ("val_images.u8", 0),
        ("val_images.u8", 1),
    ]  # finished chunks are not redone
    assert any("continuing" in line for line in logs)
    reference, _ = cache
    for split in ("train", "val"):
        mine, theirs = split_paths(out, split), split_paths(reference, split)
        for kind in ("images", "shapes", "labels", "files"):
            assert mine[kind].read_bytes() == theirs[kind].read_bytes(), (split, kind)
    assert read_header(out)["splits"]["train"]["complete"]


def test_other_options_in_the_same_directory_are_refused(tree, cache):
    root, _ = tree
    out, _ = cache
    with pytest.raises(ValueError, match="other options"):
        quiet_prepare(root, out, 32)


def test_command_line(tree, tmp_path, capsys):
    root, _ = tree
    out = tmp_path / "cli"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        assert prepare_cli.main([str(root), str(out), "--size", "16", "--subset", "n01440764", "-j", "2"]) == 0
        assert prepare_cli.main([str(root), str(out), "--size", "16", "--subset", "n01440764", "-j", "0"]) == 0
    printed = capsys.readouterr().out
    assert "train: complete" in printed and "val: complete" in printed
    assert json.loads((out / "minimlp_cache.json").read_text())["classes"]["wnids"] == ["n01440764"]
    assert prepare_cli.main([str(tmp_path / "missing"), str(out), "--size", "16"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluation_from_a_cache_stored_at_size_over_crop_pct_is_a_plain_crop(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "exact"
    quiet_prepare(root, out, 18, splits=("val",))  # floor(16 / 0.875) = 18
    with open_prepared(out, "val", 16, workers=0) as ds:
        images, _ = next(iter(ds.batches(np.arange(len(ds)), len(ds), train=False, seed=0)))
        for image, record_index in zip(images, ds.records, strict=True):
            h, w = ds.shapes[record_index]
            record = ds.reader.record((int(record_index), int(h), int(w)))
            top, left = int(round((h - 16) / 2)), int(round((w - 16) / 2))
            np.testing.assert_array_equal(image.transpose(1, 2, 0), record[top : top + 16, left : left + 16])


def write_downsampled(root: Path, side: int, counts: dict[str, list[int]], seed: int = 0) -> dict[str, list]:
    """Fake Downsampled ImageNet npz batches: rows of R, G, B planes and 1-based devkit labels."""
    from minimlp.data.classes import imagenet_table

    rng = np.random.default_rng(seed)
    devkit = [c.devkit_label for c in imagenet_table()]
    written = {}
    root.mkdir(parents=True, exist_ok=True)
    for split, sizes in counts.items():
        for k, n in enumerate(sizes):
            data = rng.integers(0, 256, size=(n, 3 * side * side), dtype=np.uint8)
            labels = rng.choice(devkit[:12], size=n)  # the first 12 classes of the sorted list
            name = f"train_data_batch_{k + 1}.npz" if split == "train" else "val_data.npz"
            np.savez(root / name, data=data, labels=labels)
            written.setdefault(split, []).append((data, labels))
    return written


def test_downsampled_imagenet_npz_batches_become_a_cache(tmp_path):
    from minimlp.data.classes import imagenet_table

    src = tmp_path / "Imagenet8_npz"
    written = write_downsampled(src, 8, {"train": [7, 5, 6], "val": [4]})
    assert detect(src) == "downsampled"
    with pytest.raises(ValueError, match="python -m minimlp.prepare"):
        open_image_dataset(src, "train", 8)
    out = tmp_path / "ds8"
    quiet_prepare(src, out, None)
    header = read_header(out)
    assert header["geometry"] == "square" and header["size"] == 8 and len(header["classes"]["wnids"]) == 1000
    by_devkit = {c.devkit_label: c.index for c in imagenet_table()}
    with open_prepared(out, "train", 8, workers=0) as ds:
        assert len(ds) == 18
        data = np.concatenate([d for d, _ in written["train"]])
        labels = np.concatenate([lab for _, lab in written["train"]])
        assert ds.labels.tolist() == [by_devkit[int(v)] for v in labels]  # devkit order -> sorted-wnid order
        record = ds.reader.record((9, 8, 8))
        np.testing.assert_array_equal(record, data[9].reshape(3, 8, 8).transpose(1, 2, 0))
        images, _ = next(iter(ds.batches(np.arange(3), 3, train=False, seed=0)))
        np.testing.assert_array_equal(images[2], data[2].reshape(3, 8, 8))
    subset_out = tmp_path / "ds8-sub"
    first_two = ",".join(c.wnid for c in imagenet_table()[:2])
    quiet_prepare(src, subset_out, None, subset=first_two, splits=("val",))
    with open_prepared(subset_out, "val", 8, workers=0) as ds:
        val_labels = [by_devkit[int(v)] for v in written["val"][0][1]]
        assert len(ds) == sum(v < 2 for v in val_labels) and set(ds.labels.tolist()) <= {0, 1}


def test_pickled_downsampled_batches_are_refused(tmp_path):
    (tmp_path / "train_data_batch_1").write_bytes(b"\x80\x04pickled")
    with pytest.raises(ValueError, match="never"):
        detect(tmp_path)


def test_a_cache_takes_the_folders_options_object(cache):
    from minimlp.data.base import ImageOptions

    out, _ = cache
    options = ImageOptions(workers=0, subset="n02979186,n01440764", holdout=0.3, draft=False)  # last two: unused
    with (
        open_prepared(out, "val", 16, options) as by_object,
        open_prepared(out, "val", 16, workers=0, subset="n02979186,n01440764") as by_keywords,
    ):
        assert by_object.classes == by_keywords.classes and (by_object.labels == by_keywords.labels).all()
    with pytest.raises(TypeError, match="unknown image dataset option.*crop_size"):
        open_prepared(out, "val", 16, crop_size=3)
