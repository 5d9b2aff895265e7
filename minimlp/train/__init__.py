"""Train a model: ``python -m minimlp.train`` (:mod:`minimlp.train.command`)."""

from minimlp.train.command import *  # noqa: F403
from minimlp.train.command import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, StepTotals, main, run  # noqa: F401
