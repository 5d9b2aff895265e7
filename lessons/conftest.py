"""Collect every lesson (``NN_*.md``) as a test that runs all of its code blocks.

Each lesson runs in its own Python process (``lessons/run.py``), in a fresh working
directory, exactly as a reader runs it; a failure reports the lesson's file, the block
and the line inside the .md file.  Afterwards every figure the lesson shows must have
been drawn by its code and look like the committed one in ``lessons/figures/``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lessons.run import EXIT_SKIP, LESSON_NAME, LESSONS_DIR, figures_of

# The largest mean difference, in 0..255 grey levels, between a figure the lesson draws
# now and the committed one: rounding in another BLAS may move a pixel, a changed
# lesson moves many.
FIGURE_TOLERANCE = 2.0


def pytest_collect_file(file_path: Path, parent):
    if file_path.parent == LESSONS_DIR and LESSON_NAME.match(file_path.name):
        return LessonFile.from_parent(parent, path=file_path)
    return None


class LessonFile(pytest.File):
    def collect(self):
        yield LessonItem.from_parent(self, name="run")


class LessonFailed(Exception):
    pass


class LessonItem(pytest.Item):
    def runtest(self) -> None:
        with tempfile.TemporaryDirectory(prefix=f"minimlp-{self.path.stem}-") as tmp:
            workdir = Path(tmp)
            proc = subprocess.run(
                [sys.executable, str(LESSONS_DIR / "run.py"), str(self.path), "--workdir", tmp],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if proc.returncode == EXIT_SKIP:
                pytest.skip(proc.stderr.strip())
            if proc.returncode != 0:
                raise LessonFailed(proc.stderr.strip() or proc.stdout.strip())
            for name in figures_of(self.path.read_text(encoding="utf-8")):
                drawn, committed = workdir / name, LESSONS_DIR / "figures" / name
                assert drawn.exists(), f"{self.path.name} shows figures/{name} but its code did not draw {name}"
                assert committed.exists(), (
                    f"figures/{name} is not committed (python lessons/run.py {self.path.name} --update-figures)"
                )
                a = np.asarray(Image.open(drawn).convert("RGB"), dtype=np.float64)
                b = np.asarray(Image.open(committed).convert("RGB"), dtype=np.float64)
                assert a.shape == b.shape, f"figures/{name}: drawn {a.shape}, committed {b.shape}"
                diff = float(np.abs(a - b).mean())
                assert diff <= FIGURE_TOLERANCE, (
                    f"figures/{name} differs from what {self.path.name} draws now (mean difference {diff:.1f}); "
                    f"if the lesson changed on purpose: python lessons/run.py {self.path.name} --update-figures"
                )

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, LessonFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"lesson {self.path.name}"
