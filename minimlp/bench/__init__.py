"""Benchmarks: ``python -m minimlp.bench`` (:mod:`minimlp.bench.command`)."""

from minimlp.bench.command import *  # noqa: F403
