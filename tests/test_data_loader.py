"""The parallel loader: same batches for any number of workers, bad files skipped and reported,
worker failures raised in the main process naming the item, no hang, clean shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from support.fake_readers import NoiseReader, item_value

from minimlp.data.loader import BadImagesWarning, BatchLoader, LoaderError, TooManyBadImagesError

ITEMS = [f"img{i}" for i in range(23)]
LABELS = np.arange(23, dtype=np.int64) % 5


def collect(loader, items=ITEMS, labels=LABELS, batch_size=4, train=True, seed=0):
    return list(loader.batches(items, labels, batch_size, train, seed))


def test_same_batches_for_any_number_of_workers():
    results = {}
    for workers in (0, 1, 3):
        with BatchLoader(NoiseReader(), (3, 8, 8), workers=workers) as loader:
            results[workers] = collect(loader, seed=11)
            assert [len(b[1]) for b in results[workers]] == [4, 4, 4, 4, 4, 3]
    for workers in (1, 3):
        for (a, la), (b, lb) in zip(results[0], results[workers], strict=True):
            assert a.dtype == np.uint8 and a.shape[1:] == (3, 8, 8)
            assert (a == b).all() and (la == lb).all()
    with BatchLoader(NoiseReader(), (3, 8, 8), workers=0) as loader:
        other_seed = collect(loader, seed=12)
    assert not (other_seed[0][0] == results[0][0][0]).all()


def test_batches_follow_the_indices_and_are_independent_copies():
    with BatchLoader(NoiseReader(), (3, 8, 8), workers=2, prefetch=1) as loader:
        batches = collect(loader, train=False)  # eval: each item's pixels are a function of the item
    expected = [item_value(item) for item in ITEMS]
    got = [int(img[0, 0, 0]) for images, _ in batches for img in images]
    assert got == expected  # kept in order although the 2-slot ring was reused 6 times
    assert (np.concatenate([lab for _, lab in batches]) == LABELS).all()


def test_bad_items_are_skipped_counted_and_reported_at_the_end():
    items = list(ITEMS)
    items[5], items[9] = "bad_a.JPEG", "bad_b.JPEG"
    with BatchLoader(NoiseReader(), (3, 8, 8), workers=2, max_bad=5) as loader:
        with pytest.warns(BadImagesWarning, match="skipped 2 file") as record:
            batches = collect(loader, items=items)
        assert "bad_a.JPEG" in str(record[0].message) and "bad_b.JPEG" in str(record[0].message)
        labels = np.concatenate([lab for _, lab in batches])
        assert len(labels) == 21 and (labels == np.delete(LABELS, [5, 9])).all()
        assert set(loader.bad_files) == {"bad_a.JPEG", "bad_b.JPEG"}


def test_too_many_bad_items_stop_the_run_with_their_names():
    items = [f"bad{i}" for i in range(4)] + ITEMS[:4]
    with BatchLoader(NoiseReader(), (3, 8, 8), workers=0, max_bad=2) as loader:
        with pytest.raises(TooManyBadImagesError, match="bad0") as info:
            collect(loader, items=items, labels=np.zeros(8, np.int64))
    assert "bad2" in str(info.value) and "more than the 2 allowed" in str(info.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_worker_exception_is_raised_here_naming_the_item(workers):
    items = list(ITEMS)
    items[13] = "boom"
    loader = BatchLoader(NoiseReader(), (3, 8, 8), workers=workers)
    start = time.monotonic()
    with pytest.raises(LoaderError, match="loading boom failed") as info:
        collect(loader, items=items)
    assert "the reader broke" in str(info.value) and time.monotonic() - start < 30
    if workers:
        assert "RuntimeError" in str(info.value) and "worker traceback" in str(info.value)
        assert loader._holder.get("pool") is None  # shut down after the failure
    assert collect(loader)  # and usable again
    loader.close()


def test_a_dead_worker_is_noticed_promptly():
    items = list(ITEMS)
    items[7] = "die"
    loader = BatchLoader(NoiseReader(), (3, 8, 8), workers=2)
    start = time.monotonic()
    with pytest.raises(LoaderError, match="killed by signal 9"):
        collect(loader, items=items)
    assert time.monotonic() - start < 20
    loader.close()


@pytest.mark.slow
def test_a_stalled_worker_times_out():
    items = list(ITEMS[:4])
    items[1] = "slow"
    loader = BatchLoader(NoiseReader(), (3, 8, 8), workers=1, timeout=1.5)
    with pytest.raises(LoaderError, match="no batch from the data workers"):
        collect(loader, items=items, labels=LABELS[:4])
    loader.close()


def test_stopping_early_then_starting_again_and_a_nested_pass():
    with BatchLoader(NoiseReader(), (3, 8, 8), workers=2) as loader:
        reference = collect(loader, seed=3)
        for i, _ in enumerate(loader.batches(ITEMS, LABELS, 4, True, 99)):
            if i == 1:
                break  # abandoned with batches in flight
        again = collect(loader, seed=3)
        assert all((a[0] == b[0]).all() for a, b in zip(reference, again, strict=True))
        outer = loader.batches(ITEMS, LABELS, 4, True, 3)
        first = next(outer)
        nested = collect(loader, seed=3)  # runs in this process while the workers serve `outer`
        rest = list(outer)
        assert all((a[0] == b[0]).all() for a, b in zip(reference, nested, strict=True))
        assert all((a[0] == b[0]).all() for a, b in zip(reference, [first, *rest], strict=True))


def _shm_names() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").is_dir() else set()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /dev/shm and /proc")
@pytest.mark.parametrize("where", ["waiting for a batch", "while training"])
def test_ctrl_c_stops_workers_and_frees_shared_memory(tmp_path, where):
    script = tmp_path / "run.py"
    pids = tmp_path / "pids.txt"
    decode_time, step_time = (0.2, 0.0) if where == "waiting for a batch" else (0.0, 0.3)
    script.write_text(
        textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parent.parent)]!r}
        import numpy as np
        from support.fake_readers import NoiseReader
        from minimlp.data.loader import BatchLoader

        if __name__ == "__main__":
            loader = BatchLoader(NoiseReader(sleep={decode_time}), (3, 8, 8), workers=2)
            items = [str(i) for i in range(10000)]
            for i, _ in enumerate(loader.batches(items, np.zeros(10000, np.int64), 4, True, 0)):
                time.sleep({step_time})  # the "training step"
                if i == 1:
                    pool = loader._holder["pool"]
                    open({str(pids)!r}, "w").write(" ".join(str(p.pid) for p in pool.procs) + "\\n"
                                                   + " ".join(s.name for s in pool.slots))
                    print("ready", flush=True)
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert "leaked" not in err and "Traceback" not in err.split("KeyboardInterrupt")[-1]
    worker_pids, slot_names = (line.split() for line in pids.read_text().splitlines())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in worker_pids):
        time.sleep(0.1)
    assert not [pid for pid in worker_pids if Path(f"/proc/{pid}").exists()], "orphaned workers"
    assert not set(slot_names) & _shm_names(), "shared memory left behind"


def test_forgetting_close_does_not_leak():
    loader = BatchLoader(NoiseReader(), (3, 8, 8), workers=1)
    collect(loader)
    names = [s.name for s in loader._holder["pool"].slots]
    procs = list(loader._holder["pool"].procs)
    del loader  # the finalizer stops the workers and unlinks the slots
    assert not set(names) & _shm_names()
    assert not [p for p in procs if p.is_alive()]
