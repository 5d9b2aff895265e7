"""Lesson 2, exercise: the patch embedding's forward and backward, from lesson 1 and this lesson.

The patch embedding is a linear layer on the patch vectors whose weight is stored as a
convolution kernel K (D, C, P, P):

    patch_embed_forward(x, K, bias):  x (B, C, H, W) -> tokens (N, B, D) = patches @ Wᵀ + bias,
                                      W = K reshaped to (D, C*P*P)
    patch_embed_backward(dtokens, x, K) -> (dx, dK, dbias), shaped like x, K and bias

Use lesson 2's linear backward (dpatches = dy W, dW = dyᵀ patches, db = the sum of dy),
reshape dW back into the kernel's shape, and lesson 1's unpatchify for dx.  You may use
minimlp.functional.patchify / unpatchify, but not patch_embed_* or linear_*.

    python lessons/run.py 02 --exercise [this file]
"""

import numpy as np

from minimlp.functional import patchify, unpatchify


def patch_embed_forward(x: np.ndarray, K: np.ndarray, bias: np.ndarray) -> np.ndarray:
    raise NotImplementedError  # your code here


def patch_embed_backward(dtokens: np.ndarray, x: np.ndarray, K: np.ndarray) -> tuple:
    raise NotImplementedError  # your code here
