"""Convert weights between PyTorch ``.pth``, minimlp ``.npz`` and ``.safetensors``.

    python -m minimlp.convert linear-tiny-checkpoint.pth ff_tiny.safetensors
    python -m minimlp.convert linear-tiny-checkpoint.pth ff_tiny_ema.npz --ema
    python -m minimlp.convert run/best.npz best.safetensors

The input format is recognised from the file's content, the output format from its
extension (or ``--format``).  A ``.pth`` is read without PyTorch and without unpickling
(see ``minimlp.io.torchfile``) but never written: it is a pickle, which ``torch.load``
runs as code.  The output holds weights only, with the model's config: the one a minimlp
file stores, or the one the tensor names and shapes imply (the released FF-ViT files, timm's
ViT/DeiT and MLP-Mixer), so that ``evaluate``, ``predict`` and
``minimlp.io.weights.model_from_checkpoint`` rebuild the model from the output alone.
"""

from __future__ import annotations

import argparse
import sys

from minimlp.io.files import CheckpointError
from minimlp.io.weights import WRITABLE, checked_config, infer_config, preset_name, read_weights, save_weights

WEIGHTS_META = ("model", "classes", "class_map", "data", "epoch", "step")  # what a weights-only file keeps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minimlp.convert",
        description="Convert model weights between PyTorch .pth (read only), minimlp .npz and .safetensors. "
        "The input format is detected from the file's content; the output format from OUT's "
        "extension. Nothing in the input is executed: .pth files are read without PyTorch and "
        "without pickle.",
        epilog="Writing .pth is not supported: a .pth is a pickle, which torch.load runs as code. "
        "PyTorch users can read the .safetensors output with safetensors.torch.load_file(path).",
    )
    parser.add_argument("input", metavar="IN", help="a .pth (PyTorch >= 1.6 zip format), .npz or .safetensors file")
    parser.add_argument("output", metavar="OUT", help="the file to write: .npz or .safetensors")
    parser.add_argument(
        "--ema",
        action="store_true",
        help="from a DeiT training checkpoint, take the EMA weights (model_ema) instead of model",
    )
    parser.add_argument(
        "--format", choices=sorted(set(WRITABLE.values())), help="output format, when OUT's extension does not say it"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        state, meta, fmt = read_weights(args.input, use_ema=args.ema)
        out_meta = {k: meta[k] for k in WEIGHTS_META if meta and k in meta}
        if "model" in out_meta:  # a stored config must fit the tensors, as it will when the output is read
            checked_config(out_meta["model"], state, args.input)
        if "model" not in out_meta:
            try:
                out_meta["model"] = infer_config(state, args.input)
            except CheckpointError as e:  # still convertible, just not buildable by name
                print(f"note: {e}; writing the tensors without a model config", file=sys.stderr)
        out_fmt = save_weights(args.output, state, out_meta, fmt=args.format)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    values = sum(int(a.size) for a in state.values())
    arch = preset_name(out_meta["model"]) if "model" in out_meta else None
    described = f"{arch}, " if arch else ""
    print(
        f"{args.input} ({fmt}{', EMA' if args.ema else ''}) -> {args.output} ({out_fmt}): "
        f"{described}{len(state)} tensors, {values:,} values"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
