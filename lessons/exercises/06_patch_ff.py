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


def patch_ff_forward(x, W1, b1, W2, b2):
    raise NotImplementedError  # your code here


def patch_ff_backward(dy, x, W1, b1, W2, b2):
    raise NotImplementedError  # your code here
