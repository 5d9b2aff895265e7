"""Reading and writing weights and checkpoints.

``weights.py`` is the entry point (``load_weights``, ``load_pretrained``,
``model_from_checkpoint``); ``torchfile.py`` reads PyTorch ``.pth`` files without PyTorch
and without ``pickle``; ``safetensors.py`` and ``npz.py`` are the open formats minimlp
writes; ``files.py`` holds what they share (the error type, atomic replacement).
"""
