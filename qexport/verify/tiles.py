"""A tiled set's tensors put back together from their tile files, by the manifest's placement alone.

A systolic-profile set (``course``, ``systolic``) splits each tensor into tile files; each file's
manifest entry records where its values sit in the layer (``where``: ``n``, the output pixel
ranges ``y`` / ``x``, the channel ranges ``ic`` / ``oc``, the kernel tap ``kij``; the fields of
:class:`qexport.layout.placement.Placement` as ``writer/manifest.py`` reads them).
:func:`assemble` reads only those fields, never the layout code, and returns the tensor as the flat
profile's one file holds it:

    weight     (OC, KH, KW, IC)   a file: oc rows x ic lanes of one tap kij = ki * K + kj (or all taps)
    input      (N, H, W, C)       a file: the tile's input grid; its interior (the halo of
                                  ``padding`` pixels left out when ``padded``) is pixels y, x, lanes ic
    requant    (N, H', W', OC)    a file: pixels y, x (after the max-pool), lanes oc
    threshold  (OC, T)            a file: lanes oc (axes t, c or c, t: the file's axes decide)
    direction  (OC,)              (multiplier, shift, bias of a ResNet block end likewise)
    skip, requant_shortcut        as requant (no pool)

A file's values sit at the start of each of its axes (a partial tile's unused rows and lanes are
zero fill after them). Every value of the tensor must come from some file: a set whose manifest
lost a tile's entry is refused, naming the first value no file holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from qexport.errors import InputError
from qexport.writer.manifest import FileEntry, LayerEntry

AXES: dict[str, tuple[str, ...]] = {
    "weight": ("oc", "kh", "kw", "ic"),
    "input": ("n", "h", "w", "c"),
    "requant": ("n", "h", "w", "c"),
    "threshold": ("c", "t"),
    "direction": ("c",),
    "multiplier": ("c",),
    "shift": ("c",),
    "bias": ("c",),
    "skip": ("n", "h", "w", "c"),
    "requant_shortcut": ("n", "h", "w", "c"),
}
"""The flat layout's axes of each tensor :func:`assemble` rebuilds."""


def is_tiled(entries: Sequence[FileEntry]) -> bool:
    """Any file placed in part of its layer (a systolic profile's tile files)."""
    return any(entry.where.items() for entry in entries)


def _pool(layer: LayerEntry) -> int:
    for op in layer.between or ():
        if op.startswith("maxpool") and op[7:].isdigit():
            return int(op[7:])
    return 1


def _full_shape(layer: LayerEntry, tensor: str, first: np.ndarray, first_axes: tuple[str, ...]) -> list[int]:
    n, _, h, w = layer.input_shape
    oc, ic, k = layer.out_channels, layer.in_channels, layer.kernel
    if tensor == "weight":
        return [oc, k, k, ic]
    if tensor == "input":
        return [n, h, w, ic]
    if tensor in ("requant", "skip", "requant_shortcut"):
        pool = _pool(layer)
        return [n, layer.output_shape[2] // pool, layer.output_shape[3] // pool, oc]
    if tensor == "threshold":
        return [oc, int(first.shape[first_axes.index("t")])]
    return [oc]


def _region(
    layer: LayerEntry, tensor: str, entry: FileEntry, axis: str, full: int, size: int
) -> tuple[slice, slice]:
    """The destination and source ranges of one file along one canonical axis."""
    where = entry.where
    span: tuple[int, int] | None = None
    offset = 0
    if axis == "n" and where.n is not None:
        span = (where.n, where.n + 1)
    elif axis in ("h", "w"):
        span = where.y if axis == "h" else where.x
        if tensor == "input" and span is not None:
            # an input tile is placed by its output pixels: a stride-s conv's tile of output rows
            # y0..y1 reads input rows from y0*s (its grid, past the halo, may hold fewer rows)
            offset = layer.padding if entry.padded else 0
            start = span[0] * layer.stride
            stop = min(span[1] * layer.stride, full, start + int(size) - offset)
            return slice(start, stop), slice(offset, offset + stop - start)
    elif axis == "c":
        span = where.ic if tensor == "input" else where.oc
    elif axis in ("oc", "ic"):
        span = where.oc if axis == "oc" else where.ic
    elif axis in ("kh", "kw") and where.kij is not None:
        ki, kj = divmod(where.kij, layer.kernel)
        tap = ki if axis == "kh" else kj
        return slice(tap, tap + 1), slice(0, 1)
    start, stop = span if span is not None else (0, full)
    return slice(start, stop), slice(offset, offset + stop - start)


def _read(layer: LayerEntry, size: int) -> np.ndarray:
    """Which of an input axis's ``size`` positions some kernel tap of the conv reads: position r is
    tap ``(r + padding) mod stride`` of an output, read when that is below the kernel."""
    return np.asarray((np.arange(size) + layer.padding) % layer.stride < layer.kernel)


def assemble(
    layer: LayerEntry,
    tensor: str,
    entries: Sequence[FileEntry],
    read: Callable[[FileEntry], np.ndarray],
) -> np.ndarray:
    """``tensor``'s tile files (``entries``, decoded by ``read``) as one int64 array in the flat
    layout's axes (:data:`AXES`; an input without its zero border)."""
    axes = AXES[tensor]
    out: np.ndarray | None = None
    filled: np.ndarray | None = None
    for entry in entries:
        data = read(entry)
        if sorted(entry.axes) != sorted(axes):
            if tensor == "input":
                raise InputError(
                    f"{entry.path}: axes {list(entry.axes)}: an activation stream (an output- or "
                    "input-stationary profile's per-pass lines), not an input grid; infer --from reads "
                    "sets whose activation files are grids (profiles flat, course, systolic)"
                )
            raise InputError(
                f"{entry.path}: axes {list(entry.axes)}; a {tensor} file holds {sorted(axes)} in some order"
            )
        data = data.transpose([entry.axes.index(a) for a in axes])
        if out is None or filled is None:
            shape = _full_shape(layer, tensor, data, axes)
            out = np.zeros(shape, dtype=np.int64)
            filled = np.zeros(shape, dtype=bool)
        regions = [_region(layer, tensor, entry, a, out.shape[i], data.shape[i]) for i, a in enumerate(axes)]
        dst = tuple(r[0] for r in regions)
        src = tuple(r[1] for r in regions)
        part = data[src]
        if part.shape != out[dst].shape:
            raise InputError(
                f"{entry.path}: its placement ({dict(entry.where.items())}) asks for a block of "
                f"{list(out[dst].shape)} values, the file holds {list(data.shape)} (axes "
                f"{list(axes)}); the manifest does not describe this file (re-export the set)"
            )
        out[dst] = part
        filled[dst] = True
    if out is None or filled is None:
        raise InputError(f"layer {layer.key} has no {tensor} file in the manifest")
    if tensor == "input":  # a value no tap of the conv reads (a 1x1 stride-2 conv's odd rows) is in no tile
        filled |= (
            ~_read(layer, out.shape[1])[None, :, None, None]
            | ~_read(layer, out.shape[2])[None, None, :, None]
        )
    if not filled.all():
        at = np.argwhere(~filled)[0]
        place = ", ".join(f"{a} {int(i)}" for a, i in zip(axes, at, strict=True))
        raise InputError(
            f"layer {layer.key}: no {tensor} tile file in the manifest holds value ({place}) of "
            f"{list(out.shape)}; the set misses a tile file (re-export it)"
        )
    return out
