"""Data-parallel training over MPI ranks, in two parts.

Without MPI (always run): the split of each batch over ranks, the shard weights (the ranks'
weighted gradients add up to the whole batch's gradient, an empty shard included), the
gradient buckets that the GPU reduces during the backward pass, sharded evaluation, the
start-up comparison of ranks, and the message when mpi4py is missing.

With Open MPI and mpi4py (``make mpi-setup``; skipped otherwise, a failure in CI where
MINIMLP_REQUIRE_MPI=1): ``mpirun -n 2`` trains to the parameters of one process with the
whole batch and only rank 0 writes; a resumed 2-rank run continues bit for bit; ranks
started with different arguments are stopped with the difference named; and a rank that
fails, is killed, hangs or drifts takes the job down with a message, in bounded time; and
SIGUSR1 to mpirun stops every rank after the same step with a resumable checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import minimlp
from minimlp.data import ArrayDataset
from minimlp.evaluate import evaluate
from minimlp.io.checkpoint import load_checkpoint
from minimlp.loss import cross_entropy_backward, cross_entropy_forward
from minimlp.parallel import mpi
from minimlp.parallel.ddp import DistributedDataParallel, gradient_buckets, notify_after_block_backward
from minimlp.parallel.sharding import rank_indices, shard_bounds, shard_weight

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------
# Sharding and weights
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,parts", [(13, 3), (2, 4), (0, 2), (64, 8), (7, 1)])
def test_shard_bounds_cover_the_rows_once(n, parts):
    bounds = shard_bounds(n, parts)
    assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_rank_indices_split_every_batch_without_overlap(world_size):
    order = np.random.default_rng(0).permutation(50)
    B = 4 * world_size
    parts = [rank_indices(order, B, r, world_size) for r in range(world_size)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(50)), "every image once, over all ranks"
    per_rank = B // world_size
    for s, start in enumerate(range(0, 50, B)):  # step s: the ranks' shards make up batch s
        batch = order[start : start + B]
        shards = [p[s * per_rank : (s + 1) * per_rank] for p in parts]
        assert np.array_equal(np.concatenate(shards), batch)


def test_uneven_batch_size_is_refused_with_alternatives():
    assert mpi.per_rank_batch(96, 8) == 12
    with pytest.raises(mpi.DistributedError, match=r"100 does not split evenly over 8 ranks.*-b 96 or -b 104"):
        mpi.per_rank_batch(100, 8)


class FakeWorld(mpi.World):
    """Rank ``rank`` of ``size`` in one process; ``sum`` returns preset totals (the other
    ranks' parts), so the per-rank code can be checked without MPI."""

    active = True

    def __init__(self, rank, size, totals=None):
        self.rank, self.size, self.totals, self.summed = rank, size, totals, []

    def sum(self, values, what=""):
        self.summed.append(np.array(values, dtype=np.float64))
        return np.asarray(self.totals if self.totals is not None else values, dtype=np.float64)

    def allreduce_(self, array, what):
        pass  # the test adds the ranks' gradients itself

    def check_replicas(self, params, step):
        pass

    shard = mpi.MPIWorld.shard
    batches = mpi.MPIWorld.batches
    rank_seed = mpi.MPIWorld.rank_seed


@pytest.mark.parametrize("rows", [13, 1])  # 13 rows: 7 + 6; 1 row: rank 1 has none
def test_weighted_shard_gradients_add_up_to_the_batch_gradient(rows):
    model = minimlp.create_model("ff_fmnist", embed_dim=16, depth=2, patch_size=7, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, rows)
    logits, cache = model.forward(x, train=True)
    loss, loss_cache = cross_entropy_forward(logits, y, 0.1)
    model.zero_grad()
    model.backward(cross_entropy_backward(loss_cache), cache, input_grad=False)
    expected = model.store.flat_grads.copy()
    total = np.zeros_like(expected)
    for rank, (lo, hi) in enumerate(shard_bounds(rows, 2)):
        replica = minimlp.create_model("ff_fmnist", embed_dim=16, depth=2, patch_size=7, seed=0)
        step = DistributedDataParallel(FakeWorld(rank, 2, totals=[rows]), replica, seed=0)
        shard_loss, shard_logits = step.train_step(x[lo:hi], y[lo:hi], 0.1, step=0)
        assert shard_logits.shape == (hi - lo, 10)
        total += replica.store.flat_grads
    assert np.abs(total - expected).max() < 1e-5 * np.abs(expected).max()
    assert shard_weight(0, 0) == 0.0


def test_world_batches_give_each_rank_its_shard_and_pad_empty_steps():
    images = np.arange(9, dtype=np.uint8).reshape(9, 1, 1, 1)
    data = ArrayDataset(images, np.arange(9), ["c"], (0.0,), (1.0,))
    order = np.array([4, 0, 8, 2, 6, 1, 5, 3, 7])
    got = {r: list(FakeWorld(r, 2).batches(data, order, 4, train=False, seed=0)) for r in range(2)}
    assert [b[1].tolist() for b in got[0]] == [[4, 0], [6, 1], []]  # the last batch (one image) ...
    assert [b[1].tolist() for b in got[1]] == [[8, 2], [5, 3], [7]]  # ... goes to rank 1 alone
    assert got[0][2][0].shape == (0, 1, 1, 1) and got[0][2][0].dtype == np.uint8


def test_sharded_evaluation_sums_to_the_whole():
    model = minimlp.create_model("ff_fmnist", embed_dim=16, depth=2, patch_size=7, seed=0)
    rng = np.random.default_rng(1)
    data = ArrayDataset(
        rng.integers(0, 255, (23, 1, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 23),
        [str(k) for k in range(10)],
        (0.5,),
        (0.25,),
    )
    whole = evaluate(model, data, batch_size=8)
    parts = [FakeWorld(r, 3) for r in range(3)]
    for world in parts:
        evaluate(model, data, batch_size=8, world=world)  # each returns its own part; we add them
    totals = sum(w.summed[0] for w in parts)
    K = 10
    assert totals[3] == 23 and totals[1] == whole.top1 * 23 / 100 and totals[2] == whole.top5 * 23 / 100
    assert totals[0] / 23 == pytest.approx(whole.loss, rel=1e-6)
    assert np.array_equal(totals[4 : 4 + K], whole.class_correct) and np.array_equal(totals[4 + K :], whole.class_total)


# --------------------------------------------------------------------------------------
# Gradient buckets (the GPU's overlap), checked on the CPU
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ff_fmnist", "vit_fmnist", "mixer_fmnist"])
def test_buckets_cover_the_gradients_once_and_are_final_when_launched(name):
    model = minimlp.create_model(name, depth=4, seed=0)
    buckets = gradient_buckets(model, bucket_bytes=1)  # one block per bucket: the most launches
    assert [b.after_block for b in buckets] == [3, 2, 1, None]
    covered = sorted(r for b in buckets for r in b.ranges)
    assert covered[0][0] == 0 and covered[-1][1] == model.num_params()
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False)), "no gap, no overlap"
    assert all(len(b.ranges) == 2 for b in buckets[:-1]), "a group of blocks is two contiguous ranges"
    snapshots = {}
    for bucket in buckets[:-1]:

        def snapshot(bucket=bucket):
            snapshots[bucket.after_block] = [model.store.flat_grads[lo:hi].copy() for lo, hi in bucket.ranges]

        notify_after_block_backward(model, bucket.after_block, snapshot)
    rng = np.random.default_rng(0)
    model.store.flat_params += 0.02 * rng.standard_normal(model.num_params()).astype(np.float32)  # no zero head
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    logits, cache = model.forward(x, train=True)
    model.zero_grad()
    model.backward(rng.standard_normal(logits.shape).astype(np.float32), cache)
    for bucket in buckets[:-1]:
        for (lo, hi), seen in zip(bucket.ranges, snapshots[bucket.after_block], strict=True):
            assert np.array_equal(seen, model.store.flat_grads[lo:hi]), "nothing writes a bucket after its launch"
            assert np.abs(seen).max() > 0


