"""Lesson 4, exercise: LayerNorm over the tokens, the patch branch's norm.

In minimlp's (T, B, D) layout the LayerNorm before the patch feed-forward normalises each
feature channel of each image over its T tokens (axis 0), with a weight and a bias of
shape (T,):

    layernorm_tokens_forward(x, w, b, eps=1e-6):   x (T, B, D) -> y (T, B, D)
    layernorm_tokens_backward(dy, x, w, eps=1e-6) -> (dx, dw, db)

eps inside the square root, biased variance.  The lesson's backward, along axis 0: the
means are over the T tokens, and dw, db sum over everything else (B and D).
Use NumPy only (not minimlp.functional.layernorm_*).

    python lessons/run.py 04 --exercise [this file]
"""

import numpy as np


def layernorm_tokens_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    xhat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps)
    return xhat * w[:, None, None] + b[:, None, None]


def layernorm_tokens_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, eps: float = 1e-6) -> tuple:
    r = 1.0 / np.sqrt(x.var(axis=0) + eps)  # (B, D)
    xhat = (x - x.mean(axis=0)) * r
    dw = (dy * xhat).sum(axis=(1, 2))
    db = dy.sum(axis=(1, 2))
    dxhat = dy * w[:, None, None]
    dx = (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) * r
    return dx, dw, db
