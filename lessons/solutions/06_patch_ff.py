"""Lesson 6, exercise: the feed-forward layer over patches, forward and backward.

In the (T, B, D) layout the layer maps every column x[:, b, d] of T token values:

    u = W1 x + b1   (H, B, D),   g = GELU(u),   y = W2 g + b2   (T, B, D)

with W1 (H, T), b1 (H,), W2 (T, H), b2 (T,) and the exact GELU.  Write

    patch_ff_forward(x, W1, b1, W2, b2) -> y
    patch_ff_backward(dy, x, W1, b1, W2, b2) -> (dx, dW1, db1, dW2, db2)

(recompute the forward inside the backward).  Lesson 2's linear layer along axis 0 and
lesson 3's GELU derivative are all it takes; minimlp.functional.gelu_forward gives GELU and
its derivative (cache.dgelu).  Use no other minimlp function.

    python lessons/run.py 06 --exercise [this file]
"""

import numpy as np

from minimlp.functional import gelu_forward


def tokens_product(W: np.ndarray, x: np.ndarray) -> np.ndarray:
    """W (O, I) applied along axis 0 of x (I, B, D): every column mixed."""
    return np.einsum("oi,ibd->obd", W, x)


def patch_ff_forward(x, W1, b1, W2, b2):
    g, _ = gelu_forward(tokens_product(W1, x) + b1[:, None, None])
    return tokens_product(W2, g) + b2[:, None, None]


def patch_ff_backward(dy, x, W1, b1, W2, b2):
    g, cache = gelu_forward(tokens_product(W1, x) + b1[:, None, None])
    dW2 = np.einsum("obd,ibd->oi", dy, g)  # dy gᵀ, summed over every column (b, d)
    db2 = dy.sum(axis=(1, 2))
    du = tokens_product(W2.T, dy) * cache.dgelu  # back through W2, then GELU'
    dW1 = np.einsum("obd,ibd->oi", du, x)
    db1 = du.sum(axis=(1, 2))
    return tokens_product(W1.T, du), dW1, db1, dW2, db2
