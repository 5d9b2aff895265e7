"""The paper's comparison, run for yourself: the feed-forward-only model against attention
(ViT/DeiT) and the MLP-Mixer, at matched parameter counts, on the same data with the same
budget.  The appendix to lesson 13 (13a) reads its results.

    python -m minimlp.compare --output runs/compare --epochs 10 -b 128
    python -m minimlp.compare --output runs/compare --no-train      # redo table and plot

A thin driver: for each model it calls the trainer, ``minimlp.train.main``, with every
option compare does not know passed through unchanged, plus ``--model NAME --output
OUTPUT/NAME``.  So all models get the same data, epochs, batch size, learning rate and
seed.  It then reads each run's ``metrics.jsonl`` (one JSON object per epoch: epoch,
train_loss, eval_loss, eval_top1, eval_top5, lr, img_per_s, elapsed_s) and writes

    OUTPUT/comparison.md     a Markdown table: parameters, accuracy, images/s, wall time
    OUTPUT/comparison.json   the same numbers, and every run's per-epoch metrics
    OUTPUT/comparison.png    top-1 against epochs and against wall-clock time

The default models are the Fashion-MNIST presets sized to about the same number of
parameters (``ff_fmnist`` 924,158; ``vit_fmnist`` 920,874; ``mixer_fmnist`` 939,792);
``attn_only_fmnist`` (931,874), the paper's attention-only ablation, can be added with
``--models``.  Options that change a model's size (``--embed-dim``, ``--depth``) would
apply to every model alike and undo the matching, so leave them out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minimlp.io.files import atomic_write
from minimlp.models import FFViTConfig, MixerConfig, create_model, model_config
from minimlp.train.plot import Panel, Series, line_chart
from minimlp.train.state import read_metrics

DEFAULT_MODELS = ("ff_fmnist", "vit_fmnist", "mixer_fmnist")
# Trainer options that change the model; read so that the parameter counts in the table
# are those of the models actually trained.
MODEL_OPTIONS = {
    "--img-size": int,
    "--patch-size": int,
    "--in-chans": int,
    "--num-classes": int,
    "--embed-dim": int,
    "--depth": int,
    "--num-heads": int,
    "--mlp-ratio": float,
}


def family(name: str) -> str:
    """A readable family name for preset ``name``."""
    config = model_config(name)
    if isinstance(config, FFViTConfig):
        return "feed-forward only"
    if isinstance(config, MixerConfig):
        return "MLP-Mixer"
    return "attention only (ablation)" if config.feature_mixer == "attention" else "attention (ViT/DeiT)"


def count_params(name: str, overrides: dict[str, Any] | None = None) -> int:
    """Parameters of preset ``name`` built with those ``overrides`` that apply to its family."""
    fields = {f.name for f in dataclasses.fields(model_config(name))}
    return create_model(name, **{k: v for k, v in (overrides or {}).items() if k in fields}).num_params()


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m minimlp.compare",
        allow_abbrev=False,
        description="Train the FF-only, attention and Mixer models on the same data and budget, then "
        "tabulate and plot them. Options not listed here go unchanged to python -m minimlp.train.",
    )
    parser.add_argument("--output", default="runs/compare", help="directory for the runs, table and plot")
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated presets to compare (default: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--no-train",
        action="store_true",
        help="do not train: make the table and plot from the runs already in --output",
    )
    args, train_argv = parser.parse_known_args(argv)
    if any(a == "--model" or a.startswith("--model=") for a in train_argv):
        parser.error("--model is set for each run by compare; choose the models with --models")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models:
        parser.error("--models is empty")
    for name in args.models:
        try:
            model_config(name)
        except ValueError as err:
            parser.error(str(err))
    return args, train_argv


def model_overrides(train_argv: Sequence[str]) -> dict[str, Any]:
    """The model options among the pass-through arguments, as create_model keywords."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, kind in MODEL_OPTIONS.items():
        parser.add_argument(flag, type=kind)
    known, _ = parser.parse_known_args(list(train_argv))
    return {k: v for k, v in vars(known).items() if v is not None}


def train_all(
    models: Sequence[str], output: Path, train_argv: Sequence[str], train_main: Callable[[list[str]], Any] | None = None
) -> None:
    """Train each model with the same arguments and its own output directory."""
    if train_main is None:
        from minimlp.train import main as train_main
    for i, name in enumerate(models, 1):
        run_dir = output / name
        print(f"[compare] {i}/{len(models)}: training {name} into {run_dir}", flush=True)
        status = train_main([*train_argv, "--model", name, "--output", str(run_dir)])
        if isinstance(status, int) and status != 0:
            raise SystemExit(
                f"training {name} failed with exit status {status}; the runs finished before it are kept in {output}"
            )


