"""The vision transformer (ViT/DeiT) that the paper compares against, and its ablation.

Each block is the standard pre-norm transformer block of timm's ViT:

    x = x + Attention(LayerNorm_D(x))        # mixes tokens: softmax(q kᵀ/√d) v per head
    x = x + MLP(LayerNorm_D(x))              # mixes features: D -> 4D -> D

so the only difference from the feed-forward-only model (``ffvit.py``) is the first
branch: attention over the tokens where the paper puts a feed-forward over the tokens.
Parameter names and shapes are timm's (``blocks.0.attn.qkv.weight``, ``pos_embed``
(1, T, D)), so DeiT checkpoints load by name; initialisation follows the timm version
DeiT was trained with (truncated normal 0.02 for linear weights and embeddings, zero
biases, PyTorch's default for the patch-embedding convolution).

``feature_mixer="attention"`` builds the paper's attention-only ablation (its
section 3.4): the feature MLP of every block is replaced by attention *over features*,
the same layer applied to the transposed activations, where each of the D feature
channels is a "token" whose embedding is its column of T values:

    x = x + Attention_tokens(LayerNorm_D(x))                 # qkv (3D, D)
    x = x + Attention_features(LayerNorm_T(xᵀ))ᵀ              # qkv (3T, T)

At the tiny size (D 192, T 197) this has 4,039,360 parameters, the paper's "4.0M".
In the (T, B, D) layout the transpose is free: the second attention works on axis 0.
Its number of heads must divide T (197 is prime, so one head at 224 px).
The comparison lesson walks through attention and its backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minimlp.layers import Attention, LayerNorm, Linear, Mlp, PatchEmbed, PreNormBlock, trunc_normal
from minimlp.models.base import ClassTokenModel, check_image_config

FEATURE_MIXERS = ("mlp", "attention")


@dataclass
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0  # after the embeddings, inside the MLPs, after the attention projection
    attn_drop_rate: float = 0.0  # on the attention probabilities
    drop_path_rate: float = 0.0
    # "mlp": the ViT/DeiT block.  "attention": the paper's attention-only ablation, whose
    # feature MLP is replaced by attention over features with ``feature_num_heads`` heads.
    feature_mixer: str = "mlp"
    feature_num_heads: int = 1
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_image_config(self)
        if self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide embed_dim {self.embed_dim}")
        if self.feature_mixer not in FEATURE_MIXERS:
            raise ValueError(f"feature_mixer must be one of {FEATURE_MIXERS}, got {self.feature_mixer!r}")
        if self.feature_mixer == "attention" and (
            self.feature_num_heads < 1 or self.num_tokens % self.feature_num_heads
        ):
            raise ValueError(
                f"feature_num_heads {self.feature_num_heads} must divide the number of tokens "
                f"{self.num_tokens} (attention over features embeds each feature in T values)"
            )
        if not 0.0 <= self.attn_drop_rate < 1.0:
            raise ValueError("attn_drop_rate must lie in [0, 1)")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid + 1  # patches and the class token


class ViTBlock(PreNormBlock):
    """Attention over tokens, then the feature mixer (an MLP, or attention over features)."""

    def __init__(self, store, name: str, config: ViTConfig, drop_path: float) -> None:
        c, D, T = config, config.embed_dim, config.num_tokens
        self.norm1 = LayerNorm(store, f"{name}.norm1", D)
        self.attn = Attention(
            store, f"{name}.attn", D, c.num_heads, axis=-1, attn_drop=c.attn_drop_rate, proj_drop=c.drop_rate
        )
        if c.feature_mixer == "mlp":
            self.norm2 = LayerNorm(store, f"{name}.norm2", D)
            self.feature_mixer = Mlp(store, f"{name}.mlp", D, int(D * c.mlp_ratio), axis=-1, drop=c.drop_rate)
        else:  # the ablation: the same attention, over the features, after a LayerNorm over tokens
            self.norm2 = LayerNorm(store, f"{name}.norm2", T, axis=0)  # weight (T,)
            self.feature_mixer = Attention(
                store,
                f"{name}.feature_attn",
                T,
                c.feature_num_heads,
                axis=0,
                attn_drop=c.attn_drop_rate,
                proj_drop=c.drop_rate,
            )
        self.branches = ((self.norm1, self.attn), (self.norm2, self.feature_mixer))
        self.drop_path = drop_path


class VisionTransformer(ClassTokenModel):
    """ViT/DeiT (``deit_tiny``, ``deit_small``, ``deit_base``) and the attention-only ablation."""

    arch = "vit"
    position_names = ("pos_embed",)

    def __init__(self, config: ViTConfig, device: str = "cpu", seed: int = 0) -> None:
        super().__init__(config, device, seed)
        c, s = config, self.store
        # Declared in timm's state-dict order.  DeiT exempts pos_embed and cls_token from
        # weight decay (its no_weight_decay()), as well as every 1-D parameter.
        s.add("cls_token", (1, 1, c.embed_dim), trunc_normal(0.02), decay=False)
        s.add("pos_embed", (1, c.num_tokens, c.embed_dim), trunc_normal(0.02), decay=False)
        self.patch_embed = PatchEmbed(s, "patch_embed.proj", c.patch_size, c.in_chans, c.embed_dim)
        rates = np.linspace(0.0, c.drop_path_rate, c.depth)  # stochastic depth rises with depth
        self.blocks = [ViTBlock(s, f"blocks.{i}", c, float(rates[i])) for i in range(c.depth)]
        self.norm = LayerNorm(s, "norm", c.embed_dim)
        self.head = Linear(s, "head", c.embed_dim, c.num_classes)
        self._build(seed)
