"""Faults during a run: no result is lost and no bad one is saved.

Non-finite weights or evaluations, a kill at every write boundary of the run directory,
a second Ctrl-C, SIGUSR1 to the whole process group, a full or read-only disk, an
``--output`` that is a file, and checkpoints whose run records are damaged.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from minimlp import train
from minimlp.io import files
from minimlp.io.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# A tiny model; three steps per epoch, both epochs improve.
TINY = [
    "--procs",
    "1",
    "--train-num-samples",
    "192",
    "--eval-num-samples",
    "100",
    "-b",
    "64",
    "--patch-size",
    "7",
    "--embed-dim",
    "16",
    "--depth",
    "1",
    "--log-interval",
    "1",
    "--no-aug",
]


def tiny(run_dir, data_dir, *extra):
    return [*TINY, "--output", str(run_dir), "--data-dir", str(data_dir), *extra]


def strict_json_lines(path):
    """metrics.jsonl as strict JSON: NaN or Infinity is an error."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in Path(path).read_text().splitlines()]


def snapshot(run_dir):
    return {p.name: p.read_bytes() for p in Path(run_dir).iterdir() if p.is_file()}


# --------------------------------------------------------------------------------------
# Non-finite weights and evaluations
# --------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to inf
def test_weights_made_non_finite_by_an_epochs_last_step_are_never_saved(tmp_path, fmnist_dir, capsys):
    run_dir = tmp_path / "run"
    assert train.main(tiny(run_dir, fmnist_dir, "--epochs", "1", "--train-num-samples", "64")) == 0
    before = snapshot(run_dir)
    # An epoch of 64 images is one step: epoch 2's loss is finite, its update (lr 5e38 halfway
    # down the cosine) overflows float32.
    code = train.main(
        ["--resume", str(run_dir), "--procs", "1", "--epochs", "2", "--lr", "1e39", "--warmup-epochs", "0"]
    )
    err = capsys.readouterr().err
    assert code == train.EXIT_FAILED
    assert "the weights became non-finite at step 2 (epoch 2, batch 1/1; its loss was finite" in err, err
    assert f"{run_dir / 'last.npz'} still holds the last good state (epoch 1)" in err
    assert "Traceback" not in err
    after = snapshot(run_dir)
    for name in ("last.npz", "best.npz", "metrics.jsonl"):
        assert after[name] == before[name], f"{name} was rewritten"
    assert all(np.isfinite(a).all() for a in load_checkpoint(run_dir / "last.npz").params.values())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_non_finite_evaluation_is_never_best_and_metrics_stay_json(tmp_path, fmnist_dir, capsys):
    run_dir = tmp_path / "run"
    # lr 1e30: the weights stay finite (about 1e30) but the logits overflow, so the evaluation loss is NaN.
    result = train.run(
        tiny(run_dir, fmnist_dir, "--epochs", "1", "--train-num-samples", "64", "--lr", "1e30", "--warmup-epochs", "0")
    )
    assert result.status == "done"
    assert all(np.isfinite(a).all() for a in load_checkpoint(run_dir / "last.npz").params.values())
    (record,) = strict_json_lines(run_dir / "metrics.jsonl")
    assert record["eval_loss"] is None
    assert result.state.best_epoch is None and not (run_dir / "best.npz").exists()
    assert "no epoch evaluated to a finite loss" in capsys.readouterr().out


def test_resuming_a_checkpoint_of_non_finite_weights_is_refused(tmp_path, fmnist_dir, capsys):
    run_dir = tmp_path / "run"
    train.run(tiny(run_dir, fmnist_dir, "--epochs", "1"))
    ckpt = load_checkpoint(run_dir / "last.npz")
    name = next(iter(ckpt.params))
    ckpt.params[name] = np.full_like(ckpt.params[name], np.inf)
    save_checkpoint(run_dir / "last.npz", ckpt.params, ckpt.meta, ckpt.optimizer)
    before = snapshot(run_dir)
    capsys.readouterr()
    assert train.main(["--resume", str(run_dir), "--procs", "1", "--epochs", "2"]) == train.EXIT_USAGE
    err = capsys.readouterr().err
    assert "last.npz: its weights are not finite" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(run_dir) == before


