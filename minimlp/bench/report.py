"""The benchmark's table, and the summary of several runs' JSON files (``--summary DIR``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def format_table(r: dict[str, Any]) -> str:
    c = r["config"]
    th = r["threads"]
    over_procs = th["procs"] > 1  # the step ran in worker processes; memory and breakdown did not
    lines = [
        f"minimlp bench: {r['model']} ({c['img_size']} px, patch {c['patch_size']}, dim {c['embed_dim']}, "
        f"depth {c['depth']}), batch {r['batch_size']}, {r['dtype']}{' + TF32' if r['tf32'] else ''}",
        f"device: {r['backend']}; {r['machine'].get('gpu') or r['machine']['cpu']}",
        (
            f"minimlp: {th['procs']} processes of one thread each (data parallel, as train); "
            if over_procs
            else f"minimlp threads: BLAS {th['blas']}, elementwise {th['elementwise']}; "
        )
        + (f"PyTorch threads: {th['torch']}; " if th.get("torch") else "")
        + f"NumPy {r['machine']['numpy']} ({r['machine']['blas']})"
        + (f", PyTorch {r['machine']['torch']}" if "torch" in r["machine"] else ""),
        f"FLOPs per image (matrix products): forward {r['flops_per_image']['forward'] / 1e9:.3f} G, "
        f"training step {r['flops_per_image']['train'] / 1e9:.3f} G",
        "matmul peak ("
        + r["matmul_peak_shape"]
        + ", this run): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in r["matmul_peak_gflops"].items()),
    ]
    if "logits_max_abs_diff" in r:
        lines.append(f"same function: max |logits minimlp - PyTorch| = {r['logits_max_abs_diff']:.2e}")
    names = [n for n in ("minimlp", "torch") if n in r]
    header = f"\n{'':24s}" + "".join(f"{n:>14s}" for n in names) + ("      ratio" if len(names) == 2 else "")
    lines.append(header)

    def row(label: str, values: list, fmt: str, ratio: float | None = None) -> None:
        cells = "".join(f"{format(v, fmt) if v is not None else '-':>14s}" for v in values)
        lines.append(f"{label:24s}{cells}" + (f"{ratio:10.2f}x" if ratio is not None else ""))

    ratio = r.get("ratio", {})
    row("train images/s", [r[n]["train"]["images_per_s"] for n in names], ".2f", ratio.get("train"))
    row("train ms/step (median)", [r[n]["train"]["step_ms"]["median"] for n in names], ".1f")
    row("forward images/s", [r[n]["forward"]["images_per_s"] for n in names], ".2f", ratio.get("forward"))
    row("train GFLOP/s", [r[n]["train"]["gflops"] for n in names], ".1f")
    row("% of matmul peak", [100 * r[n]["train"].get("fraction_of_peak", float("nan")) for n in names], ".1f")
    row(
        "peak memory, 1 proc (MB)" if over_procs else "peak memory (MB)",
        [(r[n]["memory"] or {}).get("peak_mb") for n in names],
        ".0f",
    )
    if "host_syncs_per_step" in r["minimlp"]:
        row("host syncs per step", [r["minimlp"]["host_syncs_per_step"]] + [None] * (len(names) - 1), ".2f")
    steps = r["minimlp"]["train"]["step_ms"]["steps"]
    lines.append(
        f"(median of {steps} timed steps each after {r['warmup']} warm-up steps"
        + (
            f", in {r['rounds']} alternating rounds; per-round ratios "
            + " ".join(f"{x:.2f}" for x in ratio["train_per_round"])
            if ratio
            else ""
        )
        + ")"
    )
    if "breakdown_ms" in r["minimlp"]:
        b = r["minimlp"]["breakdown_ms"]
        total = sum(b.values())
        where = ", in one process" if over_procs else ""
        lines.append(f"\nminimlp training step by category ({total:.1f} ms, profiled separately{where}):")
        for k in sorted(b, key=b.get, reverse=True):
            lines.append(f"  {k:12s}{b[k]:10.1f} ms  {100 * b[k] / total:5.1f}%")
    return "\n".join(lines)


def summarise_runs(directory: str) -> dict[str, Any]:
    """One row per benchmark JSON file in ``directory``: throughputs, % of peak, ratio,
    memory, host syncs and the logits' agreement with PyTorch."""
    rows = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(r, dict) or "minimlp" not in r:
            continue  # not a benchmark result (e.g. an earlier summary)
        ours = r["minimlp"]
        row = {
            "file": path.name,
            "model": r["model"],
            "batch_size": r["batch_size"],
            "device": r["device"],
            "dtype": r["dtype"],
            "tf32": r["tf32"],
            "gpu": r["machine"].get("gpu"),
            "procs": r["threads"].get("procs", 1),
            "minimlp_train_images_per_s": ours["train"]["images_per_s"],
            "minimlp_gflops": ours["train"].get("gflops"),
            "minimlp_fraction_of_peak": ours["train"].get("fraction_of_peak"),
            "minimlp_peak_mb": (ours.get("memory") or {}).get("peak_mb"),
            "host_syncs_per_step": ours.get("host_syncs_per_step"),
            "matmul_peak_gflops": r["matmul_peak_gflops"]["minimlp"],
        }
        if "torch" in r:
            row.update(
                torch_train_images_per_s=r["torch"]["train"]["images_per_s"],
                torch_fraction_of_peak=r["torch"]["train"].get("fraction_of_peak"),
                torch_peak_mb=(r["torch"].get("memory") or {}).get("peak_mb"),
                ratio_train=r["ratio"]["train"],
                ratio_forward=r["ratio"]["forward"],
                ratio_train_per_round=r["ratio"]["train_per_round"],
                logits_max_abs_diff=r.get("logits_max_abs_diff"),
            )
        rows.append(row)
    return {"runs": rows}


