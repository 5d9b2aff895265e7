"""Lesson 5, exercise: the training loss and its gradient, in one function.

    cross_entropy(logits, labels, smoothing=0.0) -> (loss, dlogits)

logits (B, K), labels (B,) integers.  The target of each image is q = (1 - ε) one_hot + ε/K;
the loss is the mean over the batch of -Σ_k q_k log softmax(z)_k, and dlogits its gradient,
(softmax(z) - q) / B.  It must stay finite for logits in the thousands.
Use NumPy only (not minimlp.loss).

    python lessons/run.py 05 --exercise [this file]
"""

import numpy as np


def cross_entropy(logits: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> tuple:
    raise NotImplementedError  # your code here
