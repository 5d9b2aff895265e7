"""The trainer's GPU path without a GPU: ``python -m minimlp.train --gpu`` on the strict CuPy
stand-in (tests/support/fake_cupy.py), which refuses implicit host conversions and counts the explicit
reads; the fallback to NumPy when CuPy imports but no GPU is usable; ``--amp``."""

from __future__ import annotations

import itertools
import json
import sys
import types

import numpy as np
import pytest

from minimlp import backend, train
from minimlp.io.checkpoint import load_checkpoint
from minimlp.kernels import amp

# A tiny model on a few hundred Fashion-MNIST images: 10 steps of 32 per epoch.
QUICK = [
    "--train-num-samples",
    "320",
    "--eval-num-samples",
    "100",
    "-b",
    "32",
    "--patch-size",
    "7",
    "--embed-dim",
    "16",
    "--depth",
    "2",
    "--log-interval",
    "4",
    "--workers",
    "0",
]
# Everything the GPU path has: float16 with loss scaling, mixup/cutmix, erasing, drop path, clipping.
EVERYTHING = [
    "--amp",
    "--mixup",
    "0.8",
    "--cutmix",
    "1.0",
    "--reprob",
    "0.5",
    "--drop-path",
    "0.1",
    "--clip-grad",
    "1.0",
    "--tf32",
]


def quick(tmp_path, name, fmnist_dir, *extra):
    return [*QUICK, "--data-dir", str(fmnist_dir), "--output", str(tmp_path / name), *extra]


def syncs_per_step(standin, argv):
    """Run ``argv`` and return the stand-in's host reads during each step after the first."""
    counts = []
    result = train.run(argv, on_step=lambda state: counts.append(standin.host_syncs()), log=lambda line: None)
    assert result.status == "done"
    return [b - a for a, b in itertools.pairwise(counts)]


# --------------------------------------------------------------------------------------
# Without a usable GPU
# --------------------------------------------------------------------------------------
class FakeCUDARuntimeError(RuntimeError):
    pass


def broken_cupy() -> dict[str, types.ModuleType]:
    """A CuPy that imports but whose CUDA runtime fails at every call (no driver, no device)."""

    def fail(*args, **kwargs):
        raise FakeCUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    cupy = types.ModuleType("cupy")
    cupy.__version__ = "14.2.0"
    cupy.float32 = np.float32
    cupy.get_array_module = lambda *arrays: np
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=fail), Device=fail)
    core = types.ModuleType("cupy._core")
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.set_compute_type = fail  # asks the device for its compute capability, as CuPy's does
    core._routines_linalg = linalg
    cupy._core = core
    return {"cupy": cupy, "cupy._core": core, "cupy._core._routines_linalg": linalg}


def test_gpu_tf32_without_a_usable_gpu_falls_back_to_numpy_with_one_warning(tmp_path, fmnist_dir, monkeypatch, capsys):
    for name, module in broken_cupy().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(backend, "_warned", set())
    monkeypatch.delenv("CUPY_TF32", raising=False)
    code = train.main(quick(tmp_path, "run", fmnist_dir, "--gpu", "--tf32", "--epochs", "1", "--procs", "1"))
    out, err = capsys.readouterr()
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "falling back to NumPy" in warnings[0], err
    assert "backend: NumPy on the CPU (GPU requested, but CuPy is installed but CUDA is unusable" in out


