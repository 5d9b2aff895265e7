"""Image folders: what is recognised, which classes a subset selects, how labels are remapped, and the
messages for bad layouts (each naming the path)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from support.data_trees import EMPTY_WNID, WNIDS, build_tree

from minimlp.data import classes, folders
from minimlp.data.base import ImageOptions
from minimlp.data.classes import SUBSETS, ClassMap, cap_samples, imagenet_table, select_classes
from minimlp.data.folders import DataLayoutWarning, detect, list_split, open_folder_dataset


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return root, build_tree(root, train_per_class=3, val_per_class=2)


def test_packaged_class_table():
    table = imagenet_table()
    assert len(table) == 1000
    wnids = [c.wnid for c in table]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert sorted(c.devkit_label for c in table) == list(range(1, 1001))
    assert (table[0].wnid, table[0].name) == ("n01440764", "tench")


@pytest.mark.parametrize("name, size", [("imagenette", 10), ("imagewoof", 10), ("imagenet100", 100)])
def test_named_subsets_select_exactly_their_wnids(name, size):
    all_wnids = [c.wnid for c in imagenet_table()]
    chosen = select_classes(all_wnids, subset=name)
    assert len(chosen) == size and set(chosen.wnids) == set(SUBSETS[name])
    assert list(chosen.wnids) == sorted(SUBSETS[name])  # labels 0..K-1 in sorted-wnid order
    assert [all_wnids[i] for i in chosen.source_index] == list(chosen.wnids)
    assert chosen.names[0] == classes.imagenet_name(chosen.wnids[0])


def test_imagenette_and_imagewoof_lists():
    assert classes.IMAGENETTE[0] == "n01440764" and classes.IMAGEWOOF[-1] == "n02115641"
    names = {classes.imagenet_name(w) for w in classes.IMAGEWOOF}
    assert {"beagle", "Samoyed", "dingo", "golden_retriever"} <= names
    assert len(set(classes.IMAGENET100)) == 100


def test_num_classes_first_n_and_seeded_random():
    all_wnids = [c.wnid for c in imagenet_table()]
    first = select_classes(all_wnids, num_classes=5)
    assert list(first.wnids) == all_wnids[:5] and list(first.source_index) == [0, 1, 2, 3, 4]
    a = select_classes(all_wnids, num_classes=20, class_seed=7)
    b = select_classes(all_wnids, num_classes=20, class_seed=7)
    c = select_classes(all_wnids, num_classes=20, class_seed=8)
    assert a == b and a != c and list(a.wnids) == sorted(a.wnids)
    within = select_classes(all_wnids, subset="imagenet100", num_classes=3)
    assert list(within.wnids) == sorted(SUBSETS["imagenet100"])[:3]


def test_subset_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="n09999999"):
        select_classes(["n01440764"], subset="n01440764,n09999999")
    with pytest.raises(ValueError, match="unknown subset 'imagenet7'"):
        select_classes(["n01440764"], subset="imagenet7")
    with pytest.raises(ValueError, match="num_classes=5 but 1"):
        select_classes(["n01440764"], num_classes=5)
    listing = tmp_path / "mine.txt"
    listing.write_text("# two classes\nn02102040 springer\nn01440764\n")
    assert select_classes(WNIDS, subset=str(listing)).wnids == ("n01440764", "n02102040")


def test_class_map_round_trip_and_remap():
    cmap = ClassMap.from_wnids(["b", "a", "c", "d"], ["d", "b"])
    assert cmap.wnids == ("b", "d") and cmap.source_index == (1, 3)
    assert ClassMap.from_dict(cmap.to_dict()) == cmap
    assert cmap.remap(np.array([0, 1, 2, 3, 1])).tolist() == [-1, 0, -1, 1, 0]


def test_cap_samples_per_class_and_total():
    labels = np.repeat(np.arange(4), [10, 3, 7, 0][:3] + [5])
    keep = cap_samples(labels, per_class=4, seed=0)
    assert (np.bincount(labels[keep]) == [4, 3, 4, 4]).all() and (np.diff(keep) > 0).all()
    assert (cap_samples(labels, per_class=4, seed=0) == keep).all()
    assert len(cap_samples(labels, total=6, seed=1)) == 6


def test_detect_kinds(tree, tmp_path):
    root, _ = tree
    assert detect(root) == "imagenet"
    assert detect(root / "train") == "imagefolder"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no dataset"):
        detect(tmp_path / "empty")


def test_train_split_classes_labels_and_awkward_files(tree):
    root, special = tree
    with pytest.warns(DataLayoutWarning) as record:
        paths, labels, cmap = list_split(root, "train")
    messages = [str(w.message) for w in record]
    assert any(str(special["non_image"]) in m and "not an image" in m for m in messages)
    assert any(str(special["empty"]) in m and "no images" in m for m in messages)
    assert list(cmap.wnids) == sorted([*WNIDS, EMPTY_WNID])  # the empty class keeps its index
    assert str(special["non_image"]) not in paths
    for kind in ("cmyk", "gray", "palette", "rgba", "png_as_jpeg", "truncated"):
        assert str(special[kind]) in paths  # recognised as images; the truncated one fails only when decoded
    assert (np.bincount(labels, minlength=4) == [5, 5, 6, 0]).all()
    assert all(cmap.wnids[k] in p for p, k in zip(paths, labels, strict=True))


def test_subset_restricts_both_splits_and_remaps_labels(tree):
    root, _ = tree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        train_paths, train_labels, cmap = list_split(root, "train", subset="n02979186,n01440764")
        val_paths, val_labels, val_map = list_split(root, "val", subset="n02979186,n01440764")
    assert cmap == val_map and cmap.wnids == ("n01440764", "n02979186") and cmap.names == ("tench", "cassette_player")
    assert set(train_labels.tolist()) == {0, 1} and set(val_labels.tolist()) == {0, 1}
    assert all(("n01440764" in p) == (k == 0) for p, k in zip(val_paths, val_labels, strict=True))
    assert not [p for p in train_paths + val_paths if "n02102040" in p]
    assert cmap.source_index == (0, 2)


def test_caps_apply_to_train_only(tree):
    root, _ = tree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        _, labels, _ = list_split(root, "train", per_class=2)
        _, val_labels, _ = list_split(root, "val", per_class=1)
        capped, _, _ = list_split(root, "train", train_num_samples=4)
    assert np.bincount(labels).max() == 2 and len(val_labels) == 6 and len(capped) == 4


def test_missing_val_and_val_class_absent_from_train(tmp_path):
    root = tmp_path / "d"
    build_tree(root, train_per_class=1, val_per_class=1, awkward=False)
    shutil.rmtree(root / "val")
    with pytest.raises(FileNotFoundError, match=str(root / "val")):
        list_split(root, "val")
    build_tree(tmp_path / "e", train_per_class=1, val_per_class=1, awkward=False)
    (tmp_path / "e" / "val" / "n09999999").mkdir()
    shutil.copy(next((tmp_path / "e" / "val" / WNIDS[0]).iterdir()), tmp_path / "e" / "val" / "n09999999" / "x.JPEG")
    with pytest.raises(ValueError, match="n09999999"):
        list_split(tmp_path / "e", "val")


@pytest.mark.parametrize("style", ["kaggle", "pairs", "devkit"])
def test_flat_val_folder_with_a_label_file(tmp_path, style):
    root = tmp_path / "flat"
    build_tree(root, train_per_class=1, val_per_class=2, awkward=False)
    val = root / "val"
    truth = {}
    for n, path in enumerate(sorted(val.glob("*/*.JPEG"))):
        name = f"ILSVRC2012_val_{n + 1:08d}.JPEG"
        truth[name] = path.parent.name
        path.rename(val / name)
    for wnid in WNIDS:
        (val / wnid).rmdir()
    table = {c.wnid: c for c in imagenet_table()}
    if style == "kaggle":
        rows = [f"{name[:-5]},{wnid} 1 2 3 4" for name, wnid in truth.items()]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    elif style == "pairs":
        rows = [f"{name} {table[wnid].index}" for name, wnid in truth.items()]
        (root / "val.txt").write_text("\n".join(rows) + "\n")
    else:
        rows = [str(table[truth[name]].devkit_label) for name in sorted(truth)]
        (root / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(rows) + "\n")
    paths, labels, cmap = list_split(root, "val")
    assert len(paths) == 6
    assert all(cmap.wnids[k] == truth[p.rsplit("/", 1)[1]] for p, k in zip(paths, labels, strict=True))


def test_flat_val_without_labels_says_what_to_do(tmp_path):
    root = tmp_path / "flat"
    build_tree(root, train_per_class=1, val_per_class=1, awkward=False)
    for path in list((root / "val").glob("*/*.JPEG")):
        path.rename(root / "val" / path.name)
    for wnid in WNIDS:
        (root / "val" / wnid).rmdir()
    with pytest.raises(FileNotFoundError, match="LOC_val_solution.csv"):
        list_split(root, "val")


def test_imagefolder_holdout_is_disjoint_and_seeded(tree):
    root, _ = tree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        train, _, _ = list_split(root / "train", "train", holdout=0.4)
        val, _, _ = list_split(root / "train", "val", holdout=0.4)
        again, _, _ = list_split(root / "train", "val", holdout=0.4)
    assert not set(train) & set(val) and val == again and len(val) == 6


def test_folder_dataset_protocol(tree):
    root, _ = tree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        ds = open_folder_dataset(root, "val", 40, workers=0, subset=",".join(WNIDS))
        with pytest.raises(ValueError, match="needs 6 class folder"):  # the tree has 4 of Imagenette's 10
            open_folder_dataset(root, "val", 40, workers=0, subset="imagenette")
    assert ds.classes == ["tench", "English_springer", "cassette_player"]
    assert ds.wnids == WNIDS and ds.image_shape == (3, 40, 40) and len(ds) == 6
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
    assert ds.labels.dtype == np.int64 and ds.class_info()["wnids"] == WNIDS
    order = np.array([5, 0, 3])
    ((images, labels),) = list(ds.batches(order, 8, train=False, seed=0))
    assert images.shape == (3, 3, 40, 40) and images.dtype == np.uint8
    assert (labels == ds.labels[order]).all()
    ds.close()


def test_open_image_dataset_dispatches(tree):
    root, _ = tree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        ds = folders.open_image_dataset(root, "val", 32, workers=0)
    assert isinstance(ds, folders.FolderDataset) and len(ds) == 6


def test_a_val_only_tree_keeps_imagenet_indices(tmp_path):
    root = tmp_path / "valonly"
    build_tree(root, train_per_class=1, val_per_class=1, awkward=False)
    shutil.rmtree(root / "train")
    paths, labels, cmap = list_split(root, "val")
    assert len(cmap) == 1000 and sorted(set(labels.tolist())) == [0, 217, 482]  # indices of the full ImageNet list
    assert [cmap.wnids[k] for k in labels] == [p.rsplit("/", 2)[1] for p in paths]


def test_the_openers_share_one_options_object(tree):
    """Image folders and prepared caches take the same ImageOptions, as an object or as keywords."""
    root, _ = tree
    options = ImageOptions(workers=0, subset=",".join(WNIDS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        by_object = open_folder_dataset(root, "val", 40, options)
        by_keywords = open_folder_dataset(root, "val", 40, workers=0, subset=",".join(WNIDS))
        narrowed = open_folder_dataset(root, "val", 40, options, subset=WNIDS[0])
        with pytest.raises(TypeError, match="unknown image dataset option.*holdout_fraction"):
            open_folder_dataset(root, "val", 40, holdout_fraction=0.2)
        with pytest.raises(ValueError, match="train_crop='crop' applies to a prepared cache only"):
            open_folder_dataset(root, "val", 40, options, train_crop="crop")
    assert by_object.paths == by_keywords.paths and (by_object.labels == by_keywords.labels).all()
    assert narrowed.wnids == WNIDS[:1]
    for ds in (by_object, by_keywords, narrowed):
        ds.close()
