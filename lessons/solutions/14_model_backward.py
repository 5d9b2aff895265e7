"""Lesson 14, exercise: the end of a model that averages its tokens (MLP-Mixer).

The FF model classifies its class token.  MLP-Mixer has none: it normalises every token,
averages the T tokens and classifies the average:

    h = LayerNorm(t) over features (T, B, D),   pooled = mean over the T tokens (B, D),
    logits = pooled head_wᵀ + head_b (B, K)

    mean_head_forward(t, norm_w, norm_b, head_w, head_b) -> logits
    mean_head_backward(dlogits, t, norm_w, norm_b, head_w, head_b)
        -> (dt, dnorm_w, dnorm_b, dhead_w, dhead_b)

eps = 1e-6 inside the square root.  Unlike the class token's LayerNorm, this one must see
every token.  Use NumPy only.

    python lessons/run.py 14 --exercise [this file]
"""

import numpy as np

EPS = 1e-6


def mean_head_forward(t, norm_w, norm_b, head_w, head_b):
    xhat = (t - t.mean(axis=-1, keepdims=True)) / np.sqrt(t.var(axis=-1, keepdims=True) + EPS)
    pooled = (xhat * norm_w + norm_b).mean(axis=0)  # (B, D)
    return pooled @ head_w.T + head_b


def mean_head_backward(dlogits, t, norm_w, norm_b, head_w, head_b):
    r = 1.0 / np.sqrt(t.var(axis=-1, keepdims=True) + EPS)
    xhat = (t - t.mean(axis=-1, keepdims=True)) * r
    pooled = (xhat * norm_w + norm_b).mean(axis=0)
    dhead_w, dhead_b = dlogits.T @ pooled, dlogits.sum(axis=0)
    dh = np.broadcast_to(dlogits @ head_w / t.shape[0], t.shape)  # every token gets 1/T of it
    dnorm_w, dnorm_b = (dh * xhat).sum(axis=(0, 1)), dh.sum(axis=(0, 1))
    dxhat = dh * norm_w
    dt = (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)) * r
    return dt, dnorm_w, dnorm_b, dhead_w, dhead_b
