"""Where a tiled file's values sit in the layer's tensors: the tile, the pixel and channel ranges."""

from __future__ import annotations

from dataclasses import dataclass, fields

Span = tuple[int, int]
"""A half-open range ``[start, stop)``, written as ``[start, stop]`` in the manifest."""


@dataclass(frozen=True, slots=True)
class Placement:
    """A file's part of the layer; a field left None is a whole axis (the flat layout: all of them).

    A systolic tile's weight file for kernel tap 4 of input-channel tile 1 and output-channel
    tile 0: ``Placement(itile=1, otile=0, kij=4, ic=(8, 16), oc=(0, 8))``.
    """

    tile: int | None = None
    """The output tile, image-major, then tile row, then tile column."""
    n: int | None = None
    """The image."""
    y: Span | None = None
    x: Span | None = None
    """The output pixels' rows and columns (the input grid adds its halo around them)."""
    itile: int | None = None
    otile: int | None = None
    kij: int | None = None
    """The kernel tap ``ki * 3 + kj`` of a one-tap weight file."""
    ic: Span | None = None
    oc: Span | None = None
    pixels: Span | None = None
    """An output-stationary pass's output pixels of the tile, row-major numbers ``oy * tile + ox``."""

    def items(self) -> list[tuple[str, int | list[int]]]:
        """The fields that are set, by name, as the manifest spells them (ranges as lists)."""
        found: list[tuple[str, int | list[int]]] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                found.append((f.name, list(value) if isinstance(value, tuple) else value))
        return sorted(found)
