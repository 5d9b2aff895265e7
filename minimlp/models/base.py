"""What every minimlp model shares: parameters by name, gradients, state dicts, inputs.

A model builds its layers on a :class:`~minimlp.layers.ParameterStore` and implements
``forward(x, train) -> (logits, cache)`` and ``backward(dlogits, cache) -> dx``.  This
base class supplies the rest of the public API: ``params`` and ``grads`` (dicts keyed by
the released checkpoint names, PyTorch layout), ``zero_grad``, a strict
``load_state_dict`` that names every problem, and input checking that says which shape
was expected.  :class:`ClassTokenModel` adds the forward and backward pass around the
blocks that the FF-only model and the ViT share.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from minimlp import kernels
from minimlp.backend import Array, Backend, get_backend, to_numpy
from minimlp.layers import ParameterStore


def check_image_config(config: Any) -> None:
    """Check the fields every patch-based model's config shares; ValueError names the field."""
    if config.img_size % config.patch_size:
        raise ValueError(f"img_size {config.img_size} is not a multiple of patch_size {config.patch_size}")
    for name in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth"):
        if int(getattr(config, name)) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(config, name)}")
    if not 0.0 <= config.drop_rate < 1.0 or not 0.0 <= config.drop_path_rate < 1.0:
        raise ValueError("drop_rate and drop_path_rate must lie in [0, 1)")


