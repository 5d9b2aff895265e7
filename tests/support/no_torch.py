"""The start of a child Python script in which every ``import torch...`` fails.

The tests that prove a .pth checkpoint is read without PyTorch run their script in a
fresh interpreter that begins with this text (``subprocess.run([python, "-c",
BLOCK_TORCH + script])``), so PyTorch stays out even where it is installed.
"""

import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:  # a finder that makes every `import torch...` fail
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, NoTorch())
""")
