"""Mixed precision: float16 compute, float32 master weights, dynamic loss scaling.

On a GPU, float16 matrix products run on tensor cores at several times the float32
rate and halve the memory traffic of every activation.  Training in float16 alone loses
small gradients (they underflow) and small updates (they round away), so, as PyTorch's
``autocast`` + ``GradScaler`` do:

* the model whose weights the optimizer updates stays float32 (the *master*); a float16
  copy of it, refreshed from the master before every step, does forward and backward;
* the loss is multiplied by a large scale before backward, so the float16 gradients
  stay representable, and the gradients are divided by it again in float32;
* if any gradient came out inf or NaN the step is skipped and the scale halved; after
  ``growth_interval`` good steps in a row it is doubled again.  Deciding that reads one
  value back from the GPU each step (as PyTorch's ``GradScaler.step`` does).

The loss itself is computed in float32 from the float16 logits.  The same code runs on
NumPy (slowly: NumPy has no fast float16 matrix product), which is how the tests check
it against float32 on a machine without a GPU.  Lesson 11's appendix (11a) discusses
the numbers.
"""

from __future__ import annotations

import numpy as np

from minimlp.backend import Array, to_numpy
from minimlp.kernels import cross_entropy_backward, cross_entropy_forward
from minimlp.models import Model, model_from_config


class LossScaler:
    """The dynamic loss scale: halve it on overflow, double it after a run of good steps."""

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self.good_steps = 0
        self.skipped = 0  # steps skipped for overflow, over the scaler's life

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped += 1
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
        self.skipped = int(state.get("skipped", 0))


class MixedPrecision:
    """Forward and backward of a float32 ``model`` in float16, with loss scaling.

    ``forward_backward(x, target)`` adds the float32 gradients of the mean loss into the
    master model's ``grads`` (unless the step overflowed) and returns ``(loss, ok)``;
    the caller's optimizer then steps the master model if ``ok``.  ``train_step`` does the
    same and also returns the float16 logits.
    """

    def __init__(self, model: Model, scaler: LossScaler | None = None) -> None:
        if model.dtype.name != "float32":
            raise ValueError(f"the master model must be float32, got {model.dtype.name}")
        self.master = model
        config = {**model.config_dict(), "dtype": "float16"}
        self.half = model_from_config(config, device="gpu" if model.backend.is_gpu else "cpu")
        self.half.rng = model.rng  # dropout draws from the master's generator
        self.scaler = scaler or LossScaler()

    def forward_backward(self, x: Array, target: Array, smoothing: float = 0.0) -> tuple[Array, bool]:
        loss, _, ok = self.train_step(x, target, smoothing)
        return loss, ok

    def train_step(self, x: Array, target: Array, smoothing: float = 0.0) -> tuple[Array, Array, bool]:
        """(loss (a float32 scalar on the device), logits (B, K) float16, ok): see the class."""
        half, xp = self.half, self.half.xp
        half.store.flat_params[...] = self.master.store.flat_params  # float32 -> float16 copy
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is expected now and then: see below
            logits, cache = half.forward(x, train=True)  # float16 (B, K)
            loss, loss_cache = cross_entropy_forward(logits.astype(xp.float32), target, smoothing)
            dlogits = cross_entropy_backward(loss_cache, dloss=self.scaler.scale)
            half.zero_grad()
            half.backward(dlogits, cache, input_grad=False)  # float16 gradients of scale * loss
        grads = half.store.flat_grads
        ok = bool(to_numpy(xp.isfinite(grads).all()))  # the step's one wait for the GPU
        if ok:
            master = self.master.store.flat_grads
            master += grads.astype(xp.float32) * (1.0 / self.scaler.scale)
        self.scaler.update(found_inf=not ok)
        return loss, logits, ok