def test_large_buckets_group_blocks_and_a_model_without_blocks_has_one():
    model = minimlp.create_model("ff_fmnist", depth=6, seed=0)
    assert len(gradient_buckets(model, bucket_bytes=1e12)) == 1
    block_bytes = 4 * sum(g.size for n, g in model.grads.items() if n.startswith("blocks.5."))
    assert [b.after_block for b in gradient_buckets(model, 2 * block_bytes)] == [4, 2, None]
    assert gradient_buckets(SimpleNamespace(store=model.store), 1) == [(None, [(0, model.num_params())])]


def test_nccl_path_launches_each_bucket_once_in_order_on_a_side_stream(monkeypatch):
    """NcclGradients run against a recording stand-in for CuPy and NCCL (no GPU here): every
    gradient element is summed once per step, each bucket right after its block's backward
    (its own event, on the side stream), and the compute stream waits for the sums."""
    log = []

    class Stream:
        def __init__(self, name="side", non_blocking=False):
            self.name, self.ptr = name, 99

        def record(self):
            log.append(f"{self.name} records")
            return f"{self.name}'s event"

        def wait_event(self, event):
            log.append(f"{self.name} waits for {event}")

        def synchronize(self):
            log.append(f"{self.name} synchronizes")

    compute, base = Stream("compute"), 4096
    nccl = SimpleNamespace(
        NCCL_FLOAT32=7,
        NCCL_FLOAT64=8,
        NCCL_FLOAT16=6,
        NCCL_SUM=0,
        groupStart=lambda: log.append("group"),
        groupEnd=lambda: log.append("end"),
    )
    cuda = SimpleNamespace(Stream=Stream, get_current_stream=lambda: compute, nccl=nccl)
    monkeypatch.setitem(sys.modules, "cupy", SimpleNamespace(cuda=cuda, get_array_module=lambda *a: np))
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    comm = SimpleNamespace(
        allReduce=lambda send, recv, n, kind, op, stream: log.append(
            ("sum", (send - base) // 4, n, send == recv, kind, stream)
        )
    )
    world = FakeWorld(0, 2)
    world.nccl_communicator = lambda: comm
    model = minimlp.create_model("ff_fmnist", depth=4, seed=0)
    from minimlp.parallel.ddp import NcclGradients

    gradients = NcclGradients(world, model, bucket_bytes=1)
    gradients.grads = SimpleNamespace(data=SimpleNamespace(ptr=base), itemsize=4)  # a device pointer
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    logits, cache = model.forward(x, train=True)
    model.backward(np.ones_like(logits), cache)  # not armed: no launch outside a training step
    assert log == []
    gradients.begin()
    model.backward(np.ones_like(logits), cache)
    launched_in_backward = log.count("group")
    gradients.finish()
    assert launched_in_backward == 3 and log.count("group") == 4, "3 buckets during backward, the last after"
    sums = sorted((lo, n) for entry in log if entry[0] == "sum" for _, lo, n, *_ in [entry])
    assert sums[0][0] == 0 and sum(n for _, n in sums) == model.num_params()
    assert all(a[0] + a[1] == b[0] for a, b in zip(sums, sums[1:], strict=False)), "every element once"
    assert all(e[3:] == (True, 7, 99) for e in log if e[0] == "sum"), "in place, float32, on the side stream"
    first = log.index("group")
    assert log[first - 2 : first] == ["compute records", "side waits for compute's event"]
    assert log[-3:] == ["side records", "compute waits for side's event", "compute synchronizes"]
    log.clear()
    gradients.begin()  # a rank with no images this step: no backward, every bucket still summed
    gradients.finish()
    assert log.count("group") == 4


# --------------------------------------------------------------------------------------
# Start-up checks and launch detection
# --------------------------------------------------------------------------------------
def test_differences_between_ranks_are_named():
    ranks = [
        {"argument --lr": 0.001, "model embed_dim": 16, "state parameters": 7},
        {"argument --lr": 0.002, "model embed_dim": 16, "state parameters": 7},
        {"argument --lr": 0.001, "model embed_dim": 32, "state parameters": 8},
    ]
    lines = mpi.describe_differences(ranks)
    assert lines == [
        "  argument --lr: 0.001 on ranks 0, 2, 0.002 on rank 1",
        "  model embed_dim: 16 on ranks 0, 1, 32 on rank 2",
        "  state parameters: 7 on ranks 0, 1, 8 on rank 2",
    ]
    assert mpi.describe_differences(ranks[:1] * 3) == []


def test_checksum_is_exact_and_order_free():
    a = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    b = a.copy()
    b[500] = np.nextafter(b[500], np.float32(np.inf))  # one ulp
    assert mpi.checksum(a) == mpi.checksum(a.copy())
    assert mpi.checksum(a) != mpi.checksum(b)
    assert mpi.checksum(a[::-1].copy()) == mpi.checksum(a)


def test_launch_is_detected_and_missing_mpi4py_is_a_clear_error(monkeypatch):
    assert not mpi.launched_by_mpi({"PATH": "/bin"})
    assert mpi.launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "2"})
    assert mpi.launched_by_mpi({"PMI_SIZE": "4"})
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now fails
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(mpi.DistributedError, match=r"OMPI_COMM_WORLD_SIZE=2.*pip install mpi4py"):
        mpi.MPIWorld()


