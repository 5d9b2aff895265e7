"""The rules every lesson keeps, and the runner's promises (the lessons themselves are
collected by conftest.py and run as one test each)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lessons.run import EXIT_SKIP, LESSONS_DIR, check_fences, figures_of, lesson_paths, parse_blocks

RUN_PY = str(LESSONS_DIR / "run.py")


def run(path: Path, workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, RUN_PY, str(path), "--workdir", str(workdir)], capture_output=True, text=True, timeout=60
    )


def is_appendix(path: Path) -> bool:
    return re.match(r"\d\d[a-z]_", path.name) is not None


@pytest.mark.parametrize("path", lesson_paths(), ids=lambda p: p.name)
def test_lesson_shape(path):
    """Fences are known; no-run blocks are rare and explained; a lesson ends in an exercise,
    an optional appendix says whose appendix it is."""
    text = path.read_text(encoding="utf-8")
    assert check_fences(text) == []
    blocks = parse_blocks(text)
    assert sum(b.info.endswith("no-run") for b in blocks) <= 1, "at most one block per lesson may go unrun"
    if is_appendix(path):
        assert text.startswith(f"# Appendix to lesson {int(path.name[:2])} — "), "an appendix names its lesson"
        assert sum(b.info == "python" for b in blocks) >= 1
        return
    assert sum(b.info == "python" for b in blocks) >= 3
    assert text.startswith("# "), "a lesson starts with its title"
    assert re.search(r"^## Exercise", text, re.M), "a lesson ends with an exercise"


# The core path: every lesson but the engineering ones (11, 12) is read in one sitting.
CORE_WORDS = 2500


@pytest.mark.parametrize(
    "path", [p for p in lesson_paths() if not is_appendix(p) and p.name[:2] not in ("11", "12")], ids=lambda p: p.name
)
def test_core_lessons_are_short(path):
    """Everything before the exercise, code included, in words as `wc -w` counts them."""
    text = path.read_text(encoding="utf-8")
    reading = text[: re.search(r"^## Exercise", text, re.M).start()]
    assert len(reading.split()) <= CORE_WORDS, f"{path.name}: {len(reading.split())} words before its exercise"


def test_readme_links_every_lesson():
    readme = (LESSONS_DIR / "README.md").read_text(encoding="utf-8")
    for path in lesson_paths():
        assert f"]({path.name})" in readme, f"README.md does not link {path.name}"
    for link in re.findall(r"\]\((\d\d_[a-z0-9_]+\.md)\)", readme):
        assert (LESSONS_DIR / link).exists(), f"README.md links {link}, which does not exist"


def test_every_committed_figure_is_shown():
    shown = {name for p in lesson_paths() for name in figures_of(p.read_text(encoding="utf-8"))}
    committed = {p.name for p in (LESSONS_DIR / "figures").glob("*.png")}
    assert committed <= shown, f"figures no lesson shows: {sorted(committed - shown)}"


def test_no_run_block_needs_a_visible_reason():
    ok = "Text.\n\nNot run: it downloads 150 GB.\n\n```bash no-run\ntrain --imagenet\n```\n"
    silent = "Text.\n\n```python no-run\nx = 1\n```\n"
    assert check_fences(ok) == []
    assert "Not run" in check_fences(silent)[0]
    assert "not one of" in check_fences("```js\nx\n```\n")[0]


def test_failure_names_the_lesson_file_and_line(tmp_path):
    lesson = tmp_path / "99_broken.md"
    lesson.write_text(
        "# Broken\n\n```python\nx = 1\n```\n\nProse.\n\n```python\ny = x + 1\nassert y == 3, 'two'\n```\n"
    )
    proc = run(lesson, tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"{lesson}:10: block 2 of 2 failed (AssertionError: two)")
    # The traceback points at the assert's own line in the .md file and shows it.
    assert f'File "{lesson}", line 11' in proc.stderr and "assert y == 3" in proc.stderr


def test_blocks_share_a_namespace_and_run_in_the_workdir(tmp_path):
    lesson = tmp_path / "98_ok.md"
    lesson.write_text(
        "# Ok\n\n```python\nimport minimlp\nn = 2\n```\n\n"
        "```text\nnot code\n```\n\n```python\nopen('out.txt', 'w').write(str(n))\n```\n"
    )
    workdir = tmp_path / "work"
    proc = run(lesson, workdir)
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "out.txt").read_text() == "2"


def test_skip_is_clean(tmp_path):
    lesson = tmp_path / "97_skip.md"
    lesson.write_text("# Skip\n\n```python\nimport unittest\nraise unittest.SkipTest('no data here')\n```\n")
    proc = run(lesson, tmp_path)
    assert proc.returncode == EXIT_SKIP and "no data here" in proc.stderr