# --------------------------------------------------------------------------------------
# A kill at every write boundary
# --------------------------------------------------------------------------------------
# A child process runs the trainer and SIGKILLs itself right after its Nth file
# replacement (every file of the run directory is written by rename), or not at all if
# the run has fewer.  The directory it leaves must resume to exactly the uninterrupted run.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from minimlp import train

    limit, replaced, real_replace = int(sys.argv[1]), [0], os.replace

    def replace(src, dst):
        real_replace(src, dst)
        replaced[0] += 1
        if replaced[0] == limit:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    sys.exit(train.main(sys.argv[2:]))
""")
# args.json; per epoch: last.npz, best.npz (both epochs improve), metrics.jsonl, curves.png
WRITES = 9
DETERMINISTIC = ("epoch", "step", "train_loss", "train_top1", "eval_loss", "eval_top1", "eval_top5", "lr")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, fmnist_dir):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = train.run(tiny(run_dir, fmnist_dir, "--epochs", "2"), log=lambda message: None)
    assert result.state.best_epoch == 2, "both epochs improve, so best.npz is written twice"
    return run_dir


def killed_at(n, argv):
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(n), *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("n", range(1, WRITES + 2))
def test_a_kill_after_any_write_resumes_to_the_same_run(n, tmp_path, fmnist_dir, straight):
    run_dir = tmp_path / "run"
    argv = tiny(run_dir, fmnist_dir, "--epochs", "2")
    assert killed_at(n, argv) == (n <= WRITES), "WRITES counts every write of the run"
    if (run_dir / "metrics.jsonl").exists():
        strict_json_lines(run_dir / "metrics.jsonl")  # whole lines only, at every instant
    if (run_dir / "last.npz").exists():
        result = train.run(["--resume", str(run_dir), "--procs", "1"], log=lambda message: None)
    else:  # killed before the first checkpoint: the same command starts again
        result = train.run(argv, log=lambda message: None)
    assert result.status == "done"
    got, want = strict_json_lines(run_dir / "metrics.jsonl"), strict_json_lines(straight / "metrics.jsonl")
    assert [{k: m[k] for k in DETERMINISTIC} for m in got] == [{k: m[k] for k in DETERMINISTIC} for m in want]
    for name in ("last.npz", "best.npz"):
        a, b = load_checkpoint(run_dir / name), load_checkpoint(straight / name)
        assert a.meta["step"] == b.meta["step"], name
        assert all(np.array_equal(a.params[k], b.params[k]) for k in b.params), name
    last = load_checkpoint(run_dir / "last.npz").meta["run"]
    assert load_checkpoint(run_dir / "best.npz").meta["epoch"] == last["best_epoch"]


def test_a_cut_off_last_line_of_metrics_does_not_stop_a_resume(tmp_path, fmnist_dir):
    run_dir = tmp_path / "run"
    train.run(tiny(run_dir, fmnist_dir, "--epochs", "2"))
    text = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "metrics.jsonl").write_text(text[:-40])  # epoch 2's line, cut off by a kill
    assert train.main(["--resume", str(run_dir), "--procs", "1", "--epochs", "3"]) == 0
    assert [m["epoch"] for m in strict_json_lines(run_dir / "metrics.jsonl")] == [1, 2, 3]


def test_metrics_of_checkpoints_without_their_history(tmp_path, fmnist_dir, capsys):
    """A checkpoint that does not hold the metrics: the file is read, a cut-off last line
    dropped, and a damaged line in the middle named."""
    run_dir = tmp_path / "run"
    train.run(tiny(run_dir, fmnist_dir, "--epochs", "2"))
    ckpt = load_checkpoint(run_dir / "last.npz")
    del ckpt.meta["metrics"]
    save_checkpoint(run_dir / "last.npz", ckpt.params, ckpt.meta, ckpt.optimizer)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text("{broken\n" + lines[1])
    assert train.main(["--resume", str(run_dir), "--procs", "1", "--epochs", "3"]) == train.EXIT_FAILED
    err = capsys.readouterr().err
    assert f"{run_dir / 'metrics.jsonl'}, line 1: not a JSON record" in err and "Traceback" not in err
    (run_dir / "metrics.jsonl").write_text(lines[0] + lines[1][:30])
    assert train.main(["--resume", str(run_dir), "--procs", "1", "--epochs", "3"]) == 0
    assert [m["epoch"] for m in strict_json_lines(run_dir / "metrics.jsonl")] == [1, 3]


# --------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------
def test_a_second_ctrl_c_while_the_loader_stops_quits_cleanly(tmp_path, fmnist_dir, monkeypatch, capsys):
    """The first Ctrl-C ends the epoch's loop; the second arrives while the loader thread
    is being stopped: the run quits at once with one line, not an ignored traceback."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    real_prefetch = train.prefetch

    def prefetch(batches, depth):
        try:
            yield from real_prefetch(batches, depth)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C

    monkeypatch.setattr("minimlp.train.loop.prefetch", prefetch)
    first = {"sent": False}

    def on_step(state):
        if not first["sent"]:
            first["sent"] = True
            os.kill(os.getpid(), signal.SIGINT)

    real_run = train.run
    monkeypatch.setattr("minimlp.train.command.run", lambda argv: real_run(argv, on_step=on_step))
    code = train.main(tiny(tmp_path / "run", fmnist_dir, "--epochs", "1"))
    err = capsys.readouterr().err
    assert unraisable == [], [u.exc_value for u in unraisable]
    assert code == train.EXIT_INTERRUPTED and "aborted (the last checkpoint written is intact)" in err


