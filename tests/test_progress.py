"""The progress bar's clock: the images/s an epoch reports are the epoch's own."""

from __future__ import annotations

import io

from minimlp.train import progress


def test_speed_is_frozen_when_the_bar_closes(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    bar = progress.Progress(2, "epoch 1/1", stream=io.StringIO())
    for _ in range(2):
        now[0] += 1.0
        bar.update(images=64)
    bar.close()
    now[0] += 30.0  # the evaluation that follows the epoch
    assert bar.elapsed == 2.0
    assert bar.images_per_second == 64.0
