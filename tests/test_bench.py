"""The benchmark runs and its numbers are sane.  Nothing here asserts a speed."""

from __future__ import annotations

import json
import math
import multiprocessing
import subprocess
import sys

import numpy as np
import pytest

import minimlp
from minimlp import bench
from minimlp.kernels import threads
from minimlp.kernels import timing as profiling
from minimlp.models import model_config

TINY = [
    "--model",
    "ff_fmnist",
    "--depth",
    "2",
    "--embed-dim",
    "16",
    "-b",
    "4",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--rounds",
    "2",
    "--profile-steps",
    "1",
    "--peak-size",
    "256",
    "--procs",
    "1",
]  # in this process; test_bench_over_worker_processes takes the trainer's default


def hand_count(img, patch, chans, dim, depth, classes):
    """FLOPs per image written out by hand for the FF-ViT (see bench.ffvit_flops)."""
    n = (img // patch) ** 2
    t = n + 1
    embed = 2 * n * (chans * patch * patch) * dim  # each patch: a (C·P·P) -> D product
    feature_ff = 2 * t * dim * (4 * dim) + 2 * t * (4 * dim) * dim  # D -> 4D -> D for every token
    patch_ff = 2 * dim * t * (4 * t) + 2 * dim * (4 * t) * t  # T -> 4T -> T for every channel
    head = 2 * dim * classes
    forward = embed + depth * (feature_ff + patch_ff) + head
    return forward, embed


def test_flop_count_equals_hand_count():
    config = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=8, depth=2, num_classes=5)
    forward, embed = hand_count(16, 4, 3, 8, 2, 5)
    model = minimlp.create_model("ff_tiny", **config)
    counted = bench.ffvit_flops(model.config)
    assert counted == {"forward": forward, "embed": embed, "train": 3 * forward - embed}
    traced = bench.count_flops(model, np.zeros((3, 3, 16, 16), np.float32))
    assert traced == counted


