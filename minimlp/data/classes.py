"""ImageNet's 1000 classes, the named subsets, and choosing which classes a run uses.

Class index = position in the sorted list of wnids (``n01440764`` ... ``n15075141``): the
order every ImageFolder-style loader, timm and the released checkpoints use.  The table
shipped beside this module (``imagenet_classes.tsv``: index, wnid, devkit_label, name)
gives each wnid its short name and its 1-based label in the ILSVRC devkit order (which
Downsampled ImageNet uses).

A run on a subset keeps the subset's classes in sorted-wnid order and relabels them
0..K-1; the :class:`ClassMap` it gets says which wnid and name each new label stands for,
and goes into every checkpoint so that evaluation and prediction print the right names.
Lesson 12 walks through the data pipeline.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from minimlp.data.base import shown

__all__ = [
    "ClassMap",
    "cap_samples",
    "SUBSETS",
    "imagenet_table",
    "imagenet_name",
    "label_map",
    "model_classes",
    "select_classes",
    "subset_wnids",
]

# Class lists of the named subsets, as published.
IMAGENETTE = (
    "n01440764 n02102040 n02979186 n03000684 n03028079 n03394916 n03417042 n03425413 n03445777 n03888257"
).split()
IMAGEWOOF = (
    "n02086240 n02087394 n02088364 n02089973 n02093754 n02096294 n02099601 n02105641 n02111889 n02115641"
).split()
# The CMC paper's ImageNet-100, in the order it was published.
IMAGENET100 = """
n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797
n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653
n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531
n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855
n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051
n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868
n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322
n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029
n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622
""".split()

SUBSETS: dict[str, tuple[str, ...]] = {
    "imagenette": tuple(IMAGENETTE),
    "imagewoof": tuple(IMAGEWOOF),
    "imagenet100": tuple(IMAGENET100),
}


@dataclass(frozen=True)
class ImageNetClass:
    index: int  # position in the sorted wnid list, 0..999
    wnid: str
    devkit_label: int  # 1..1000, the ILSVRC devkit's order
    name: str


@functools.cache
def imagenet_table() -> tuple[ImageNetClass, ...]:
    """The 1000 ImageNet-1k classes in sorted-wnid order, read from the packaged table."""
    text = resources.files("minimlp.data").joinpath("imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    table = tuple(ImageNetClass(int(i), wnid, int(devkit), name) for i, wnid, devkit, name in rows)
    assert [c.index for c in table] == list(range(len(table))), "imagenet_classes.tsv is out of order"
    return table


@functools.cache
def _names_by_wnid() -> dict[str, str]:
    return {c.wnid: c.name for c in imagenet_table()}


def imagenet_name(wnid: str) -> str:
    """The short name of an ImageNet wnid; any other folder name is its own name (as messages show it)."""
    return _names_by_wnid().get(wnid) or shown(wnid)


@dataclass(frozen=True)
class ClassMap:
    """Which classes a dataset uses: label k stands for ``wnids[k]`` (named ``names[k]``).

    ``source_index[k]`` is the class's index among all the classes found on disk (for
    ImageNet, its index 0..999 in the full sorted list), so a model trained on a subset
    can be related back to the full label space.
    """

    wnids: tuple[str, ...]
    names: tuple[str, ...]
    source_index: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.wnids)

    def to_dict(self) -> dict:
        """JSON-able form, for checkpoints and cache headers."""
        return {"wnids": list(self.wnids), "names": list(self.names), "source_index": list(self.source_index)}

    @classmethod
    def from_dict(cls, d: dict) -> ClassMap:
        return cls(tuple(d["wnids"]), tuple(d["names"]), tuple(int(i) for i in d["source_index"]))

    @classmethod
    def from_wnids(cls, all_wnids: list[str] | tuple[str, ...], chosen: list[str] | None = None) -> ClassMap:
        """The map for ``chosen`` (default: all) wnids, sorted, indexed into sorted ``all_wnids``."""
        all_sorted = sorted(all_wnids)
        position = {w: i for i, w in enumerate(all_sorted)}
        chosen_sorted = sorted(chosen) if chosen is not None else all_sorted
        return cls(
            tuple(chosen_sorted),
            tuple(imagenet_name(w) for w in chosen_sorted),
            tuple(position[w] for w in chosen_sorted),
        )

    def remap(self, source_labels: np.ndarray) -> np.ndarray:
        """Labels among all found classes -> labels 0..K-1 of this map (-1 where not chosen)."""
        lookup = np.full(
            max(max(self.source_index, default=-1), int(source_labels.max(initial=-1))) + 1, -1, dtype=np.int64
        )
        lookup[list(self.source_index)] = np.arange(len(self), dtype=np.int64)
        return lookup[source_labels]


def subset_wnids(subset: str) -> list[str]:
    """The wnids of a named subset, a comma-separated list of wnids, or a file of them.

    A file holds one wnid per line (anything after the first word is ignored, so a
    ``wnid name`` listing works); blank lines and lines starting with ``#`` are skipped.
    """
    key = subset.strip().lower().replace("-", "").replace("_", "")
    if key in SUBSETS:
        return list(SUBSETS[key])
    path = Path(subset).expanduser()
    if path.is_file():
        words = [
            line.split()[0]
            for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not words:
            raise ValueError(f"subset file {path} lists no classes (one wnid per line expected)")
        return words
    if "," in subset or re.fullmatch(r"n\d{8}", subset.strip()):
        return [w.strip() for w in subset.split(",") if w.strip()]
    raise ValueError(
        f"unknown subset {subset!r}: use one of {', '.join(SUBSETS)}, a comma-separated list of "
        f"wnids, or a file with one wnid per line"
    )


def select_classes(
    available: list[str] | tuple[str, ...],
    subset: str | None = None,
    num_classes: int | None = None,
    class_seed: int | None = None,
) -> ClassMap:
    """Choose the classes of a run among those ``available`` on disk.

    subset       a named subset (``imagenette``, ``imagewoof``, ``imagenet100``), a comma-separated
                 wnid list or a file of wnids; every listed wnid must be present.
    num_classes  keep N classes: the first N of the sorted list, or, with ``class_seed``, N drawn at
                 random (seeded, so the same seed picks the same classes).  Applied after ``subset``.
    The result is sorted by wnid; labels are 0..K-1 in that order.
    """
    available = sorted(available)
    chosen = list(available)
    if subset:
        wanted = subset_wnids(subset)
        duplicates = sorted({w for w in wanted if wanted.count(w) > 1})
        if duplicates:
            raise ValueError(f"subset {subset!r} lists classes more than once: {', '.join(duplicates)}")
        missing = sorted(set(wanted) - set(available))
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ValueError(
                f"subset {subset!r} needs {len(missing)} class folder(s) that are not in the data: {shown}"
            )
        chosen = sorted(wanted)
    if num_classes is not None:
        if not 0 < num_classes <= len(chosen):
            raise ValueError(f"num_classes={num_classes} but {len(chosen)} classes are available")
        if class_seed is None:
            chosen = chosen[:num_classes]
        else:
            picked = np.random.default_rng(class_seed).choice(len(chosen), size=num_classes, replace=False)
            chosen = sorted(chosen[i] for i in picked)
    return ClassMap.from_wnids(available, chosen)


def cap_samples(
    labels: np.ndarray, per_class: int | None = None, total: int | None = None, seed: int = 0
) -> np.ndarray:
    """Sorted indices keeping at most ``per_class`` samples of each class, then at most ``total`` overall (seeded)."""
    rng = np.random.default_rng(seed)
    keep = np.arange(len(labels))
    if per_class is not None:
        order = np.argsort(labels, kind="stable")  # indices grouped by class
        _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        chosen = [
            order[s : s + c] if c <= per_class else rng.choice(order[s : s + c], size=per_class, replace=False)
            for s, c in zip(starts, counts, strict=True)
        ]
        keep = np.sort(np.concatenate(chosen)) if chosen else keep[:0]
    if total is not None and len(keep) > total:
        keep = np.sort(rng.choice(keep, size=total, replace=False))
    return keep


def model_classes(meta: dict | None, num_classes: int) -> tuple[list[str], list[str] | None]:
    """(names, wnids or None) of a model's K outputs, from its checkpoint's meta record.

    A trainer checkpoint stores its ``class_map`` (wnids and names) or at least ``classes``
    (names).  A file without either (a .pth) with 1000 outputs is an ImageNet-1k model, whose
    outputs are the 1000 wnids in sorted order; any other is numbered.
    """
    meta = meta or {}
    class_map = meta.get("class_map") or {}
    if len(class_map.get("wnids", ())) == num_classes:
        return list(class_map["names"]), list(class_map["wnids"])
    if len(meta.get("classes") or ()) == num_classes:
        return list(meta["classes"]), None
    if num_classes == len(imagenet_table()):
        return [c.name for c in imagenet_table()], [c.wnid for c in imagenet_table()]
    return [str(i) for i in range(num_classes)], None


def label_map(
    data_wnids: list[str] | None, model_wnids: list[str] | None, data_classes: list[str], num_outputs: int
) -> np.ndarray:
    """(K_data,) int64: the model output that stands for each dataset label, -1 where the model has none.

    By wnid when both sides know them (a 1000-class model evaluated on an Imagenette tree, a
    subset model on full ImageNet), else label for label, which needs equal class counts.
    """
    if data_wnids is not None and model_wnids is not None:
        position = {w: i for i, w in enumerate(model_wnids)}
        return np.array([position.get(w, -1) for w in data_wnids], dtype=np.int64)
    if len(data_classes) != num_outputs:
        raise ValueError(
            f"the model has {num_outputs} outputs but the dataset {len(data_classes)} classes, and "
            f"without class wnids on both sides they cannot be matched"
        )
    return np.arange(num_outputs, dtype=np.int64)
