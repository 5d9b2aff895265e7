"""Lesson 7, exercise: the block in the paper's layout, and its backward.

The paper keeps activations as (B, T, D) and transposes around the patch feed-forward:

    x <- x + FF_D(LN_D(x));   x <- xᵀ (B, D, T);   x <- x + FF_T(LN_T(x));   x <- xᵀ

Write it with minimlp.functional's pairs (layernorm_*, linear_*, gelu_*, transpose_*),
every layer acting on the last axis as the paper's does, and its backward:

    paper_block_forward(x, W) -> (out, cache)          x, out (B, T, D)
    paper_block_backward(dout, cache, W) -> (dx, dW)   dW: a dict with W's keys

W holds one block's parameters by their names without the "blocks.i." prefix:
"norm1.weight", "norm1.bias", "mlp1.fc1.weight", ..., "mlp2.fc2.bias".  No dropout or drop
path.  The checker compares with FFBlock.forward / FFBlock.backward on the same input in
(T, B, D).

    python lessons/run.py 07 --exercise [this file]
"""

import numpy as np

from minimlp import functional as F


def ff_forward(x, W, prefix):
    """Linear -> GELU -> Linear along the last axis."""
    a, c1 = F.linear_forward(x, W[f"{prefix}.fc1.weight"], W[f"{prefix}.fc1.bias"])
    g, c_act = F.gelu_forward(a)
    y, c2 = F.linear_forward(g, W[f"{prefix}.fc2.weight"], W[f"{prefix}.fc2.bias"])
    return y, (c1, c_act, c2)


def ff_backward(dy, cache, W, dW, prefix):
    c1, c_act, c2 = cache
    dg = F.linear_backward(dy, c2, W[f"{prefix}.fc2.weight"], dW[f"{prefix}.fc2.weight"], dW[f"{prefix}.fc2.bias"])
    da = F.gelu_backward(dg, c_act)
    return F.linear_backward(da, c1, W[f"{prefix}.fc1.weight"], dW[f"{prefix}.fc1.weight"], dW[f"{prefix}.fc1.bias"])


def paper_block_forward(x, W):
    h, c_ln1 = F.layernorm_forward(x, W["norm1.weight"], W["norm1.bias"])
    f, c_ff1 = ff_forward(h, W, "mlp1")
    x = x + f  # over features
    x, axes1 = F.transpose_forward(x, (0, 2, 1))  # (B, D, T)
    h, c_ln2 = F.layernorm_forward(x, W["norm2.weight"], W["norm2.bias"])
    f, c_ff2 = ff_forward(h, W, "mlp2")
    x = x + f  # over tokens, now the last axis
    out, axes2 = F.transpose_forward(x, (0, 2, 1))  # back to (B, T, D)
    return out, (c_ln1, c_ff1, axes1, c_ln2, c_ff2, axes2)


def paper_block_backward(dout, cache, W):
    c_ln1, c_ff1, axes1, c_ln2, c_ff2, axes2 = cache
    dW = {k: np.zeros_like(v) for k, v in W.items()}
    dx = F.transpose_backward(dout, axes2)  # (B, D, T)
    dh = ff_backward(dx, c_ff2, W, dW, "mlp2")
    dx = dx + F.layernorm_backward(dh, c_ln2, W["norm2.weight"], dW["norm2.weight"], dW["norm2.bias"])
    dx = F.transpose_backward(dx, axes1)  # (B, T, D)
    dh = ff_backward(dx, c_ff1, W, dW, "mlp1")
    dx = dx + F.layernorm_backward(dh, c_ln1, W["norm1.weight"], dW["norm1.weight"], dW["norm1.bias"])
    return dx, dW
