"""Train a model: ``python -m minimlp.train``.  Lesson 10 walks through this loop.

With no arguments it trains the Fashion-MNIST recipe below on the CPU and writes a run
directory under ``runs/``.  The same command trains on ImageNet-style folders on a GPU:

    python -m minimlp.train                                   # Fashion-MNIST, a few minutes
    python -m minimlp.train --gpu --data-dir /data/imagenet --model ff_tiny -b 256 --epochs 300
    python -m minimlp.train --resume runs/20250101-120000-ff_fmnist   # continue a run exactly
    mpirun -n 8 python -m minimlp.train --gpu --data-dir /data/imagenet -b 1024   # 8 GPUs: minimlp/parallel/ddp.py

One step: uint8 batch -> device -> normalise -> forward -> cross-entropy (label smoothing)
-> backward -> clip the gradient norm -> optimizer step at the scheduled learning rate.
After every epoch the model is evaluated and the run directory gets ``last.npz`` (which
also holds the metrics so far), ``best.npz`` when top-1 improved (a copy of it), a line more
in ``metrics.jsonl`` and ``curves.png``, in that order: a resume rebuilds whatever a kill
left behind from ``last.npz``.

Everything random is a function of ``--seed``: the initial weights, each epoch's order
(``epoch`` mixed into the seed), its augmentation, and the dropout masks (whose generator
state is saved).  A run resumed from an epoch boundary therefore continues bit for bit as
if it had never stopped; one resumed from a Ctrl-C in mid-epoch continues with the same
order of images, with fresh augmentation draws for the rest of that epoch.

The package, in reading order: :mod:`~minimlp.train.args` (the command line and its defaults),
:mod:`~minimlp.train.data` (datasets, each epoch's order, the device augmentations),
:mod:`~minimlp.train.command` (:func:`run`: everything built from the arguments; :func:`main`: errors
as one line and an exit status), :mod:`~minimlp.train.loop` (the epochs),
:mod:`~minimlp.train.state` (the run's state, its directory, metrics and checkpoints), and the
console (:mod:`~minimlp.train.progress`) and chart (:mod:`~minimlp.train.plot`) it writes.
"""

from minimlp.parallel.sharding import seed_for
from minimlp.train.args import build_parser, parse_args
from minimlp.train.command import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main, run
from minimlp.train.data import epoch_order, fixed_subset
from minimlp.train.loop import StepTotals, prefetch
from minimlp.train.state import Diverged, RunDirError, RunResult, RunState, TrainingError, read_metrics

__all__ = [
    "run",
    "main",
    "parse_args",
    "build_parser",
    "seed_for",
    "fixed_subset",
    "epoch_order",
    "prefetch",
    "StepTotals",
    "RunState",
    "RunResult",
    "TrainingError",
    "Diverged",
    "RunDirError",
    "read_metrics",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
]