# --------------------------------------------------------------------------------------
# Under mpirun
# --------------------------------------------------------------------------------------
REQUIRE_MPI = os.environ.get("MINIMLP_REQUIRE_MPI") == "1"


@pytest.fixture(scope="module")
def mpirun():
    """The mpirun command line, or a skip (a failure with MINIMLP_REQUIRE_MPI=1) saying what to install."""
    missing = [
        what
        for what, ok in (("Open MPI's mpirun", shutil.which("mpirun")), ("mpi4py", importlib.util.find_spec("mpi4py")))
        if not ok
    ]
    if missing:
        message = f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed (make mpi-setup)"
        if REQUIRE_MPI:
            pytest.fail(message + "; MINIMLP_REQUIRE_MPI=1 demands them")
        pytest.skip(message)
    command = ["mpirun", "--oversubscribe"]  # a 2-core machine has 2 slots; tests may run more ranks
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")  # CI runs as root
    return command


def mpi_env(**extra):
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        OPENBLAS_NUM_THREADS="1",
        MINIMLP_NUM_THREADS="1",
        MINIMLP_CHECK_REPLICAS="1",
        **extra,
    )
    for key in mpi.LAUNCHER_VARIABLES:  # pytest itself is no rank
        env.pop(key, None)
    return env


