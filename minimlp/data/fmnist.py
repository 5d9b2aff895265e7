"""Fashion-MNIST: the IDX file reader, where to find the files, and a checked download.  Lesson 10.

Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) is 70,000 grayscale 28x28 images of clothing
in 10 classes: 60,000 for training, 10,000 for testing.  It ships as four gzipped IDX files:
a big-endian header (magic number, then one int32 per dimension) followed by raw uint8.

The files are looked for in ``--data-dir`` (the ``data_dir`` argument) when it is given, and
only there: a missing file or a path that is not a folder is an error, never a quiet switch to
another copy.  Without it, in order, in

1. ``$MINIMLP_DATA``,
2. the per-user cache ``$XDG_CACHE_HOME/minimlp/fashion-mnist`` (``~/.cache/...``),
3. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package).

A file whose header declares more data than it can hold, or which inflates past what its
header declares, is refused before the rest is read.  When no folder has the files,
``download=True`` fetches them from the dataset's public mirror into ``data_dir`` (or the
cache), checking each file's MD5 before it takes the final name, so a cut or corrupted
download never looks like data.  Without it the error says exactly how to get the files.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from minimlp.data.base import ArrayDataset
from minimlp.io.files import atomic_write

__all__ = [
    "CLASSES",
    "FILES",
    "MD5",
    "MIRROR",
    "FashionMNIST",
    "read_idx",
    "search_dirs",
    "find_data_dir",
    "download_fashion_mnist",
    "DatasetNotFound",
    "open_fmnist",
]

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# split -> (images file, labels file)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SIZES = {"train": 60_000, "test": 10_000}
# Per-pixel statistics of the training images, in [0, 1] units.
MEAN, STD = (0.2860,), (0.3530,)

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x00000803 (uint8, 3 dims), 0x00000801 (uint8, 1 dim)
MAX_DEFLATE_RATIO = 1032  # DEFLATE's longest match (258 bytes) costs at least 2 bits: no stream expands more


class DatasetNotFound(FileNotFoundError):
    """The files are nowhere to be found; the message says how to get them."""


# --------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------
def read_idx(
    path: str | os.PathLike, magic: int | None = None, shape: tuple[int | None, ...] | None = None
) -> np.ndarray:
    """Read an IDX file of uint8 (gzipped or not) into an array shaped by its header.

    Checks the magic number (type code 0x08 = uint8, and ``magic`` when given), the
    dimensions against ``shape`` when given (None: any size), and that the data is exactly
    as long as the header says; any problem raises ``ValueError`` naming the file.  The size
    the header declares is checked before the data is read, and no more than that (plus one
    byte) is ever inflated: a gzip that inflates past it is refused without inflating the rest.
    """
    path = Path(path)
    compressed = path.suffix == ".gz"
    try:
        file_size = path.stat().st_size
        with (gzip.open if compressed else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise ValueError(f"{path}: {len(head)} bytes is too short for an IDX header")
            found = int.from_bytes(head, "big")
            if head[0] != 0 or head[1] != 0 or head[2] != 0x08 or not 1 <= head[3] <= 4:
                raise ValueError(f"{path}: not a uint8 IDX file (magic number {found:#010x})")
            if magic is not None and found != magic:
                raise ValueError(
                    f"{path}: magic number {found} where {magic} was expected "
                    f"({'images' if magic == IMAGES_MAGIC else 'labels'} file swapped?)"
                )
            ndim = head[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{path}: the header promises {ndim} dimensions but the file ends first")
            found_shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            if shape is not None and (
                len(shape) != ndim or any(s not in (None, d) for s, d in zip(shape, found_shape, strict=True))
            ):
                wanted = "x".join("N" if s is None else str(s) for s in shape)
                raise ValueError(f"{path}: the header says {found_shape}, where {wanted} was expected")
            expected = math.prod(found_shape)
            # Nothing is read that the file cannot hold: DEFLATE expands by at most MAX_DEFLATE_RATIO.
            header = 4 + 4 * ndim
            room = MAX_DEFLATE_RATIO * file_size if compressed else file_size - header
            if expected > room:
                raise ValueError(
                    f"{path}: header says {found_shape} = {expected} bytes of data, more than this "
                    f"{file_size}-byte file can hold; the file is truncated or damaged"
                )
            raw = f.read(expected)
            beyond = f.read(1)
    except (OSError, EOFError, zlib.error) as exc:  # gzip raises these for a truncated or non-gzip file
        raise ValueError(f"{path}: cannot read ({exc}); the file is damaged, delete it and fetch it again") from exc
    if len(raw) < expected:
        raise ValueError(
            f"{path}: header says {found_shape} = {expected} bytes of data, the file holds "
            f"{len(raw)}; the file is truncated or damaged"
        )
    if beyond:
        raise ValueError(
            f"{path}: the data runs past the {expected} bytes its header {found_shape} declares "
            f"(read no further); the file is damaged, delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(found_shape)


def _read_cached(path: Path, magic: int, shape: tuple[int | None, ...]) -> np.ndarray:
    """read_idx, remembered while the file is unchanged (the trainer, evaluation and tests
    open the same split several times; decompressing 26 MB takes a noticeable moment)."""
    stat = path.stat()
    return _read_idx_once(str(path.resolve()), stat.st_mtime_ns, stat.st_size, magic, shape)


@functools.lru_cache(maxsize=4)
def _read_idx_once(path: str, mtime_ns: int, size: int, magic: int, shape: tuple[int | None, ...]) -> np.ndarray:
    return read_idx(path, magic, shape)  # read-only (it wraps the file's bytes), so sharing it is safe


# --------------------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------------------
def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "minimlp" / "fashion-mnist"


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """The directories looked in, in order, each with where it came from: ``data_dir`` alone when
    it is given (a folder named on purpose is never silently replaced by another copy)."""
    if data_dir:
        return [(Path(data_dir), "--data-dir")]
    dirs = []
    if os.environ.get("MINIMLP_DATA"):
        dirs.append((Path(os.environ["MINIMLP_DATA"]), "$MINIMLP_DATA"))
    dirs.append((cache_dir(), "the per-user cache"))
    dirs.append((SYSTEM_DIR, "the Debian package dataset-fashion-mnist"))
    return dirs


def missing_files(directory: Path) -> list[str]:
    """The four files' names that ``directory`` lacks (each may be stored gunzipped, without .gz)."""
    return [name for name in MD5 if not ((directory / name).is_file() or (directory / name[:-3]).is_file())]


