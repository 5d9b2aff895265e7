"""Reading and writing weights and checkpoints.

``weights.py`` is the entry point for any weights file (``load_weights``,
``load_pretrained``, ``model_from_checkpoint``); ``checkpoint.py`` is minimlp's own
``.npz`` format (training checkpoints and weights-only files); ``torchfile.py`` reads
PyTorch ``.pth`` files without PyTorch and without ``pickle``; ``safetensors.py`` reads
and writes the ecosystem's open format; ``files.py`` holds what they share (the error
type, atomic replacement, the shape check and bounded reprs every reader uses, so that no
file can make one crash, stall or fill memory).
"""
