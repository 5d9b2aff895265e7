"""Optimizers, gradient clipping and learning-rate schedules, over the flat buffers.  Lesson 9.

Every parameter of a model is a view into one flat buffer (``store.flat_params``) and every
gradient a view into a second (``store.flat_grads``), with the parameters that take weight
decay first: ``flat[:num_decay]`` decays, ``flat[num_decay:]`` (1-D parameters and the class
token, as in DeiT) does not.  An optimizer step is therefore a handful of vectorised,
in-place passes over whole buffers -- no loop over tensors -- and its state (momentum,
Adam's moments) is a few flat arrays of the same size, easy to checkpoint.

SGD, in PyTorch's form (weight decay is L2, added to the gradient):

    g   = grad + wd * p                 (decay group only)
    buf = momentum * buf + g            (buf starts at zero, so the first buf is g)
    d   = g + momentum * buf  if nesterov  else  buf
    p  -= lr * d

AdamW (Loshchilov & Hutter; DeiT's optimizer), with decoupled weight decay and bias
correction, as ``torch.optim.AdamW``:

    p  *= 1 - lr * wd                   (decay group only)
    m   = b1 m + (1 - b1) g ;   v = b2 v + (1 - b2) g²
    p  -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

Schedules map a (fractional) epoch to a learning rate: linear warmup from ``warmup_lr``,
then cosine to ``min_lr``, a step decay, or a constant.  The trainer evaluates them at
``step / steps_per_epoch``, so the rate changes smoothly every step instead of jumping once
per epoch as in DeiT; for long runs the two are indistinguishable, for a ten-epoch run the
smooth version is the better one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minimlp.backend import Array, array_module, to_numpy

__all__ = ["Optimizer", "SGD", "AdamW", "create_optimizer", "clip_grad_norm", "LRSchedule", "scale_lr"]


class Optimizer:
    """The shared part: the flat buffers, the decay split, the step count, the state.

    ``params`` and ``grads`` are the model's flat buffers (``model.store.flat_params`` /
    ``flat_grads``); ``num_decay`` elements at the front take weight decay.  ``step(lr)``
    updates ``params`` in place, so every parameter view the layers hold sees the change.
    """

    name = "optimizer"
    state_names: tuple[str, ...] = ()

    def __init__(self, params: Array, grads: Array, num_decay: int, lr: float, weight_decay: float = 0.0) -> None:
        if params.shape != grads.shape or params.ndim != 1:
            raise ValueError(
                f"params and grads must be flat buffers of one shape, got {params.shape} and {grads.shape}"
            )
        if not 0 <= num_decay <= params.size:
            raise ValueError(f"num_decay must lie in [0, {params.size}], got {num_decay}")
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be non-negative, got {lr} and {weight_decay}")
        self.params, self.grads, self.num_decay = params, grads, int(num_decay)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.steps = 0  # optimizer steps taken (Adam's t)
        xp = array_module(params)
        self.state: dict[str, Array] = {name: xp.zeros_like(params) for name in self.state_names}

    @classmethod
    def for_model(cls, model: Any, **hyperparameters: Any) -> Optimizer:
        store = model.store
        return cls(store.flat_params, store.flat_grads, store.num_decay, **hyperparameters)

    def step(self, lr: float | None = None) -> None:
        """One update with learning rate ``lr`` (default: the constructor's)."""
        if lr is not None:
            self.lr = float(lr)
        self.steps += 1
        self._update(self.lr)

    def _update(self, lr: float) -> None:
        raise NotImplementedError

    # -- checkpointing -----------------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of the flat state arrays, by name."""
        return {name: to_numpy(a).copy() for name, a in self.state.items()}

    def load_state_dict(self, state: dict[str, Any], steps: int) -> None:
        """Restore the flat state arrays (names and sizes must match) and the step count."""
        missing = [n for n in self.state_names if n not in state]
        unexpected = [n for n in state if n not in self.state_names]
        if missing or unexpected:
            raise ValueError(f"{self.name} state does not match: missing {missing}, unexpected {unexpected}")
        for name, value in state.items():
            if tuple(np.shape(value)) != tuple(self.state[name].shape):
                raise ValueError(
                    f"{self.name} state {name!r} has shape {np.shape(value)}, "
                    f"the model needs {tuple(self.state[name].shape)}"
                )
            xp = array_module(self.state[name])
            self.state[name][...] = xp.asarray(value, dtype=self.state[name].dtype)
        self.steps = int(steps)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (PyTorch's form) and optional Nesterov."""

    name = "sgd"
    state_names = ("momentum_buffer",)

    def __init__(
        self,
        params: Array,
        grads: Array,
        num_decay: int,
        lr: float,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        super().__init__(params, grads, num_decay, lr, weight_decay)

    def _update(self, lr: float) -> None:
        p, buf, n = self.params, self.state["momentum_buffer"], self.num_decay
        g = self.grads.copy()  # the model's gradients stay untouched
        if self.weight_decay:
            g[:n] += self.weight_decay * p[:n]  # L2: decay enters through the gradient
        if self.momentum:
            buf *= self.momentum
            buf += g
            if self.nesterov:
                g += self.momentum * buf  # look ahead along the new velocity
            else:
                g = buf
        p -= lr * g

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "momentum": self.momentum, "nesterov": self.nesterov}


class AdamW(Optimizer):
    """Adam with decoupled weight decay and bias correction (DeiT: betas 0.9/0.999, eps 1e-8)."""

    name = "adamw"
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Array,
        grads: Array,
        num_decay: int,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.05,
    ) -> None:
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or eps <= 0:
            raise ValueError(f"betas must lie in [0, 1) and eps be positive, got {betas}, {eps}")
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)
        super().__init__(params, grads, num_decay, lr, weight_decay)

    def _update(self, lr: float) -> None:
        xp = array_module(self.params)
        p, g, n = self.params, self.grads, self.num_decay
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        b1, b2 = self.betas
        if self.weight_decay:
            p[:n] *= 1.0 - lr * self.weight_decay  # decoupled: shrink the weights, not the gradient
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        bias1 = 1.0 - b1**self.steps  # the moments start at zero: undo that bias
        bias2 = 1.0 - b2**self.steps
        denom = xp.sqrt(v)
        denom *= 1.0 / math.sqrt(bias2)
        denom += self.eps
        p -= (lr / bias1) * (m / denom)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps}


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adamw": AdamW}