class Model:
    """Base class: subclasses set ``config`` and declare their layers on ``self.store``."""

    arch = "model"

    def __init__(self, config: Any, device: str = "cpu", seed: int = 0) -> None:
        self.config = config
        self.backend: Backend = get_backend(device)
        self.xp = self.backend.xp
        self.dtype = np.dtype(config.dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating type such as 'float32', got {config.dtype!r}")
        self.store = ParameterStore()
        self.seed(seed)

    def _build(self, seed: int) -> None:
        """Allocate and initialise the declared parameters (call at the end of __init__)."""
        self.store.build(self.backend, self.dtype, seed)

    # -- parameters ------------------------------------------------------------------
    @property
    def params(self) -> dict[str, Array]:
        return self.store.params

    @property
    def grads(self) -> dict[str, Array]:
        return self.store.grads

    def num_params(self) -> int:
        return int(self.store.flat_params.size)

    def zero_grad(self) -> None:
        self.store.flat_grads.fill(0)

    def seed(self, seed: int) -> None:
        """Seed the generator that draws dropout and drop-path masks."""
        self.rng = self.xp.random.default_rng(seed)

    def state_dict(self) -> dict[str, np.ndarray]:
        """A host copy of every parameter, in checkpoint order (NumPy arrays)."""
        return {name: to_numpy(p).copy() for name, p in self.params.items()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy ``state`` into the parameters; strict: every key present and shaped right.

        The error names every missing key, every unexpected key and every shape
        mismatch at once, so one run shows everything that is wrong with a checkpoint.
        With ``strict=False`` missing and unexpected keys are allowed (shapes never are).
        """
        missing = [k for k in self.params if k not in state]
        unexpected = [k for k in state if k not in self.params]
        mismatched = [
            f"{k}: checkpoint {tuple(np.shape(state[k]))} vs model {tuple(p.shape)}"
            for k, p in self.params.items()
            if k in state and tuple(np.shape(state[k])) != tuple(p.shape)
        ]
        problems = []
        if strict and missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        if problems:
            raise ValueError(f"state dict does not fit {self.describe()}:\n  " + "\n  ".join(problems))
        for name, p in self.params.items():
            if name in state:  # copy in place: the arrays stay views of the flat buffer
                value = state[name]
                p[...] = to_numpy(value) if self.xp is np else self.xp.asarray(value)

    # -- inputs ----------------------------------------------------------------------
    def expected_input_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.in_chans, c.img_size, c.img_size)

    def prepare_input(self, x: Array) -> Array:
        """Check x is (B, C, H, W) as configured; move it to the device in the model dtype."""
        C, H, W = self.expected_input_shape()
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 4 or shape[1:] != (C, H, W) or shape[0] < 1:
            raise ValueError(f"{self.describe()} expects input of shape (B, {C}, {H}, {W}), got {shape}")
        return self.xp.asarray(x).astype(self.dtype, copy=False)

    def describe(self) -> str:
        c = self.config
        return f"{self.arch}(img_size={c.img_size}, in_chans={c.in_chans}, num_classes={c.num_classes})"

    def config_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, **dataclasses.asdict(self.config)}


class ClassTokenCache(NamedTuple):
    patch_embed: Any
    pos_drop: Any
    blocks: list
    pool_shape: tuple
    norm: Any
    head: Any
    positions: Any = None  # what the position encoding's backward needs (the FF model's resize)


class ClassTokenModel(Model):
    """The shell that the FF-only ViT and ViT/DeiT share: patch embedding, a class token
    and positions, the blocks, a final LayerNorm of the class token and a linear head.

    A subclass declares ``patch_embed``, ``blocks``, ``norm`` and ``head`` and names its
    position parameters in ``position_names``, as :func:`minimlp.functional.tokens_forward`
    takes them: one (1, T, D) table (timm's ViT), or a patch grid and the class token's own
    position (the released FF checkpoints).  A subclass whose positions are computed from
    its parameters (the FF model's resized grid) overrides ``_positions`` and
    ``_positions_backward`` instead.
    """

    position_names: tuple[str, ...] = ()

    def _positions(self) -> tuple[tuple[Array, ...], Any]:
        """The positions as :func:`minimlp.functional.tokens_forward` takes them, and a cache."""
        return tuple(self.params[name] for name in self.position_names), None

    def _positions_backward(self, dt: Array, cache: Any) -> Array:
        """Add the class token's and the positions' gradients; return the patch tokens' (N, B, D)."""
        g = self.grads
        return kernels.tokens_backward(dt, g["cls_token"], *(g[name] for name in self.position_names))

    def _tokens(self, x: Array, train: bool) -> tuple[Array, Any, Any, Any]:
        """Images (B, C, H, W) -> tokens (T, B, D) with the class token first, after dropout."""
        t, c_embed = self.patch_embed.forward(x)  # (N, B, D)
        positions, c_pos = self._positions()
        t = kernels.tokens_forward(t, self.params["cls_token"], *positions)  # (T, B, D)
        t, c_drop = kernels.dropout_forward(t, self.config.drop_rate, self.rng, train)
        return t, c_embed, c_drop, c_pos

    def forward(self, x: Array, train: bool = False) -> tuple[Array, ClassTokenCache]:
        """Images (B, C, H, W) -> logits (B, K)."""
        t, c_embed, c_drop, c_pos = self._tokens(self.prepare_input(x), train)
        c_blocks = []
        for block in self.blocks:
            t, c = block.forward(t, train, self.rng)
            c_blocks.append(c)
        # The final LayerNorm works token by token and the head reads only the class
        # token, so normalising that token alone gives the same logits.
        cls, pool_shape = kernels.cls_pool_forward(t)  # (B, D)
        cls, c_norm = self.norm.forward(cls)
        logits, c_head = self.head.forward(cls)  # (B, K)
        return logits, ClassTokenCache(c_embed, c_drop, c_blocks, pool_shape, c_norm, c_head, c_pos)

    def backward(self, dlogits: Array, cache: ClassTokenCache, input_grad: bool = True) -> Array | None:
        """Add every parameter's gradient into ``grads``; return dL/dx (B, C, H, W).

        ``input_grad=False`` skips the image gradient (training never needs it).
        """
        dcls = self.head.backward(self.xp.asarray(dlogits, dtype=self.dtype), cache.head)
        dcls = self.norm.backward(dcls, cache.norm)
        dt = kernels.cls_pool_backward(dcls, cache.pool_shape)  # (T, B, D)
        for block, c in zip(reversed(self.blocks), reversed(cache.blocks), strict=True):
            dt = block.backward(dt, c)
        dt = kernels.dropout_backward(dt, cache.pos_drop)
        dt = self._positions_backward(dt, cache.positions)  # (N, B, D)
        return self.patch_embed.backward(dt, cache.patch_embed, input_grad)

    def forward_features(self, x: Array) -> Array:
        """The token features after the last block, as (B, T, D) like the paper's code."""
        t = self._tokens(self.prepare_input(x), False)[0]
        for block in self.blocks:
            t, _ = block.forward(t, False, self.rng)
        return kernels.transpose_forward(t, (1, 0, 2))[0]  # (T, B, D) -> (B, T, D)
