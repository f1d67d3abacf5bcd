"""A horizontal bar chart as PNG bytes, drawn with Pillow (a torchvision dependency; no matplotlib).

One row a bar, in the order given, top to bottom; positive values (an accuracy drop) extend right
of the zero line in red, negative ones left in green, each labelled with its value:

    conv 9 (features[30])  |▇▇ -0.06%          (green, left of zero)
    conv 8 (features[27])  |▇▇▇▇▇▇ 0.10%       (red, right of zero)
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

_WIDTH = 960
_ROW = 22
_BAR = 14
_PAD = 12
_TOP = 58
_BOTTOM = 44
_TEXT = (20, 20, 20)
_GRID = (225, 225, 225)
_AXIS = (90, 90, 90)
_WORSE = (214, 39, 40)
_BETTER = (44, 160, 44)


def _nice_step(span: float, ticks: int = 6) -> float:
    """A 1/2/5 x 10^k step giving about ``ticks`` intervals over ``span``."""
    raw = span / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    subtitle: str = "",
    unit: str = "",
) -> bytes:
    """PNG bytes of one horizontal bar a value, labelled on the left and at the bar's end.

    Args:
        labels: one name a bar, e.g. ``conv 9 (features[30])``.
        values: one number a bar; the zero line separates negative from positive.
        title: the first line above the chart.
        subtitle: an optional second line (e.g. ``demo, untrained``).
        unit: appended to each value and tick label, e.g. ``%``.

    Returns:
        The encoded PNG, the same bytes for the same arguments.
    """
    font = ImageFont.load_default(size=13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max((probe.textlength(text, font=font) for text in labels), default=0.0)
    left = int(label_width) + 2 * _PAD
    value_room = (
        int(probe.textlength(f"-{max((abs(v) for v in values), default=0):.2f}{unit}", font=font)) + 8
    )
    # room for value labels: left of the zero line only when a bar extends there
    plot_left = left + (value_room if min(values, default=0.0) < 0 else 0)
    plot_right = _WIDTH - _PAD - value_room
    height = _TOP + _ROW * len(labels) + _BOTTOM

    lo, hi = min(0.0, *values), max(0.0, *values)
    if hi - lo <= 0:
        hi = lo + 1.0
    step = _nice_step(hi - lo)
    lo, hi = step * math.floor(lo / step), step * math.ceil(hi / step)

    def x_of(value: float) -> float:
        return plot_left + (value - lo) / (hi - lo) * (plot_right - plot_left)

    image = Image.new("RGB", (_WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((_PAD, 10), title, fill=_TEXT, font=font)
    if subtitle:
        draw.text((_PAD, 28), subtitle, fill=_AXIS, font=font)
    plot_top, plot_bottom = _TOP - 4, _TOP + _ROW * len(labels)
    for k in range(round((hi - lo) / step) + 1):
        tick = lo + k * step
        x = x_of(tick)
        draw.line([(x, plot_top), (x, plot_bottom)], fill=_GRID)
        text = f"{tick:g}{unit}"
        draw.text((x - probe.textlength(text, font=font) / 2, plot_bottom + 6), text, fill=_AXIS, font=font)
    zero = x_of(0.0)
    for row, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = _TOP + row * _ROW
        middle = y + _ROW / 2
        draw.text((_PAD, middle - 8), label, fill=_TEXT, font=font)
        end = x_of(value)
        box = [min(zero, end), middle - _BAR / 2, max(zero, end), middle + _BAR / 2]
        draw.rectangle(box, fill=_WORSE if value > 0 else _BETTER if value < 0 else _AXIS)
        text = f"{value:.2f}{unit}"
        width = probe.textlength(text, font=font)
        text_x = end + 4 if value >= 0 else end - 4 - width
        draw.text((text_x, middle - 8), text, fill=_TEXT, font=font)
    draw.line([(zero, plot_top), (zero, plot_bottom)], fill=_AXIS, width=1)
    draw.line([(plot_left, plot_bottom), (plot_right, plot_bottom)], fill=_AXIS, width=1)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
