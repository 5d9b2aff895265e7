"""One way in for weights, whatever the file: ``load_weights``, ``load_pretrained``, ``model_from_checkpoint``.

The format is recognised from the file's first bytes, never from its name:

    zip with <folder>/data.pkl            a PyTorch .pth (read by ``torchfile``, no torch, no pickle)
    zip of .npy arrays                    a minimlp checkpoint .npz (read without pickle, entry by entry)
    8-byte length + "{"                   a .safetensors file

``load_pretrained(model, path)`` copies the weights into a model strictly (every missing,
unexpected or mis-shaped key is named); asked for a number of classes that the
checkpoint's head does not have, it starts a new head instead, for fine-tuning.
``model_from_checkpoint(path)`` also builds the model: from the config a minimlp file
stores, or, for a ``.pth``, from the tensor names and shapes (the family, embedding width,
depth, patch size, token count, position grid).
Either way the config is checked against the file's tensors before the model is allocated
(:func:`checked_config`): a one-kilobyte file cannot make minimlp allocate gigabytes for a
model it does not hold.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minimlp.io import checkpoint, safetensors, torchfile
from minimlp.io.files import CheckpointError, brief, open_zip, read_head
from minimlp.models.base import Model
from minimlp.models.registry import (
    architecture,
    list_models,
    model_config,
    model_from_config,
    preset_arch,
    resolve_name,
)

FORMATS = ("pth", "npz", "safetensors")
SAFETENSORS_META_KEY = "minimlp"  # safetensors metadata entry holding minimlp's meta as JSON
WRITABLE = {".npz": "npz", ".safetensors": "safetensors"}
PTH_NOT_WRITTEN = (
    "writing .pth is not supported: a .pth file is a pickle, which torch.load runs as code, and "
    "minimlp never imports PyTorch; write .safetensors instead (PyTorch reads it with "
    "safetensors.torch.load_file, and timm and Hugging Face tools read it directly)"
)


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike) -> str:
    """ "pth", "npz" or "safetensors", from the file's content; CheckpointError otherwise."""
    head = read_head(path, 512)
    if head[:4] == torchfile.ZIP_MAGIC:
        with open(path, "rb") as f, open_zip(path, f) as zf:
            names = zf.namelist()
        if any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
            return "pth"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise CheckpointError(
            f"{path}: a zip archive, but neither a PyTorch checkpoint (no <folder>/data.pkl) "
            f"nor an .npz of arrays; it holds {brief(names[:5], 200)}"
        )
    if torchfile.is_legacy_torch_file(head):
        return "pth"  # torchfile explains that the legacy format must be re-saved
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= safetensors.MAX_HEADER_BYTES:
            return "safetensors"
    raise CheckpointError(
        f"{path}: not a weights file minimlp can read (expected a PyTorch .pth, a "
        f".safetensors file or a minimlp .npz); it starts with {head[:12]!r}"
    )


def read_weights(path: str | os.PathLike, use_ema: bool = False) -> tuple[dict[str, np.ndarray], dict | None, str]:
    """(state dict, minimlp meta or None, format).  ``use_ema``: a DeiT checkpoint's EMA weights."""
    fmt = detect_format(path)
    if use_ema and fmt != "pth":
        raise CheckpointError(
            f"{path}: EMA weights are only found in PyTorch training checkpoints (model_ema); this is a {fmt} file"
        )
    if fmt == "pth":
        return torchfile.load_torch_weights(path, use_ema), None, fmt
    if fmt == "npz":
        state, _, meta = checkpoint.read_npz(path)  # a training checkpoint's optimizer state is not weights
        return state, meta, fmt
    state, metadata = safetensors.read_safetensors(path)
    meta = metadata.get(SAFETENSORS_META_KEY)
    return state, (checkpoint.meta_from_json(meta, path) if meta is not None else None), fmt