def test_sigusr1_to_the_process_group_stops_with_a_checkpoint(tmp_path, fmnist_dir):
    """A batch system signals every process of the job: the --procs workers must outlive it."""
    run_dir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "minimlp.train",
        *tiny(run_dir, fmnist_dir, "--epochs", "1"),
        "--procs",
        "2",
        "--train-num-samples",
        "20000",
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )  # its own process group, as under a batch system
    try:
        line = ""
        while "epoch 1/1 [" not in line:  # training has begun
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the run ended before training"
        os.killpg(proc.pid, signal.SIGUSR1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == train.EXIT_INTERRUPTED, err
    assert "SIGUSR1: stopping after this step" in err and "Traceback" not in err, err
    assert f"saved {run_dir / 'last.npz'}" in out
    assert load_checkpoint(run_dir / "last.npz").meta["step"] >= 1


def test_sigusr1_before_training_begins_quits_with_one_line(tmp_path, fmnist_dir):
    """While the run is still being set up (data, model, worker processes) there is nothing new
    to save: SIGUSR1 quits as Ctrl-C does, instead of killing the process without a word."""
    argv = [sys.executable, "-m", "minimlp.train", *tiny(tmp_path / "run", fmnist_dir, "--epochs", "1"), "--procs", "2"]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = ""
        while not line.startswith("backend:"):  # the data, the model and the workers come next
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the run ended before it began"
        os.killpg(proc.pid, signal.SIGUSR1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == train.EXIT_INTERRUPTED, (proc.returncode, err)
    # On a slow machine the signal may come once training has begun: then the run stops after a step.
    quit_early = err.strip().splitlines()[-1] == "aborted (the last checkpoint written is intact)"
    assert quit_early or "SIGUSR1: stopping after this step" in err, err
    assert "Traceback" not in err and "leaked" not in err, err


def test_workers_started_under_a_signal_storm_survive(tmp_path):
    """Stop signals that arrive while the workers are still starting wait, and are ignored."""
    from minimlp.models.registry import create_model
    from minimlp.parallel.workers import DataParallel

    model = create_model("ff_fmnist_small", patch_size=7, embed_dim=16, depth=1)
    previous = signal.signal(signal.SIGUSR1, lambda *a: None)
    try:
        with DataParallel(model, 2, 8) as parallel:
            for proc in parallel.procs:
                os.kill(proc.pid, signal.SIGUSR1)
                os.kill(proc.pid, signal.SIGINT)
            time.sleep(0.2)
            x = np.zeros((8, *model.expected_input_shape()), np.float32)
            logits, _ = parallel.forward(x)
            assert logits.shape == (8, 10)
            assert all(proc.is_alive() for proc in parallel.procs)
    finally:
        signal.signal(signal.SIGUSR1, previous)


# --------------------------------------------------------------------------------------
# Disk full, read-only, --output a file
# --------------------------------------------------------------------------------------
def test_output_naming_a_file_is_one_line(tmp_path, fmnist_dir, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert train.main(tiny(target, fmnist_dir, "--epochs", "1")) == train.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.strip() == f"error: --output {target} is a file; the run directory must be a directory (new or existing)"
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("name", ["args.json", "last.npz", "best.npz", "metrics.jsonl"])
@pytest.mark.parametrize(
    "code,reason", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")]
)
def test_a_write_that_fails_is_one_line_and_loses_nothing(
    name, code, reason, tmp_path, fmnist_dir, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    train.run(tiny(run_dir, fmnist_dir, "--epochs", "1"))
    before = snapshot(run_dir)
    real = files.create_temp_file

    def create_temp_file(path):
        if Path(path).name == name:
            raise OSError(code, reason)
        return real(path)

    monkeypatch.setattr(files, "create_temp_file", create_temp_file)
    capsys.readouterr()
    assert train.main(["--resume", str(run_dir), "--procs", "1", "--epochs", "2"]) == train.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cannot write {run_dir / name}: {reason}. Nothing saved before is lost"), err
    assert "Traceback" not in "\n".join(err)
    assert (run_dir / name).read_bytes() == before[name]
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")], "no temporary file is left"
    monkeypatch.undo()
    assert train.main(["--resume", str(run_dir), "--procs", "1", "--epochs", "2"]) == 0  # once it can write again
    assert [m["epoch"] for m in strict_json_lines(run_dir / "metrics.jsonl")] == [1, 2]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_real_full_or_read_only_file_system(fault, small_tmpfs, fmnist_dir, capsys):
    run_dir = small_tmpfs / "run"
    train.run(tiny(run_dir, fmnist_dir, "--epochs", "1"))
    before = snapshot(run_dir)
    if fault == "full":
        with open(small_tmpfs / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    capsys.readouterr()
    assert train.main(["--resume", str(run_dir), "--procs", "1", "--epochs", "2"]) == train.EXIT_FAILED
    err = capsys.readouterr().err.strip()
    reason = "No space left on device" if fault == "full" else "Read-only file system"
    assert err.startswith(f"error: cannot write {run_dir / 'args.json'}: {reason}") and "\n" not in err, err
    assert snapshot(run_dir) == before


# --------------------------------------------------------------------------------------
# Damaged run records
# --------------------------------------------------------------------------------------
def damage(meta, what):
    if what == "unknown run key":
        meta["run"]["warp_factor"] = 9
    elif what == "batch_size 0":
        meta["args"]["batch_size"] = 0
    elif what == "epochs ten":
        meta["args"]["epochs"] = "ten"
    elif what == "no model":
        del meta["model"]
    elif what == "args a list":
        meta["args"] = ["--epochs", "2"]
    elif what == "negative step":
        meta["run"]["step"] = -5
    elif what == "rng garbage":
        meta["rng"]["model"] = {"bit_generator": "PCG64", "state": "x"}


@pytest.mark.parametrize(
    "what,message",
    [
        ("unknown run key", "its 'run' record has unknown keys ['warp_factor']"),
        ("batch_size 0", "the run's argument batch_size = 0 is invalid (0 must be >= 1); give --batch-size"),
        ("epochs ten", "the run's argument epochs = 'ten' is invalid ('ten' is not an integer)"),
        ("no model", "no 'model' record"),
        ("args a list", "its 'args' record is a list, not a dict"),
        ("negative step", "its 'run' record has step = -5"),
        ("rng garbage", "its 'rng' record is not a generator state"),
    ],
)
def test_damaged_run_records_are_one_line(what, message, tmp_path, fmnist_dir, capsys):
    run_dir = tmp_path / "run"
    train.run(tiny(run_dir, fmnist_dir, "--epochs", "1"))
    ckpt = load_checkpoint(run_dir / "last.npz")
    damage(ckpt.meta, what)
    save_checkpoint(run_dir / "last.npz", ckpt.params, ckpt.meta, ckpt.optimizer)
    capsys.readouterr()
    assert train.main(["--resume", str(run_dir), "--procs", "1"]) == train.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run_dir / 'last.npz'}: ") and message in err and "\n" not in err, err


def test_resume_and_pretrained_together_are_refused(tmp_path, fmnist_dir, capsys):
    run_dir = tmp_path / "run"
    train.run(tiny(run_dir, fmnist_dir, "--epochs", "1"))
    with pytest.raises(SystemExit) as info:
        train.main(["--resume", str(run_dir), "--pretrained", str(run_dir / "best.npz")])
    assert info.value.code == 2
    assert "--resume continues a run with its own weights; --pretrained starts a new one" in capsys.readouterr().err
