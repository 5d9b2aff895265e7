"""The feed-forward-only vision transformer of "Do You Even Need Attention?" (2021).

A ViT/DeiT in which every attention layer is replaced by a feed-forward layer over the
patches (tokens).  Each block is

    x = x + FF_features(LayerNorm_D(x))      # D -> 4D -> D, the same for every token
    x = x + FF_patches(LayerNorm_T(x))       # T -> 4T -> T, the same for every channel

with the paper's transposes absorbed by the (T, B, D) activation layout (see
``minimlp.functional``): the first feed-forward mixes the last axis, the second the
first.  Parameter names and shapes are those of the released checkpoints
(``linear-tiny-checkpoint.pth``).  Lessons 6 and 7 derive the block and its backward.

Positions, as the released model file keeps them: a learned grid of ``pos_grid`` ×
``pos_grid`` vectors, resized bilinearly to the patch grid at every forward, and the class
token's own vector.  That file keeps 14×14 for every model: the patch grid of ff_tiny and
ff_base at 224 px (no resize), while ff_large (patch 32, 7×7 patches) resizes it on every
forward.  Lesson 1 shows the resize and its backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from minimlp import kernels
from minimlp.backend import Array, array_module
from minimlp.layers import LayerNorm, Linear, Mlp, ParameterStore, PatchEmbed, trunc_normal
from minimlp.models.base import ClassTokenModel, check_image_config


@dataclass
class FFViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 12
    mlp_ratio: float = 4.0
    # Hidden size of the feed-forward over patches.  None: int(mlp_ratio * T), the paper's
    # choice, which makes the cost quadratic in the number of tokens T; a fixed size
    # makes it linear (the paper's remark in its discussion).
    patch_mlp_dim: int | None = None
    # Side of the learned position grid, resized bilinearly to the patch grid when the two
    # differ.  None: the patch grid itself.  The released model file keeps 14 for every model.
    pos_grid: int | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_image_config(self)
        if self.pos_grid is not None and (
            isinstance(self.pos_grid, bool) or not isinstance(self.pos_grid, int) or self.pos_grid < 1
        ):
            raise ValueError(f"pos_grid must be a positive integer or None, got {self.pos_grid!r}")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def pos_grid_size(self) -> int:
        """The side of the stored position grid (``pos_grid``, else the patch grid)."""
        return self.pos_grid or self.grid

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid + 1  # patches and the class token


class FFBlockCache(NamedTuple):
    """What :meth:`FFBlock.backward` needs from the forward pass, one field per step."""

    norm1: Any  # LayerNorm over features
    mlp1: Any  # the feature feed-forward
    path1: Any  # drop-path mask of the first branch
    norm2: Any  # LayerNorm over tokens
    mlp2: Any  # the patch feed-forward
    path2: Any  # drop-path mask of the second branch


class FFBlock:
    """One block: feature feed-forward, then patch feed-forward, each residual.

    The paper transposes to (B, D, T) before the patch feed-forward; in (T, B, D) the
    tokens are axis 0 already, so norm2 normalises each channel over its T tokens and
    mlp2 mixes the tokens of each channel, with no copy.
    """

    def __init__(
        self,
        store,
        name: str,
        dim: int,
        num_tokens: int,
        mlp_ratio: float,
        patch_mlp_dim: int,
        drop: float,
        drop_path: float,
    ) -> None:
        # Declared in the released model's order: mlp1, norm1, mlp2, norm2.
        self.mlp1 = Mlp(store, f"{name}.mlp1", dim, int(dim * mlp_ratio), axis=-1, drop=drop)
        self.norm1 = LayerNorm(store, f"{name}.norm1", dim, axis=-1)
        self.mlp2 = Mlp(store, f"{name}.mlp2", num_tokens, patch_mlp_dim, axis=0, drop=drop)
        self.norm2 = LayerNorm(store, f"{name}.norm2", num_tokens, axis=0)  # weight (T,)
        self.drop_path = drop_path

    def forward(self, x: Array, train: bool, rng: Any) -> tuple[Array, FFBlockCache]:
        """x (T, B, D) -> (T, B, D)."""
        h, c_norm1 = self.norm1.forward(x)  # each token over its D features
        h, c_mlp1 = self.mlp1.forward(h, train, rng)  # D -> 4D -> D, the same for every token
        h, c_path1 = kernels.drop_path_forward(h, self.drop_path, rng, train)
        x = kernels.add_inplace(h, x)  # residual: x + h, written into the fresh h
        h, c_norm2 = self.norm2.forward(x)  # each channel over its T tokens
        h, c_mlp2 = self.mlp2.forward(h, train, rng)  # T -> 4T -> T, the same for every channel
        h, c_path2 = kernels.drop_path_forward(h, self.drop_path, rng, train)
        x = kernels.add_inplace(h, x)
        return x, FFBlockCache(c_norm1, c_mlp1, c_path1, c_norm2, c_mlp2, c_path2)

    def backward(self, dx: Array, cache: FFBlockCache) -> Array:
        """dx (T, B, D) -> the input's gradient; adds the parameter gradients into grads."""
        # Each residual x + h(x) passes dx on unchanged and adds what comes back through h.
        dh = kernels.drop_path_backward(dx, cache.path2)
        dh = self.mlp2.backward(dh, cache.mlp2)
        dx = kernels.add_inplace(self.norm2.backward(dh, cache.norm2), dx)  # into the fresh gradient
        dh = kernels.drop_path_backward(dx, cache.path1)
        dh = self.mlp1.backward(dh, cache.mlp1)
        dx = kernels.add_inplace(self.norm1.backward(dh, cache.norm1), dx)
        return dx


