"""Datasets: the IDX reader and its errors, the real Fashion-MNIST files, batches and
augmentation, normalisation, ``open_dataset``, and the MD5-checked download against a
local HTTP server on 127.0.0.1 serving copies of the real files."""

from __future__ import annotations

import gzip
import http.server
import shutil
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from minimlp import data
from minimlp.data import fmnist
from minimlp.data.base import ArrayDataset, normalize


def write_idx(path: Path, array: np.ndarray, magic_dims: int | None = None, compress: bool = True) -> Path:
    header = bytes([0, 0, 0x08, magic_dims or array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


# -- IDX files ----------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / ("x.gz" if compress else "x"), images, compress=compress)
    assert (fmnist.read_idx(path, fmnist.IMAGES_MAGIC) == images).all()


def test_read_idx_errors_name_the_file(tmp_path):
    labels = write_idx(tmp_path / "labels.gz", np.arange(10, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"labels\.gz: magic number 2049 where 2051 was expected"):
        fmnist.read_idx(labels, fmnist.IMAGES_MAGIC)
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    raw = gzip.decompress(write_idx(tmp_path / "full.gz", images).read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(ValueError, match=r"short\.gz: header says \(4, 28, 28\).*truncated"):
        fmnist.read_idx(tmp_path / "short.gz")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw)[:200])  # a cut download
    with pytest.raises(ValueError, match=r"cut\.gz: cannot read"):
        fmnist.read_idx(tmp_path / "cut.gz")
    (tmp_path / "text").write_bytes(b"hello world, not idx")
    with pytest.raises(ValueError, match="not a uint8 IDX file"):
        fmnist.read_idx(tmp_path / "text")


def test_a_gzip_that_inflates_past_its_header_is_refused_before_the_rest_is_read(tmp_path):
    """A 64 KB file declaring 5 images that inflates to 64 MB: refused having inflated a few KB."""
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in (5, 28, 28)))
        for _ in range(64):
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"bomb\.gz: the data runs past the 3920 bytes its header"):
            fmnist.read_idx(path, fmnist.IMAGES_MAGIC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    # A header that declares more than the file could hold is refused before any data is read.
    huge = write_idx(tmp_path / "huge.gz", np.zeros(10, np.uint8))
    raw = gzip.decompress(huge.read_bytes())
    huge.write_bytes(gzip.compress(raw[:4] + (1 << 31).to_bytes(4, "big") + raw[8:]))
    with pytest.raises(ValueError, match=r"huge\.gz: header says \(2147483648,\) .* more than this"):
        fmnist.read_idx(huge)
    with pytest.raises(ValueError, match=r"the header says \(10,\), where Nx28x28 was expected"):
        fmnist.read_idx(write_idx(tmp_path / "flat.gz", np.zeros(10, np.uint8)), shape=(None, 28, 28))


# -- the real files -------------------------------------------------------------------------
def test_real_fashion_mnist(fmnist_dir):
    train = fmnist.FashionMNIST("train", fmnist_dir)
    test = data.open_dataset("fmnist", "val", data_dir=fmnist_dir)
    assert len(train) == 60_000 and len(test) == 10_000
    assert train.image_shape == (1, 28, 28) and train.images.dtype == np.uint8
    assert (np.bincount(train.labels) == 6000).all() and (np.bincount(test.labels) == 1000).all()
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    images, labels = next(train.batches(np.arange(5), 5, train=True, seed=0))
    assert (images == train.images[:5]).all(), "no augmentation unless asked for"
    # The published per-pixel statistics are those of these training images.
    counts = np.bincount(train.images.ravel(), minlength=256)  # exact, without a float copy
    values = np.arange(256) / 255
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    assert abs(mean - train.mean[0]) < 1e-4 and abs(std - train.std[0]) < 1e-4


# -- batches, augmentation, normalisation ----------------------------------------------------
def small_dataset(n=10, pad=2, flip=True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    augment = lambda x, r: fmnist.random_crop_flip(x, r, pad, flip)  # noqa: E731
    return ArrayDataset(images, np.arange(n) % 3, ["a", "b", "c"], (0.5,), (0.25,), augment)


def test_batches_follow_the_indices():
    ds = small_dataset()
    order = np.array([7, 2, 9, 0, 4, 1, 3])
    got = list(ds.batches(order, 3, train=False, seed=0))
    assert [len(y) for _, y in got] == [3, 3, 1]
    images = np.concatenate([x for x, _ in got])
    assert (images == ds.images[order]).all() and images.dtype == np.uint8
    assert (np.concatenate([y for _, y in got]) == ds.labels[order]).all()


def test_augmentation_is_seeded_and_a_shift_or_flip():
    ds = small_dataset()
    idx = np.arange(10)
    a = np.concatenate([x for x, _ in ds.batches(idx, 4, train=True, seed=5)])
    b = np.concatenate([x for x, _ in ds.batches(idx, 4, train=True, seed=5)])
    c = np.concatenate([x for x, _ in ds.batches(idx, 4, train=True, seed=6)])
    assert (a == b).all() and (a != c).any() and a.shape == (10, 1, 28, 28)
    flip_only = small_dataset(pad=0)
    out = np.concatenate([x for x, _ in flip_only.batches(idx, 10, train=True, seed=1)])
    same = (out == ds.images).all(axis=(1, 2, 3))
    mirrored = (out == ds.images[..., ::-1]).all(axis=(1, 2, 3))
    assert (same | mirrored).all() and same.any() and mirrored.any()
    # A shift by (dy, dx) = (1, 2) of padding 2 moves the image by (-1, 0) in place.
    image = np.arange(28 * 28, dtype=np.uint8).reshape(1, 1, 28, 28)

    class Fixed:
        def integers(self, lo, hi, n):
            return np.full(n, self.values.pop(0))

        def random(self, n):
            return np.ones(n)

    fixed = Fixed()
    fixed.values = [1, 2]
    shifted = fmnist.random_crop_flip(image, fixed, pad=2)
    assert (shifted[0, 0, 1:, :] == image[0, 0, :-1, :]).all() and (shifted[0, 0, 0] == 0).all()


def test_normalize():
    x = np.array([0, 51, 255], dtype=np.uint8).reshape(1, 1, 1, 3)
    out = normalize(x, (0.2,), (0.5,), np, np.float32)
    assert out.dtype == np.float32
    assert np.allclose(out.ravel(), [(0 - 0.2) / 0.5, (0.2 - 0.2) / 0.5, (1 - 0.2) / 0.5], atol=1e-6)
    with pytest.raises(ValueError, match="one value per channel"):
        normalize(x, (0.1, 0.2), (0.3, 0.4))


# -- open_dataset and its hooks --------------------------------------------------------------
def test_open_dataset_by_name_and_by_directory(fmnist_dir):
    by_name = data.open_dataset("fmnist", "train", data_dir=fmnist_dir)
    by_dir = data.open_dataset(str(fmnist_dir), "train")
    auto = data.open_dataset(None, "val", data_dir=fmnist_dir)
    assert len(by_name) == len(by_dir) == 60_000 and len(auto) == 10_000
    with pytest.raises(ValueError, match="Fashion-MNIST images are 28x28"):
        data.open_dataset("fmnist", "train", data_dir=fmnist_dir, img_size=32)


def test_open_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist2'; known: .*fmnist"):
        data.open_dataset("mnist2", "train")
    with pytest.raises(ValueError, match="no known dataset layout"):
        data.open_dataset(str(tmp_path), "train")
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split"):
        fmnist.FashionMNIST("validation")


def test_register_format_hook(tmp_path):
    (tmp_path / "marker.txt").write_text("x")
    opened = {}

    def opener(split, data_dir=None, download=False, workers=0, img_size=None):
        opened.update(split=split, data_dir=data_dir, workers=workers)
        return small_dataset()

    data.register_dataset("marker-test", opener)
    data.register_format("marker-test", lambda d: (d / "marker.txt").is_file())
    try:
        ds = data.open_dataset(None, "train", data_dir=tmp_path, workers=3)
        assert len(ds) == 10 and opened == {"split": "train", "data_dir": tmp_path, "workers": 3}
    finally:
        data._FORMATS.pop()
        data._DATASETS.pop("marker-test")


@pytest.fixture
def no_installed_data(tmp_path, monkeypatch):
    """Hide every place the files could be found."""
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIMLP_DATA", raising=False)
    return tmp_path


def test_missing_data_says_how_to_get_it(no_installed_data):
    with pytest.raises(fmnist.DatasetNotFound) as info:
        fmnist.FashionMNIST("train", no_installed_data / "nowhere")
    message = str(info.value)
    for expected in ("apt-get install dataset-fashion-mnist", "--download", fmnist.MIRROR, "nowhere", "cache"):
        assert expected in message


def test_search_order(no_installed_data, monkeypatch, fmnist_dir):
    env_dir, cli_dir = no_installed_data / "env", no_installed_data / "cli"
    for d in (env_dir, cli_dir):
        shutil.copytree(fmnist_dir, d)
    monkeypatch.setenv("MINIMLP_DATA", str(env_dir))
    assert fmnist.find_data_dir() == env_dir
    assert fmnist.find_data_dir(cli_dir) == cli_dir


def test_a_data_dir_given_is_the_only_place_looked_in(fmnist_dir, tmp_path):
    """A --data-dir that lacks a file, names a file or does not exist is an error naming it, never
    a quiet switch to the installed copy."""
    partial = tmp_path / "partial"
    partial.mkdir()
    for path in sorted(fmnist_dir.iterdir()):
        if not path.name.startswith("t10k-labels"):
            (partial / path.name).symlink_to(path)
    for name in ("fmnist", None):
        with pytest.raises(fmnist.DatasetNotFound, match=r"not in .*partial \(--data-dir\): it lacks t10k-labels"):
            data.open_dataset(name, "train", data_dir=partial)
        with pytest.raises(ValueError, match=r"--data-dir .*train-images.* is a file; give the folder"):
            data.open_dataset(name, "train", data_dir=next(partial.glob("train-images*")))
    with pytest.raises(fmnist.DatasetNotFound, match=r"nowhere \(--data-dir\): it does not exist"):
        fmnist.FashionMNIST("train", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no dataset minimlp knows"):
        data.open_dataset(None, "train", data_dir=tmp_path / "empty")


# -- download from a local mirror --------------------------------------------------------------
@pytest.fixture
def mirror(tmp_path, fmnist_dir, monkeypatch):
    """A local HTTP mirror serving copies of the real files; tests may corrupt or remove them.

    The MD5s checked are those of the copies: Debian repackaged the gzip files (their
    headers no longer carry the file name, 24 bytes less each), so their MD5s differ from
    the mirror's published ones although the images inside are the same.
    """
    root = tmp_path / "mirror"
    root.mkdir()
    for name in fmnist.MD5:
        shutil.copy(fmnist_dir / name, root / name)
    monkeypatch.setattr(fmnist, "MD5", {name: fmnist.md5sum(root / name) for name in fmnist.MD5})
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # keep the test output clean
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root, requests
    server.shutdown()
    server.server_close()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_download_verifies_md5(mirror, tmp_path):
    url, root, requests = mirror
    dest = tmp_path / "dest"
    assert fmnist.download_fashion_mnist(dest, base_url=url, log=lambda s: None) == dest
    for name in fmnist.MD5:
        assert (dest / name).read_bytes() == (root / name).read_bytes()
    assert leftovers(dest) == [] and len(requests) == 4
    assert len(fmnist.FashionMNIST("test", dest)) == 10_000
    fmnist.download_fashion_mnist(dest, base_url=url, log=lambda s: None)
    assert len(requests) == 4, "files already there with the right MD5 are not fetched again"


def test_corrupt_download_is_rejected_and_removed(mirror, tmp_path):
    url, root, _ = mirror
    bad = root / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte
    bad.write_bytes(bytes(raw))
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: MD5 .* does not match .*deleted"):
        fmnist.download_fashion_mnist(dest, base_url=url, log=lambda s: None)
    assert not (dest / bad.name).exists() and leftovers(dest) == []
    assert (dest / "train-images-idx3-ubyte.gz").is_file(), "files verified before the bad one are kept"


def test_missing_file_on_the_mirror(mirror, tmp_path):
    url, root, _ = mirror
    (root / "train-labels-idx1-ubyte.gz").unlink()
    dest = tmp_path / "dest"
    with pytest.raises(OSError, match=r"could not download .*train-labels-idx1-ubyte\.gz.*404"):
        fmnist.download_fashion_mnist(dest, base_url=url, log=lambda s: None)
    assert leftovers(dest) == [] and not (dest / "train-labels-idx1-ubyte.gz").exists()


def test_dataset_downloads_when_asked(mirror, no_installed_data, monkeypatch):
    url, _, _ = mirror
    monkeypatch.setenv("MINIMLP_FMNIST_MIRROR", url)
    with pytest.raises(fmnist.DatasetNotFound):
        fmnist.FashionMNIST("test")
    ds = fmnist.FashionMNIST("test", download=True)  # into the (hidden) per-user cache
    assert len(ds) == 10_000 and ds.directory == no_installed_data / "cache" / "minimlp" / "fashion-mnist"
