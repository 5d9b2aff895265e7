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


def paper_block_forward(x, W):
    raise NotImplementedError  # your code here


def paper_block_backward(dout, cache, W):
    raise NotImplementedError  # your code here
