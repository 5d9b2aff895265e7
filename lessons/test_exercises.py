"""The coded exercises: every checker fails on its stub, passes on its solution, and
catches a wrong answer in any output of any function the learner writes."""

from __future__ import annotations

import functools
import subprocess
import sys
from types import ModuleType

import numpy as np
import pytest

from lessons.checkers import EXERCISES, ExerciseFailed, load
from lessons.run import LESSONS_DIR, lesson_paths

CORE = ["01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "13"]
ALL = sorted(EXERCISES.values(), key=lambda e: e.stem)


def test_every_core_lesson_has_an_exercise_in_code():
    lessons = {p.name[:2]: p for p in lesson_paths() if p.name[2] == "_"}  # lessons, not their appendices
    assert set(CORE) <= set(EXERCISES) and len(EXERCISES) >= 11
    for number, exercise in EXERCISES.items():
        assert exercise.stem == lessons[number].stem, f"{exercise.stem} names no lesson"
        assert exercise.stub.is_file() and exercise.solution.is_file()
        text = lessons[number].read_text(encoding="utf-8")
        assert f"exercises/{exercise.stem}.py" in text, f"{lessons[number].name} does not point to its exercise"


@pytest.mark.parametrize("exercise", ALL, ids=lambda e: e.stem)
def test_checker_fails_on_the_stub(exercise):
    with pytest.raises(ExerciseFailed, match="not written yet"):
        exercise.check(load(exercise.stub))


@pytest.mark.parametrize("exercise", ALL, ids=lambda e: e.stem)
def test_checker_passes_the_solution(exercise):
    passed = exercise.check(load(exercise.solution))
    assert passed and all(isinstance(line, str) for line in passed)


def nudged(value, which):
    """``value`` with output number ``which`` made slightly wrong (None: all of it)."""
    if isinstance(value, tuple):
        return tuple(nudged(v, None) if which in (None, i) else v for i, v in enumerate(value))
    if isinstance(value, dict):
        return {k: nudged(v, None) for k, v in value.items()}
    if isinstance(value, (np.ndarray, float, np.floating)):
        return value * 1.001 + 1e-3
    return value


def broken(exercise, name: str, which: int) -> ModuleType:
    """The solution, with output ``which`` of ``name`` slightly off (for an in-place update:
    the array it updates)."""
    module = load(exercise.solution)
    right = getattr(module, name)

    @functools.wraps(right)
    def wrong(*args, **kwargs):
        result = right(*args, **kwargs)
        if result is None:  # an in-place update: spoil what it updated
            args[0][...] = nudged(args[0], None)
            return None
        return nudged(result, which)

    setattr(module, name, wrong)
    return module


def outputs(exercise, name: str) -> int:
    """How many outputs the solution's function gives, found by calling the checker with a spy."""
    module = load(exercise.solution)
    right, seen = getattr(module, name), []

    def spy(*args, **kwargs):
        result = right(*args, **kwargs)
        seen.append(len(result) if isinstance(result, tuple) else 1)
        return result

    setattr(module, name, spy)
    exercise.check(module)
    return seen[0]


@pytest.mark.parametrize("exercise", ALL, ids=lambda e: e.stem)
def test_checker_names_a_wrong_output(exercise):
    for name in exercise.functions:
        for which in range(outputs(exercise, name)):
            if name == "paper_block_forward" and which == 1:
                continue  # the cache: the learner's own business
            with pytest.raises(ExerciseFailed) as failure:
                exercise.check(broken(exercise, name, which))
            message = str(failure.value)
            assert "not written" not in message and " raised " not in message, message
            assert "wrong" in message or "NaN" in message, message


def test_checker_says_how_an_answer_is_off():
    check = EXERCISES["02"].check
    module = load(EXERCISES["02"].solution)
    right = module.patch_embed_backward
    module.patch_embed_backward = lambda dt, x, K: (lambda r: (r[0], 2 * r[1], r[2]))(right(dt, x, K))
    with pytest.raises(ExerciseFailed, match=r"dK is wrong.*2 times the right answer"):
        check(module)
    module.patch_embed_backward = lambda dt, x, K: (lambda r: (r[0], r[1].reshape(r[1].shape[0], -1), r[2]))(
        right(dt, x, K)
    )
    with pytest.raises(ExerciseFailed, match=r"dK has shape \(5, 48\), expected \(5, 3, 4, 4\)"):
        check(module)
    module.patch_embed_backward = lambda dt, x, K: right(dt, x, K)[:2]
    with pytest.raises(ExerciseFailed, match=r"should return a tuple of 3 \(dx, dK, dbias\), got a tuple of 2"):
        check(module)


def test_a_forward_difference_is_told_apart():
    module = load(EXERCISES["08"].solution)

    def forward_difference(f, x, h=1e-6):
        base, grad = f(), np.zeros(x.shape)
        for i in np.ndindex(x.shape):
            saved = x[i]
            x[i] = saved + h
            grad[i] = (f() - base) / h
            x[i] = saved
        return grad

    module.numerical_gradient = forward_difference
    with pytest.raises(ExerciseFailed, match="forward difference"):
        EXERCISES["08"].check(module)


def test_run_py_checks_a_file(tmp_path):
    run_py = str(LESSONS_DIR / "run.py")
    ok = subprocess.run(
        [sys.executable, run_py, "03", "--exercise", str(EXERCISES["03"].solution)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "every check passed" in ok.stdout, ok.stderr
    stub = subprocess.run([sys.executable, run_py, "03", "--exercise"], capture_output=True, text=True, timeout=60)
    assert stub.returncode == 1 and "gelu_tanh_backward is not written yet" in stub.stderr
    mine = tmp_path / "mine.py"
    mine.write_text("def gelu_tanh_backward(dy, x):\n    return dy\n")
    wrong = subprocess.run(
        [sys.executable, run_py, "03", "--exercise", str(mine)], capture_output=True, text=True, timeout=60
    )
    assert wrong.returncode == 1 and "gelu_tanh_backward: dx is wrong" in wrong.stderr
    none = subprocess.run([sys.executable, run_py, "11", "--exercise"], capture_output=True, text=True, timeout=60)
    assert none.returncode == 2 and "no coded exercise" in none.stderr
    missing = subprocess.run(
        [sys.executable, run_py, "03", "--exercise", str(tmp_path / "nothing.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such file" in missing.stderr
