"""Layers: parameters and gradients by name, with the math delegated to the ops.

A layer knows which parameters it owns and calls the matching ``<op>_forward`` /
``<op>_backward`` pair through :mod:`minimlp.kernels`, which runs a fast kernel where one
applies and the plain op of :mod:`minimlp.functional` otherwise.  It never stores a cache: ``forward(x, ...)`` returns
``(out, cache)`` and ``backward(dout, cache)`` returns the input gradient, adding the
parameter gradients into ``grads``.

Parameters live in a :class:`ParameterStore`: every parameter is a view into one flat
buffer and every gradient a view into a second one, keyed by the released checkpoint's
names (``blocks.3.mlp2.fc1.weight``).  Layers look their arrays up by name, so loading a
state dict, an optimizer step over the flat buffer, or a gradient check that perturbs one
entry all act on the arrays the layers read.  Parameters that take weight decay come
first in the buffer and the rest after, so an optimizer can treat the two groups as two
contiguous slices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from minimlp import kernels
from minimlp.backend import Array, Backend

Init = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


# --------------------------------------------------------------------------------------
# Initialisers (host-side, float64; the store casts and moves them).  The released model
# follows timm: truncated normal std 0.02 for linear weights and embeddings, zero biases,
# LayerNorm weight 1 and bias 0, and PyTorch's default for the patch-embedding conv.
# --------------------------------------------------------------------------------------
def trunc_normal(std: float = 0.02, a: float = -2.0, b: float = 2.0) -> Init:
    """Normal(0, std) truncated to [a, b] (absolute bounds, as timm's trunc_normal_)."""

    def init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        out = rng.normal(0.0, std, size=shape)
        bad = (out < a) | (out > b)
        while bad.any():  # redraw the few outside the bounds
            out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
            bad = (out < a) | (out > b)
        return out

    return init


def uniform_fan_in(fan_in: int) -> Init:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for conv weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda rng, shape: rng.uniform(-bound, bound, size=shape)


def constant(value: float) -> Init:
    return lambda rng, shape: np.full(shape, value, dtype=np.float64)


@dataclass
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    init: Init
    decay: bool  # takes weight decay (False for 1-D parameters and the class token)


def available_memory() -> int | None:
    """Bytes of host memory this process can still take (Linux: MemAvailable, within a cgroup's
    limit), or None where that cannot be told."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                free = min(free, int(limit) - int(f.read()))
    except (OSError, ValueError):
        pass
    return free


class ParameterStore:
    """All parameters of a model in one flat buffer, gradients in another.

    Layers ``add`` their parameters while the model is built; ``build`` then allocates
    both buffers on the backend and initialises every parameter from a NumPy generator,
    so a seed gives the same weights on the CPU and on the GPU.
    """

    def __init__(self) -> None:
        self.specs: list[ParamSpec] = []
        self.names: set[str] = set()  # of specs, so declaring n parameters takes O(n), not O(n^2)
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.flat_params: Array = None
        self.flat_grads: Array = None
        self.num_decay = 0  # elements in the weight-decay group: flat[:num_decay]

    def add(self, name: str, shape: tuple[int, ...], init: Init, decay: bool | None = None) -> str:
        if name in self.names:
            raise ValueError(f"parameter {name!r} declared twice")
        self.names.add(name)
        decay = len(shape) > 1 if decay is None else decay  # DeiT: no decay on 1-D params
        self.specs.append(ParamSpec(name, tuple(shape), init, decay))
        return name

    def build(self, backend: Backend, dtype: Any, seed: int) -> None:
        xp = backend.xp
        rng = np.random.default_rng(seed)
        ordered = [s for s in self.specs if s.decay] + [s for s in self.specs if not s.decay]
        total = sum(math.prod(s.shape) for s in self.specs)
        # Refused before allocating: past the free memory, the system kills the process instead of saying so.
        needed = total * (8 + np.dtype(dtype).itemsize)  # the float64 draw and the parameters (gradients: zero pages)
        free = available_memory()
        if free is not None and needed > free:
            raise MemoryError(
                f"a model of {total:,} parameters needs {needed / 2**30:.1f} GiB to build, and "
                f"{free / 2**30:.1f} GiB of memory is available"
            )
        self.num_decay = sum(math.prod(s.shape) for s in ordered if s.decay)
        host = np.empty(total, dtype=np.float64)
        offsets = {}
        start = 0
        for spec in ordered:
            size = math.prod(spec.shape)
            offsets[spec.name] = (start, start + size)
            start += size
        for spec in self.specs:  # initialise in declaration order, so seeds are stable
            lo, hi = offsets[spec.name]
            host[lo:hi] = np.asarray(spec.init(rng, spec.shape), dtype=np.float64).reshape(-1)
        self.flat_params = xp.asarray(host.astype(dtype))
        self.flat_grads = xp.zeros(total, dtype=dtype)
        for spec in self.specs:  # dict order = declaration order = checkpoint order
            lo, hi = offsets[spec.name]
            self.params[spec.name] = self.flat_params[lo:hi].reshape(spec.shape)
            self.grads[spec.name] = self.flat_grads[lo:hi].reshape(spec.shape)


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------
class Linear:
    """y = W x + b along ``axis`` (-1: features of each token; 0: tokens of each feature)."""

    def __init__(
        self,
        store: ParameterStore,
        name: str,
        in_features: int,
        out_features: int,
        axis: int = -1,
        init: Init | None = None,
        bias_init: Init | None = None,
    ) -> None:
        self.store, self.axis = store, axis
        self.w = store.add(f"{name}.weight", (out_features, in_features), init or trunc_normal(0.02))
        self.b = store.add(f"{name}.bias", (out_features,), bias_init or constant(0.0))

    def forward(self, x: Array) -> tuple[Array, kernels.LinearCache]:
        p = self.store.params
        return kernels.linear_forward(x, p[self.w], p[self.b], self.axis)

    def backward(self, dout: Array, cache: kernels.LinearCache, input_grad: bool = True) -> Array | None:
        p, g = self.store.params, self.store.grads
        return kernels.linear_backward(dout, cache, p[self.w], g[self.w], g[self.b], input_grad)


class LayerNorm:
    """LayerNorm over ``axis`` with eps = 1e-6, as the released model."""

    def __init__(self, store: ParameterStore, name: str, dim: int, axis: int = -1, eps: float = 1e-6) -> None:
        self.store, self.axis, self.eps = store, axis, eps
        self.w = store.add(f"{name}.weight", (dim,), constant(1.0))
        self.b = store.add(f"{name}.bias", (dim,), constant(0.0))

    def forward(self, x: Array) -> tuple[Array, kernels.LayerNormCache]:
        p = self.store.params
        return kernels.layernorm_forward(x, p[self.w], p[self.b], self.axis, self.eps)

    def backward(self, dout: Array, cache: kernels.LayerNormCache) -> Array:
        p, g = self.store.params, self.store.grads
        return kernels.layernorm_backward(dout, cache, p[self.w], g[self.w], g[self.b])


class MlpCache(NamedTuple):
    """What :meth:`Mlp.backward` needs from the forward pass."""

    fc1: Any  # fc1's input, for its weight gradient
    gelu: Any  # GELU'(fc1 output), or what computes it
    drop1: Any  # the dropout mask after GELU (None when not training)
    fc2: Any  # fc2's input (the GELU output after dropout)
    drop2: Any  # the dropout mask after fc2


class Mlp:
    """The feed-forward layer: Linear -> GELU -> Dropout -> Linear -> Dropout (timm's Mlp).

    With axis=-1 it mixes the features of each token (the "feature FF", a 1×1 conv);
    with axis=0 it mixes the tokens of each feature channel (the "patch FF", the layer
    that replaces attention).
    """

    def __init__(
        self,
        store: ParameterStore,
        name: str,
        in_features: int,
        hidden_features: int,
        axis: int = -1,
        drop: float = 0.0,
    ) -> None:
        self.fc1 = Linear(store, f"{name}.fc1", in_features, hidden_features, axis)
        self.fc2 = Linear(store, f"{name}.fc2", hidden_features, in_features, axis)
        self.drop = drop

    def forward(self, x: Array, train: bool = False, rng: Any = None) -> tuple[Array, MlpCache]:
        p, fc1 = self.fc1.store.params, self.fc1
        # (..., H): fc1, then GELU; outside training the GELU derivative waits until a backward asks for it
        h, (c_fc1, c_act) = kernels.linear_gelu_forward(x, p[fc1.w], p[fc1.b], fc1.axis, need_grad=train)
        h, c_drop1 = kernels.dropout_forward(h, self.drop, rng, train)
        y, c_fc2 = self.fc2.forward(h)  # (..., in)
        y, c_drop2 = kernels.dropout_forward(y, self.drop, rng, train)
        return y, MlpCache(c_fc1, c_act, c_drop1, c_fc2, c_drop2)

    def backward(self, dy: Array, cache: MlpCache) -> Array:
        dy = kernels.dropout_backward(dy, cache.drop2)
        dh = self.fc2.backward(dy, cache.fc2)
        dh = kernels.dropout_backward(dh, cache.drop1)
        p, g, fc1 = self.fc1.store.params, self.fc1.store.grads, self.fc1
        # dh is a fresh array made just above, so the GELU backward may overwrite it.
        return kernels.linear_gelu_backward(dh, (cache.fc1, cache.gelu), p[fc1.w], g[fc1.w], g[fc1.b], owns_dh=True)


class PatchEmbed:
    """The P×P, stride-P convolution, as a matmul on flattened patches; weight (D, C, P, P)."""

    def __init__(self, store: ParameterStore, name: str, patch_size: int, in_chans: int, embed_dim: int) -> None:
        self.store = store
        fan_in = in_chans * patch_size * patch_size
        self.w = store.add(f"{name}.weight", (embed_dim, in_chans, patch_size, patch_size), uniform_fan_in(fan_in))
        self.b = store.add(f"{name}.bias", (embed_dim,), uniform_fan_in(fan_in))

    def forward(self, x: Array) -> tuple[Array, kernels.PatchEmbedCache]:
        p = self.store.params
        return kernels.patch_embed_forward(x, p[self.w], p[self.b])  # (N, B, D)

    def backward(self, dout: Array, cache: kernels.PatchEmbedCache, input_grad: bool = True) -> Array | None:
        p, g = self.store.params, self.store.grads
        return kernels.patch_embed_backward(dout, cache, p[self.w], g[self.w], g[self.b], input_grad)


class AttentionLayerCache(NamedTuple):
    """What :meth:`Attention.backward` needs from the forward pass."""

    qkv: kernels.LinearCache  # the qkv projection's input
    attn: kernels.AttentionCache  # q, k, v and the attention probabilities
    proj: kernels.LinearCache  # the output projection's input (the merged heads)
    drop: kernels.MaskCache  # dropout after the projection


class Attention:
    """Multi-head self-attention, timm's ``Attention``: qkv Linear -> heads ->
    softmax(q kᵀ / sqrt(d)) v -> merged heads -> proj Linear -> dropout.

    axis=-1 attends over tokens (the embedding is a token's D features: the ViT/DeiT
    layer); axis=0 attends over features (the embedding is a feature channel's T values:
    the paper's attention-only ablation).  Parameters ``{name}.qkv`` (3E, E) and
    ``{name}.proj`` (E, E), E = ``dim``; the qkv rows are ordered (q, k, v) × heads.
    """

    def __init__(
        self,
        store: ParameterStore,
        name: str,
        dim: int,
        num_heads: int,
        axis: int = -1,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"{name}: {num_heads} heads do not divide the embedding size {dim}")
        self.qkv = Linear(store, f"{name}.qkv", dim, 3 * dim, axis)
        self.proj = Linear(store, f"{name}.proj", dim, dim, axis)
        self.num_heads, self.axis = num_heads, axis
        self.scale = (dim // num_heads) ** -0.5
        self.attn_drop, self.proj_drop = attn_drop, proj_drop

    def forward(self, x: Array, train: bool = False, rng: Any = None) -> tuple[Array, AttentionLayerCache]:
        qkv, c_qkv = self.qkv.forward(x)  # (T, B, 3D), or (3T, B, D) for axis=0
        q, k, v = kernels.split_heads_forward(qkv, self.num_heads, self.axis)  # each (B, h, S, d)
        ctx, c_attn = kernels.attention_forward(q, k, v, self.scale, self.attn_drop, rng, train)  # (B, h, S, d)
        y = kernels.merge_heads_forward(ctx, self.axis)  # back to x's shape
        y, c_proj = self.proj.forward(y)
        y, c_drop = kernels.dropout_forward(y, self.proj_drop, rng, train)
        return y, AttentionLayerCache(c_qkv, c_attn, c_proj, c_drop)

    def backward(self, dy: Array, cache: AttentionLayerCache) -> Array:
        dy = kernels.dropout_backward(dy, cache.drop)
        dctx = self.proj.backward(dy, cache.proj)
        dctx = kernels.merge_heads_backward(dctx, self.num_heads, self.axis)  # (B, h, S, d)
        dq, dk, dv = kernels.attention_backward(dctx, cache.attn)
        dqkv = kernels.split_heads_backward(dq, dk, dv, self.axis)
        return self.qkv.backward(dqkv, cache.qkv)


class BranchCache(NamedTuple):
    """One residual branch of a :class:`PreNormBlock`: its LayerNorm, mixer and drop path."""

    norm: Any
    mixer: Any
    path: Any


class PreNormBlock:
    """Two residual branches, each a LayerNorm, a mixing layer and drop path:

        x = x + drop_path(mixer1(norm1(x)))
        x = x + drop_path(mixer2(norm2(x)))

    The block of all three models: the FF-only model (feature FF, patch FF), ViT
    (attention, feature MLP) and MLP-Mixer (token MLP, channel MLP).  A subclass builds
    its layers and lists them in ``branches`` as (norm, mixer) pairs, in order.
    """

    branches: tuple[tuple[Any, Any], ...]
    drop_path: float

    def forward(self, x: Array, train: bool, rng: Any) -> tuple[Array, list[BranchCache]]:
        caches = []
        for norm, mixer in self.branches:
            h, c_norm = norm.forward(x)
            h, c_mix = mixer.forward(h, train, rng)
            h, c_path = kernels.drop_path_forward(h, self.drop_path, rng, train)
            x = kernels.add_inplace(h, x)  # x + h, into h: the branch output is a fresh array
            caches.append(BranchCache(c_norm, c_mix, c_path))
        return x, caches

    def backward(self, dx: Array, caches: list[BranchCache]) -> Array:
        # x_out = x + branch(x): the gradient flows both ways round each residual.
        for (norm, mixer), cache in zip(reversed(self.branches), reversed(caches), strict=True):
            dh = kernels.drop_path_backward(dx, cache.path)
            dh = mixer.backward(dh, cache.mixer)
            dx = kernels.add_inplace(norm.backward(dh, cache.norm), dx)  # into the fresh LayerNorm gradient
        return dx
