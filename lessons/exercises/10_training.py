"""Lesson 10, exercise: one optimizer step from a batch too large to run at once.

Cut the batch into `parts` pieces (numpy.array_split: the sizes may differ), run the
forward and backward of each piece in turn, accumulating their gradients in the model's
buffer, and take one optimizer step.  It must give the same parameters as one step on the
whole batch, so weight each piece by its share of the batch (the loss is a mean), and
return the whole batch's mean loss.

    accumulated_step(model, optimizer, x, labels, lr, parts, smoothing=0.1) -> loss

x: float images (B, C, H, W), already normalised; labels (B,).  Use model.forward(x,
train=True), minimlp.loss.cross_entropy_forward / cross_entropy_backward, model.zero_grad,
model.backward(..., input_grad=False) and optimizer.step(lr).

    python lessons/run.py 10 --exercise [this file]
"""

import numpy as np

from minimlp.loss import cross_entropy_backward, cross_entropy_forward


def accumulated_step(model, optimizer, x, labels, lr, parts, smoothing=0.1):
    raise NotImplementedError  # your code here