def has_files(directory: Path) -> bool:
    return not missing_files(directory)


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first directory of :func:`search_dirs` that holds all four files, else None."""
    for directory, _ in search_dirs(data_dir):
        if has_files(directory):
            return directory
    return None


def not_found_message(data_dir: str | os.PathLike | None = None) -> str:
    how = (
        "Get the files in one of these ways:\n"
        "  sudo apt-get install dataset-fashion-mnist      (Debian/Ubuntu; installs into "
        f"{SYSTEM_DIR})\n"
        "  python -m minimlp.train --download               (downloads into "
        f"{Path(data_dir) if data_dir else cache_dir()}, MD5-checked)\n"
        f"  or fetch the four files from {MIRROR} into a directory and pass --data-dir DIR"
    )
    if data_dir:
        directory = Path(data_dir)
        what = f"it lacks {', '.join(missing_files(directory))}" if directory.is_dir() else "it does not exist"
        return (
            f"Fashion-MNIST is not in {directory} (--data-dir): {what}. A folder named with --data-dir is the "
            f"only one used; without --data-dir, minimlp looks in $MINIMLP_DATA, the per-user cache "
            f"{cache_dir()} and {SYSTEM_DIR}.\n{how}"
        )
    searched = "\n".join(f"  {d}  ({why})" for d, why in search_dirs(data_dir))
    return f"Fashion-MNIST was not found. Looked for {', '.join(MD5)} in:\n{searched}\n{how}"


# --------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------
def md5sum(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_fashion_mnist(
    dest: str | os.PathLike | None = None,
    base_url: str | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> Path:
    """Fetch the four files into ``dest`` (default: the cache), MD5-checked; returns ``dest``.

    Files already there with the right MD5 are kept.  Each file is streamed into a temporary
    file in ``dest`` and renamed only after its MD5 matches, so an interrupted or corrupted
    download leaves nothing behind that could be mistaken for data.  ``base_url`` defaults
    to ``$MINIMLP_FMNIST_MIRROR``, else the public mirror.
    """
    base_url = base_url or os.environ.get("MINIMLP_FMNIST_MIRROR") or MIRROR
    dest = Path(dest) if dest else cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name, expected in MD5.items():
        target = dest / name
        if target.is_file() and md5sum(target) == expected:
            continue
        url = base_url.rstrip("/") + "/" + name
        log(f"downloading {url}")
        try:  # the file takes its name only once complete and MD5-checked (atomic_write removes it otherwise)
            with atomic_write(target) as out, urllib.request.urlopen(url, timeout=timeout) as response:
                digest = hashlib.md5()
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
                if digest.hexdigest() != expected:
                    raise ValueError(
                        f"{url}: MD5 {digest.hexdigest()} does not match the published {expected}; "
                        "the download is corrupt and was deleted. Try again, or install "
                        "dataset-fashion-mnist with apt-get"
                    )
        except OSError as exc:
            raise OSError(f"could not download {url}: {exc}") from exc
    return dest


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------
def random_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 2, flip: bool = True) -> np.ndarray:
    """Shift each image by up to ``pad`` pixels (zero fill) and mirror half of them.

    uint8 (B, C, H, W) in and out, one gather for the whole batch.
    """
    B, C, H, W = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # (B, C, H+2p, W+2p)
    rows = rng.integers(0, 2 * pad + 1, B)[:, None] + np.arange(H)  # (B, H)
    cols = rng.integers(0, 2 * pad + 1, B)[:, None] + np.arange(W)  # (B, W)
    if flip:
        mirrored = rng.random(B) < 0.5
        cols = np.where(mirrored[:, None], cols[:, ::-1], cols)
    b = np.arange(B)[:, None, None, None]
    c = np.arange(C)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


class FashionMNIST(ArrayDataset):
    """One split of Fashion-MNIST in memory (47 MB for training), as uint8 (N, 1, 28, 28).

    ``split`` is "train" or "test" ("val" is the test set: Fashion-MNIST has no separate
    validation set, and the test accuracy is the number papers report).

    Augmentation is off by default: ``pad`` > 0 shifts training images by up to ``pad``
    pixels, ``flip`` mirrors half of them.  Measured on the default recipe, both slow
    learning in the first epochs (epoch-one test accuracy 82.8 % without, 77.2 % with a
    2-pixel shift and flips; 79.1 % without, 77.1 % with flips alone), and a run of a few
    epochs never recovers that; longer runs may want them.
    """

    def __init__(
        self,
        split: str = "train",
        data_dir: str | os.PathLike | None = None,
        download: bool = False,
        pad: int = 0,
        flip: bool = False,
    ) -> None:
        split = {"val": "test", "t10k": "test"}.get(split, split)
        if split not in FILES:
            raise ValueError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test' ('val')")
        if data_dir and Path(data_dir).exists() and not Path(data_dir).is_dir():
            raise ValueError(
                f"--data-dir {data_dir} is a file; give the folder that holds the four Fashion-MNIST "
                f"files ({', '.join(MD5)})"
            )
        directory = find_data_dir(data_dir)
        if directory is None:
            if not download:
                raise DatasetNotFound(not_found_message(data_dir))
            directory = download_fashion_mnist(data_dir)
        images_name, labels_name = FILES[split]
        images = _read_cached(self._path(directory, images_name), IMAGES_MAGIC, (None, 28, 28))  # (N, 28, 28)
        labels = _read_cached(self._path(directory, labels_name), LABELS_MAGIC, (None,))  # (N,)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split")
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{directory}: Fashion-MNIST images are 28x28, these are {images.shape[1:]}")
        if labels.size and labels.max() >= len(CLASSES):
            raise ValueError(f"{directory}: label {labels.max()} in the {split} split; there are 10 classes")
        augment = (lambda x, rng: random_crop_flip(x, rng, pad, flip)) if (pad or flip) else None
        words = [f"random shifts of up to {pad} px"] * bool(pad) + ["horizontal flips"] * flip
        super().__init__(
            images[:, None], labels.astype(np.int64), CLASSES, MEAN, STD, augment, ", ".join(words) or "none"
        )
        self.split, self.directory = split, directory

    @staticmethod
    def _path(directory: Path, name: str) -> Path:
        return directory / name if (directory / name).is_file() else directory / name[:-3]

    def describe(self) -> str:
        return f"Fashion-MNIST {self.split}: {len(self)} images of 1x28x28 from {self.directory}"


def open_fmnist(
    split: str, data_dir: str | os.PathLike | None = None, download: bool = False, **options: object
) -> FashionMNIST:
    return FashionMNIST(split, data_dir, download, **options)
