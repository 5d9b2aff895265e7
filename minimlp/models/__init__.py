"""Model families and the preset registry."""

from minimlp.models.base import Model
from minimlp.models.ffvit import FFBlock, FFViT, FFViTConfig
from minimlp.models.registry import create_model, list_models, model_config, model_from_config, register

__all__ = ["Model", "FFBlock", "FFViT", "FFViTConfig", "create_model", "list_models", "model_config",
           "model_from_config", "register"]