def run_metrics(path: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a run's metrics.jsonl (read as the trainer reads it), with clear errors."""
    if not path.is_file():
        raise FileNotFoundError(f"no metrics at {path}: train the model first (or drop --no-train)")
    rows = read_metrics(path, required=("eval_top1", "elapsed_s"))
    if not rows:
        raise ValueError(f"{path} holds no epochs yet: the run stopped before its first evaluation")
    return rows


def _percent(values: list[float]) -> list[float]:
    """Accuracies as percentages (a trainer reporting fractions in [0, 1] is scaled)."""
    return [100.0 * v for v in values] if values and max(values) <= 1.0 else values


def summarize(name: str, rows: list[dict[str, Any]], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One table row for a run."""
    top1 = _percent([float(r["eval_top1"]) for r in rows])
    top5 = _percent([float(r["eval_top5"]) for r in rows if r.get("eval_top5") is not None])
    speeds = [float(r["img_per_s"]) for r in rows if r.get("img_per_s") is not None]
    last = rows[-1]
    return {
        "model": name,
        "family": family(name),
        "params": count_params(name, overrides),
        "epochs": int(last["epoch"]),
        "best_top1": max(top1),
        "final_top1": top1[-1],
        "final_top5": top5[-1] if top5 else None,
        "final_eval_loss": last.get("eval_loss"),
        "img_per_s": statistics.median(speeds) if speeds else None,
        "wall_s": float(last["elapsed_s"]),
    }


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| model | family | params | epochs | best top-1 (%) | final top-1 (%) | final top-5 (%) "
        "| eval loss | images/s (median) | wall time (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        cells = [
            f"`{s['model']}`",
            s["family"],
            f"{s['params']:,}",
            str(s["epochs"]),
            _fmt(s["best_top1"], ".2f"),
            _fmt(s["final_top1"], ".2f"),
            _fmt(s["final_top5"], ".2f"),
            _fmt(s["final_eval_loss"], ".4f"),
            _fmt(s["img_per_s"], ",.0f"),
            _fmt(s["wall_s"], ",.0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_runs(runs: dict[str, list[dict[str, Any]]], summaries: Sequence[dict[str, Any]], path: Path) -> str:
    by_epoch, by_time = [], []
    for s in summaries:
        rows = runs[s["model"]]
        label = f"{s['model']} ({s['params'] / 1e6:.2f}M)"
        top1 = _percent([float(r["eval_top1"]) for r in rows])
        by_epoch.append(Series(label, [float(r["epoch"]) for r in rows], top1))
        by_time.append(Series(label, [float(r["elapsed_s"]) for r in rows], top1))
    return line_chart(
        [
            Panel("eval top-1 against epochs", "epoch", "top-1 (%)", by_epoch),
            Panel("eval top-1 against wall-clock time", "seconds", "top-1 (%)", by_time, x_from_zero=True),
        ],
        path,
    )


def _write_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def machine() -> dict[str, Any]:
    """Where the table was made (the runs' own logs say which backend each trainer used)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def report(
    models: Sequence[str], output: Path, overrides: dict[str, Any] | None = None, train_argv: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Read every run and write comparison.md, comparison.json and comparison.png."""
    runs = {name: run_metrics(output / name / "metrics.jsonl") for name in models}
    summaries = [summarize(name, runs[name], overrides) for name in models]
    host = machine()
    options = " ".join(train_argv) or "(the trainer's defaults)"
    table = (
        markdown_table(summaries) + f"\nTrainer options, the same for every model: `{options}`.  "
        f"Made on {host['platform']}, {host['cpu_count']} CPUs, NumPy {host['numpy']}.\n"
    )
    _write_atomic(output / "comparison.md", table)
    _write_atomic(
        output / "comparison.json",
        json.dumps({"models": summaries, "trainer_options": list(train_argv), "machine": host, "runs": runs}, indent=2)
        + "\n",
    )
    plot_runs(runs, summaries, output / "comparison.png")
    return summaries


def main(argv: Sequence[str] | None = None, train_main: Callable[[list[str]], Any] | None = None) -> int:
    args, train_argv = parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    if not args.no_train:
        train_all(args.models, output, train_argv, train_main)
    report(args.models, output, model_overrides(train_argv), train_argv)
    sys.stdout.write((output / "comparison.md").read_text(encoding="utf-8"))
    print(f"[compare] wrote {output / 'comparison.md'}, {output / 'comparison.json'}, {output / 'comparison.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