def create_optimizer(name: str, model: Any, **hyperparameters: Any) -> Optimizer:
    """``create_optimizer("adamw", model, lr=5e-4, weight_decay=0.05)`` over the model's flat buffers."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name].for_model(model, **hyperparameters)


def clip_grad_norm(grads: Array, max_norm: float) -> Array:
    """Scale the flat gradient so that its global L2 norm is at most ``max_norm`` (0: only measure).

    Returns the norm before clipping, as a scalar where the gradient is: on a GPU, reading it
    (``float(norm)``) would make the host wait for the GPU, so the factor min(1, max_norm / norm)
    is computed and applied there too (1e-6 guards a zero norm, as in
    ``torch.nn.utils.clip_grad_norm_``).  Scaling by exactly 1 leaves an unclipped gradient as it was.
    """
    xp = array_module(grads)
    norm = xp.sqrt(xp.dot(grads, grads))
    if max_norm > 0:
        factor = xp.minimum(1.0, max_norm / (norm.astype(xp.float64) + 1e-6))  # float64, as a Python float
        grads *= factor.astype(grads.dtype)
    return norm


def scale_lr(lr: float, batch_size: int) -> float:
    """DeiT's linear scaling rule: the learning rate is given for a batch of 512."""
    return lr * batch_size / 512.0


class LRSchedule:
    """Learning rate as a function of the (fractional) epoch.

    Linear warmup from ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then

    * ``cosine``:   min_lr + (lr - min_lr) (1 + cos(pi s)) / 2, s going 0 -> 1 over the
      remaining epochs, so the last step lands on ``min_lr``;
    * ``step``:     lr * decay_rate ** floor(epoch / decay_epochs);
    * ``constant``: lr.
    """

    KINDS = ("cosine", "step", "constant")

    def __init__(
        self,
        kind: str,
        lr: float,
        epochs: float,
        warmup_epochs: float = 0.0,
        warmup_lr: float = 1e-6,
        min_lr: float = 1e-5,
        decay_epochs: float = 30.0,
        decay_rate: float = 0.1,
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(self.KINDS)}")
        if epochs <= 0 or warmup_epochs < 0 or decay_epochs <= 0:
            raise ValueError(
                f"epochs and decay_epochs must be positive and warmup_epochs non-negative, "
                f"got {epochs}, {decay_epochs}, {warmup_epochs}"
            )
        self.kind, self.lr, self.epochs = kind, float(lr), float(epochs)
        self.warmup_epochs, self.warmup_lr, self.min_lr = float(warmup_epochs), float(warmup_lr), float(min_lr)
        self.decay_epochs, self.decay_rate = float(decay_epochs), float(decay_rate)

    def __call__(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_lr + (self.lr - self.warmup_lr) * epoch / self.warmup_epochs
        if self.kind == "cosine":
            span = self.epochs - self.warmup_epochs
            s = min(1.0, (epoch - self.warmup_epochs) / span) if span > 0 else 1.0
            return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * s))
        if self.kind == "step":
            return self.lr * self.decay_rate ** math.floor(epoch / self.decay_epochs)
        return self.lr

    def config(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("kind", "lr", "epochs", "warmup_epochs", "warmup_lr", "min_lr", "decay_epochs", "decay_rate")
        }
