"""Training curves as a PNG, drawn with Pillow alone (no matplotlib).

Two panels side by side, loss and top-1, each with a train and a test line over the epochs of
``metrics.jsonl``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

SIZE = (960, 420)
_PANEL_MARGIN = (64, 48, 20, 44)  # left, top, right, bottom: room for tick labels and titles
_BACKGROUND = (255, 255, 255)
_AXES = (60, 60, 60)
_GRID = (225, 225, 225)
_COLOURS = {"train": (31, 119, 180), "test": (230, 110, 10)}


@dataclass(frozen=True, slots=True)
class Panel:
    """One chart: a title and the record keys drawn as lines, one per split."""

    title: str
    keys: tuple[tuple[str, str], ...]
    """(split label, record key) pairs; the label picks the colour."""


PANELS = (
    Panel("loss", (("train", "train_loss"), ("test", "test_loss"))),
    Panel("top-1 (%)", (("train", "train_top1"), ("test", "test_top1"))),
)


def render_curves(records: Sequence[Mapping[str, object]], title: str) -> bytes:
    """A PNG (as bytes) of loss and top-1 against ``epoch`` for the given metrics records.

    Non-finite values (a diverged loss) are left out of their line rather than stretching the axes.
    """
    image = Image.new("RGB", SIZE, _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    draw.text((SIZE[0] // 2, 6), title, fill=_AXES, font=font, anchor="ma")
    width = SIZE[0] // len(PANELS)
    for i, panel in enumerate(PANELS):
        _draw_panel(draw, font, panel, records, (i * width, 20, (i + 1) * width, SIZE[1]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _series(records: Sequence[Mapping[str, object]], key: str) -> list[tuple[float, float]]:
    points = []
    for record in records:
        x, y = record.get("epoch"), record.get(key)
        if isinstance(x, int | float) and isinstance(y, int | float) and math.isfinite(y):
            points.append((float(x), float(y)))
    return points


def _span(values: Sequence[float]) -> tuple[float, float]:
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:  # one epoch, or a flat line: give it room above and below
        low, high = low - 0.5, high + 0.5
    return low, high


def _ticks(low: float, high: float, count: int) -> list[float]:
    return [low + (high - low) * k / (count - 1) for k in range(count)]


def _draw_panel(
    draw: ImageDraw.ImageDraw,
    font: Font,
    panel: Panel,
    records: Sequence[Mapping[str, object]],
    box: tuple[int, int, int, int],
) -> None:
    left, top = box[0] + _PANEL_MARGIN[0], box[1] + _PANEL_MARGIN[1]
    right, bottom = box[2] - _PANEL_MARGIN[2], box[3] - _PANEL_MARGIN[3]
    lines = {label: _series(records, key) for label, key in panel.keys}
    x_low, x_high = _span([x for points in lines.values() for x, _ in points])
    y_low, y_high = _span([y for points in lines.values() for _, y in points])

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (right - left),
            bottom - (y - y_low) / (y_high - y_low) * (bottom - top),
        )

    draw.text(((left + right) // 2, box[1] + 14), panel.title, fill=_AXES, font=font, anchor="ma")
    for y in _ticks(y_low, y_high, 5):
        _, py = at(x_low, y)
        draw.line([(left, py), (right, py)], fill=_GRID)
        draw.text((left - 6, py), f"{y:.3g}", fill=_AXES, font=font, anchor="rm")
    epochs = sorted({round(x) for x in _ticks(x_low, x_high, 6)} & set(range(int(x_low), int(x_high) + 1)))
    for x in epochs:
        px, _ = at(x, y_low)
        draw.line([(px, bottom), (px, bottom + 4)], fill=_AXES)
        draw.text((px, bottom + 6), str(x), fill=_AXES, font=font, anchor="ma")
    draw.text(((left + right) // 2, bottom + 22), "epoch", fill=_AXES, font=font, anchor="ma")
    draw.rectangle([left, top, right, bottom], outline=_AXES)
    for row, (label, points) in enumerate(lines.items()):
        colour = _COLOURS[label]
        pixels = [at(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2, joint="curve")
        for px, py in pixels if len(pixels) <= 40 else []:  # markers while the points are few
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        legend_y = top + 8 + row * 16
        draw.line([(right - 70, legend_y), (right - 50, legend_y)], fill=colour, width=3)
        draw.text((right - 44, legend_y), label, fill=_AXES, font=font, anchor="lm")
