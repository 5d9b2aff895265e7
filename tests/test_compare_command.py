"""The comparison command: the driver loop (against a stand-in trainer that keeps the
trainer's contract), reading metrics, the table, the plot, and its errors.  A run with the
real trainer is at the end; it skips where ``minimlp.train`` does not exist."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from minimlp import compare, train
from minimlp.train import TrainingError
from minimlp.train.plot import COLORS, nice_ticks

MODELS = ["ff_fmnist", "vit_fmnist", "mixer_fmnist"]


def write_metrics(run_dir, epochs, top1_start, fraction=False, seconds_per_epoch=10.0):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for e in range(1, epochs + 1):
            top1 = top1_start + 10 * (1 - 0.5**e)
            row = {
                "epoch": e,
                "train_loss": 1.0 / e,
                "eval_loss": 0.9 / e,
                "eval_top1": top1,
                "eval_top5": 99.0,
                "lr": 1e-3,
                "img_per_s": 1000.0 + e,
                "elapsed_s": seconds_per_epoch * e,
            }
            if fraction:
                row["eval_top1"], row["eval_top5"] = top1 / 100, 0.99
            f.write(json.dumps(row) + "\n")


class FakeTrainer:
    """Keeps the trainer's contract: main(argv) with --model and --output, writing
    OUTPUT/metrics.jsonl with one line per epoch."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv):
        self.calls.append(list(argv))
        model = argv[argv.index("--model") + 1]
        output = argv[argv.index("--output") + 1]
        epochs = int(argv[argv.index("--epochs") + 1])
        from pathlib import Path

        write_metrics(Path(output), epochs, 70.0 + MODELS.index(model), seconds_per_epoch=5.0 * (1 + len(model)))
        return 0


def test_same_arguments_for_every_model_then_table_json_and_plot(tmp_path, capsys):
    trainer = FakeTrainer()
    out = tmp_path / "cmp"
    assert compare.main(["--output", str(out), "--epochs", "3", "-b", "64", "--lr", "1e-3"], train_main=trainer) == 0
    assert [c[c.index("--model") + 1] for c in trainer.calls] == MODELS
    for call, name in zip(trainer.calls, MODELS, strict=True):
        assert call == ["--epochs", "3", "-b", "64", "--lr", "1e-3", "--model", name, "--output", str(out / name)]

    table = (out / "comparison.md").read_text()
    assert table in capsys.readouterr().out
    assert "| `ff_fmnist` | feed-forward only | 924,158 | 3 |" in table
    assert "| `vit_fmnist` | attention (ViT/DeiT) | 920,874 | 3 |" in table
    assert "| `mixer_fmnist` | MLP-Mixer | 939,792 | 3 |" in table

    data = json.loads((out / "comparison.json").read_text())
    summary = {s["model"]: s for s in data["models"]}
    assert math.isclose(summary["vit_fmnist"]["final_top1"], 71.0 + 10 * (1 - 0.125))
    assert summary["ff_fmnist"]["img_per_s"] == 1002.0 and summary["ff_fmnist"]["wall_s"] == 3 * 50.0
    assert len(data["runs"]["mixer_fmnist"]) == 3
    assert data["trainer_options"] == ["--epochs", "3", "-b", "64", "--lr", "1e-3"]
    assert "the same for every model: `--epochs 3 -b 64 --lr 1e-3`" in table and data["machine"]["cpu_count"] >= 1

    image = np.asarray(Image.open(out / "comparison.png").convert("RGB"))
    assert image.shape == (420, 2 * 560, 3)
    for color in COLORS[:3]:  # one line per model in each panel
        for panel in (image[:, :560], image[:, 560:]):
            assert (panel == color).all(axis=-1).sum() > 50


