"""Data trees a careful or a hostile user might hand over: links that loop or lead back into the
dataset, files reachable twice, names that are not UTF-8 (or hold a line break), folders that cannot
be read.  Whatever the tree, every image is listed once with its own label, or named in a warning
or an error; never a silent wrong label."""

from __future__ import annotations

import io
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from support.data_trees import WNIDS, build_tree

from minimlp import evaluate, layers
from minimlp import prepare as prepare_cli
from minimlp.data.cache import load_record, open_prepared, read_header
from minimlp.data.cache_writer import read_manifest
from minimlp.data.folders import DataLayoutWarning, list_split, open_folder_dataset
from minimlp.data.synthetic import photo_like
from minimlp.io.weights import save_weights
from minimlp.models import create_model


@pytest.fixture
def tree(tmp_path):
    """ROOT/train/<wnid>/ with 3 images per class, ROOT/val/<wnid>/ with 2; ROOT lies in tmp_path/data."""
    root = tmp_path / "data"
    build_tree(root, train_per_class=3, val_per_class=2, awkward=False)
    return root


def listed(root, split="train"):
    """(paths, labels, warning messages) of a split."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataLayoutWarning)
        paths, labels, cmap = list_split(root, split)
    assert list(cmap.wnids) == WNIDS
    return paths, labels, [str(w.message) for w in caught if issubclass(w.category, DataLayoutWarning)]


def assert_each_image_once_with_its_label(root, paths, labels, split="train"):
    """Every real image file of the split is listed exactly once, labelled with the class folder it lives in."""
    real = [os.path.realpath(p) for p in paths]
    assert len(set(real)) == len(real), "a file is counted twice"
    for path, label in zip(real, labels, strict=True):
        assert Path(path).parent.name == WNIDS[label], f"{path} labelled {WNIDS[label]}"
    expected = sorted({os.path.realpath(p) for p in (root / split).glob("*/*.JPEG")})
    assert sorted(real) == expected


@pytest.mark.parametrize("target", ["..", ".", "../..", "../../..", "/"])
def test_links_that_loop_are_not_followed(tree, target):
    link = tree / "train" / WNIDS[0] / "link"
    link.symlink_to(target)
    paths, labels, messages = listed(tree)
    assert len(paths) == 9 and np.bincount(labels).tolist() == [3, 3, 3]
    assert_each_image_once_with_its_label(tree, paths, labels)
    assert any(str(link) in m and "not followed" in m for m in messages)


def test_links_into_another_class_or_split_count_the_files_where_they_are(tree):
    first, second = tree / "train" / WNIDS[0], tree / "train" / WNIDS[1]
    (first / "sub").mkdir()
    (first / "sub" / "other_class").symlink_to(second)  # a folder of another class
    (first / "stolen.JPEG").symlink_to(second / f"{WNIDS[1]}_0.JPEG")  # a file of another class
    (first / "val_folder").symlink_to(tree / "val" / WNIDS[0])  # the other split
    (first / "again.JPEG").symlink_to(first / f"{WNIDS[0]}_1.JPEG")  # its own file, once more
    paths, labels, messages = listed(tree)
    assert np.bincount(labels).tolist() == [3, 3, 3]
    assert_each_image_once_with_its_label(tree, paths, labels)
    assert sum("not followed" in m for m in messages) == 2
    assert any("2 file(s) reached twice" in m for m in messages)


def test_a_tree_of_links_onto_another_disk_reads_like_the_real_one(tree, tmp_path):
    links = tmp_path / "links"
    for split in ("train", "val"):
        (links / split).mkdir(parents=True)
        (links / split / WNIDS[0]).symlink_to(tree / split / WNIDS[0])  # a class folder that is a link
        for wnid in WNIDS[1:]:  # class folders of links to files
            (links / split / wnid).mkdir()
            for image in sorted((tree / split / wnid).iterdir()):
                (links / split / wnid / image.name).symlink_to(image)
    (tree / "train" / WNIDS[2] / "loop").symlink_to(tree / "train" / WNIDS[2])  # outside links/: walked once
    for split in ("train", "val"):
        paths, labels, messages = listed(links, split)
        real_paths, real_labels, _ = listed(tree, split)
        assert [os.path.realpath(p) for p in paths] == [os.path.realpath(p) for p in real_paths]
        assert labels.tolist() == real_labels.tolist()
        assert_each_image_once_with_its_label(tree, paths, labels, split)


def test_a_file_in_two_classes_has_no_single_label_and_is_left_out(tree, tmp_path):
    first, second = tree / "train" / WNIDS[0], tree / "train" / WNIDS[1]
    os.link(second / f"{WNIDS[1]}_0.JPEG", first / "hard.JPEG")  # the same file, directly in two classes
    outside = tmp_path / "elsewhere.JPEG"
    shutil.copy(first / f"{WNIDS[0]}_0.JPEG", outside)
    (first / "a.JPEG").symlink_to(outside)  # one file elsewhere, linked from two classes
    (second / "b.JPEG").symlink_to(outside)
    paths, labels, messages = listed(tree)
    assert np.bincount(labels).tolist() == [3, 2, 3]
    assert not {"hard.JPEG", f"{WNIDS[1]}_0.JPEG", "a.JPEG", "b.JPEG"} & {Path(p).name for p in paths}
    assert any("4 file(s) in more than one class folder" in m for m in messages)


def test_an_unreadable_class_folder_is_an_error_not_an_empty_class(tree, monkeypatch):
    unreadable = str(tree / "train" / WNIDS[1])
    scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path) == unreadable:
            raise PermissionError(13, "Permission denied", unreadable)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(ValueError, match=f"cannot read the folder {unreadable} \\(Permission denied\\)"):
        listed(tree)


def test_names_that_are_not_utf8_or_hold_a_line_break(tree, tmp_path):
    """prepare stores every source name and reads it back byte for byte (a name with a line break
    once shifted every later record onto the wrong image); messages show such names escaped."""
    folder = tree / "train" / WNIDS[0]
    odd = [os.fsdecode(b"caf\xe9.JPEG"), "two\nlines.JPEG", "back\\slash.JPEG", "form\x0cfeed.JPEG", "x\u2028y.JPEG"]
    rng = np.random.default_rng(1)
    for i, name in enumerate(odd):
        photo_like(40 + 8 * i, 30, rng).save(folder / name, format="JPEG")
    (folder / os.fsdecode(b"notes\xff.txt")).write_text("not an image")
    paths, labels, messages = listed(tree)
    assert len(paths) == 14
    assert any("notes\\xff.txt" in m for m in messages)
    out = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        assert prepare_cli.main([str(tree), str(out), "--size", "16", "-j", "0"]) == 0
    manifest = read_manifest(out / "train_files.txt")
    assert manifest == paths
    assert read_header(out)["splits"]["train"]["bad"] == 0
    with open_prepared(out, "train", 16, workers=0) as cached:
        assert cached.labels.tolist() == labels.tolist()
        for k, path in enumerate(manifest):  # each record holds its own file's pixels
            h, w = cached.shapes[k]
            assert (cached.reader.record((k, h, w)) == load_record(path, 16, False)).all()


def test_a_bad_file_with_an_undecodable_name_is_reported_printably(tree, tmp_path):
    """The report of a file that fails to decode once killed a run before its first save when stdout
    was a strict UTF-8 stream (a UTF-8 locale): its name is shown with the odd bytes escaped."""
    from minimlp.data.loader import BadImagesWarning

    (tree / "train" / WNIDS[0] / os.fsdecode(b"bad\xe9.JPEG")).write_bytes(b"not a jpeg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_folder_dataset(tree, "train", 16, workers=0) as data:
            list(data.batches(np.arange(len(data)), 4, train=True, seed=0))
    message = next(str(w.message) for w in caught if issubclass(w.category, BadImagesWarning))
    assert "bad\\xe9.JPEG" in message
    message.encode("utf-8")  # printable on a strict UTF-8 stream


def test_train_and_evaluate_on_odd_names_with_a_strict_utf8_stdout(tree, tmp_path, monkeypatch):
    """A class folder and a broken file whose names are not UTF-8: the run saves its checkpoints and
    evaluate prints its table on a stdout that refuses what UTF-8 cannot encode (a UTF-8 locale)."""
    from minimlp import train

    for split in ("train", "val"):
        os.rename(tree / split / WNIDS[2], os.fsdecode(os.fsencode(tree / split) + b"/cass\xe9tte"))
    (tree / "train" / WNIDS[0] / os.fsdecode(b"bad\xe9.JPEG")).write_bytes(b"not a jpeg")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    argv = [
        "--data-dir",
        str(tree),
        "--model",
        "ff_tiny",
        "--img-size",
        "16",
        "--patch-size",
        "8",
        "--embed-dim",
        "16",
        "--depth",
        "1",
        "-b",
        "8",
        "--epochs",
        "1",
        "--procs",
        "1",
        "-j",
        "0",
        "--output",
        str(tmp_path / "run"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train.run(argv, log=print).status == "done"
        assert evaluate.main(["--checkpoint", str(tmp_path / "run" / "best.npz"), "-j", "0"]) == 0
    printed = stdout.buffer.getvalue().decode()
    assert "bad\\xe9.JPEG" in printed and "cass\\xe9tte" in printed


# -- evaluate: values and sizes it cannot use --------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "nan", "inf"])
def test_evaluate_refuses_a_crop_pct_outside_0_1(value, tree, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", "any.npz", f"--crop-pct={value}"])
    assert exit_info.value.code == 2
    assert f"argument --crop-pct: {value} is not in (0, 1]" in capsys.readouterr().err.splitlines()[-1]
    # A checkpoint's stored crop is checked where the data is opened, with the same words.
    with pytest.raises(ValueError, match=r"crop_pct .* is not in \(0, 1\]"):
        open_folder_dataset(tree, "val", 16, workers=0, crop_pct=float(value))


def test_evaluate_says_in_one_line_that_the_model_does_not_fit_in_memory(tmp_path, monkeypatch, capsys):
    model = create_model("ff_tiny", num_classes=3, img_size=16, patch_size=8, embed_dim=16, depth=1)
    save_weights(tmp_path / "w.npz", model.state_dict(), {"model": model.config_dict()})
    monkeypatch.setattr(layers, "available_memory", lambda: 10_000, raising=False)  # 10 KB free
    assert evaluate.main(["--checkpoint", str(tmp_path / "w.npz"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"w.npz: the model does not fit in memory: a model of {model.num_params():,} parameters" in err
    assert "GiB of memory is available" in err


def test_a_flat_val_label_file_names_images_that_are_not_utf8(tree):
    val = tree / "val"
    rows = []
    for n, path in enumerate(sorted(val.glob("*/*.JPEG"))):
        name = os.fsencode(f"val_{n}") + b"\xe9.JPEG"
        os.rename(path, os.fsencode(val) + b"/" + name)
        rows.append(name + b" " + path.parent.name.encode())
    for wnid in WNIDS:
        (val / wnid).rmdir()
    (tree / "val.txt").write_bytes(b"\n".join(rows) + b"\n")
    paths, labels, _ = listed(tree, "val")
    assert len(paths) == 6 and labels.tolist() == [0, 0, 1, 1, 2, 2]
