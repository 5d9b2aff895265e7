"""The lessons: Markdown files whose code blocks the test suite runs (see run.py)."""