def load_weights(path: str | os.PathLike, use_ema: bool = False) -> dict[str, np.ndarray]:
    """The weights in ``path`` (.pth, .npz or .safetensors) as ``{name: np.ndarray}``.

    Arrays keep the dtype they were stored in (bfloat16 becomes float32);
    ``load_pretrained`` casts them to the model's dtype.
    """
    return read_weights(path, use_ema)[0]


# --------------------------------------------------------------------------------------
# Writing (weights only; training checkpoints are written by the trainer)
# --------------------------------------------------------------------------------------
def save_weights(
    path: str | os.PathLike,
    state: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
    fmt: str | None = None,
) -> str:
    """Write ``state`` as .npz or .safetensors (chosen by ``fmt`` or the file extension), atomically.

    ``meta`` (``model`` config, ``classes``, ...) goes into the npz ``meta`` entry or the
    safetensors metadata, so ``model_from_checkpoint`` can rebuild the model.  Returns the format.
    """
    suffix = Path(path).suffix.lower()
    fmt = fmt or WRITABLE.get(suffix)
    if fmt is None or fmt == "pth":
        if fmt == "pth" or suffix in (".pth", ".pt", ".bin", ".ckpt"):
            raise CheckpointError(f"{path}: {PTH_NOT_WRITTEN}")
        raise CheckpointError(f"{path}: cannot tell the format from the extension {suffix!r}; use .npz or .safetensors")
    if fmt == "npz":
        checkpoint.save_checkpoint(path, state, checkpoint.weights_meta(meta))
    elif fmt == "safetensors":
        metadata = {"format": "np", SAFETENSORS_META_KEY: json.dumps(checkpoint.weights_meta(meta))}
        safetensors.save_safetensors(path, state, metadata)
    else:
        raise CheckpointError(f"unknown format {fmt!r}; minimlp writes {', '.join(WRITABLE.values())}")
    return fmt


# --------------------------------------------------------------------------------------
# Which model is this?
# --------------------------------------------------------------------------------------
def infer_config(state: Mapping[str, np.ndarray], where: Any = "checkpoint") -> dict[str, Any]:
    """The model config that the tensor names and shapes imply (``{"arch": ..., ...}``).

    The family comes from the names: the released FF-ViT's ``pos_encoding.pos_embed``,
    timm's MLP-Mixer ``stem.proj.weight``, timm's ViT/DeiT ``pos_embed`` (with the
    attention-only ablation's ``feature_attn``).  Then: embed dim D, channels C and patch
    size P from the patch embedding (D, C, P, P); the patch grid from the token count
    (N = grid² patches, with a class token T = N + 1); depth from the numbered blocks;
    hidden sizes as ratios of D; classes from the head (K, D).
    """
    if "pos_encoding.pos_embed" in state:
        return _ffvit_config(state, where)
    if "stem.proj.weight" in state:
        return _mixer_config(state, where)
    if "pos_embed" in state:
        return _vit_config(state, where)
    raise CheckpointError(
        f"{where}: cannot tell the architecture: none of 'pos_encoding.pos_embed' "
        "(feed-forward ViT), 'pos_embed' (ViT/DeiT) or 'stem.proj.weight' (MLP-Mixer)"
    )


def _shape_reader(state: Mapping[str, np.ndarray], where: Any, family: str):
    def shape(key: str, ndim: int) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"{where}: cannot tell the architecture: no {key!r} (is this a {family} checkpoint?)")
        dims = tuple(int(n) for n in np.shape(state[key]))
        if len(dims) != ndim or min(dims, default=0) < 1:
            raise CheckpointError(
                f"{where}: {key} has shape {dims}; a {family} checkpoint has {ndim} positive dimensions there"
            )
        return dims

    return shape


def _depth(state: Mapping[str, np.ndarray], where: Any) -> int:
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise CheckpointError(f"{where}: blocks are numbered {sorted(blocks)[:8]}...; expected 0..depth-1")
    return len(blocks)


def _patch_grid(tokens: int, class_token: bool, where: Any, what: str) -> int:
    """The side of the square patch grid that ``tokens`` tokens come from."""
    n = tokens - class_token
    grid = math.isqrt(max(n, 0))
    if n < 1 or grid * grid != n:
        raise CheckpointError(
            f"{where}: {what} mixes {tokens} tokens, which are not a square grid of patches"
            f"{' and a class token' if class_token else ''}; not a checkpoint minimlp can build"
        )
    return grid


