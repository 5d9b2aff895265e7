"""make gpu-check (python -m minimlp.bench.gpu_check), dry-run end to end on the CuPy stand-in.

Every step runs in a child process; a sitecustomize module on PYTHONPATH installs the
stand-in in each of them, so the script meets "CuPy with one GPU" everywhere.  PyTorch
has no GPU here, so the comparison runs on the CPU.  The shapes and steps are tiny.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from minimlp.bench import gpu_check

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _standin_env(tmp_path: Path, strict: bool) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import sys\nsys.path[:0] = [{str(TESTS)!r}, {str(ROOT)!r}]\nfrom support import fake_cupy\n"
        f"fake_cupy.install()\nfake_cupy.set_strict({strict})\n"
    )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_standin(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "minimlp.bench.gpu_check",
        "--out",
        str(out),
        "--budget",
        "240",
        "--runs",
        "ff_tiny:2:2",
        "--smoke-batch",
        "2",
        "--smoke-img-size",
        "32",
        "--bench-args",
        "--img-size 32 --patch-size 8 --depth 1 --warmup 1 --rounds 2 --peak-size 64 --profile-steps 1",
        "--pytest-args",
        "tests/test_backend.py",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_standin_env(tmp_path, strict=True), capture_output=True, text=True, timeout=300
    )
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.tar.gz", "summary.txt"]  # <= 8 files back
    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        summary = json.load(tar.extractfile("gpu-check/summary.json"))
    assert {
        "env.json",
        "steps.json",
        "summary.txt",
        "smoke-float32.json",
        "pytest--m-gpu.log",
        "bench-ff_tiny-float16.log",
    } <= names
    assert summary["environment"]["cupy"]["gpu"] == "CuPy stand-in (NumPy)"
    steps = {s["step"]: s["status"] for s in summary["steps"]}
    assert list(steps) == [
        "environment",
        "smoke float32",
        "smoke tf32",
        "smoke float16",
        "bench ff_tiny float32",
        "bench ff_tiny tf32",
        "bench ff_tiny float16",
        "pytest -m gpu",
    ]
    assert proc.stdout.rstrip().splitlines()[-1].startswith("logs and JSON:")  # the table comes last
    assert "step" in proc.stdout and "status" in proc.stdout
    assert set(steps.values()) == {"ok"} and proc.returncode == 0, proc.stdout
    assert all(r["ok"] for r in summary["smoke"]) and len(summary["smoke"]) == 24
    runs = {r["dtype"] + ("+tf32" if r["tf32"] else ""): r for r in summary["runs"]}
    assert set(runs) == {"float32", "float32+tf32", "float16"}
    assert [runs[k]["host_syncs_per_step"] for k in ("float32", "float32+tf32", "float16")] == [0, 0, 1]
    if importlib.util.find_spec("torch") is not None:  # compared with PyTorch on the CPU
        assert all(r["logits_max_abs_diff"] < 5e-2 for r in runs.values())


def test_a_hanging_step_is_killed_at_its_limit_and_the_run_goes_on(tmp_path):
    start = time.monotonic()
    record = gpu_check.run_step(
        "hang", [sys.executable, "-c", "import time; print('waiting'); time.sleep(60)"], timeout=2, work=tmp_path
    )
    assert record["status"] == "timeout" and time.monotonic() - start < 10
    assert (tmp_path / "hang.log").read_text().startswith("waiting")
    crashed = gpu_check.run_step("crash", [sys.executable, "-c", "raise SystemExit('boom')"], timeout=30, work=tmp_path)
    assert crashed["status"] == "failed" and crashed["note"] == "boom"
    assert gpu_check.run_step("late", [sys.executable, "-c", "pass"], timeout=1, work=tmp_path)["status"] == "skipped"


def test_without_a_gpu_only_the_environment_is_recorded(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a real CuPy, if installed, then sees no GPU
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    assert gpu_check.main(["--out", str(tmp_path), "--budget", "60"]) == 1
    table = capsys.readouterr().out
    assert "everything else" in table and "no usable GPU" in table
    assert (tmp_path / "gpu-check.tar.gz").is_file()


def test_bad_runs_are_one_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--runs", "ff_tiny:lots"])
    assert exit_.value.code == 2
    assert "--runs 'ff_tiny:lots': expected model:batch:steps" in capsys.readouterr().err


@pytest.mark.slow
def test_the_budget_holds_when_a_step_would_overrun_it(tmp_path):
    """A benchmark that would take minutes (an 8192² float32 product on NumPy) is cut at the
    budget; the run still packs everything and prints its table."""
    out = tmp_path / "out"
    start = time.monotonic()
    cmd = [
        sys.executable,
        "-m",
        "minimlp.bench.gpu_check",
        "--out",
        str(out),
        "--budget",
        "25",
        "--precisions",
        "float32",
        "--runs",
        "ff_tiny:2:2",
        "--smoke-batch",
        "2",
        "--smoke-img-size",
        "32",
        "--bench-args",
        "--img-size 32 --patch-size 8 --depth 1 --peak-size 8192",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_standin_env(tmp_path, strict=True), capture_output=True, text=True, timeout=120
    )
    assert time.monotonic() - start < 25 + 15
    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        steps = {s["step"]: s["status"] for s in json.load(tar.extractfile("gpu-check/steps.json"))}
    assert steps["bench ff_tiny float32"] == "timeout" and steps["pytest -m gpu"] == "skipped"
    assert proc.returncode == 1 and "killed after" in proc.stdout
