"""Line charts as PNG files, drawn with Pillow (matplotlib is not a dependency).

Enough for training curves: one or more panels side by side, each with axes, "nice"
tick values (1, 2 or 5 times a power of ten), labelled axes, a title, and one coloured
line with markers per series plus a legend.

    line_chart([Panel("top-1 vs epoch", "epoch", "top-1 (%)", [Series("ff", [1, 2], [70, 80])])],
               "curves.png")

``plot_curves`` draws a training run's curves (the trainer's ``curves.png``) this way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

# A colour-blind-friendly palette (Okabe and Ito).
COLORS = (
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
    (0, 0, 0),
    (240, 228, 66),
)
BACKGROUND, INK, GRID = (255, 255, 255), (30, 30, 30), (225, 225, 225)


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    legend: str = "lower right"  # or "upper left" / "upper right": where the curves are not
    x_from_zero: bool = False  # start the x axis at 0 (time axes)


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values covering [lo, hi], about ``target`` of them, spaced 1, 2 or 5 × 10^k."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"cannot place ticks on [{lo}, {hi}]")
    if hi <= lo:
        lo, hi = lo - 0.5, lo + 0.5
    raw = (hi - lo) / max(target - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    value = first
    while value < hi + step * (1 - 1e-9):
        ticks.append(round(value, 12))
        value += step
    return ticks


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, anchor: str = "la") -> None:
    """Draw text placed like Pillow's anchors ("ma": centred below xy, "rm": ending left
    of xy, "la": below and right of it), measured by hand so bitmap fonts work too."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = xy
    if anchor[0] == "m":
        x -= (right - left) / 2
    elif anchor[0] == "r":
        x -= right - left
    if anchor[1] == "m":
        y -= (bottom + top) / 2
    draw.text((x - left, y), text, fill=INK, font=font)


def _label(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def _draw_panel(draw: ImageDraw.ImageDraw, font, panel: Panel, box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    # The plotting area, leaving room for the title, tick labels and axis labels.
    x0, y0, x1, y1 = left + 60, top + 30, right - 15, bottom - 45
    xs = [float(v) for s in panel.series for v in s.x]
    ys = [float(v) for s in panel.series for v in s.y]
    xt = nice_ticks(0.0 if panel.x_from_zero else min(xs), max(xs)) if xs else [0.0, 1.0]
    yt = nice_ticks(min(ys), max(ys)) if ys else [0.0, 1.0]

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - xt[0]) / (xt[-1] - xt[0]) * (x1 - x0), y1 - (y - yt[0]) / (yt[-1] - yt[0]) * (y1 - y0))

    for value in xt:
        px = to_px(value, yt[0])[0]
        draw.line([(px, y0), (px, y1)], fill=GRID)
        _text(draw, (px, y1 + 6), _label(value), font, "ma")
    for value in yt:
        py = to_px(xt[0], value)[1]
        draw.line([(x0, py), (x1, py)], fill=GRID)
        _text(draw, (x0 - 6, py), _label(value), font, "rm")
    draw.rectangle([x0, y0, x1, y1], outline=INK)
    _text(draw, ((x0 + x1) / 2, top + 8), panel.title, font, "ma")
    _text(draw, ((x0 + x1) / 2, bottom - 18), panel.xlabel, font, "ma")
    _text(draw, (left + 4, y0 - 18), panel.ylabel, font)

    legend_width = 26 + max((draw.textlength(s.label, font=font) for s in panel.series), default=0)
    for i, s in enumerate(panel.series):
        color = COLORS[i % len(COLORS)]
        points = [to_px(float(x), float(y)) for x, y in zip(s.x, s.y, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2, joint="curve")
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        # Legend inside the plot, one row per series.
        if panel.legend == "upper left":
            lx, ly = x0 + 8, y0 + 8 + 16 * i
        elif panel.legend == "upper right":
            lx, ly = x1 - 8 - legend_width, y0 + 8 + 16 * i
        else:
            lx, ly = x1 - 8 - legend_width, y1 - 8 - 16 * (len(panel.series) - i)
        draw.line([(lx, ly + 5), (lx + 20, ly + 5)], fill=color, width=3)
        _text(draw, (lx + 26, ly), s.label, font)


def line_chart(panels: Sequence[Panel], path: str | os.PathLike, panel_size: tuple[int, int] = (560, 420)) -> str:
    """Draw ``panels`` side by side and save a PNG at ``path`` (written to a temporary
    file, then renamed, so an existing picture is never left half-written)."""
    width, height = panel_size
    image = Image.new("RGB", (width * len(panels), height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        font = ImageFont.load_default()
    for i, panel in enumerate(panels):
        _draw_panel(draw, font, panel, (i * width, 0, (i + 1) * width, height))
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def plot_curves(metrics: Sequence[dict], path: str | os.PathLike) -> str:
    """A run's curves from its per-epoch records (metrics.jsonl): the training and
    evaluation losses, and the accuracies (%), against the epoch."""

    def series(key: str, label: str) -> list[Series]:
        points = [(float(m["epoch"]), float(m[key])) for m in metrics if m.get(key) is not None]
        return [Series(label, [x for x, _ in points], [y for _, y in points])] if points else []

    loss = Panel(
        "loss", "epoch", "loss", series("train_loss", "train") + series("eval_loss", "eval"), legend="upper right"
    )
    accuracy = Panel(
        "accuracy",
        "epoch",
        "%",
        series("train_top1", "train top-1") + series("eval_top1", "eval top-1") + series("eval_top5", "eval top-5"),
    )
    return line_chart([loss, accuracy], path)
