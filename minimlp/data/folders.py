"""ImageNet and other image-folder datasets read straight from disk.

Layouts recognised (``detect``):

* ``imagenet``: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (``validation/`` also
  works), or ``ROOT/val/`` as one flat folder of images plus a label file (see
  :func:`read_val_labels`);
* ``imagefolder``: ``ROOT/<class>/*``, class folders directly under the root; a seeded
  ``holdout`` fraction of each class (10% by default) is the validation split;
* ``prepared``: a cache written by ``python -m minimlp.prepare`` (read by :mod:`minimlp.data.cache`);
* ``downsampled``: Downsampled ImageNet's npz batches, which ``python -m minimlp.prepare`` converts
  into a prepared cache.

Classes are the sorted class-folder names of ``train/`` (for ImageNet: the wnids, so label
k is the k-th of the sorted 1000, as timm and the released checkpoints have it), narrowed
by a subset if one is asked for (:func:`minimlp.data.classes.select_classes`) and relabelled
0..K-1.  Files are recognised as images by their content: those with a usual image
extension are taken as listed (and any that fails to decode is skipped and reported when
it is read), any other file is opened by Pillow to see whether it is an image; a file
that is not is named in a warning and left out.  Lesson 12 walks through the layout;
its appendix (12a), the awkward files.

Links.  A tree made of symbolic links reads like the real one: class folders may be links to
folders elsewhere (another disk), and so may files and subfolders inside a class folder.
What a link may not do is loop, or give one file two places:

* a link to a folder is not followed when it leads to ROOT or a folder that holds it
  (``.``, ``..``, ``/``: a loop), or anywhere inside ROOT (another class, the other split:
  what it points to is counted where it is, if anywhere);
* a folder is walked once per class, so a link to one of its own ancestors elsewhere ends there;
* a file (its device and inode) counts once.  Reached directly (no link below the class
  folder) in one class, it counts there, whatever links elsewhere lead to it; reached only
  through links, it counts in the class the links are in.  A file reached directly in two
  classes (hard links), or through links in two classes, has no single label: it is left out.

Every link not followed and every file left out is named in a warning.  Links to files are
judged by identity within one split: a file link from train/ to an image of val/ is followed.
A folder that cannot be read is an error naming it, never an empty class.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from minimlp.data import transforms
from minimlp.data.augment import RandAugment
from minimlp.data.base import ImageOptions, image_options, shown
from minimlp.data.cache import CACHE_HEADER, open_prepared
from minimlp.data.classes import ClassMap, cap_samples, imagenet_table, select_classes
from minimlp.data.loader import LoaderDataset, default_workers
from minimlp.data.transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN

__all__ = [
    "DataLayoutWarning",
    "FolderDataset",
    "FolderReader",
    "detect",
    "recognise",
    "open_folder_dataset",
    "open_image_dataset",
    "read_val_labels",
    "scan_class_folders",
    "is_image_file",
]

IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".jpe", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".webp", ".tif", ".tiff", ".gif"}
VAL_DIR_NAMES = ("val", "validation")
# Label files for a flat val/ folder, looked for in ROOT and in ROOT/val.
VAL_LABEL_FILES = (
    "LOC_val_solution.csv",
    "ILSVRC2012_validation_ground_truth.txt",
    "val_labels.txt",
    "val.txt",
    "labels.txt",
)


class DataLayoutWarning(UserWarning):
    """Something in the data folders was left out or looks wrong; the message names the path."""


def _warn(message: str) -> None:
    warnings.warn(message, DataLayoutWarning, stacklevel=3)


def is_image_file(path: str | os.PathLike) -> bool:
    """True if Pillow recognises the file's content as an image (header only, no decoding)."""
    try:
        with open(path, "rb") as f, Image.open(f) as img:
            return img.format is not None
    except Exception:
        return False


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def _unreadable(directory: str, exc: OSError) -> ValueError:
    return ValueError(
        f"cannot read the folder {shown(directory)} ({exc.strerror or exc}): its images cannot be "
        f"listed; fix its permissions, or move it out of the dataset"
    )


