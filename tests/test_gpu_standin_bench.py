"""The benchmark's GPU code path, on the CuPy stand-in: it runs, and it reports host syncs per step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minimlp import backend, bench
from minimlp.models import create_model

# ff_tiny at a small image size and depth: D = 192, so LayerNorm's mean takes CuPy's CUB path.
SMALL = [
    "--gpu",
    "--model",
    "ff_tiny",
    "--img-size",
    "32",
    "--patch-size",
    "8",
    "--depth",
    "2",
    "-b",
    "2",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--rounds",
    "2",
    "--peak-size",
    "64",
    "--profile-steps",
    "1",
]


@pytest.mark.parametrize("precision", [[], ["--tf32"], ["--dtype", "float16"]], ids=["float32", "tf32", "float16"])
def test_bench_gpu_path_runs_without_implicit_host_reads(fake_cupy, precision, tmp_path, capsys):
    """The strict stand-in raises on any implicit host read, so the figure counts every sync."""
    out = tmp_path / "bench.json"
    result = bench.main([*SMALL, *precision, "--out", str(out)])
    assert result["device"] == "gpu" and result["machine"]["gpu"] == fake_cupy.DEVICE_NAME
    assert result["tf32"] == ("--tf32" in precision)
    # None in float32; in float16 the one read that decides whether to skip an overflowing step.
    assert result["minimlp"]["host_syncs_per_step"] == (1 if "float16" in precision else 0)
    assert result["minimlp"]["memory"]["peak_mb"] > 0
    assert "host syncs per step" in capsys.readouterr().out
    assert json.loads(out.read_text())["minimlp"]["host_syncs_per_step"] == result["minimlp"]["host_syncs_per_step"]


@pytest.mark.torch
def test_bench_gpu_path_compares_with_torch_on_the_cpu(fake_cupy, capsys):
    pytest.importorskip("torch")
    result = bench.main([*SMALL, "--compare", "torch", "--compare-device", "cpu", "--json"])
    assert result["logits_max_abs_diff"] < 1e-4  # the stand-in computes in float32, as the CPU does
    assert len(result["ratio"]["train_per_round"]) == 2


def test_host_syncs_per_step_counts_every_read(fake_cupy, monkeypatch):
    """A step that reads one value back: minimlp's count and the stand-in's agree, 1 per step."""
    model = create_model("ff_tiny", device="gpu", img_size=32, patch_size=8, embed_dim=96, depth=1, num_classes=4)
    runner = bench.MinimlpRunner(model, 2, 1e-3, "float32")
    monkeypatch.setattr(runner, "step_in_process", lambda: backend.to_numpy(model.store.flat_params[:1]))
    ours, theirs = backend.host_syncs(), fake_cupy.host_syncs()
    result = bench.timed_rounds([runner], "train_step", 1, 3, 1)
    assert len(result["minimlp"][0]) == 3
    assert backend.host_syncs() - ours == fake_cupy.host_syncs() - theirs == 4


def test_summary_reports_syncs_memory_and_logit_difference(tmp_path, capsys):
    run = {
        "model": "ff_tiny",
        "batch_size": 128,
        "device": "gpu",
        "dtype": "float16",
        "tf32": False,
        "machine": {"gpu": "H200"},
        "threads": {"procs": 1},
        "matmul_peak_gflops": {"minimlp": 900e3},
        "minimlp": {
            "train": {"images_per_s": 5000.0, "gflops": 4e4, "fraction_of_peak": 0.05},
            "memory": {"peak_mb": 2048.0},
            "host_syncs_per_step": 0.0,
        },
        "torch": {"train": {"images_per_s": 4000.0, "fraction_of_peak": 0.04}, "memory": {"peak_mb": 3072.0}},
        "ratio": {"train": 1.25, "forward": 1.1, "train_per_round": [1.2, 1.3]},
        "logits_max_abs_diff": 3e-3,
    }
    (tmp_path / "bench-ff_tiny-float16.json").write_text(json.dumps(run))
    summary = bench.main(["--summary", str(tmp_path)])
    row = summary["runs"][0]
    assert row["host_syncs_per_step"] == 0.0 and row["logits_max_abs_diff"] == 3e-3
    assert row["minimlp_peak_mb"] == 2048.0 and row["torch_peak_mb"] == 3072.0
    table = capsys.readouterr().out
    assert "1.20 1.30" in table and "3.0e-03" in table and "2048" in table


def test_cpu_runs_report_no_host_syncs():
    """On the CPU nothing waits for a device; the figure is left out rather than shown as 0."""
    args = [
        "--model",
        "ff_fmnist",
        "--depth",
        "1",
        "--embed-dim",
        "16",
        "-b",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--rounds",
        "1",
        "--profile-steps",
        "0",
        "--peak-size",
        "64",
        "--procs",
        "1",
        "--json",
    ]
    result = bench.main(args)
    assert "host_syncs_per_step" not in result["minimlp"]
    assert np.isfinite(result["minimlp"]["train"]["images_per_s"])
