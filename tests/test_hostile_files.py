"""Hostile weights files (tests/support/hostile_files.py): each is refused with one line naming the
file, in a few seconds and a few hundred MB, by the readers and by every command.

The readers run in a child process with its address space capped (support/reader_sandbox.py), so
a reader that crashes, stalls or fills memory fails its test instead of the test run.
"""

from __future__ import annotations

import pytest
from support.hostile_files import (
    ATTACKS,
    npz_enormous_config,
    npz_huge_claim,
    pth_duplicate_entries,
    st_deep_json,
    st_scalar_cls_token,
)
from support.reader_sandbox import read_in_child

from minimlp import convert, evaluate, predict, train

SECONDS, MEGABYTES = 5, 300  # what one read of any of these files may take


@pytest.mark.parametrize("name", list(ATTACKS))
def test_hostile_file_is_refused_in_bounded_time_and_memory(tmp_path, name):
    attack = ATTACKS[name]
    path = attack.make(tmp_path / f"hostile{attack.suffix}")
    result = read_in_child(path, attack.reader, memory_mb=1000, timeout=30)
    assert result.outcome == "refused", f"{name}: {result.outcome}: {result.message}"
    assert result.message.startswith(f"{path}: ") and result.lines == 1, result.message
    assert attack.fragment in result.message, result.message
    assert result.seconds < SECONDS and result.added_mb < MEGABYTES, f"{name}: {result}"


def _argv(command: str, path, tmp_path) -> list[str]:
    run = ["--output", str(tmp_path / "run"), "--epochs", "1"]
    return {
        "convert": [str(path), str(tmp_path / "out.safetensors")],
        "evaluate": ["--checkpoint", str(path)],
        "predict": ["--checkpoint", str(path), str(tmp_path / "image.png")],
        "train --pretrained": ["--pretrained", str(path), *run],
        "train --resume": ["--resume", str(path), *run],
    }[command]


MAINS = {
    "convert": convert.main,
    "evaluate": evaluate.main,
    "predict": predict.main,
    "train --pretrained": train.main,
    "train --resume": train.main,
}
# Files that failed fast before the readers were bounded (so that this test, run
# in-process, fails rather than hangs on a reader that is not).
CLI_FILES = {
    "0-d cls_token": (st_scalar_cls_token, ".safetensors"),
    "deep JSON": (st_deep_json, ".safetensors"),
    "npz claiming 10**12 elements": (npz_huge_claim, ".npz"),
    "huge stored config": (npz_enormous_config, ".npz"),
    "duplicate data.pkl": (pth_duplicate_entries, ".pth"),
}


@pytest.mark.parametrize("command", list(MAINS))
@pytest.mark.parametrize("hostile", list(CLI_FILES))
def test_every_command_reports_a_bad_file_in_one_line_and_exits_2(tmp_path, capsys, command, hostile):
    make, suffix = CLI_FILES[hostile]
    if command == "convert" and hostile == "0-d cls_token":
        pytest.skip("valid tensors of no model minimlp knows: convert copies them, with a note")
    path = make(tmp_path / f"hostile{suffix}")
    assert MAINS[command](_argv(command, path, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {path}: "), err


@pytest.mark.parametrize("command", list(MAINS))
def test_a_path_that_cannot_be_opened_is_one_line_too(tmp_path, capsys, command):
    (tmp_path / "file").write_bytes(b"")
    path = tmp_path / "file" / "weights.npz"  # a file where a folder should be: NotADirectoryError
    assert MAINS[command](_argv(command, path, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err, err
