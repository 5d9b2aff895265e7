"""Lesson 8, exercise: the two tools of every gradient check.

    numerical_gradient(f, x, h=1e-6) -> df/dx, an array shaped like x
        f takes no arguments and reads x; nudge x in place one entry at a time, take the
        central difference (f(x + h) - f(x - h)) / 2h, and put every entry back exactly.
    rel_error(a, b) -> float
        the largest |a - b| over the largest |entry| of either array; 0 when both are 0.

Use NumPy only (not minimlp.gradcheck, which the checker compares with).

    python lessons/run.py 08 --exercise [this file]
"""

import numpy as np


def numerical_gradient(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    raise NotImplementedError  # your code here


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    raise NotImplementedError  # your code here
