"""Lesson 13, exercise: a whole multi-head attention layer for one image, and its backward.

    qkv = x Wqkvᵀ + bqkv   (T, 3D): columns [q | k | v], each split into num_heads heads of
                           width d = D / num_heads (head i: columns i*d .. (i+1)*d)
    O_i = softmax(Q_i K_iᵀ / sqrt(d)) V_i  for every head;  O = [O_1 | ... | O_h]   (T, D)
    y = O Wprojᵀ + bproj

    attention_layer_forward(x, Wqkv, bqkv, Wproj, bproj, num_heads) -> y         x, y (T, D)
    attention_layer_backward(dy, x, Wqkv, bqkv, Wproj, bproj, num_heads)
        -> (dx, dWqkv, dbqkv, dWproj, dbproj)

Use NumPy and the lesson's attention_by_hand / attention_backward_by_hand (below); the
checker compares with minimlp's Attention layer, made of F.linear_*, F.split_heads_*,
F.attention_* and F.merge_heads_*.

    python lessons/run.py 13 --exercise [this file]
"""

import numpy as np


def attention_by_hand(Q, K, V):
    S = Q @ K.T / np.sqrt(Q.shape[-1])
    P = np.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    return P @ V, (Q, K, V, P)


def attention_backward_by_hand(dO, cache):
    Q, K, V, P = cache
    d = Q.shape[-1]
    dP = dO @ V.T
    dS = P * (dP - (dP * P).sum(axis=1, keepdims=True))
    return dS @ K / np.sqrt(d), dS.T @ Q / np.sqrt(d), P.T @ dO


def attention_layer_forward(x, Wqkv, bqkv, Wproj, bproj, num_heads):
    raise NotImplementedError  # your code here


def attention_layer_backward(dy, x, Wqkv, bqkv, Wproj, bproj, num_heads):
    raise NotImplementedError  # your code here