def format_summary(summary: dict[str, Any]) -> str:
    """The rows as a table: minimlp and PyTorch images/s, their ratio (and per round), % of the
    matmul peak in the run's precision, peak MB, minimlp's host syncs per step, max |Δ logits|."""

    def cell(value: Any, fmt: str, width: int) -> str:
        return f"{'-' if value is None else format(value, fmt):>{width}s}"

    lines = [
        f"{'model':9s}{'batch':>6s} {'precision':10s}{'img/s':>9s}{'PyTorch':>9s}{'ratio':>7s}  "
        f"{'per round':18s}{'% peak':>7s}{'PyT %':>7s}{'MB':>7s}{'PyT MB':>7s}{'syncs':>6s}{'|dlogit|':>9s}"
    ]
    for row in summary["runs"]:
        precision = "tf32" if row["tf32"] else row["dtype"]
        percent = [
            None if row.get(k) is None else 100 * row[k] for k in ("minimlp_fraction_of_peak", "torch_fraction_of_peak")
        ]
        rounds = " ".join(f"{x:.2f}" for x in row.get("ratio_train_per_round", []))
        lines.append(
            f"{row['model']:9s}{row['batch_size']:6d} {precision:10s}"
            + cell(row["minimlp_train_images_per_s"], ".1f", 9)
            + cell(row.get("torch_train_images_per_s"), ".1f", 9)
            + cell(row.get("ratio_train"), ".2f", 7)
            + f"  {rounds[:18]:18s}"
            + cell(percent[0], ".1f", 7)
            + cell(percent[1], ".1f", 7)
            + cell(row.get("minimlp_peak_mb"), ".0f", 7)
            + cell(row.get("torch_peak_mb"), ".0f", 7)
            + cell(row.get("host_syncs_per_step"), ".2f", 6)
            + cell(row.get("logits_max_abs_diff"), ".1e", 9)
        )
    return "\n".join(lines)