def _ratio(hidden: int, dim: int, where: Any, key: str) -> float:
    """hidden / dim, as a ratio the model turns back into ``int(dim * ratio) == hidden``."""
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise CheckpointError(
            f"{where}: {key} has {hidden} hidden units for {dim} inputs, which no ratio rebuilds exactly"
        )
    return ratio


def _ffvit_config(state: Mapping[str, np.ndarray], where: Any) -> dict[str, Any]:
    """The released layout: a position grid (1, D, G, G) that the model resizes to the patch grid."""
    shape = _shape_reader(state, where, "feed-forward ViT")
    D = shape("cls_token", 3)[-1]
    _, C, P, _ = shape("patch_embed.proj.weight", 4)  # (D, C, P, P)
    _, _, G, G2 = shape("pos_encoding.pos_embed", 4)  # (1, D, G, G)
    if G != G2:
        raise CheckpointError(
            f"{where}: the position grid pos_encoding.pos_embed is {G}x{G2}; minimlp builds square grids only"
        )
    T = shape("blocks.0.norm2.weight", 1)[0]  # the patch feed-forward's tokens
    grid = _patch_grid(T, True, where, "the patch feed-forward (blocks.0.norm2.weight)")
    mlp_ratio = _ratio(shape("blocks.0.mlp1.fc1.weight", 2)[0], D, where, "blocks.0.mlp1.fc1.weight")
    patch_hidden = shape("blocks.0.mlp2.fc1.weight", 2)[0]  # (patch_mlp_dim, T)
    return {
        "arch": "ffvit",
        "img_size": grid * P,
        "patch_size": P,
        "in_chans": C,
        "num_classes": shape("head.weight", 2)[0],
        "embed_dim": D,
        "depth": _depth(state, where),
        "mlp_ratio": mlp_ratio,
        "patch_mlp_dim": None if patch_hidden == int(T * mlp_ratio) else patch_hidden,
        "pos_grid": None if G == grid else G,
    }


# timm's ViT widths whose heads are not 64 features wide (huge, giant, gigantic: 16 heads).
WIDE_HEADS = {1280: 16, 1408: 16, 1664: 16}


def _vit_config(state: Mapping[str, np.ndarray], where: Any) -> dict[str, Any]:
    """timm's ViT/DeiT layout (and the attention-only ablation).

    The shapes do not say how many heads the attention has.  timm's ViT and DeiT from tiny
    to large (and the paper's comparison) give each head 64 features, so D / 64, except
    for the few wider models in ``WIDE_HEADS``.
    """
    shape = _shape_reader(state, where, "ViT/DeiT")
    D = shape("cls_token", 3)[-1]
    _, C, P, _ = shape("patch_embed.proj.weight", 4)
    T = shape("pos_embed", 3)[1]  # (1, T, D)
    grid = _patch_grid(T, True, where, "pos_embed")
    if D % 64 and D not in WIDE_HEADS:
        raise CheckpointError(
            f"{where}: cannot tell the number of attention heads: timm's ViT/DeiT models give "
            f"each head 64 features, and the embedding width {D} is not a multiple of 64"
        )
    config = {
        "arch": "vit",
        "img_size": grid * P,
        "patch_size": P,
        "in_chans": C,
        "num_classes": shape("head.weight", 2)[0],
        "embed_dim": D,
        "depth": _depth(state, where),
        "num_heads": WIDE_HEADS.get(D, D // 64),
    }
    if "blocks.0.feature_attn.qkv.weight" in state:  # the ablation: attention over features, one head
        config.update(feature_mixer="attention", feature_num_heads=1)
    else:
        config["mlp_ratio"] = _ratio(shape("blocks.0.mlp.fc1.weight", 2)[0], D, where, "blocks.0.mlp.fc1.weight")
    return config


def _mixer_config(state: Mapping[str, np.ndarray], where: Any) -> dict[str, Any]:
    """timm's MLP-Mixer layout: no class token; the token MLP's input is the N patches."""
    shape = _shape_reader(state, where, "MLP-Mixer")
    D, C, P, _ = shape("stem.proj.weight", 4)
    token_hidden, N = shape("blocks.0.mlp_tokens.fc1.weight", 2)  # (token hidden, N)
    grid = _patch_grid(N, False, where, "the token MLP (blocks.0.mlp_tokens.fc1.weight)")
    return {
        "arch": "mixer",
        "img_size": grid * P,
        "patch_size": P,
        "in_chans": C,
        "num_classes": shape("head.weight", 2)[0],
        "embed_dim": D,
        "depth": _depth(state, where),
        "mlp_ratio": _ratio(
            shape("blocks.0.mlp_channels.fc1.weight", 2)[0], D, where, "blocks.0.mlp_channels.fc1.weight"
        ),
        "token_mlp_ratio": _ratio(token_hidden, D, where, "blocks.0.mlp_tokens.fc1.weight"),
    }


# Config fields that do not change the architecture (nor the names and shapes of the tensors).
NOT_ARCHITECTURE = ("num_classes", "drop_rate", "attn_drop_rate", "drop_path_rate", "dtype")


def _architecture(config: Any) -> dict[str, Any]:
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in NOT_ARCHITECTURE}
    if "pos_grid" in fields:  # None means the patch grid: compare the grid itself
        fields["pos_grid"] = config.pos_grid_size
    return fields


