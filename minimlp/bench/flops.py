"""Matrix-product FLOPs of a model: from its shapes (:func:`ffvit_flops`) or one image run through it."""

from __future__ import annotations

from typing import Any

import minimlp
from minimlp import kernels


# --------------------------------------------------------------------------------------
# FLOPs.  Only the matrix products are counted (2 FLOPs per multiply-add), as MFU figures
# usually are; the elementwise work is small in FLOPs, though not in time.
# --------------------------------------------------------------------------------------
def ffvit_flops(config: Any) -> dict[str, int]:
    """Matrix-product FLOPs per image of the FF-ViT, from its configuration.

    forward: patch embedding + per block (feature FF + patch FF) + head (class token only).
    train: forward + backward, where backward costs two products per forward product
    (dW and dx) except the patch embedding, which needs no image gradient.
    """
    c = config
    n = (c.img_size // c.patch_size) ** 2
    t = n + 1
    hidden = int(c.embed_dim * c.mlp_ratio)
    patch_hidden = c.patch_mlp_dim or int(t * c.mlp_ratio)
    embed = 2 * n * c.embed_dim * c.in_chans * c.patch_size**2
    per_block = 2 * (2 * t * c.embed_dim * hidden) + 2 * (2 * c.embed_dim * t * patch_hidden)
    head = 2 * c.embed_dim * c.num_classes
    forward = embed + c.depth * per_block + head
    return {"forward": forward, "embed": embed, "train": 3 * forward - embed}


def count_flops(model: minimlp.Model, x: Any) -> dict[str, int]:
    """The same count, read off the shapes the linear and attention ops see in one forward pass.

    Works for any model built from ``functional.linear_forward`` and
    ``functional.attention_forward``; used as a check of :func:`ffvit_flops` and for
    models without a formula (ViT/DeiT, the attention-only ablation, MLP-Mixer).
    """
    counts = {"forward": 0, "embed": 0}
    in_embed = [False]
    linear, patch_embed, attention = kernels.linear_forward, kernels.patch_embed_forward, kernels.attention_forward

    def counting_linear(x, w, b, axis=-1):
        flops = 2 * (x.size // w.shape[1]) * w.shape[0] * w.shape[1]
        counts["forward"] += flops
        counts["embed"] += flops if in_embed[0] else 0
        return linear(x, w, b, axis)

    def counting_attention(q, k, v, *args, **kwargs):
        # q kᵀ: (S, d) x (d, S) and probs v: (S, S) x (S, d), for each of the (B, h) matrices.
        # Their backward is four products of the same sizes, so "train" below stays right.
        queries, keys = q.size // q.shape[-1], k.shape[-2]  # B·h·S query rows, S keys each
        counts["forward"] += 2 * queries * keys * q.shape[-1] + 2 * queries * keys * v.shape[-1]
        return attention(q, k, v, *args, **kwargs)

    def counting_patch_embed(*args, **kwargs):
        in_embed[0] = True
        try:
            return patch_embed(*args, **kwargs)
        finally:
            in_embed[0] = False

    kernels.linear_forward, kernels.patch_embed_forward = counting_linear, counting_patch_embed
    kernels.attention_forward = counting_attention
    try:
        model.forward(x)
    finally:
        kernels.linear_forward, kernels.patch_embed_forward, kernels.attention_forward = linear, patch_embed, attention
    batch = x.shape[0]
    forward, embed = counts["forward"] // batch, counts["embed"] // batch
    return {"forward": forward, "embed": embed, "train": 3 * forward - embed}
