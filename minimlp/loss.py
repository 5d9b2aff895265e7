"""Softmax cross-entropy with label smoothing and soft targets.  Lesson 5.

For logits z (B, K) and a target distribution q (B, K) per sample,

    loss = mean_b  -sum_k q_bk log softmax(z_b)_k,      dloss/dz = (softmax(z) - q) / B.

Integer labels become one-hot rows; label smoothing ε mixes them with the uniform
distribution, q = (1 - ε) onehot + ε / K; soft targets (mixup, cutmix) are used as given,
with the same smoothing folded in.  Every row of the gradient sums to zero, and at zero
logits the loss is ln K: two facts the tests check.  On the GPU the trainer calls the
same two functions through :mod:`minimlp.kernels`, which runs them as fused CUDA kernels.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minimlp.backend import Array, array_module


class CrossEntropyCache(NamedTuple):
    probs: Array  # softmax(z), (B, K)
    target: Array  # q, (B, K)


def target_distribution(
    target: Array, num_classes: int, smoothing: float = 0.0, dtype: Any = None, xp: Any = None
) -> Array:
    """The (B, K) target distribution from integer labels (B,) or soft targets (B, K), on ``xp``
    (default: where ``target`` is).

    Host labels are range-checked on the host, which costs nothing.  Labels already on a GPU are
    not read back for the check (that would make the host wait for the GPU at every step): a
    label outside [0, K) gives a row of NaN instead, so the loss is NaN and never silently wrong.
    """
    on_host = array_module(target) is np
    xp = xp or array_module(target)
    dtype = dtype or "float32"
    if target.ndim == 1:
        if target.dtype.kind not in "iu":
            raise ValueError(f"integer class labels expected, got dtype {target.dtype}")
        if on_host and target.size and (target.min() < 0 or target.max() >= num_classes):
            raise ValueError(
                f"labels must lie in [0, {num_classes}), got min {int(target.min())}, max {int(target.max())}"
            )
        labels = xp.asarray(target)[:, None]  # (B, 1)
        q = (labels == xp.arange(num_classes)).astype(dtype)  # one-hot rows (B, K)
        if not on_host:
            q = xp.where((labels >= 0) & (labels < num_classes), q, xp.nan).astype(dtype, copy=False)
    elif target.ndim == 2 and target.shape[1] == num_classes:
        q = xp.asarray(target).astype(dtype, copy=True)
    else:
        raise ValueError(
            f"target must be labels (B,) or a distribution (B, {num_classes}), got shape {tuple(target.shape)}"
        )
    if smoothing:
        q *= 1.0 - smoothing
        q += smoothing / num_classes
    return q


def cross_entropy_forward(logits: Array, target: Array, smoothing: float = 0.0) -> tuple[Array, CrossEntropyCache]:
    """Mean cross-entropy of ``logits`` (B, K) against labels (B,) or soft targets (B, K).

    The loss is a 0-d array where the logits are; the targets may be on the host (see
    :func:`target_distribution`).
    """
    xp = array_module(logits)
    B, K = logits.shape
    q = target_distribution(target, K, smoothing, logits.dtype, xp)
    shifted = logits - logits.max(axis=1, keepdims=True)  # stable: the largest logit is 0
    log_norm = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_norm  # (B, K)
    loss = -(q * log_probs).sum() / B
    return loss, CrossEntropyCache(xp.exp(log_probs), q)


def cross_entropy_backward(cache: CrossEntropyCache, dloss: float = 1.0) -> Array:
    """dloss/dlogits = (softmax(z) - q) / B, scaled by the upstream ``dloss``."""
    probs, q = cache
    return (probs - q) * (dloss / probs.shape[0])
