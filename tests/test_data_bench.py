"""The loader benchmark runs end to end on a few synthetic photos and prints its table."""

from __future__ import annotations

import pytest

from minimlp.bench import loaders as loader_bench


@pytest.mark.slow
def test_loader_benchmark_prints_rates_next_to_the_baseline(capsys):
    assert (
        loader_bench.main(
            [
                "--synthetic",
                "8",
                "--images",
                "8",
                "--repeats",
                "1",
                "--workers",
                "0,1",
                "--img-size",
                "32",
                "--cache-px",
                "16",
                "-b",
                "4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for name in ("baseline", "workers=0", "workers=1", "cache", "cache-crop", "x baseline"):
        assert name in out
