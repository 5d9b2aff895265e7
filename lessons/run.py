"""Run a lesson: execute its ```python blocks in order, in one namespace, as the tests do.

    python lessons/run.py 03                      # by number, by file name or by path
    python lessons/run.py 06 --workdir out/        # keep the pictures it draws in out/
    python lessons/run.py 06 --update-figures      # refresh lessons/figures/ from this run
    python lessons/run.py 02 --exercise [FILE]     # check the lesson's coded exercise (checkers.py)

A block fenced as ```python no-run is shown but not run; the sentence just above it must
say "Not run" and why (see check_fences).  A lesson may raise unittest.SkipTest("why"),
for example when a data set it reads is not installed; that ends it cleanly (exit 77).
A failing block is reported with the lesson's file name and the line inside the .md file.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import traceback
import unittest
from pathlib import Path
from typing import NamedTuple

LESSONS_DIR = Path(__file__).resolve().parent
LESSON_NAME = re.compile(r"^\d\d[a-z]?_[a-z0-9_]+\.md$")  # 13_attention.md; 13a_...: its appendix
FIGURE_LINK = re.compile(r"\]\(figures/([A-Za-z0-9_.-]+\.png)\)")
EXIT_SKIP = 77  # the exit status build tools use for "skipped"
RUN = "python"  # the fence info strings: what is run, and what is only shown
ALLOWED = {"python", "python no-run", "bash no-run", "text"}


class Block(NamedTuple):
    line: int  # line number of the block's first code line in the .md file (1-based)
    info: str  # the fence's info string, e.g. "python" or "python no-run"
    code: str


def lesson_paths() -> list[Path]:
    return sorted(p for p in LESSONS_DIR.iterdir() if LESSON_NAME.match(p.name))


def find_lesson(name: str) -> Path:
    """A lesson by path, file name or number ("3", "03", "03_gelu.md"; "13a" for an appendix)."""
    if Path(name).is_file():
        return Path(name).resolve()
    for path in lesson_paths():
        if path.name == name or path.name.split("_")[0] == name.zfill(2):
            return path
    known = ", ".join(p.name for p in lesson_paths())
    raise SystemExit(f"no lesson {name!r}; the lessons are: {known}")


def parse_blocks(text: str) -> list[Block]:
    """Every fenced code block (``` at the start of a line), with where its code starts."""
    blocks, info, start, code = [], None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        if info is None and line.startswith("```"):
            info, start, code = line[3:].strip(), number + 1, []
        elif info is not None and line.rstrip() == "```":
            blocks.append(Block(start, info, "\n".join(code) + "\n"))
            info = None
        elif info is not None:
            code.append(line)
    if info is not None:
        raise ValueError(f"the code block opened at line {start - 1} is never closed")
    return blocks


def check_fences(text: str) -> list[str]:
    """What is wrong with a lesson's fences: unknown info strings, unexplained no-run blocks.

    A block that is not run must be rare and say why where the reader sees it: the last
    non-blank line before its fence contains "Not run".
    """
    problems = []
    lines = text.splitlines()
    for block in parse_blocks(text):
        fence = block.line - 1
        if block.info not in ALLOWED:
            problems.append(f"line {fence}: fence info {block.info!r} is not one of {sorted(ALLOWED)}")
        if block.info.endswith("no-run"):
            before = [ln for ln in lines[: fence - 1] if ln.strip()]
            if not before or "Not run" not in before[-1]:
                problems.append(f"line {fence}: a no-run block needs a 'Not run: <why>' line just above it")
    return problems


def figures_of(text: str) -> list[str]:
    """The figure files a lesson shows (Markdown image links into figures/)."""
    return sorted(set(FIGURE_LINK.findall(text)))


def shown(path: Path) -> str:
    """The path as a reader at the repository root would type it."""
    try:
        return str(path.relative_to(LESSONS_DIR.parent))
    except ValueError:
        return str(path)


class LessonError(Exception):
    """A block of a lesson raised; the message names the file and the line."""


def lesson_of(appendix: Path) -> Path | None:
    """The lesson an appendix (``13a_...md``) continues; None for a lesson."""
    number = re.match(r"(\d\d)[a-z]_", appendix.name)
    return find_lesson(number.group(1)) if number else None


def run_lesson(path: Path, workdir: Path) -> None:
    """Execute the lesson's python blocks in ``workdir``, in order, in one namespace.

    An appendix continues its lesson: the lesson's blocks run first, in the same
    namespace, so every name the lesson defined is there.  Each block is compiled under
    the .md file's own name, padded so that its line numbers are the file's: tracebacks
    point at the line in the lesson.
    """
    path = Path(path).resolve()
    namespace = {"__name__": "__lesson__"}
    for extra in (str(LESSONS_DIR.parent), str(LESSONS_DIR)):  # minimlp, and lessons/draw.py
        if extra not in sys.path:
            sys.path.insert(0, extra)
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        for source in (lesson_of(path), path):
            if source is None:
                continue
            runnable = [b for b in parse_blocks(source.read_text(encoding="utf-8")) if b.info == RUN]
            for index, block in enumerate(runnable, start=1):
                code = compile("\n" * (block.line - 1) + block.code, str(source), "exec")
                try:
                    exec(code, namespace)
                except unittest.SkipTest:
                    raise
                except BaseException as exc:
                    raise LessonError(
                        f"{shown(source)}:{block.line}: block {index} of {len(runnable)} failed "
                        f"({type(exc).__name__}: {exc})"
                    ) from exc
    finally:
        os.chdir(previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one lesson's code blocks in order.")
    parser.add_argument("lesson", help="number (03), file name (03_gelu.md) or path")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the lesson runs and writes its pictures (default: a new temporary directory, kept)",
    )
    parser.add_argument(
        "--update-figures", action="store_true", help="copy the pictures the lesson shows into lessons/figures/"
    )
    parser.add_argument(
        "--exercise",
        nargs="?",
        const="",
        metavar="FILE",
        type=str,
        help="check your answer to the lesson's coded exercise instead of running the lesson "
        "(default FILE: lessons/exercises/NN_name.py)",
    )
    args = parser.parse_args(argv)
    # Lessons work on small arrays, for which a multi-threaded BLAS spends more time
    # waking threads than multiplying (on a busy machine, ten times more).
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    path = find_lesson(args.lesson)
    if args.exercise is not None:
        if str(LESSONS_DIR.parent) not in sys.path:
            sys.path.insert(0, str(LESSONS_DIR.parent))
        from checkers import run_exercise

        return run_exercise(path.name[:2], Path(args.exercise) if args.exercise else None)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"minimlp-{path.stem}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run_lesson(path, workdir)
    except unittest.SkipTest as skip:
        print(f"skipped {path.name}: {skip}", file=sys.stderr)
        return EXIT_SKIP
    except LessonError as err:
        cause = err.__cause__
        print(err, file=sys.stderr)  # first: the line a test report shows
        traceback.print_exception(type(cause), cause, cause.__traceback__.tb_next, file=sys.stderr)  # from the block on
        return 1
    if args.update_figures:
        for name in figures_of(path.read_text(encoding="utf-8")):
            shutil.copyfile(workdir / name, LESSONS_DIR / "figures" / name)
    print(f"{path.name}: every block ran; its files are in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