def preset_name(config: Mapping[str, Any]) -> str | None:
    """The preset (``ff_tiny``, ``deit_small``, ...) whose architecture ``config`` has, classes aside; else None."""
    arch = config.get("arch", "ffvit")
    for name in list_models():
        if resolve_name(name) != name or preset_arch(name) != arch:
            continue  # an alias, or another family
        preset = model_config(name)
        allowed = {f.name for f in dataclasses.fields(preset)}
        try:  # as model_from_config builds it: a field the config lacks takes the class default
            mine = type(preset)(**{k: v for k, v in config.items() if k in allowed})
        except (TypeError, ValueError):
            continue
        if _architecture(mine) == _architecture(preset):
            return name
    return None


# --------------------------------------------------------------------------------------
# Is it a model these tensors fit?  Checked before the model is allocated.
# --------------------------------------------------------------------------------------
def checked_config(config: Any, state: Mapping[str, np.ndarray], where: Any) -> dict[str, Any]:
    """``config`` if it describes a model whose parameters are exactly the tensors in ``state``.

    Nothing the size of the model is allocated, so a tiny file with a huge config costs
    nothing.  Every field that the architecture's config class defines is checked for
    its declared type and range: a number is finite and between 0 and the number of
    values in the file (no dimension of a model exceeds its parameter count), ``depth``
    at most the number of tensors (every block has some).  Then the config class's own
    checks run, and the parameters the model would declare (names and shapes, found by
    declaring them without allocating) must be the file's tensors.  CheckpointError otherwise.
    """
    if not isinstance(config, dict):
        what = "stores no model config" if config is None else f"stores a {type(config).__name__} as its model config"
        raise CheckpointError(f"{where}: {what}, so minimlp cannot tell which model it holds")
    try:
        model_cls, config_cls = architecture(config.get("arch", "ffvit"))
    except ValueError as e:
        raise CheckpointError(f"{where}: {brief(str(e), 200)}") from None
    values = sum(math.prod(np.shape(a)) for a in state.values())
    fields = {}
    for f in dataclasses.fields(config_cls):
        if f.name in config:
            problem = _field_problem(config[f.name], f.type, values)
            if f.name == "depth" and not problem and config[f.name] > len(state):
                problem = f"more blocks than the file has tensors ({len(state)})"
            if problem:
                raise CheckpointError(f"{where}: model config {f.name} = {brief(config[f.name])}: {problem}")
            fields[f.name] = config[f.name]
    try:
        planned = _declared_shapes(model_cls, config_cls(**fields))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the model config does not describe a model: {brief(str(e), 200)}") from None
    found = {k: tuple(np.shape(v)) for k, v in state.items()}
    missing = [k for k in planned if k not in found]
    unexpected = [str(k)[:80] for k in found if k not in planned]
    mismatched = [
        f"{k}: checkpoint {found[k]} vs model {shape}"
        for k, shape in planned.items()
        if k in found and found[k] != shape
    ]
    problems = [
        f"{what} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{where}: the tensors do not fit the model its config describes "
            f"({model_cls.arch}, {brief(fields, 200)}): {'; '.join(problems)}"
        )
    return dict(config)