class LearnedPositionalEncoding:
    """The released model's positions: a (1, D, G, G) grid and the class token's (1, 1, D).

    ``forward()`` returns the grid at the patch grid's size (resized bilinearly with
    align_corners=False when G differs, as the released file does on every forward) and the
    class token's vector, in the form :func:`minimlp.functional.tokens_forward` takes.
    """

    def __init__(self, store: ParameterStore, name: str, dim: int, pos_grid: int, patch_grid: int) -> None:
        self.store, self.size = store, patch_grid
        self.resize = pos_grid != patch_grid  # at equal sizes the resize is the identity: skip it
        self.pos = store.add(f"{name}.pos_embed", (1, dim, pos_grid, pos_grid), trunc_normal(0.02))
        self.cls = store.add(f"{name}.cls_pos_embed", (1, 1, dim), trunc_normal(0.02))

    def forward(self) -> tuple[tuple[Array, Array], kernels.ResizeCache | None]:
        p = self.store.params
        if not self.resize:
            return (p[self.pos], p[self.cls]), None
        grid, cache = kernels.resize_bilinear_forward(p[self.pos], (self.size, self.size))  # (1, D, grid, grid)
        return (grid, p[self.cls]), cache

    def grad_targets(self, cache: kernels.ResizeCache | None) -> tuple[Array, Array]:
        """Where :func:`minimlp.functional.tokens_backward` adds the two position gradients."""
        g = self.store.grads
        if cache is None:
            return g[self.pos], g[self.cls]
        xp = array_module(g[self.pos])
        return xp.zeros((*g[self.pos].shape[:2], self.size, self.size), dtype=g[self.pos].dtype), g[self.cls]

    def backward(self, dgrid: Array, cache: kernels.ResizeCache | None) -> None:
        """Carry the resized grid's gradient (from :meth:`grad_targets`) back to the stored grid."""
        if cache is not None:
            self.store.grads[self.pos] += kernels.resize_bilinear_backward(dgrid, cache)


class FFViT(ClassTokenModel):
    """The feed-forward-only ViT (``ff_tiny`` / ``linear_tiny`` and friends)."""

    arch = "ffvit"

    def __init__(self, config: FFViTConfig, device: str = "cpu", seed: int = 0) -> None:
        super().__init__(config, device, seed)
        c, s = config, self.store
        T = c.num_tokens
        patch_mlp_dim = c.patch_mlp_dim or int(T * c.mlp_ratio)
        # Declared in the released checkpoint's order.
        s.add("cls_token", (1, 1, c.embed_dim), trunc_normal(0.02), decay=False)
        self.patch_embed = PatchEmbed(s, "patch_embed.proj", c.patch_size, c.in_chans, c.embed_dim)
        self.pos_encoding = LearnedPositionalEncoding(s, "pos_encoding", c.embed_dim, c.pos_grid_size, c.grid)
        rates = np.linspace(0.0, c.drop_path_rate, c.depth)  # stochastic depth rises with depth
        self.blocks = [
            FFBlock(s, f"blocks.{i}", c.embed_dim, T, c.mlp_ratio, patch_mlp_dim, c.drop_rate, float(rates[i]))
            for i in range(c.depth)
        ]
        self.norm = LayerNorm(s, "norm", c.embed_dim)
        self.head = Linear(s, "head", c.embed_dim, c.num_classes)
        self._build(seed)

    def _positions(self) -> tuple[tuple[Array, Array], kernels.ResizeCache | None]:
        return self.pos_encoding.forward()

    def _positions_backward(self, dt: Array, cache: kernels.ResizeCache | None) -> Array:
        dgrid, dcls_pos = self.pos_encoding.grad_targets(cache)
        dt = kernels.tokens_backward(dt, self.grads["cls_token"], dgrid, dcls_pos)  # (N, B, D)
        self.pos_encoding.backward(dgrid, cache)
        return dt
