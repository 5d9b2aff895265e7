"""``evaluate --pretrained X.pth`` and ``predict --pretrained X.pth`` as the paper's released weights
would be used: a PyTorch twin of ``ff_tiny`` (224 px, 1000 classes) saved by ``torch.save`` as a DeiT
training checkpoint, a generated 224-px ImageNet-style val tree of real JPEGs, and the two commands
run with ``python -m`` in a process where ``torch`` cannot be imported.

The reference is PyTorch itself with the paper's evaluation transform written out with Pillow:
resize the short side to 256 (bicubic), center-crop 224, scale to [0, 1], ImageNet mean and std.
The images are sorted into val/<wnid>/ folders from the twin's own predictions, so the top-1 and
top-5 accuracy evaluate must print are known exactly, and predict must print the twin's top-5
classes with its probabilities.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minimlp.data.classes import imagenet_table
from minimlp.data.synthetic import photo_like

torch = pytest.importorskip("torch", reason="PyTorch is an optional test dependency")
from support.no_torch import BLOCK_TORCH  # noqa: E402
from support.torch_twin import TwinFFViT  # noqa: E402

pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
SIZES = [(500, 375), (375, 500), (300, 300), (640, 427), (256, 320), (333, 500)]  # ImageNet-like shapes


def paper_transform(path: Path) -> np.ndarray:
    """DeiT's evaluation transform (torchvision Resize(256, bicubic) + CenterCrop(224) + ToTensor +
    Normalize), written out with Pillow: (3, 224, 224) float32."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    ow, oh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    img = img.resize((ow, oh), Image.Resampling.BICUBIC)
    left, top = int(round((ow - 224) / 2.0)), int(round((oh - 224) / 2.0))
    x = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    d = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    twin = TwinFFViT()  # ff_tiny: 224 px, patch 16, dim 192, depth 12, 1000 classes
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in twin.parameters():  # non-trivial LayerNorms and biases
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        twin.head.weight.mul_(15.0)  # spread the logits: predictions far from ties
    args = argparse.Namespace(model="linear_tiny", input_size=224, data_path="/data/imagenet")
    torch.save({"model": twin.state_dict(), "epoch": 299, "args": args}, d / "linear-tiny-checkpoint.pth")

    staging = d / "staging"
    staging.mkdir()
    rng = np.random.default_rng(2)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        paths.append(staging / f"ILSVRC2012_val_{i:08d}.JPEG")
        photo_like(w, h, rng).save(paths[-1], quality=90)
    x = np.stack([paper_transform(p) for p in paths])
    with torch.no_grad():
        logits = twin(torch.from_numpy(x)).double()
    probs = torch.softmax(logits, dim=1).numpy()
    order = np.argsort(-probs, axis=1)  # (6, 1000), best first
    gaps = -np.diff(np.sort(logits.numpy(), axis=1)[:, ::-1][:, :6], axis=1)  # (6, 5) between neighbours
    assert gaps.min() > 0.01, "top-6 logits too close to compare orders safely; change the seed"

    # Images 0-2 go to their top-1 class, image 3 to its third choice, 4-5 to their least likely.
    wnids = [c.wnid for c in imagenet_table()]
    labels = [order[0, 0], order[1, 0], order[2, 0], order[3, 2], order[4, -1], order[5, -1]]
    for path, label in zip(paths, labels, strict=True):
        folder = d / "imagenet" / "val" / wnids[label]
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, folder / path.name)
    images = [d / "imagenet" / "val" / wnids[label] / path.name for path, label in zip(paths, labels, strict=True)]
    return {"dir": d, "probs": probs, "order": order, "images": images, "labels": labels}


_WITHOUT_TORCH = BLOCK_TORCH + textwrap.dedent("""
    import runpy

    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    try:
        runpy.run_module(module, run_name="__main__")
    finally:
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print(f"torch modules loaded: {loaded}")
""")


def run_without_torch(module: str, *argv: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, module, *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "torch modules loaded: []" in run.stdout
    return run.stdout


def test_evaluate_the_released_weights_with_the_papers_transform(released):
    d = released["dir"]
    out = run_without_torch(
        "minimlp.evaluate",
        "--pretrained",
        str(d / "linear-tiny-checkpoint.pth"),
        "--data-dir",
        str(d / "imagenet"),
        "-j",
        "0",
    )
    assert "(pth, 7,676,332 parameters, 1000 classes)" in out
    assert "6 images, 1000 classes, 224 px" in out  # val/ alone: the 1000-class ImageNet indices
    # 3 of 6 in the top-1 class, one more in the top 5.
    assert re.search(r"top-1 50\.00%  top-5 66\.67%", out), out
    assert f"({1000 - len(set(released['labels']))} of the model's 1000 classes have no images here)" in out


def test_predict_matches_pytorch_top5_and_probabilities(released):
    d, order, probs = released["dir"], released["order"], released["probs"]
    out = run_without_torch(
        "minimlp.predict", "--pretrained", str(d / "linear-tiny-checkpoint.pth"), *map(str, released["images"])
    )
    names = [c.name for c in imagenet_table()]
    blocks = out.split("torch modules loaded")[0].strip().split("\n")
    for i, path in enumerate(released["images"]):
        start = blocks.index(str(path))
        rows = [re.fullmatch(r"\s*([\d.]+)%  (.+)", line).groups() for line in blocks[start + 1 : start + 6]]
        assert [name for _, name in rows] == [names[k] for k in order[i, :5]], path.name
        for (shown, _), k in zip(rows, order[i, :5], strict=True):
            assert abs(float(shown) - 100 * probs[i, k]) < 0.011, (path.name, shown, 100 * probs[i, k])