class _Fence:
    """Where a link to a folder may not lead: into the folder being listed (``top``), or to a folder
    that holds it."""

    def __init__(self, top: str | os.PathLike):
        self.top = os.path.realpath(top)

    def refuses(self, link: str) -> str | None:
        """Why the folder link ``link`` is not followed, or None."""
        target = os.path.realpath(link)
        if target == self.top or self.top.startswith(target.rstrip(os.sep) + os.sep):
            return f"leads to {shown(target)}, which holds the dataset (a loop)"
        if target.startswith(self.top + os.sep):
            return f"leads back into {shown(self.top)} (what it points to is counted where it is)"
        return None


@dataclass
class _Found:
    """The image files of one class folder, in sorted order, with each file's identity."""

    paths: list[str] = field(default_factory=list)
    dev: list[int] = field(default_factory=list)  # st_dev and st_ino of the file itself (links followed)
    ino: list[int] = field(default_factory=list)
    linked: list[bool] = field(default_factory=list)  # reached through a link below the class folder


def _walk(folder: str, fence: _Fence, result: ScanResult) -> _Found:
    """The image files under ``folder``: each folder's files (sorted), then its subfolders (sorted).

    Links below ``folder`` are followed unless ``fence`` refuses them; a folder already walked
    for this class (a link back to one of its own ancestors) is not walked again.  An unreadable
    folder raises ValueError naming it.
    """
    found = _Found()
    walked: set[tuple[int, int]] = set()
    stack = [(folder, False)]  # (folder, reached through a link)
    while stack:
        directory, via_link = stack.pop()
        try:
            here = os.stat(directory)
            if (here.st_dev, here.st_ino) in walked:
                continue
            walked.add((here.st_dev, here.st_ino))
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            raise _unreadable(directory, exc) from None
        subfolders = []
        for entry in entries:
            if _hidden(entry.name):
                continue
            link = entry.is_symlink()
            try:
                is_dir = entry.is_dir()  # follows links
                identity = entry.stat() if link else None
            except OSError:
                result.links.append((entry.path, "leads nowhere"))
                continue
            if is_dir:
                why = fence.refuses(entry.path) if link else None
                if why:
                    result.links.append((entry.path, why))
                else:
                    subfolders.append((entry.path, via_link or link))
                continue
            if not (os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS or is_image_file(entry.path)):
                result.non_images.append(entry.path)
                continue
            found.paths.append(entry.path)
            # A plain file's identity comes free with the listing: its folder's device, its own inode.
            found.dev.append(identity.st_dev if link else here.st_dev)
            found.ino.append(identity.st_ino if link else entry.inode())
            found.linked.append(via_link or link)
        stack.extend(reversed(subfolders))
    return found