def launch(command, timeout=60, **env):
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=mpi_env(**env))
    return done, time.perf_counter() - start


# 321 images in batches of 64: the last batch has one image, so rank 1 has none at that step;
# 201 evaluation images split 100 / 101.  SGD, whose step is linear in the gradient (see
# test_two_ranks_train_as_one_process_with_the_whole_batch).
TINY = [
    "--train-num-samples",
    "321",
    "--eval-num-samples",
    "201",
    "-b",
    "64",
    "--patch-size",
    "7",
    "--embed-dim",
    "16",
    "--depth",
    "2",
    "--no-aug",
    "--opt",
    "sgd",
    "--lr",
    "0.1",
    "--clip-grad",
    "1",
    "--warmup-epochs",
    "0.5",
    "--log-interval",
    "3",
    "--workers",
    "1",
]


def trainer(*args):
    return [sys.executable, "-m", "minimlp.train", *args]


def job(scenario, *args):
    return [sys.executable, str(REPO / "tests" / "support" / "mpi_job.py"), scenario, *args]


def test_two_ranks_train_as_one_process_with_the_whole_batch(mpirun, fmnist_dir, tmp_path):
    """Per-rank batches of 32 on 2 ranks give the parameters of batches of 64 in one process,
    to float32 rounding (the sums run in a different order).  Rank 0 works in directory
    ``a``, rank 1 in ``b``: the run directory (a relative path) appears only under ``a``."""
    args = [*TINY, "--epochs", "2", "--data-dir", str(fmnist_dir)]
    one, _ = launch(trainer(*args, "--procs", "1", "--output", str(tmp_path / "one")))
    assert one.returncode == 0, one.stderr
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rank = ["-n", "1", sys.executable, "-m", "minimlp.train", *args, "--output", "run"]
    two, seconds = launch([*mpirun, "-wdir", str(tmp_path / "a"), *rank, ":", "-wdir", str(tmp_path / "b"), *rank])
    assert two.returncode == 0, two.stderr
    assert sorted(p.name for p in (tmp_path / "a" / "run").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    assert list((tmp_path / "b").iterdir()) == [], "rank 1 writes nothing"
    assert two.stdout.count("run directory:") == 1 and "2 MPI ranks on 1 node" in two.stdout
    assert "epoch 2/2 [" in two.stderr and two.stderr.count("epoch 2/2 [###") <= 2, "one progress bar"
    a, b = load_checkpoint(tmp_path / "one" / "last.npz"), load_checkpoint(tmp_path / "a" / "run" / "last.npz")
    diff = max(float(np.abs(a.params[k] - b.params[k]).max()) for k in a.params)
    print(
        f"max |param(1 process, B=64) - param(2 ranks, B=32 each)| = {diff:.2e} after "
        f"{a.meta['step']} steps; the 2-rank run took {seconds:.1f} s"
    )
    assert a.meta["step"] == b.meta["step"] == 12 and diff < 1e-6
    m1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])
    m2 = json.loads((tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert m1["eval_top1"] == m2["eval_top1"] and m1["eval_top5"] == m2["eval_top5"], "evaluation sums over ranks"
    assert m1["eval_loss"] == pytest.approx(m2["eval_loss"], rel=1e-5)
    assert m1["train_loss"] == pytest.approx(m2["train_loss"], rel=1e-5)
    assert m1["train_top1"] == m2["train_top1"]


@pytest.mark.slow  # three launches, about 10 s
def test_a_resumed_two_rank_run_continues_bit_for_bit(mpirun, fmnist_dir, tmp_path):
    args = [*TINY, "--epochs", "2", "--drop", "0.1", "--drop-path", "0.1", "--data-dir", str(fmnist_dir)]
    straight, _ = launch([*mpirun, "-n", "2", *trainer(*args, "--output", str(tmp_path / "straight"))])
    assert straight.returncode == 0, straight.stderr
    first, _ = launch([*mpirun, "-n", "2", *job("stop-after-1", *args, "--output", str(tmp_path / "split"))])
    assert first.returncode == 0, first.stderr
    resumed, _ = launch([*mpirun, "-n", "2", *trainer("--resume", str(tmp_path / "split"))])
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_checkpoint(tmp_path / "straight" / "last.npz"), load_checkpoint(tmp_path / "split" / "last.npz")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_ranks_started_differently_are_stopped_naming_the_difference(mpirun, fmnist_dir, tmp_path):
    args = [*TINY, "--epochs", "1", "--data-dir", str(fmnist_dir), "--output", str(tmp_path / "run")]
    done, seconds = launch(
        [
            *mpirun,
            "-n",
            "1",
            *trainer(*args, "--lr", "0.1"),
            ":",
            "-n",
            "1",
            *trainer(*args, "--lr", "0.2", "--embed-dim", "32"),
        ]
    )
    assert done.returncode == 2, done.stderr  # a usage error
    err = done.stderr
    assert "the ranks were not started on the same job" in err
    assert "argument --lr: 0.1 on rank 0, 0.2 on rank 1" in err
    assert "model embed_dim: 16 on rank 0, 32 on rank 1" in err and "state parameters" in err
    assert err.count("not started on the same job") == 1, "said once, by rank 0"
    assert seconds < 30


@pytest.mark.parametrize(
    "scenario,message",
    [
        ("error", r"rank 1 of 2 \(.*\): error: a deliberate error on rank 1\nstopping the whole job"),
        ("crash", r"rank 1 of 2 \(.*\) failed:\nTraceback.*RuntimeError: a deliberate crash on rank 1"),
        ("kill", r"rank 1 .*exited on signal 9"),
        ("hang", r"rank 0 of 2 \(.*\): waited \d+ s in counting the images of step 3; another rank has probably died"),
    ],
)
def test_a_failing_rank_takes_the_job_down_with_a_message(mpirun, fmnist_dir, tmp_path, scenario, message):
    args = [*TINY, "--epochs", "1", "--data-dir", str(fmnist_dir), "--output", str(tmp_path / "run")]
    done, seconds = launch([*mpirun, "-n", "2", *job(scenario, *args)], MINIMLP_COLLECTIVE_TIMEOUT="2")
    assert done.returncode != 0
    assert re.search(message, done.stderr, re.S), done.stderr
    assert seconds < 30, f"the job took {seconds:.0f} s to go down"


def test_drifting_replicas_stop_every_rank(mpirun, fmnist_dir, tmp_path):
    args = [*TINY, "--epochs", "1", "--data-dir", str(fmnist_dir), "--output", str(tmp_path / "run")]
    done, _ = launch([*mpirun, "-n", "2", *job("drift", *args)])
    assert done.returncode == 1
    assert "error: the model replicas have drifted apart before step 3: the parameters of rank 1 differ" in done.stderr
    assert "MPI_ABORT" not in done.stderr, "every rank found it: a clean stop, no abort"


def test_sigusr1_to_mpirun_stops_every_rank_with_a_resumable_checkpoint(mpirun, fmnist_dir, tmp_path):
    """Ctrl-C makes mpirun kill the job; SIGUSR1, which mpirun forwards, stops it cleanly."""
    args = [
        *TINY,
        "--train-num-samples",
        "6400",
        "--epochs",
        "5",
        "--log-interval",
        "1",
        "--data-dir",
        str(fmnist_dir),
        "--output",
        str(tmp_path / "run"),
    ]
    process = subprocess.Popen(
        [*mpirun, "-n", "2", *trainer(*args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=mpi_env(),
    )
    lines = []
    try:
        for line in process.stderr:  # rank 0's progress: training has begun
            lines.append(line)
            if line.startswith("epoch 1/5 ["):
                process.send_signal(signal.SIGUSR1)
                break
        lines += process.stderr.readlines()
        assert process.wait(timeout=60) == 130, "".join(lines)
    finally:
        process.kill()
    err = "".join(lines)
    assert err.count("SIGUSR1: stopping after this step") == 1
    state = load_checkpoint(tmp_path / "run" / "last.npz").meta["run"]
    assert 0 < state["step"] < 500 and state["batch_in_epoch"] == state["step"] % 100


def test_one_seed_mixer_for_the_trainer_and_the_ranks():
    """The epoch orders, augmentations, rank seeds and dropout streams all come from sharding.seed_for,
    and give the seeds the trainer's and the ranks' mixers gave before they were one."""
    from minimlp import train
    from minimlp.parallel import ddp, sharding

    assert train.seed_for is sharding.seed_for is mpi.seed_for is ddp.seed_for
    assert not hasattr(mpi, "mixed_seed") and not hasattr(sharding, "ShardPlan")
    assert sharding.seed_for(7, 1, 0x5EED) == 3202257886782682187  # a rank's seed
    assert sharding.seed_for(0, 2, 1) == 7203126130259618810  # an epoch's augmentation
    assert sharding.seed_for(3, 5, 2, 1) == 6113718104754760344
