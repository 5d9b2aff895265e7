"""The lessons' pictures, drawn with Pillow alone (no plotting library needed).

``curves`` draws lines on a grid, with tick numbers, axis labels and a legend;
``heatmaps`` draws signed 2-D maps side by side, red for positive, blue for negative,
white for zero.  Text uses Pillow's built-in bitmap font, which draws the same pixels on
every machine, so a redrawn picture can be compared with the committed one.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = {
    "blue": (31, 119, 180),
    "orange": (255, 127, 14),
    "green": (44, 160, 44),
    "red": (214, 39, 40),
    "grey": (127, 127, 127),
    "purple": (148, 103, 189),
    "black": (0, 0, 0),
}


def _font() -> ImageFont.ImageFont:
    # Pillow 10.1 and later: load_default() may return a scalable font, which renders
    # differently with each FreeType; the bitmap font is the same everywhere.
    return getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()


def _tick_text(value: float, log: bool) -> str:
    if log:
        return f"1e{round(math.log10(value))}"
    return f"{value:.3g}"


def curves(
    path,
    lines,
    xlim,
    ylim,
    xgrid=(),
    ygrid=(),
    logx=False,
    logy=False,
    size=(640, 400),
    xlabel="",
    ylabel="",
    legend="upper right",
    marks=(),
):
    """Draw ``lines`` into a PNG at ``path``; return the image.

    ``lines`` holds ``(xs, ys, colour)`` or ``(xs, ys, colour, label)``; labelled lines go in
    the legend, at the ``legend`` corner ("upper right", "upper left", "lower right",
    "lower left").  ``xgrid`` and ``ygrid`` are the values where thin grey grid lines and
    tick numbers go; the axis lines (x = 0 and y = 0, when inside the limits) are black.
    ``marks`` holds ``(x, y, text)``: a dot at a point, with its text beside it.
    """
    W, H = size
    font = _font()
    left, right, top, bottom = 64, 16, 12, 44  # room for tick numbers and axis labels
    fx = (lambda v: math.log10(v)) if logx else float
    fy = (lambda v: math.log10(v)) if logy else float

    def px(x, y):  # data coordinates -> pixel coordinates (y grows downwards in images)
        u = (fx(x) - fx(xlim[0])) / (fx(xlim[1]) - fx(xlim[0]))
        v = (fy(y) - fy(ylim[0])) / (fy(ylim[1]) - fy(ylim[0]))
        return left + u * (W - left - right), H - bottom - v * (H - top - bottom)

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    for x in xgrid:
        d.line([px(x, ylim[0]), px(x, ylim[1])], fill=(225, 225, 225))
        u, v = px(x, ylim[0])
        text = _tick_text(x, logx)
        d.text((u - font.getlength(text) / 2, v + 4), text, fill="black", font=font)
    for y in ygrid:
        d.line([px(xlim[0], y), px(xlim[1], y)], fill=(225, 225, 225))
        u, v = px(xlim[0], y)
        text = _tick_text(y, logy)
        d.text((u - 4 - font.getlength(text), v - 6), text, fill="black", font=font)
    if not logx and xlim[0] < 0 < xlim[1]:
        d.line([px(0, ylim[0]), px(0, ylim[1])], fill="black")
    if not logy and ylim[0] < 0 < ylim[1]:
        d.line([px(xlim[0], 0), px(xlim[1], 0)], fill="black")
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for xs, ys, colour, *_ in lines:
        keep = [(x, y) for x, y in zip(xs, ys, strict=True) if ylim[0] <= y <= ylim[1] and (not logy or y > 0)]
        d.line([px(x, y) for x, y in keep], fill=COLORS[colour], width=3, joint="curve")
    for x, y, text in marks:
        u, v = px(x, y)
        d.ellipse([u - 4, v - 4, u + 4, v + 4], fill="black")
        d.text((u + 7, v - 14), text, fill="black", font=font)
    if xlabel:
        d.text(((left + W - right - font.getlength(xlabel)) / 2, H - 18), xlabel, fill="black", font=font)
    if ylabel:  # drawn sideways, reading upwards
        label = Image.new("RGB", (int(font.getlength(ylabel)) + 2, 12), "white")
        ImageDraw.Draw(label).text((1, 0), ylabel, fill="black", font=font)
        label = label.rotate(90, expand=True)
        img.paste(label, (4, int((top + H - bottom - label.height) / 2)))
    named = [(colour, rest[0]) for _, _, colour, *rest in lines if rest]
    if named:
        width = 30 + max(int(font.getlength(name)) for _, name in named)
        height = 14 * len(named) + 6
        x0 = left + 8 if "left" in legend else W - right - 8 - width
        y0 = top + 8 if "upper" in legend else H - bottom - 8 - height
        d.rectangle([x0, y0, x0 + width, y0 + height], fill="white", outline=(160, 160, 160))
        for i, (colour, name) in enumerate(named):
            y = y0 + 10 + 14 * i
            d.line([(x0 + 5, y), (x0 + 21, y)], fill=COLORS[colour], width=3)
            d.text((x0 + 26, y - 6), name, fill="black", font=font)
    img.save(path)
    return img


def heatmaps(path, maps, cols, scale=10, pad=4):
    """Draw signed maps (n, h, w) in a grid of ``cols`` columns, each scaled to its own
    largest |value| (red +, blue -, white 0) and enlarged ``scale`` times."""
    maps = np.asarray(maps, dtype=np.float64)
    n, h, w = maps.shape
    rows = -(-n // cols)
    canvas = np.full((pad + rows * (h * scale + pad), pad + cols * (w * scale + pad), 3), 255, np.uint8)
    for i, m in enumerate(maps):
        m = m / max(np.abs(m).max(), 1e-30)
        rgb = np.stack([1 - np.clip(-m, 0, 1), 1 - np.abs(m), 1 - np.clip(m, 0, 1)], axis=-1)
        rgb = (255 * rgb).round().astype(np.uint8).repeat(scale, axis=0).repeat(scale, axis=1)
        r, c = divmod(i, cols)
        top, left = pad + r * (h * scale + pad), pad + c * (w * scale + pad)
        canvas[top : top + h * scale, left : left + w * scale] = rgb
    img = Image.fromarray(canvas)
    img.save(path)
    return img