def _count_once(found: list[_Found], result: ScanResult) -> list[list[str]]:
    """Per class, the paths that count: every file (by device and inode) once, in one class only.

    A file reached directly (not through a link) in one class counts there, wherever else links
    lead to it; a file reached through links only counts where the links are, if they are all in
    one class.  Otherwise the file has no single label and is left out.  Returns the kept paths
    per class, in their order; repeats and ambiguous files go to ``result``.
    """
    counts = [len(f.paths) for f in found]
    if sum(counts) == 0:
        return [[] for _ in found]
    dev = np.concatenate([np.array(f.dev, dtype=np.uint64) for f in found])  # (F,) over all classes
    ino = np.concatenate([np.array(f.ino, dtype=np.uint64) for f in found])
    linked = np.concatenate([np.array(f.linked, dtype=bool) for f in found])
    cls = np.repeat(np.arange(len(found)), counts)  # (F,)
    position = np.arange(len(dev))
    order = np.lexsort((position, linked, ino, dev))  # by file; direct before linked; then first found
    d, i = dev[order], ino[order]
    first = np.r_[True, (d[1:] != d[:-1]) | (i[1:] != i[:-1])]  # (F,) the first entry of each file
    group = np.cumsum(first) - 1  # (F,) which file each entry is
    starts = np.flatnonzero(first)
    # The entries that decide the label: the direct ones if the file has any, else all of them.
    deciding = linked[order] == linked[order][starts][group]
    c = cls[order]
    low = np.minimum.reduceat(np.where(deciding, c, len(found)), starts)
    high = np.maximum.reduceat(np.where(deciding, c, -1), starts)
    ambiguous = (low != high)[group]  # (F,)
    keep = np.zeros(len(dev), dtype=bool)
    keep[order[first & ~ambiguous]] = True
    paths = [p for f in found for p in f.paths]
    result.ambiguous += [paths[k] for k in sorted(order[ambiguous])]
    result.repeats += [paths[k] for k in sorted(order[~first & ~ambiguous])]
    bounds = np.cumsum([0] + counts)
    return [[paths[k] for k in range(a, b) if keep[k]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _list_images(directory: Path, result: ScanResult, tree: Path) -> list[str]:
    """Image files under ``directory`` (recursively), each counted once; other files go to ``result``."""
    return _count_once([_walk(str(directory), _Fence(tree), result)], result)[0]


@dataclass
class ScanResult:
    classes: list[str]  # sorted class-folder names
    files: list[list[str]]  # per class, sorted paths
    non_images: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (link, why it was not followed)
    repeats: list[str] = field(default_factory=list)  # a file counted already, reached again here
    ambiguous: list[str] = field(default_factory=list)  # a file found in two classes: left out of both

    def warn(self) -> None:
        for path in self.non_images:
            _warn(f"not an image, left out: {shown(path)}")
        for path in self.empty:
            _warn(f"class folder has no images: {shown(path)} (the class is kept so label indices do not shift)")
        for link, why in self.links:
            _warn(f"link not followed: {shown(link)} {why}")
        for what, paths in (
            ("reached twice (through links or hard links), counted once", self.repeats),
            ("in more than one class folder, so with no single label; left out", self.ambiguous),
        ):
            if paths:
                more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
                _warn(f"{len(paths)} file(s) {what}: {', '.join(shown(p) for p in paths[:5])}{more}")


def _class_folders(directory: Path) -> list[str]:
    """The sorted class-folder names in ``directory`` (links to folders included)."""
    try:
        with os.scandir(directory) as listing:
            return sorted(e.name for e in listing if not _hidden(e.name) and _is_dir(e))
    except OSError as exc:
        raise _unreadable(str(directory), exc) from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def scan_class_folders(
    directory: str | os.PathLike, warn: bool = True, tree: str | os.PathLike | None = None
) -> ScanResult:
    """The class folders under ``directory`` and their image files (see the module docstring for links).

    An empty class folder stays a class (so the other classes keep their indices) and is
    named in a warning; so is every file that is not an image, every link not followed and
    every file left out for being counted already or having no single class.  Links to folders
    may not lead into ``tree`` (the whole dataset; default ``directory``).  An unreadable folder
    raises ValueError naming it.
    """
    directory = Path(directory)
    result = ScanResult(_class_folders(directory), [])
    fence = _Fence(directory if tree is None else tree)
    found = []
    for name in result.classes:
        folder = str(directory / name)
        why = fence.refuses(folder) if os.path.islink(folder) else None
        if why:
            result.links.append((folder, why))
            found.append(_Found())
        else:
            found.append(_walk(folder, fence, result))
    result.files = _count_once(found, result)
    result.empty = [
        str(directory / name) for name, files in zip(result.classes, result.files, strict=True) if not files
    ]
    if warn:
        result.warn()
    return result


def _find_val_dir(root: Path) -> Path | None:
    for name in VAL_DIR_NAMES:
        if (root / name).is_dir():
            return root / name
    return None


def _flat_images(directory: Path) -> list[str]:
    return sorted(str(directory / e.name) for e in os.scandir(directory) if e.is_file() and not _hidden(e.name))


def read_val_labels(root: str | os.PathLike, val_dir: str | os.PathLike | None = None) -> tuple[Path, dict[str, str]]:
    """Labels of a flat validation folder: {file stem: wnid}, and the label file they came from.

    Recognised label files (in ROOT or in the val folder, first found wins):

    * ``LOC_val_solution.csv`` (Kaggle): ``ImageId,PredictionString`` rows; the first word of
      PredictionString is the wnid;
    * ``ILSVRC2012_validation_ground_truth.txt`` (devkit; also under
      ``ILSVRC2012_devkit_t12/data/``): one 1-based devkit label per line, for the val images in
      sorted file-name order;
    * ``val_labels.txt`` / ``val.txt`` / ``labels.txt``: ``<file name> <wnid or class index>`` per
      line (space, tab or comma between), the index being the sorted-wnid index 0..999.
    """
    root = Path(root)
    val_dir = Path(val_dir) if val_dir is not None else _find_val_dir(root)
    candidates = [d / name for name in VAL_LABEL_FILES for d in (root, val_dir) if d is not None]
    candidates.insert(2, root / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt")
    label_file = next((p for p in candidates if p.is_file()), None)
    if label_file is None:
        raise FileNotFoundError(
            f"{val_dir} holds images directly (no class folders) but no label file was found; put one of "
            f"{', '.join(VAL_LABEL_FILES)} in {root}, or sort the images into val/<wnid>/ folders"
        )
    table = imagenet_table()
    # Names that are not UTF-8 decode as the file system's listing does, so they match the images.
    lines = [ln.strip() for ln in os.fsdecode(label_file.read_bytes()).split("\n") if ln.strip()]
    labels: dict[str, str] = {}
    if label_file.name == "LOC_val_solution.csv":
        for ln in lines[1:]:
            image_id, prediction = ln.split(",", 1)
            labels[Path(image_id).stem] = prediction.split()[0]
    elif label_file.name == "ILSVRC2012_validation_ground_truth.txt":
        by_devkit = {c.devkit_label: c.wnid for c in table}
        images = [Path(p).stem for p in _flat_images(val_dir)]
        if len(images) != len(lines):
            raise ValueError(
                f"{label_file} has {len(lines)} labels but {val_dir} holds {len(images)} files; the "
                f"devkit labels only fit the complete, unrenamed val set"
            )
        labels = {stem: by_devkit[int(v)] for stem, v in zip(images, lines, strict=True)}
    else:
        by_index = {str(c.index): c.wnid for c in table}
        for ln in lines:
            parts = ln.replace(",", " ").split()
            if len(parts) < 2:
                raise ValueError(f"{label_file}: line {ln!r} is not '<file name> <wnid or index>'")
            labels[Path(parts[0]).stem] = by_index.get(parts[1], parts[1])
    return label_file, labels


@dataclass(frozen=True)
class FolderReader:
    """Decodes one file for a batch: the small, picklable part a worker process needs."""

    img_size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    crop_pct: float = DEFAULT_CROP_PCT
    draft: bool = True
    randaugment: RandAugment | None = None  # applied after the crop and flip

    def load(self, path: str, train: bool, rng: np.random.Generator) -> np.ndarray:
        if train:
            return transforms.train_image(
                path, self.img_size, rng, self.scale, self.ratio, self.hflip, self.randaugment, self.draft
            )
        return transforms.eval_image(path, self.img_size, self.crop_pct, self.draft)


class FolderDataset(LoaderDataset):
    """Images listed by path with labels 0..K-1; batches are decoded by a :class:`BatchLoader`."""

    def __init__(
        self,
        paths: list[str],
        labels: np.ndarray,
        class_map: ClassMap,
        reader: FolderReader,
        workers: int = 0,
        prefetch: int = 2,
        max_bad: int | None = None,
        description: str = "",
        augmentation: str = "none",
    ):
        self.paths = paths
        super().__init__(
            labels,
            class_map,
            reader,
            reader.img_size,
            workers,
            prefetch,
            max_bad,
            description or "image folders",
            augmentation,
        )

    def _items(self, indices: np.ndarray) -> list[str]:
        return [self.paths[i] for i in indices]


def recognise(root: str | os.PathLike) -> str | None:
    """The kind of image dataset at ``root`` ("prepared", "downsampled", "imagenet", "imagefolder"), or None.

    Looks only at names, never raises: this is how ``open_dataset`` tells an image tree from
    other data.  :func:`detect` says what is wrong when the answer is None.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    if (root / CACHE_HEADER).is_file():
        return "prepared"
    if any(root.glob("train_data_batch_*")) or (root / "val_data.npz").is_file() or (root / "val_data").is_file():
        return "downsampled"
    if (root / "train").is_dir() or _find_val_dir(root) is not None:
        return "imagenet"
    try:
        if _class_folders(root):
            return "imagefolder"
    except ValueError:  # unreadable: detect() and the listing say so
        pass
    return None


def detect(root: str | os.PathLike) -> str:
    """What kind of dataset is at ``root``: "prepared", "downsampled", "imagenet" or "imagefolder".

    Raises FileNotFoundError / ValueError naming the path and the layouts expected.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"--data-dir must be a directory, {root} is a file")
    _class_folders(root)  # an unreadable root is said to be one
    kind = recognise(root)
    if kind == "downsampled" and not (any(root.glob("train_data_batch_*.npz")) or (root / "val_data.npz").is_file()):
        raise ValueError(
            f"{root} holds Downsampled ImageNet batches in the pickled format, which minimlp never "
            f"loads (unpickling can run code); download the npz variant instead"
        )
    if kind is None:
        raise ValueError(
            f"{root} holds no dataset minimlp knows: expected train/<class>/ and val/<class>/ folders (ImageNet), "
            f"class folders directly in it (ImageFolder), or a cache written by python -m minimlp.prepare"
        )
    return kind


@dataclass
class _Split:
    paths: list[str]
    source_labels: np.ndarray  # label among all classes found (sorted folder names)
    classes: list[str]  # all classes found, sorted


def _imagenet_split(root: Path, split: str) -> _Split:
    train_dir = root / "train"
    if split == "train":
        if not train_dir.is_dir():
            raise FileNotFoundError(f"{train_dir} not found: the training images go in train/<wnid>/*.JPEG")
        scan = scan_class_folders(train_dir, tree=root)
        return _flatten(scan.classes, scan.files)
    val_dir = _find_val_dir(root)
    if val_dir is None:
        raise FileNotFoundError(
            f"{root / 'val'} not found: put the validation images in val/<wnid>/ folders (or flat in val/ with a "
            f"label file such as LOC_val_solution.csv), or train only (no evaluation)"
        )
    train_classes = _class_folders(train_dir) if train_dir.is_dir() else None
    if _class_folders(val_dir):
        scan = scan_class_folders(val_dir, tree=root)
        classes = train_classes if train_classes is not None else _val_only_classes(scan.classes)
        unknown = sorted(set(scan.classes) - set(classes))
        if unknown:
            raise ValueError(
                f"{len(unknown)} class folder(s) in {val_dir} have no folder in {train_dir}, so their "
                f"labels are undefined: {', '.join(shown(val_dir / u) for u in unknown[:10])}; remove "
                f"them or add the training images"
            )
        position = {c: i for i, c in enumerate(classes)}
        split_ = _flatten(scan.classes, scan.files)
        split_.source_labels = np.array([position[scan.classes[k]] for k in split_.source_labels], dtype=np.int64)
        split_.classes = classes
        return split_
    # A flat val folder and a label file.
    label_file, labels = read_val_labels(root, val_dir)
    classes = train_classes if train_classes is not None else [c.wnid for c in imagenet_table()]
    position = {c: i for i, c in enumerate(classes)}
    paths, source = [], []
    scan = ScanResult([val_dir.name], [])
    files = _list_images(val_dir, scan, root)
    scan.non_images = [p for p in scan.non_images if Path(p).name not in VAL_LABEL_FILES]
    scan.warn()
    unlabelled = []
    for path in files:
        wnid = labels.get(Path(path).stem)
        if wnid is None:
            unlabelled.append(path)
            continue
        if wnid not in position:
            raise ValueError(f"{label_file} gives {shown(path)} the class {wnid}, which has no folder in {train_dir}")
        paths.append(path)
        source.append(position[wnid])
    if unlabelled:
        raise ValueError(
            f"{len(unlabelled)} image(s) in {val_dir} have no label in {label_file}, e.g. "
            f"{', '.join(shown(p) for p in unlabelled[:5])}"
        )
    return _Split(paths, np.array(source, dtype=np.int64), classes)


def _val_only_classes(found: list[str]) -> list[str]:
    """Classes of a tree without train/: ImageNet wnids index into all 1000 (so checkpoints' labels
    line up even when val/ holds some of them), other names are their own sorted list."""
    table = [c.wnid for c in imagenet_table()]
    return table if set(found) <= set(table) else found


def _imagefolder_split(root: Path, split: str, holdout: float, holdout_seed: int) -> _Split:
    scan = scan_class_folders(root)
    rng = np.random.default_rng(holdout_seed)
    keep: list[list[str]] = []
    for files in scan.files:
        order = rng.permutation(len(files))
        n_val = int(round(holdout * len(files)))
        chosen = order[:n_val] if split == "val" else order[n_val:]
        keep.append([files[i] for i in sorted(chosen)])
    return _flatten(scan.classes, keep)


def _flatten(classes: list[str], files: list[list[str]]) -> _Split:
    paths = [p for per_class in files for p in per_class]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(f) for f in files])
    return _Split(paths, labels, list(classes))