def test_amp_without_a_gpu_warns_once_and_trains_in_float32(tmp_path, fmnist_dir, capsys):
    code = train.main(quick(tmp_path, "run", fmnist_dir, "--amp", "--epochs", "1", "--procs", "1"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: --amp needs a GPU (NumPy has no fast float16 matrix product); training in float32"
    ]
    assert "mixed precision" not in out
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert "amp_skipped_steps" not in record


def test_help_explains_amp(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--amp" in text and "float32 master weights" in text and "ignored with a warning" in text


# --------------------------------------------------------------------------------------
# On the stand-in
# --------------------------------------------------------------------------------------
def test_gpu_command_runs_everything_without_implicit_host_reads(tmp_path, fmnist_dir, fake_cupy, capsys):
    """The whole command, --amp and every device augmentation on: a strict stand-in fails it at
    the first implicit conversion of a device array to the host."""
    code = train.main(quick(tmp_path, "run", fmnist_dir, "--gpu", "--epochs", "1", *EVERYTHING))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "backend: CuPy 14.2.0" in out and "mixed precision: float16" in out
    assert "step(s) skipped for overflow, loss scale" in out
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["amp_skipped_steps"] == 0 and record["loss_scale"] == 2.0**16
    assert np.isfinite(record["train_loss"]) and record["train_loss"] < np.log(10) + 0.1


def test_gpu_steps_read_the_device_only_at_log_steps(tmp_path, fmnist_dir, fake_cupy):
    """float32: no host read between log steps (every 4th step and the epoch's last); --amp: one
    per step, the overflow check that decides whether the optimizer steps."""
    plain = syncs_per_step(
        fake_cupy,
        quick(tmp_path, "plain", fmnist_dir, "--gpu", "--epochs", "1", *[a for a in EVERYTHING if a != "--amp"]),
    )
    assert plain == [0, 0, 1, 0, 0, 0, 1, 0, 1]  # steps 2..10; read after steps 4, 8 and 10
    mixed = syncs_per_step(fake_cupy, quick(tmp_path, "amp", fmnist_dir, "--gpu", "--epochs", "1", *EVERYTHING))
    assert mixed == [1, 1, 2, 1, 1, 1, 2, 1, 2]


def test_gpu_run_follows_the_cpu_run(tmp_path, fmnist_dir, fake_cupy):
    """The same batches reach the same steps through the side-stream uploads (a short last batch
    included): the stand-in's GPU run and the CPU run agree to float32 rounding."""
    common = ("--no-aug", "--epochs", "2", "--train-num-samples", "300", "--clip-grad", "0.5")
    gpu = train.run(quick(tmp_path, "gpu", fmnist_dir, "--gpu", *common), log=lambda line: None)
    cpu = train.run(quick(tmp_path, "cpu", fmnist_dir, "--procs", "1", *common), log=lambda line: None)
    for a, b in zip(gpu.metrics, cpu.metrics, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["train_top1"] == b["train_top1"] and a["eval_top1"] == b["eval_top1"]
    a, b = load_checkpoint(tmp_path / "gpu" / "last.npz"), load_checkpoint(tmp_path / "cpu" / "last.npz")
    for name in a.params:  # absolute: AdamW turns a tiny gradient's rounding into a whole step
        np.testing.assert_allclose(a.params[name], b.params[name], rtol=0, atol=3e-3, err_msg=name)


def test_amp_counts_skipped_steps_and_resumes_with_the_saved_loss_scale(tmp_path, fmnist_dir, fake_cupy, monkeypatch):
    """A loss scale of 2^20 overflows float16 here at first: those steps are skipped and counted,
    and the scale found is saved, so a run resumed at the epoch boundary ends bit for bit where an
    uninterrupted one does (a fresh scale would skip steps of epoch 2 again)."""
    monkeypatch.setattr(amp.LossScaler.__init__, "__defaults__", (2.0**20, 2.0, 0.5, 2000))
    args = ("--gpu", "--amp", "--epochs", "2", "--mixup", "0.8")
    straight = train.run(quick(tmp_path, "straight", fmnist_dir, *args), log=lambda line: None)
    skipped = [m["amp_skipped_steps"] for m in straight.metrics]
    assert skipped[0] > 0 and straight.metrics[0]["loss_scale"] == 2.0 ** (20 - skipped[0])

    first = train.run(
        quick(tmp_path, "split", fmnist_dir, *args), on_epoch_end=lambda record: True, log=lambda line: None
    )
    assert first.status == "interrupted"
    saved = load_checkpoint(tmp_path / "split" / "last.npz").meta["amp"]
    assert saved["scale"] == 2.0 ** (20 - skipped[0]) and saved["skipped"] == skipped[0]
    lines = []
    resumed = train.run(["--resume", str(tmp_path / "split"), "--gpu", "--amp"], log=lines.append)
    assert resumed.status == "done" and any(f"loss scale {saved['scale']:g}" in line for line in lines)
    assert [m["amp_skipped_steps"] for m in resumed.metrics] == skipped
    a, b = load_checkpoint(tmp_path / "straight" / "last.npz"), load_checkpoint(tmp_path / "split" / "last.npz")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert a.meta["amp"] == b.meta["amp"]


def test_bench_gpu_tf32_without_a_usable_gpu_falls_back_to_numpy(monkeypatch, capsys):
    from minimlp import bench

    for name, module in broken_cupy().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(backend, "_warned", set())
    monkeypatch.delenv("CUPY_TF32", raising=False)
    tiny = ["--model", "ff_fmnist", "--embed-dim", "16", "--depth", "1", "-b", "4", "--steps", "1", "--rounds", "1"]
    with pytest.warns(RuntimeWarning, match="falling back to NumPy"):
        result = bench.run(bench.parse_args(["--gpu", "--tf32", "--procs", "1", "--warmup", "1", *tiny]))
    assert result["device"] == "cpu" and not result["tf32"]
