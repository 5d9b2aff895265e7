"""Benchmarks.  ``python -m minimlp.bench`` (:mod:`~minimlp.bench.command`) times a model's training step
against the machine and PyTorch eager:

* :mod:`~minimlp.bench.flops`: the matrix-product FLOPs of a model;
* :mod:`~minimlp.bench.runners`: the contenders, their clocks and matmul peaks, the timed rounds;
* :mod:`~minimlp.bench.torch_baseline`: the same architecture in PyTorch, with minimlp's weights;
* :mod:`~minimlp.bench.report`: the table, and the summary of several runs;
* :mod:`~minimlp.bench.loaders`: ``python -m minimlp.bench.loaders``, the data loader's images per second;
* :mod:`~minimlp.bench.gpu_check`: ``make gpu-check``, a first GPU run in one go.
"""

from minimlp.bench.command import main, parse_args, run
from minimlp.bench.flops import count_flops, ffvit_flops
from minimlp.bench.report import format_summary, format_table, summarise_runs
from minimlp.bench.runners import MinimlpRunner, TorchRunner, sgd_update, summarise, timed_rounds

__all__ = [
    "main",
    "parse_args",
    "run",
    "count_flops",
    "ffvit_flops",
    "format_table",
    "format_summary",
    "summarise_runs",
    "MinimlpRunner",
    "TorchRunner",
    "sgd_update",
    "summarise",
    "timed_rounds",
]