def list_split(
    root: str | os.PathLike,
    split: str,
    subset: str | None = None,
    num_classes: int | None = None,
    class_seed: int | None = None,
    train_num_samples: int | None = None,
    per_class: int | None = None,
    sample_seed: int = 0,
    holdout: float = 0.1,
) -> tuple[list[str], np.ndarray, ClassMap]:
    """(paths, labels 0..K-1, class map) of one split of a folder dataset, after subset and caps.

    The caps (``per_class``, ``train_num_samples``) apply to the train split only; val keeps every
    image of the chosen classes.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(root)
    kind = detect(root)
    if kind == "imagenet":
        found = _imagenet_split(root, split)
    elif kind == "imagefolder":
        found = _imagefolder_split(root, split, holdout, sample_seed)
    else:
        raise ValueError(f"{root} is a {kind} dataset, not image folders")
    class_map = select_classes(found.classes, subset, num_classes, class_seed)
    labels = class_map.remap(found.source_labels) if len(found.source_labels) else found.source_labels
    chosen = np.flatnonzero(labels >= 0)
    if split == "train" and (per_class is not None or train_num_samples is not None):
        chosen = chosen[cap_samples(labels[chosen], per_class, train_num_samples, sample_seed)]
    return [found.paths[i] for i in chosen], labels[chosen], class_map


def open_folder_dataset(
    root: str | os.PathLike, split: str, img_size: int, options: ImageOptions | None = None, **keywords: Any
) -> FolderDataset:
    """One split ("train" or "val") of an ImageNet-style or ImageFolder tree, ready to batch.

    ``options`` (:class:`~minimlp.data.base.ImageOptions`, with ``keywords`` replacing its fields)
    choose the classes and images and how they are decoded; ``crop_pct`` None is 0.875, and
    ``train_crop`` applies to prepared caches only.
    """
    o = image_options(options, keywords)
    if o.train_crop != "rrc":
        raise ValueError(
            f"train_crop={o.train_crop!r} applies to a prepared cache only; {shown(root)} holds image "
            "files, which are always cropped with RandomResizedCrop"
        )
    paths, labels, class_map = list_split(
        root, split, o.subset, o.num_classes, o.class_seed, o.train_num_samples, o.per_class, o.sample_seed, o.holdout
    )
    if not paths:
        raise ValueError(f"no images found for the {split} split of {root}")
    crop_pct = DEFAULT_CROP_PCT if o.crop_pct is None else transforms.check_crop_pct(o.crop_pct)
    augment = RandAugment.from_config(o.randaugment, mean=IMAGENET_MEAN) if o.randaugment else None
    reader = FolderReader(img_size, tuple(o.scale), tuple(o.ratio), o.hflip, crop_pct, o.draft, augment)
    augmentation = "RandomResizedCrop + flip" + (f" + RandAugment {o.randaugment}" if o.randaugment else "")
    return FolderDataset(
        paths,
        labels,
        class_map,
        reader,
        workers=default_workers() if o.workers is None else o.workers,
        prefetch=o.prefetch,
        max_bad=o.max_bad,
        description=f"{shown(root)} {split}",
        augmentation=augmentation,
    )


def open_image_dataset(root: str | os.PathLike, split: str, img_size: int, **options: Any):
    """Open whatever is at ``root`` (image folders or a prepared cache) with the same options."""
    kind = detect(root)
    if kind == "prepared":
        return open_prepared(root, split, img_size, **options)
    if kind == "downsampled":
        raise ValueError(
            f"{root} holds Downsampled ImageNet npz batches: convert them once into a memory-mapped "
            f"cache with `python -m minimlp.prepare {root} OUT`, then use --data-dir OUT"
        )
    return open_folder_dataset(root, split, img_size, **options)
