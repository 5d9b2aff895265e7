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
    raise NotImplementedError  # your code here


def mean_head_backward(dlogits, t, norm_w, norm_b, head_w, head_b):
    raise NotImplementedError  # your code here
