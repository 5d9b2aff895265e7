"""Lesson 3, exercise: the derivative of GELU's tanh approximation.

    gelu_tanh(x) = x/2 · (1 + tanh(u)),   u = sqrt(2/π) · (x + 0.044715 x³)

Write its backward, gelu_tanh_backward(dy, x) = dy · d gelu_tanh / dx, elementwise.  (The
product rule, and tanh' = 1 - tanh².)  The checker compares it with central differences
of gelu_tanh, for x from -8 to 8.

    python lessons/run.py 03 --exercise [this file]
"""

import numpy as np

K = np.sqrt(2.0 / np.pi)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(K * (x + 0.044715 * x**3)))


def gelu_tanh_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    t = np.tanh(K * (x + 0.044715 * x**3))
    du_dx = K * (1.0 + 3 * 0.044715 * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)
