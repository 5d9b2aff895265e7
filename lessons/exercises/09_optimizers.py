"""Lesson 9, exercise: Adam with coupled (L2) weight decay, what torch.optim.Adam does.

Write one step in place, in the form of the lesson's adamw_update:

    adam_l2_update(theta, g, state, t, lr, num_decay, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

theta: the flat parameters, updated in place; g: their gradient (leave it unchanged);
state: a dict for m and v (empty at the first step); t: the step number, from 1.  Only
theta[:num_decay] takes decay, and here it enters the gradient: g + λθ, before the moments.

    python lessons/run.py 09 --exercise [this file]
"""

import numpy as np


def adam_l2_update(theta, g, state, t, lr, num_decay, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    raise NotImplementedError  # your code here
