"""MLP-Mixer (Tolstikhin et al., 2021), the concurrent all-MLP model the paper cites.

Each block, on the N patch tokens (there is no class token):

    x = x + MLP_tokens(LayerNorm_D(x))       # over tokens: N -> D/2 -> N, per channel
    x = x + MLP_channels(LayerNorm_D(x))     # over features: D -> 4D -> D, per token

then a LayerNorm, the mean over tokens, and a linear head.  It is the feed-forward-only
model's block with the two feed-forwards in the other order, a LayerNorm over features
(not over tokens) before the token MLP, and a token hidden size tied to D (timm's
``mlp_ratio=(0.5, 4.0)``) instead of 4·T.  In the (T, B, D) activation layout the token
MLP is ``Mlp(axis=0)``, exactly the layer that is the paper's patch feed-forward.

Names are timm's (``stem.proj``, ``blocks.0.mlp_tokens.fc1``), and so is the
initialisation, which differs from the ViT's: Xavier-uniform linear weights, biases
drawn from N(0, 1e-6²), LeCun-normal patch embedding with zero bias, a zero head, and
the same stochastic-depth rate in every block.  The comparison lesson shows the three
families side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from minimlp import kernels
from minimlp.backend import Array
from minimlp.layers import Init, LayerNorm, Linear, Mlp, ParamSpec, PatchEmbed, PreNormBlock, constant, trunc_normal
from minimlp.models.base import Model, check_image_config


@dataclass
class MixerConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 512
    depth: int = 8
    mlp_ratio: float = 4.0  # channel MLP hidden size = mlp_ratio * D
    token_mlp_ratio: float = 0.5  # token MLP hidden size = token_mlp_ratio * D
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_image_config(self)
        if int(self.token_mlp_ratio * self.embed_dim) < 1 or int(self.mlp_ratio * self.embed_dim) < 1:
            raise ValueError("mlp_ratio and token_mlp_ratio must give hidden sizes of at least 1")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


# --------------------------------------------------------------------------------------
# timm's Mixer initialisation ("like MLP init in vit"), assigned by parameter name as
# timm assigns it by module name.
# --------------------------------------------------------------------------------------
def xavier_uniform(fan_in: int, fan_out: int) -> Init:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Glorot and Bengio)."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return lambda rng, shape: rng.uniform(-bound, bound, size=shape)


def lecun_normal(fan_in: int) -> Init:
    """timm's ``lecun_normal_``: a normal with std sqrt(1/fan_in) / 0.8796 truncated to
    [-2, 2].  The divisor is the std of a unit normal cut at ±2σ (JAX's recipe for an
    exact 1/fan_in variance after truncation), but timm's bounds are absolute, so at
    these scales nothing is cut and the std stays about 14% above LeCun's."""
    return trunc_normal(math.sqrt(1.0 / fan_in) / 0.87962566103423978)


def timm_mixer_init(spec: ParamSpec) -> Init:
    name, shape = spec.name, spec.shape
    if name.startswith("head."):
        return constant(0.0)
    if name.startswith("stem."):
        return lecun_normal(math.prod(shape[1:])) if name.endswith("weight") else constant(0.0)
    if ".mlp_" in name:
        return xavier_uniform(shape[1], shape[0]) if name.endswith("weight") else trunc_normal(1e-6)
    return spec.init  # LayerNorms: weight 1, bias 0, as declared


class MixerBlock(PreNormBlock):
    """Token MLP, then channel MLP, each after a LayerNorm over features and residual."""

    def __init__(
        self,
        store,
        name: str,
        dim: int,
        num_patches: int,
        token_hidden: int,
        channel_hidden: int,
        drop: float,
        drop_path: float,
    ) -> None:
        self.norm1 = LayerNorm(store, f"{name}.norm1", dim)
        self.mlp_tokens = Mlp(store, f"{name}.mlp_tokens", num_patches, token_hidden, axis=0, drop=drop)
        self.norm2 = LayerNorm(store, f"{name}.norm2", dim)
        self.mlp_channels = Mlp(store, f"{name}.mlp_channels", dim, channel_hidden, axis=-1, drop=drop)
        self.branches = ((self.norm1, self.mlp_tokens), (self.norm2, self.mlp_channels))
        self.drop_path = drop_path


class MixerCache(NamedTuple):
    stem: Any
    blocks: list
    norm: Any
    pool_shape: tuple
    head: Any


class MlpMixer(Model):
    """MLP-Mixer (``mixer_s16``, ``mixer_b16``)."""

    arch = "mixer"

    def __init__(self, config: MixerConfig, device: str = "cpu", seed: int = 0) -> None:
        super().__init__(config, device, seed)
        c, s = config, self.store
        D, N = c.embed_dim, c.num_patches
        self.stem = PatchEmbed(s, "stem.proj", c.patch_size, c.in_chans, D)
        self.blocks = [
            MixerBlock(
                s, f"blocks.{i}", D, N, int(c.token_mlp_ratio * D), int(c.mlp_ratio * D), c.drop_rate, c.drop_path_rate
            )
            for i in range(c.depth)
        ]
        self.norm = LayerNorm(s, "norm", D)
        self.head = Linear(s, "head", D, c.num_classes)
        for spec in s.specs:
            spec.init = timm_mixer_init(spec)
        self._build(seed)

    def forward(self, x: Array, train: bool = False) -> tuple[Array, MixerCache]:
        """Images (B, C, H, W) -> logits (B, K)."""
        x = self.prepare_input(x)
        t, c_stem = self.stem.forward(x)  # (N, B, D)
        c_blocks = []
        for block in self.blocks:
            t, c = block.forward(t, train, self.rng)
            c_blocks.append(c)
        t, c_norm = self.norm.forward(t)
        pooled, pool_shape = kernels.mean_pool_forward(t)  # (B, D)
        logits, c_head = self.head.forward(pooled)  # (B, K)
        return logits, MixerCache(c_stem, c_blocks, c_norm, pool_shape, c_head)

    def backward(self, dlogits: Array, cache: MixerCache, input_grad: bool = True) -> Array | None:
        """Add every parameter's gradient into ``grads``; return dL/dx (B, C, H, W)."""
        dpooled = self.head.backward(self.xp.asarray(dlogits, dtype=self.dtype), cache.head)
        dt = kernels.mean_pool_backward(dpooled, cache.pool_shape)  # (N, B, D)
        dt = self.norm.backward(dt, cache.norm)
        for block, c in zip(reversed(self.blocks), reversed(cache.blocks), strict=True):
            dt = block.backward(dt, c)
        return self.stem.backward(dt, cache.stem, input_grad)

    def forward_features(self, x: Array) -> Array:
        """The token features after the last block, as (B, N, D)."""
        t, _ = self.stem.forward(self.prepare_input(x))
        for block in self.blocks:
            t, _ = block.forward(t, False, self.rng)
        return kernels.transpose_forward(t, (1, 0, 2))[0]