def test_no_train_rebuilds_from_existing_runs_and_reads_fractions(tmp_path):
    for i, name in enumerate(MODELS + ["attn_only_fmnist"]):
        write_metrics(tmp_path / name, 2, 60.0 + i, fraction=True)

    def must_not_train(argv):
        raise AssertionError("trained although --no-train was given")

    compare.main(
        ["--output", str(tmp_path), "--no-train", "--models", ",".join(MODELS + ["attn_only_fmnist"])],
        train_main=must_not_train,
    )
    summary = {s["model"]: s for s in json.loads((tmp_path / "comparison.json").read_text())["models"]}
    assert math.isclose(summary["ff_fmnist"]["best_top1"], 67.5)  # fractions become percentages
    assert summary["ff_fmnist"]["final_top5"] == 99.0
    assert summary["attn_only_fmnist"]["family"] == "attention only (ablation)"


def test_parameter_counts_follow_model_options_passed_to_the_trainer(tmp_path):
    for name in MODELS:
        write_metrics(tmp_path / name, 1, 50.0)
    compare.main(["--output", str(tmp_path), "--no-train", "--embed-dim", "16", "--num-heads", "2"])
    summary = {s["model"]: s for s in json.loads((tmp_path / "comparison.json").read_text())["models"]}
    assert summary["vit_fmnist"]["params"] == compare.create_model("vit_fmnist", embed_dim=16, num_heads=2).num_params()
    assert summary["ff_fmnist"]["params"] == compare.create_model("ff_fmnist", embed_dim=16).num_params()


def test_argument_errors(capsys):
    with pytest.raises(SystemExit):
        compare.main(["--model", "ff_fmnist"])
    assert "--model is set for each run by compare" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--models", "ff_fmnist,resnet50"])
    assert "unknown model 'resnet50'" in capsys.readouterr().err


def test_failed_training_stops_with_the_model_named(tmp_path):
    with pytest.raises(SystemExit, match="training vit_fmnist failed with exit status 2"):
        compare.main(["--output", str(tmp_path), "--models", "vit_fmnist"], train_main=lambda argv: 2)


def test_bad_metrics_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics at .*metrics.jsonl"):
        compare.run_metrics(tmp_path / "metrics.jsonl")
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "eval_top1": 50, "elapsed_s": 3}\n{"epoch": 2, "eval_\n{"epoch": 3}\n')
    with pytest.raises(TrainingError, match="line 2: not a JSON record"):
        compare.run_metrics(path)
    path.write_text('{"epoch": 1, "eval_top1": 50}\n')
    with pytest.raises(TrainingError, match="line 1: missing elapsed_s"):
        compare.run_metrics(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="no epochs yet"):
        compare.run_metrics(path)


def test_metrics_are_read_as_the_trainer_reads_them(tmp_path):
    """One reader for the trainer and the comparison: a last line a kill cut off is dropped."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "eval_top1": 50, "elapsed_s": 3}\n{"epoch": 2, "eval_')
    assert [row["epoch"] for row in compare.run_metrics(path)] == [1]
    assert compare.read_metrics is train.read_metrics


@settings(max_examples=50, deadline=None)
@given(lo=st.floats(-1e4, 1e4), width=st.floats(1e-3, 1e5))
def test_nice_ticks_cover_the_range_with_round_steps(lo, width):
    hi = lo + width
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0]
    assert ticks[0] <= lo + 1e-6 * step and ticks[-1] >= hi - 1e-6 * step  # to rounding
    assert 2 <= len(ticks) <= 12
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6


@pytest.mark.slow
def test_with_the_real_trainer(tmp_path):
    """One short epoch per model on a slice of Fashion-MNIST, through the real trainer.
    The sample-limiting options are the trainer's; if they change, change them here."""
    compare.main(
        [
            "--output",
            str(tmp_path),
            "--epochs",
            "1",
            "-b",
            "64",
            "--train-num-samples",
            "256",
            "--eval-num-samples",
            "128",
        ]
    )
    summary = json.loads((tmp_path / "comparison.json").read_text())["models"]
    assert [s["model"] for s in summary] == MODELS
    assert all(0 <= s["final_top1"] <= 100 and s["wall_s"] > 0 for s in summary)
    assert (tmp_path / "comparison.png").stat().st_size > 0
