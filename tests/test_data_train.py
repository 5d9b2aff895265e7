"""End to end: train and evaluate a tiny model on an ImageNet-style tree of real JPEGs, from the folders and
from a prepared cache.  Skips until the trainer (minimlp.train) is part of the package."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
from data_trees import WNIDS, build_tree

from minimlp.data.cache_writer import prepare
from minimlp.data.folders import DataLayoutWarning

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("minimlp.train") is None, reason="the trainer is not there yet"),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    build_tree(root, train_per_class=4, val_per_class=2)
    return root


def train(data_dir, output, *extra):
    from minimlp import train as train_cli

    argv = ["--data-dir", str(data_dir), "--model", "ff_tiny", "--img-size", "32", "--patch-size", "8",
            "--embed-dim", "32", "--depth", "2", "-b", "8", "--epochs", "1", "-j", "0", "--output", str(output),
            *extra]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        result = train_cli.main(argv)
    assert result in (None, 0)
    assert any(output.rglob("*")), "the run wrote nothing"


def test_train_and_evaluate_from_folders(tree, tmp_path):
    train(tree, tmp_path / "run")


def test_train_on_a_subset(tree, tmp_path):
    train(tree, tmp_path / "subset", "--subset", ",".join(WNIDS[:2]))


def test_train_from_a_prepared_cache(tree, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataLayoutWarning)
        prepare(tree, tmp_path / "cache", 36, workers=0, log=lambda s: None)
    train(tmp_path / "cache", tmp_path / "cached-run")
