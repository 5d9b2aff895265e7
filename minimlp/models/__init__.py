"""Model families and the preset registry."""

from minimlp.models.base import Model
from minimlp.models.ffvit import FFBlock, FFViT, FFViTConfig
from minimlp.models.mixer import MixerBlock, MixerConfig, MlpMixer
from minimlp.models.registry import create_model, list_models, model_config, model_from_config, register
from minimlp.models.vit import VisionTransformer, ViTBlock, ViTConfig

__all__ = [
    "Model",
    "FFBlock",
    "FFViT",
    "FFViTConfig",
    "MixerBlock",
    "MixerConfig",
    "MlpMixer",
    "VisionTransformer",
    "ViTBlock",
    "ViTConfig",
    "create_model",
    "list_models",
    "model_config",
    "model_from_config",
    "register",
]
