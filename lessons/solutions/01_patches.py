"""Lesson 1, exercise: cut images into patches, and put them back, without a Python loop.

`patchify_loop` in the lesson visits the patches one by one.  Write the same rearrangement
with one reshape, one transpose and one more reshape:

    patchify(x, P):   x (B, C, H, W) -> (N, B, C*P*P), patches numbered row by row
                      (n = i * W/P + j), each flattened in (C, P, P) order
    unpatchify(patches, image_shape, P): the inverse, (N, B, C*P*P) -> (B, C, H, W)

unpatchify is also patchify's backward: every pixel sits in exactly one patch, so the
gradient of a patch entry goes back to that one pixel.  H and W need not be equal.
Use NumPy only (not minimlp.functional.patchify, which the checker compares with).

    python lessons/run.py 01 --exercise [this file]
"""

import numpy as np


def patchify(x: np.ndarray, P: int) -> np.ndarray:
    B, C, H, W = x.shape
    grid = x.reshape(B, C, H // P, P, W // P, P)  # (B, C, Hp, P, Wp, P): split rows and columns
    grid = grid.transpose(2, 4, 0, 1, 3, 5)  # (Hp, Wp, B, C, P, P): patch position first
    return grid.reshape((H // P) * (W // P), B, C * P * P)


def unpatchify(patches: np.ndarray, image_shape: tuple, P: int) -> np.ndarray:
    B, C, H, W = image_shape
    grid = patches.reshape(H // P, W // P, B, C, P, P)  # (Hp, Wp, B, C, P, P)
    grid = grid.transpose(2, 3, 0, 4, 1, 5)  # (B, C, Hp, P, Wp, P): the inverse permutation
    return grid.reshape(B, C, H, W)
