"""Training curves as a PNG, drawn with Pillow (no plotting library needed).

Two panels side by side: the losses (training and evaluation) and the accuracies
(evaluation top-1 and top-5, and the running training top-1), against the epoch.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from minimlp.io.atomic import atomic_write

PANEL_W, PANEL_H = 480, 360
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 16, 30, 40
COLORS = {"train_loss": (31, 119, 180), "eval_loss": (214, 39, 40), "train_top1": (31, 119, 180),
          "eval_top1": (214, 39, 40), "eval_top5": (44, 160, 44)}
LABELS = {"train_loss": "train", "eval_loss": "eval", "train_top1": "train top-1", "eval_top1": "eval top-1",
          "eval_top5": "eval top-5"}


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round numbers (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 5, 10) if m * power >= raw), default=10 * power)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return [round(k * step, 10) for k in range(first, last + 1)]


def _panel(draw: ImageDraw.ImageDraw, font: Any, x0: int, title: str, epochs: Sequence[float],
           series: dict[str, Sequence[float | None]]) -> None:
    left, top = x0 + MARGIN_L, MARGIN_T
    right, bottom = x0 + PANEL_W - MARGIN_R, PANEL_H - MARGIN_B
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    draw.text((left, 8), title, fill=(0, 0, 0), font=font)
    if not values or not epochs:
        draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
        return
    y_ticks = nice_ticks(min(values), max(values))
    y_lo, y_hi = y_ticks[0], y_ticks[-1] if y_ticks[-1] > y_ticks[0] else y_ticks[0] + 1
    x_lo, x_hi = 0.0, max(max(epochs), 1.0)

    def to_px(e: float, v: float) -> tuple[float, float]:
        x = left + (right - left) * (e - x_lo) / (x_hi - x_lo)
        return x, bottom - (bottom - top) * (v - y_lo) / (y_hi - y_lo)

    for t in y_ticks:
        _, y = to_px(0, t)
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.text((x0 + 4, y - 6), f"{t:g}", fill=(0, 0, 0), font=font)
    for t in nice_ticks(x_lo, x_hi, 6):
        if t == int(t) and x_lo <= t <= x_hi:
            x, _ = to_px(t, y_lo)
            draw.line([x, bottom, x, bottom + 4], fill=(0, 0, 0))
            draw.text((x - 4, bottom + 8), f"{int(t)}", fill=(0, 0, 0), font=font)
    draw.text(((left + right) // 2 - 16, bottom + 22), "epoch", fill=(0, 0, 0), font=font)
    legend_x = right  # the legend runs right to left along the top margin
    for key, ys in reversed(series.items()):
        points = [to_px(e, v) for e, v in zip(epochs, ys, strict=True) if v is not None and math.isfinite(v)]
        if not points:
            continue
        color = COLORS.get(key, (0, 0, 0))
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=color)
        label = LABELS.get(key, key)
        legend_x -= int(draw.textlength(label, font=font)) + 26
        draw.line([legend_x, 14, legend_x + 18, 14], fill=color, width=2)
        draw.text((legend_x + 22, 8), label, fill=(0, 0, 0), font=font)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))


def plot_curves(metrics: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Draw the curves of the per-epoch ``metrics`` records (metrics.jsonl) into ``path``."""
    image = Image.new("RGB", (2 * PANEL_W, PANEL_H), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    epochs = [float(m["epoch"]) for m in metrics]
    _panel(draw, font, 0, "loss", epochs, {k: [m.get(k) for m in metrics] for k in ("train_loss", "eval_loss")})
    _panel(draw, font, PANEL_W, "accuracy (%)", epochs,
           {k: [m.get(k) for m in metrics] for k in ("train_top1", "eval_top1", "eval_top5")})
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