def _field_problem(value: Any, annotation: Any, limit: int) -> str | None:
    """What is wrong with one config value for a field declared as ``annotation``, or None."""
    kinds = {k.strip() for k in (annotation if isinstance(annotation, str) else annotation.__name__).split("|")}
    if value is None:
        return None if "None" in kinds else "must be set"
    if type(value) is str:
        return None if "str" in kinds and len(value) <= 64 else f"must be {' or '.join(sorted(kinds))}"
    if type(value) is int and kinds & {"int", "float"} or type(value) is float and "float" in kinds:
        if not (math.isfinite(value) and 0 <= value <= limit):
            return f"must lie in [0, {limit}]: no dimension of a model exceeds the values in its file"
        return None
    return f"must be {' or '.join(sorted(kinds))}, not {type(value).__name__}"


def _declared_shapes(model_cls: type[Model], config: Any) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the parameters ``model_cls(config)`` declares, none allocated."""

    class Declared(model_cls):  # the model with its allocation step left out
        def _build(self, seed: int) -> None:
            pass

    return {spec.name: spec.shape for spec in Declared(config).store.specs}


# --------------------------------------------------------------------------------------
# Into a model
# --------------------------------------------------------------------------------------
@dataclass
class WeightsFile:
    """A weights file, read once: its tensors, minimlp meta (None for a .pth) and format."""

    path: str
    state: dict[str, np.ndarray]
    meta: dict[str, Any] | None
    format: str
    ema: bool = False

    def config(self) -> dict[str, Any]:
        """The model config: the one a minimlp file stores, else inferred from the tensor shapes;
        checked against the tensors (:func:`checked_config`)."""
        if self.meta and "model" in self.meta:
            return checked_config(self.meta["model"], self.state, self.path)
        return checked_config(infer_config(self.state, self.path), self.state, self.path)


def open_weights(path: str | os.PathLike, use_ema: bool = False) -> WeightsFile:
    """Read a .pth, .npz or .safetensors file once, for :func:`load_pretrained` and to build its model."""
    state, meta, fmt = read_weights(path, use_ema)
    return WeightsFile(str(path), state, meta, fmt, use_ema)


@dataclass
class PretrainedInfo:
    """What ``load_pretrained`` did: where from, which format, which tensors it re-initialised.

    ``meta`` is the file's minimlp meta record (classes, data transform, ...), or None for
    files that have none (a .pth, a bare state dict).
    """

    source: str
    format: str
    num_tensors: int
    reset: list[str] = field(default_factory=list)
    ema: bool = False
    meta: dict[str, Any] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        text = f"loaded {self.num_tensors} tensors from {self.source} ({self.format}{', EMA' if self.ema else ''})"
        if self.reset:
            text += f"; new {', '.join(self.reset)} for fine-tuning"
        return text


def load_pretrained(
    model: Model,
    source: str | os.PathLike | Mapping[str, np.ndarray] | WeightsFile,
    num_classes: int | None = None,
    use_ema: bool = False,
    seed: int = 0,
) -> PretrainedInfo:
    """Copy the weights in ``source`` (a file, a :class:`WeightsFile` or a state dict) into ``model``, strictly.

    Every parameter must be present and shaped as in the model, and nothing else may be
    there; the error names the file and every missing, unexpected and mis-shaped key.  The
    one exception is fine-tuning: when ``num_classes`` is given (it must equal the model's)
    and the checkpoint's head has another number of classes, ``head.*`` are
    re-initialised (as a fresh model would be, from ``seed``) instead of loaded.
    ``use_ema`` takes a DeiT checkpoint's ``model_ema`` weights.
    """
    if isinstance(source, Mapping):
        weights = WeightsFile("state dict", dict(source), None, "state dict")
    elif isinstance(source, WeightsFile):
        weights = source
    else:
        weights = open_weights(source, use_ema)
    state = dict(weights.state)  # the head may be replaced: never change the caller's dict
    K = model.config.num_classes
    if num_classes is not None and num_classes != K:
        raise ValueError(
            f"num_classes={num_classes} but the model has {K} classes; build the model with num_classes={num_classes}"
        )
    head = [k for k in model.params if k.startswith("head.")]
    head_fits = all(k in state and tuple(np.shape(state[k])) == tuple(model.params[k].shape) for k in head)
    reset = []
    if num_classes is not None and not head_fits:
        rng = np.random.default_rng(seed)
        for spec in model.store.specs:
            if spec.name in head:
                state[spec.name] = spec.init(rng, spec.shape)
                reset.append(spec.name)
    try:
        model.load_state_dict(state, strict=True)
    except ValueError as e:
        hint = ""
        if not head_fits and num_classes is None and "head.weight" in state:
            hint = (
                f"\n  the checkpoint's head has {np.shape(state['head.weight'])[0]} classes and the model {K}: "
                f"to fine-tune, pass num_classes={K} (--num-classes {K}) to start a new head"
            )
        hint += _position_grid_hint(model, state)
        raise CheckpointError(f"{weights.path}: {e}{hint}") from None
    return PretrainedInfo(weights.path, weights.format, len(state), reset, weights.ema, weights.meta)


def _position_grid_hint(model: Model, state: Mapping[str, np.ndarray]) -> str:
    """Why an FF-ViT's position grid does not fit, when that is (one of) the problems."""
    key = "pos_encoding.pos_embed"
    if key not in state or key not in model.params or np.ndim(state[key]) != 4:
        return ""
    theirs, ours = np.shape(state[key])[-1], model.params[key].shape[-1]
    if theirs == ours or np.shape(state[key])[:2] != model.params[key].shape[:2]:
        return ""
    patches = model.config.grid
    return (
        f"\n  the checkpoint keeps a {theirs}x{theirs} position grid and the model a {ours}x{ours} one "
        f"(resized to its {patches}x{patches} patches{' on every forward' if ours != patches else ''}): "
        f"build the model with pos_grid={theirs} to load this file, or "
        "let the file's own config build it (model_from_checkpoint; train --pretrained without --model)"
    )


def model_from_checkpoint(
    path: str | os.PathLike,
    num_classes: int | None = None,
    device: str = "cpu",
    use_ema: bool = False,
    seed: int = 0,
    dtype: str | None = None,
    **overrides: Any,
) -> tuple[Model, PretrainedInfo]:
    """Build the model a file describes and load its weights: ``(model, info)``.

    The architecture comes from a minimlp file's stored config, or from the tensor shapes
    of a ``.pth`` (``linear-tiny-checkpoint.pth`` gives ``ff_tiny``).  ``num_classes``
    other than the checkpoint's starts a new head for fine-tuning; ``dtype`` overrides
    the stored one (``"float64"`` for checks), and ``overrides`` other config fields that
    do not change the parameters (``drop_rate``, ``drop_path_rate``).  ``info.meta`` is
    the file's minimlp meta record (classes, data transform), if it has one.
    """
    weights = open_weights(path, use_ema)
    config = weights.config()
    if num_classes is not None:
        config["num_classes"] = num_classes
    if dtype is not None:
        config["dtype"] = dtype
    config.update(overrides)
    try:
        model = model_from_config(config, device=device, seed=seed)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build the model it describes ({config}): {e}") from None
    return model, load_pretrained(model, weights, num_classes=num_classes, seed=seed)
