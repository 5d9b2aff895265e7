"""The lessons' pictures, drawn with Pillow alone (no plotting library needed).

``curves`` draws lines on a grid; ``heatmaps`` draws signed 2-D maps side by side, red
for positive, blue for negative, white for zero.  No text is drawn (fonts differ between
machines, and the pictures must be the same everywhere): each lesson says in words what
the axes and colours mean.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"blue": (31, 119, 180), "orange": (255, 127, 14), "green": (44, 160, 44), "red": (214, 39, 40),
          "grey": (127, 127, 127), "purple": (148, 103, 189)}


def curves(path, lines, xlim, ylim, xgrid=(), ygrid=(), logx=False, logy=False, size=(640, 400)):
    """Draw ``lines`` = [(xs, ys, colour name), ...] into a PNG at ``path``.

    ``xgrid`` and ``ygrid`` are the values where thin grey grid lines go; the axis lines
    (x = 0 and y = 0, when inside the limits) are black.
    """
    W, H = size
    margin = 20
    fx = (lambda v: math.log10(v)) if logx else float
    fy = (lambda v: math.log10(v)) if logy else float

    def px(x, y):  # data coordinates -> pixel coordinates (y grows downwards in images)
        u = (fx(x) - fx(xlim[0])) / (fx(xlim[1]) - fx(xlim[0]))
        v = (fy(y) - fy(ylim[0])) / (fy(ylim[1]) - fy(ylim[0]))
        return margin + u * (W - 2 * margin), H - margin - v * (H - 2 * margin)

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    for x in xgrid:
        d.line([px(x, ylim[0]), px(x, ylim[1])], fill=(225, 225, 225))
    for y in ygrid:
        d.line([px(xlim[0], y), px(xlim[1], y)], fill=(225, 225, 225))
    if not logx and xlim[0] < 0 < xlim[1]:
        d.line([px(0, ylim[0]), px(0, ylim[1])], fill="black")
    if not logy and ylim[0] < 0 < ylim[1]:
        d.line([px(xlim[0], 0), px(xlim[1], 0)], fill="black")
    d.rectangle([margin, margin, W - margin, H - margin], outline="black")
    for xs, ys, colour in lines:
        keep = [(x, y) for x, y in zip(xs, ys, strict=True) if ylim[0] <= y <= ylim[1] and (not logy or y > 0)]
        d.line([px(x, y) for x, y in keep], fill=COLORS[colour], width=3, joint="curve")
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
        canvas[top:top + h * scale, left:left + w * scale] = rgb
    img = Image.fromarray(canvas)
    img.save(path)
    return img
