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


def heads(x, num_heads):
    """(T, D) -> the list of its num_heads column blocks, each (T, d)."""
    return np.split(x, num_heads, axis=1)


def per_head(qkv, num_heads):
    """(T, 3D) -> [(Q_i, K_i, V_i) for every head i]."""
    q, k, v = np.split(qkv, 3, axis=1)  # each (T, D)
    return list(zip(heads(q, num_heads), heads(k, num_heads), heads(v, num_heads), strict=True))


def attention_layer_forward(x, Wqkv, bqkv, Wproj, bproj, num_heads):
    outs = [attention_by_hand(*head)[0] for head in per_head(x @ Wqkv.T + bqkv, num_heads)]
    return np.concatenate(outs, axis=1) @ Wproj.T + bproj


def attention_layer_backward(dy, x, Wqkv, bqkv, Wproj, bproj, num_heads):
    results = [attention_by_hand(*head) for head in per_head(x @ Wqkv.T + bqkv, num_heads)]
    O = np.concatenate([out for out, _ in results], axis=1)  # (T, D)
    dWproj, dbproj = dy.T @ O, dy.sum(axis=0)
    dO = heads(dy @ Wproj, num_heads)
    grads = [attention_backward_by_hand(dO_i, cache) for dO_i, (_, cache) in zip(dO, results, strict=True)]
    dq, dk, dv = (np.concatenate([g[j] for g in grads], axis=1) for j in range(3))
    dqkv = np.concatenate([dq, dk, dv], axis=1)  # (T, 3D), the columns in qkv's order
    return dqkv @ Wqkv, dqkv.T @ x, dqkv.sum(axis=0), dWproj, dbproj
