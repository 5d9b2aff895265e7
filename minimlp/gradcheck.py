"""Gradient checking: compare a hand-written backward with finite differences.  Lesson 8.

The central difference (f(x + h) - f(x - h)) / 2h has error O(h²); in float64 with
h ≈ 1e-6 it agrees with a correct analytic gradient to about 1e-9 relative, while any
mistake in a backward pass shows up as an error near 1.  Always check in float64, with a
random upstream gradient and non-trivial parameters, and keep random masks fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from minimlp.backend import Array, array_module, to_numpy


def numerical_gradient(f: Callable[[], float], x: Array, h: float = 1e-6) -> np.ndarray:
    """df/dx by central differences, perturbing ``x`` in place one element at a time.

    ``f`` takes no arguments and must read ``x`` (for a parameter, the model's own
    array).  ``x`` is restored exactly after each element.
    """
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous so that it can be perturbed in place")
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view: writes reach x
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i].item()
        flat[i] = old + h
        f_plus = float(f())
        flat[i] = old - h
        f_minus = float(f())
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2.0 * h)
    return grad


def rel_error(a: Array, b: Array, floor: float = 0.0) -> float:
    """Largest difference, relative to the largest entry of either array (symmetric).

    0 for identical arrays, about 1 for unrelated ones.  ``floor`` bounds the scale from
    below, for arrays whose true value is zero and whose finite differences are noise.
    """
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), floor)
    if scale == 0.0:
        return 0.0
    return float(np.abs(a - b).max() / scale)


def check_model_gradients(
    model: Any, x: Array, dlogits: Array, h: float = 1e-6, names: list[str] | None = None
) -> dict[str, float]:
    """Relative error of every parameter gradient, and of the input gradient ("input").

    The scalar checked is sum(logits * dlogits), whose gradient w.r.t. the logits is
    ``dlogits``, so any random upstream gradient can be used.  The model's generator is
    reseeded before every forward, so dropout and drop-path masks stay fixed.

    Some gradients are exactly zero by construction (without dropout, the last block's
    patch-FF output bias only shifts the class token along all features, which the final
    LayerNorm removes; with dropout after fc2 the shift is no longer constant and the
    gradient is real); their finite differences are rounding noise.  Each tensor's error is
    therefore measured against at least 1e-3 of the largest gradient in the model.
    """
    xp = array_module(model.store.flat_params)
    x = xp.asarray(x, dtype=model.dtype).copy()
    dlogits = xp.asarray(dlogits, dtype=model.dtype)

    def run(train: bool = True):
        model.seed(1234)
        return model.forward(x, train=train)

    def f() -> float:
        return float((run()[0] * dlogits).sum())

    model.zero_grad()
    logits, cache = run()
    dx = model.backward(dlogits, cache)
    pairs = {
        name: (model.grads[name], numerical_gradient(f, model.params[name], h))
        for name in (names if names is not None else list(model.params))
    }
    pairs["input"] = (dx, numerical_gradient(f, x, h))
    scale = max(float(np.abs(to_numpy(a)).max(initial=0.0)) for a, _ in pairs.values())
    return {name: rel_error(a, n, floor=1e-3 * scale) for name, (a, n) in pairs.items()}
