"""A testbench set's vectors, read by its manifest into integers, in the order the core takes them.

torch-free and cocotb-free: ``decode`` reads every file from what the manifest says of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qexport.errors import InputError
from qexport.verify.decode import file_digits, lanes_from_digits, radix_of
from qexport.writer.manifest import MANIFEST_NAME, FileEntry, LayerEntry, loads


@dataclass(frozen=True, slots=True)
class Memory:
    """One memory file: its manifest entry, its values as ``(words, lanes)`` and its packed words.

    8 lanes of 4 bits, lsb_first, lanes [1, -2, 0, 0, 0, 0, 0, 0] -> word 0x000000e1 (lane 0 lowest).
    """

    entry: FileEntry
    values: np.ndarray
    """(words, lanes) int64, two's complement already undone for signed lanes."""
    words: tuple[int, ...]
    """The words as the DUT's port takes them."""


@dataclass(frozen=True, slots=True)
class InputTile:
    """One input-channel tile of an output tile: its activation grid and one weight file a kernel pass."""

    itile: int
    activation: Memory
    weights: tuple[Memory, ...]
    """By kernel position ``kij``."""


@dataclass(frozen=True, slots=True)
class OutputTile:
    """One output tile: pixels ``y0..``, ``x0..`` of image ``n``, channels ``oc0..oc1-1``."""

    tile: int
    otile: int
    n: int
    y0: int
    x0: int
    oc0: int
    oc1: int
    itiles: tuple[InputTile, ...]
    golden: Memory
    """(TILE*TILE, COLS): output pixel ``orow*TILE + ocol``, channel ``otile*COLS + lane``."""


@dataclass(frozen=True, slots=True)
class VectorSet:
    """A systolic layer of a set, tile by tile as ``tb.sv`` walks it."""

    folder: Path
    layer: str
    """The layer as the testbench names it (``33``, ``layer1.0.conv1``)."""
    tile: int
    """Output pixels a tile side."""
    cols: int
    address: Memory | None
    """The weight-stationary acc_address table, None for other dataflows."""
    tiles: tuple[OutputTile, ...]


def pack_words(values: np.ndarray, entry: FileEntry) -> tuple[int, ...]:
    """(words, lanes) integers -> one unsigned word each, lanes placed as ``entry.lane_order`` says.

    lane_bits 4, lsb_first: [[1, -2]] -> (0xe1,); msb_first: (0x1e,).
    """
    mask = (1 << entry.lane_bits) - 1
    order = range(entry.lanes) if entry.lane_order == "lsb_first" else range(entry.lanes - 1, -1, -1)
    words = []
    for row in values.tolist():
        word = 0
        for place, lane in enumerate(order):
            word |= (int(row[lane]) & mask) << (place * entry.lane_bits)
        words.append(word)
    return tuple(words)


def read_memory(folder: Path, entry: FileEntry) -> Memory:
    """One file of the set, decoded by its manifest entry (a short or bad file: InputError naming it)."""
    path = folder / entry.path
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror}); is {folder} the whole set?") from err
    digits = file_digits(data, entry, str(path))
    if digits.shape[0] < entry.words:
        raise InputError(f"{path}: {digits.shape[0]} data words, the manifest says {entry.words}")
    values = lanes_from_digits(
        digits[: entry.words], radix_of(entry), entry.lanes, entry.lane_bits, entry.signed, entry.lane_order
    )
    return Memory(entry, values, pack_words(values, entry))


def _placed(entry: FileEntry, *keys: str) -> tuple[int, ...]:
    found = tuple(getattr(entry.where, key) for key in keys)
    if any(value is None for value in found):
        raise InputError(
            f"{entry.path}: the manifest does not place it ({', '.join(keys)}); "
            "qexport.cocotb drives the files of a systolic profile (qexport testbench)"
        )
    return found


def _layer(entries: tuple[LayerEntry, ...], layer: str | None, where: Path) -> LayerEntry:
    if layer is None and len(entries) == 1:
        return entries[0]
    for entry in entries:
        if layer in (str(entry.key), entry.name):
            return entry
    keys = ", ".join(str(e.key) for e in entries)
    raise InputError(f"{where}: no layer {layer!r}; the set holds layer(s) {keys}; pass one of them")


def load_vectors(folder: Path, layer: str | None = None) -> VectorSet:
    """The set in ``folder`` (its ``manifest.json``), ``layer`` (needed when it holds several)."""
    manifest_path = folder / MANIFEST_NAME
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(
            f"{manifest_path}: cannot read it ({err.strerror}); give a qexport set's folder"
        ) from err
    entry = _layer(loads(text, str(manifest_path)).layers, layer, manifest_path)
    by_kind: dict[str, list[FileEntry]] = {}
    for f in entry.files:
        by_kind.setdefault(f.tensor, []).append(f)
    if not by_kind.get("output") or not by_kind.get("input") or not by_kind.get("weight"):
        raise InputError(
            f"{manifest_path}: layer {entry.key} has no tiled input, weight and output files; "
            "qexport.cocotb drives a systolic profile's set (qexport testbench)"
        )
    activation = {_placed(f, "tile", "itile"): read_memory(folder, f) for f in by_kind["input"]}
    weights = {_placed(f, "itile", "otile", "kij"): read_memory(folder, f) for f in by_kind["weight"]}
    itiles = 1 + max(i for _, i in activation)
    passes = 1 + max(k for _, _, k in weights)
    tiles = []
    for out in by_kind["output"]:
        s, o, n = _placed(out, "tile", "otile", "n")
        y, x, oc = out.where.y, out.where.x, out.where.oc
        if y is None or x is None or oc is None:
            raise InputError(f"{out.path}: the manifest does not give its y, x and oc; the set is damaged")
        tiles.append(
            OutputTile(
                s,
                o,
                n,
                y[0],
                x[0],
                oc[0],
                oc[1],
                tuple(
                    InputTile(i, activation[(s, i)], tuple(weights[(i, o, k)] for k in range(passes)))
                    for i in range(itiles)
                ),
                read_memory(folder, out),
            )
        )
    tiles.sort(key=lambda t: (t.tile, t.otile))
    first = tiles[0].golden.entry
    address = by_kind.get("address")
    return VectorSet(
        folder=folder,
        layer=str(entry.key),
        tile=first.shape[1],  # (1, TILE, TILE, COLS)
        cols=first.lanes,
        address=read_memory(folder, address[0]) if address else None,
        tiles=tuple(tiles),
    )
