"""Model presets by name, and ``create_model``.

The three paper presets carry the released checkpoints' names as aliases
(``linear_tiny`` is ``ff_tiny``).  The comparison models (ViT/DeiT, the attention-only
ablation, MLP-Mixer) are registered the same way and take the same options.  Small
presets are sized for 28×28 Fashion-MNIST on a laptop CPU.  ``create_model`` takes
timm's option names to override any preset field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from minimlp.models.base import Model
from minimlp.models.ffvit import FFViT, FFViTConfig
from minimlp.models.mixer import MixerConfig, MlpMixer
from minimlp.models.vit import VisionTransformer, ViTConfig

# name -> (model class, config class, preset fields)
_PRESETS: dict[str, tuple[type[Model], type, dict[str, Any]]] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, model_cls: type[Model], config_cls: type, aliases: tuple[str, ...] = (), **fields: Any) -> None:
    """Add a preset (also how other model families join ``create_model``)."""
    _PRESETS[name] = (model_cls, config_cls, fields)
    for alias in aliases:
        _ALIASES[alias] = name


# The paper's models at 224 px, 1000 classes (7,676,332 / 61,943,020 / 206,363,576 params).
# The released model file keeps a 14×14 position grid for all three.  That is the patch
# grid of the two patch-16 models, so they leave pos_grid to follow the patch grid (a
# smaller ff_tiny, as the tests and lessons build, then gets a grid of its own size);
# ff_large resizes 14×14 to its 7×7 patches on every forward.  (The paper's table counts
# ff_large with a 7×7 grid: 206,213,048.)
register("ff_tiny", FFViT, FFViTConfig, aliases=("linear_tiny",), patch_size=16, embed_dim=192, depth=12)
register("ff_base", FFViT, FFViTConfig, aliases=("linear_base",), patch_size=16, embed_dim=768, depth=12)
register(
    "ff_large", FFViT, FFViTConfig, aliases=("linear_large",), patch_size=32, embed_dim=1024, depth=24, pos_grid=14
)
# Fashion-MNIST: 28×28 grayscale, 7×7 patches of 4×4 pixels, 50 tokens (with the class token).
register("ff_fmnist", FFViT, FFViTConfig, img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=128, depth=6)
# The default of `python -m minimlp.train`: ff_fmnist at half the width and two thirds of
# the depth (dim 64, depth 4; 219,394 parameters), a fifth of the multiply-adds per image,
# so that a run of about 20 minutes on two CPU cores gets through ten epochs (ff_fmnist,
# kept as it is for the benchmarks, would get through two or three).
register(
    "ff_fmnist_small", FFViT, FFViTConfig, img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4
)

# The comparison.  ViT/DeiT at 224 px, 1000 classes: 5,717,416 / 22,050,664 / 86,567,656 params.
register("deit_tiny", VisionTransformer, ViTConfig, embed_dim=192, depth=12, num_heads=3)
register("deit_small", VisionTransformer, ViTConfig, embed_dim=384, depth=12, num_heads=6)
register("deit_base", VisionTransformer, ViTConfig, embed_dim=768, depth=12, num_heads=12)
# The paper's attention-only ablation: DeiT-tiny with attention over features in place of
# the feature MLP (4,039,360 params; 197 tokens allow one feature head).
register(
    "attn_only_tiny",
    VisionTransformer,
    ViTConfig,
    embed_dim=192,
    depth=12,
    num_heads=3,
    feature_mixer="attention",
    feature_num_heads=1,
)
# MLP-Mixer at 224 px, 1000 classes: 18,528,264 / 59,880,472 params.
register("mixer_s16", MlpMixer, MixerConfig, patch_size=16, embed_dim=512, depth=8)
register("mixer_b16", MlpMixer, MixerConfig, patch_size=16, embed_dim=768, depth=12)
# Fashion-MNIST presets with about as many parameters as ff_fmnist (924,158): the same
# patches and depth, the width chosen to match (920,874 / 939,792 / 931,874 params).
_FMNIST = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, depth=6)
register("vit_fmnist", VisionTransformer, ViTConfig, **_FMNIST, embed_dim=112, num_heads=4)
register("mixer_fmnist", MlpMixer, MixerConfig, **_FMNIST, embed_dim=136)
register(
    "attn_only_fmnist",
    VisionTransformer,
    ViTConfig,
    **_FMNIST,
    embed_dim=188,
    num_heads=4,
    feature_mixer="attention",
    feature_num_heads=1,
)


def list_models() -> list[str]:
    """Preset names, then aliases."""
    return sorted(_PRESETS) + sorted(_ALIASES)


def resolve_name(name: str) -> str:
    if name in _PRESETS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")


def preset_arch(name: str) -> str:
    """The architecture family ("ffvit", "vit", "mixer") of preset ``name``."""
    return _PRESETS[resolve_name(name)][0].arch


def model_config(name: str, **overrides: Any) -> Any:
    """The config of preset ``name`` with ``overrides`` (None values are ignored)."""
    _, config_cls, fields = _PRESETS[resolve_name(name)]
    allowed = {f.name for f in dataclasses.fields(config_cls)}
    # An option that does not apply to this family is an error unless it is None (unset),
    # so that one set of command-line options can build every family.
    unknown = sorted(k for k, v in overrides.items() if k not in allowed and v is not None)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for {name!r}; options: {', '.join(sorted(allowed))}")
    values = {**fields, **{k: v for k, v in overrides.items() if v is not None and k in allowed}}
    return config_cls(**values)


def create_model(name: str, device: str = "cpu", seed: int = 0, **overrides: Any) -> Model:
    """Build preset ``name`` (or an alias) with timm-style overrides.

    >>> model = create_model("ff_tiny", num_classes=10, img_size=32, patch_size=8, dtype="float64")
    """
    model_cls, _, _ = _PRESETS[resolve_name(name)]
    return model_cls(model_config(name, **overrides), device=device, seed=seed)


def architecture(arch: str) -> tuple[type[Model], type]:
    """The model class and config class of an architecture ("ffvit", "vit", "mixer")."""
    for model_cls, config_cls, _ in _PRESETS.values():
        if model_cls.arch == arch:
            return model_cls, config_cls
    raise ValueError(f"unknown architecture {arch!r} in model config")


def model_from_config(config: dict[str, Any], device: str = "cpu", seed: int = 0) -> Model:
    """Rebuild a model from ``Model.config_dict()`` (as stored in checkpoints)."""
    config = dict(config)
    arch = config.pop("arch", "ffvit")
    for model_cls, config_cls, _ in _PRESETS.values():
        if model_cls.arch == arch:
            allowed = {f.name for f in dataclasses.fields(config_cls)}
            return model_cls(config_cls(**{k: v for k, v in config.items() if k in allowed}), device=device, seed=seed)
    raise ValueError(f"unknown architecture {arch!r} in model config")