@pytest.mark.parametrize("feature_mixer", ["mlp", "attention"])
def test_flop_count_includes_the_attention_products(feature_mixer):
    """q kᵀ and softmax(·) v are matrix products too: 2·S·S·d FLOPs each per head."""
    img, patch, chans, dim, depth, classes = 16, 4, 3, 8, 2, 5
    model = minimlp.create_model(
        "deit_tiny",
        img_size=img,
        patch_size=patch,
        in_chans=chans,
        embed_dim=dim,
        depth=depth,
        num_heads=2,
        num_classes=classes,
        feature_mixer=feature_mixer,
    )
    n = (img // patch) ** 2
    t = n + 1

    def attention(tokens, width):  # qkv, the two products of attention, proj; any number of heads
        return 2 * tokens * width * 3 * width + 2 * 2 * tokens * tokens * width + 2 * tokens * width * width

    feature_mixing = 2 * 2 * t * dim * 4 * dim if feature_mixer == "mlp" else attention(dim, t)
    embed = 2 * n * chans * patch * patch * dim
    forward = embed + depth * (attention(t, dim) + feature_mixing) + 2 * dim * classes
    traced = bench.count_flops(model, np.zeros((2, chans, img, img), np.float32))
    assert traced == {"forward": forward, "embed": embed, "train": 3 * forward - embed}


def test_deit_tiny_flops_match_the_published_count():
    # DeiT-tiny: 1.3 G multiply-adds per 224 px image (the DeiT paper's table), 2.5 GFLOP.
    flops = bench.count_flops(minimlp.create_model("deit_tiny"), np.zeros((1, 3, 224, 224), np.float32))
    assert 2.45e9 < flops["forward"] < 2.6e9


def test_ff_tiny_flops_match_the_published_macs():
    # About 1.44 GMACs per 224 px image (INTEROP notes), i.e. 2.88 GFLOP forward.
    flops = bench.ffvit_flops(model_config("ff_tiny"))
    assert 2.8e9 < flops["forward"] < 2.95e9


def test_sgd_update_is_params_minus_lr_grads():
    model = minimlp.create_model("ff_fmnist", depth=1)
    rng = np.random.default_rng(0)
    model.store.flat_grads[...] = rng.standard_normal(model.store.flat_grads.shape)
    expected = model.store.flat_params - 0.1 * model.store.flat_grads
    bench.sgd_update(model.store, 0.1)
    np.testing.assert_allclose(model.store.flat_params, expected, rtol=1e-6, atol=1e-7)


def check_sane(result, contender):
    train, forward = result[contender]["train"], result[contender]["forward"]
    for entry in (train, forward):
        assert entry["images_per_s"] > 0 and math.isfinite(entry["images_per_s"])
        ms = entry["step_ms"]
        assert 0 < ms["min"] <= ms["median"] <= ms["max"]
    assert forward["step_ms"]["min"] < 10 * train["step_ms"]["max"]
    # GFLOP/s = FLOPs per image x images/s; a fraction of the machine's own peak.
    expected = result["flops_per_image"]["train"] * train["images_per_s"] / 1e9
    assert train["gflops"] == pytest.approx(expected)
    assert 0 < train["fraction_of_peak"] < 5  # a tiny model is far from the peak; never 5x above it


@pytest.fixture(scope="module")
def tiny_run():
    return bench.main([*TINY, "--json"])


def test_bench_json_is_one_object_with_sane_numbers(tiny_run, capsys):
    bench.main([*TINY, "--json", "--profile-steps", "0", "--steps", "1", "--rounds", "1"])
    json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout, nothing else
    result = tiny_run
    assert result["model"] == "ff_fmnist" and result["batch_size"] == 4 and result["device"] == "cpu"
    check_sane(result, "minimlp")
    assert result["matmul_peak_gflops"]["minimlp"] > 0
    assert result["minimlp"]["memory"]["peak_mb"] >= result["minimlp"]["memory"]["parameters_and_grads_mb"] > 0
    breakdown = result["minimlp"]["breakdown_ms"]
    assert {"matmul", "gelu", "layernorm", "loss", "optimizer", "other"} <= set(breakdown)
    assert all(v >= 0 for v in breakdown.values())
    assert "torch" not in result and "ratio" not in result


def test_bench_over_worker_processes_runs_the_trainers_step(capsys):
    """The CPU default, as train's: every batch split over worker processes of one thread."""
    before = {proc.pid for proc in multiprocessing.active_children()}
    result = bench.main([*TINY, "--procs", "2"])  # the last --procs wins
    check_sane(result, "minimlp")
    assert result["threads"]["procs"] == 2
    assert "2 processes of one thread each" in capsys.readouterr().out
    assert {proc.pid for proc in multiprocessing.active_children()} <= before  # the workers were closed


def test_bench_table_prints(tiny_run):
    out = bench.format_table(tiny_run)
    assert "train images/s" in out and "% of matmul peak" in out and "matmul" in out


def test_bench_compares_with_torch(capsys):
    pytest.importorskip("torch", reason="PyTorch is an optional dependency")
    result = bench.main([*TINY, "--compare", "torch", "--threads", "1", "--json"])
    capsys.readouterr()
    check_sane(result, "torch")
    assert result["logits_max_abs_diff"] < 1e-4  # the same function, in float32
    assert result["ratio"]["train"] == pytest.approx(
        result["minimlp"]["train"]["images_per_s"] / result["torch"]["train"]["images_per_s"]
    )
    assert len(result["ratio"]["train_per_round"]) == 2
    assert result["threads"]["torch"] == 1 and result["threads"]["elementwise"] == 1
    assert threads.num_threads() == threads_before  # the process's settings are restored


threads_before = threads.num_threads()


def test_compare_torch_without_torch_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails, as where it is not installed
    monkeypatch.delitem(sys.modules, "minimlp.bench.torch_baseline", raising=False)
    monkeypatch.delattr(minimlp.bench, "torch_baseline", raising=False)
    with pytest.raises(SystemExit, match="needs PyTorch"):
        bench.main([*TINY, "--compare", "torch"])


def test_float16_on_the_cpu_is_refused():
    with pytest.raises(SystemExit, match="needs a GPU"):
        bench.main([*TINY, "--dtype", "float16"])


def test_bad_numbers_are_refused():
    with pytest.raises(SystemExit):
        bench.main([*TINY, "--steps", "0"])
    with pytest.raises(SystemExit, match="--procs"):
        bench.main([*TINY, "--procs", "-1"])


def test_importing_the_bench_does_not_import_torch():
    code = "import sys, minimlp.bench; print('torch' in sys.modules, 'cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_profiling_charges_only_the_outermost_op():
    @profiling.timed("outer")
    def outer():
        return inner() + 1

    @profiling.timed("inner")
    def inner():
        return 1

    assert outer() == 2  # off: plain calls
    with profiling.recording() as timer:
        outer()
        inner()
    assert timer.calls == {"outer": 1, "inner": 1}
    assert profiling._active is None


def test_summary_collects_the_runs_of_a_directory(tiny_run, tmp_path, capsys):
    (tmp_path / "bench-a.json").write_text(json.dumps(tiny_run))
    (tmp_path / "notes.json").write_text("[1, 2]")  # not a benchmark result: skipped
    summary = bench.main(["--summary", str(tmp_path), "--out", str(tmp_path / "summary.json")])
    assert len(summary["runs"]) == 1
    row = summary["runs"][0]
    assert row["model"] == "ff_fmnist" and row["minimlp_train_images_per_s"] > 0
    assert "ff_fmnist" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
