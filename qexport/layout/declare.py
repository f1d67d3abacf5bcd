"""Declarative file layouts: a file kind's files, lines and lanes as data over named axes.

A tiled dataflow builds, per file kind, ONE array covering the whole layer with named axes (the
axis vocabulary below); a :class:`FileSpec` (a profile's ``[files.<kind>]`` table) says which axes
split it into files, which order its lines (outer to inner) and which fill a word's lanes. One
engine, :func:`lay_out`, turns (array, spec) into the files' ``(lines..., lanes)`` blocks by one
transpose and one reshape; no per-value loop.

Axis vocabulary (a dataflow's kinds use a subset, see :data:`VOCABULARY`):

    n         image                         s      spatial tile = (n ty tx), image-major
    ty, tx    tile row / column             itile  input-channel tile    otile  output-channel tile
    y, x      input-grid row / column of a tile's G×G grid (G = (tile-1)*stride + kernel)
    oy, ox    output pixel row / column inside the tile
    ic, oc    input / output channel inside its tile (a PE row / column of a weight-stationary array)
    ki, kj    kernel row / column            kij   kernel position = (ki kj) = ki*k + kj
    pass      output- / input-stationary pass: the tile's pixels, row-major, ``rows`` (``cols``) a pass
    row       output-stationary: the array row holding pixel pass*rows + row of the tile
    col       input-stationary: the array column holding pixel pass*cols + col of the tile

Merged names (``s``, ``kij``) may be used whole or by their parts. A spec may split an axis
einops-style, ``split = {ic = "(ic_hi ic_lo)"}`` with ``sizes = {ic_lo = 8}`` (one part's size
may be left open), and use the parts like any axis. Every axis of the kind must be used exactly
once. The course weight file, drawn (one file per itile, otile, kij; a line per oc; lanes ic)::

    [files.weight]  files = ["itile", "otile", "kij"]  lines = ["oc"]  lanes = "ic"
    line oc=0:  | ic7 | ic6 | ... | ic1 | ic0 |   (lsb_first: ic0 in bits 3:0)
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from qexport.errors import InputError
from qexport.writer.pack import LaneOrder

_GROUP = re.compile(r"^\(\s*([a-z_][a-z0-9_]*(?:\s+[a-z_][a-z0-9_]*)*)\s*\)$")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

MERGES: dict[str, tuple[str, ...]] = {"s": ("n", "ty", "tx"), "kij": ("ki", "kj")}
"""Merged axes a spec may name whole: the arrays keep their parts adjacent, in this order."""

VOCABULARY: dict[str, dict[str, tuple[str, ...]]] = {
    "weight_stationary": {
        "activation": ("n", "ty", "tx", "itile", "y", "x", "ic"),
        "weight": ("itile", "otile", "ki", "kj", "oc", "ic"),
        "psum": ("n", "ty", "tx", "itile", "otile", "oy", "ox", "oc"),
        "output": ("n", "ty", "tx", "otile", "oy", "ox", "oc"),
        "address": ("oy", "ox", "ki", "kj"),
        "psum_kij": ("n", "ty", "tx", "itile", "otile", "ki", "kj", "y", "x", "oc"),
        "psum_acc": ("n", "ty", "tx", "itile", "otile", "ki", "kj", "oy", "ox", "oc"),
        "psum_run": ("n", "ty", "tx", "itile", "otile", "oy", "ox", "oc"),
    },
    "output_stationary": {
        "activation": ("n", "ty", "tx", "pass", "ic", "ki", "kj", "row"),
        "weight": ("otile", "ki", "kj", "ic", "oc"),
        "output": ("n", "ty", "tx", "pass", "otile", "row", "oc"),
    },
    "input_stationary": {
        "activation": ("n", "ty", "tx", "itile", "pass", "ki", "kj", "ic", "col"),
        "weight": ("itile", "otile", "ki", "kj", "oc", "ic"),
        "psum": ("n", "ty", "tx", "itile", "pass", "otile", "oc", "col"),
        "output": ("n", "ty", "tx", "pass", "otile", "oc", "col"),
    },
}
"""Each dataflow's file kinds and the axes of the one array it builds for each (C order)."""

TENSOR_OF = {
    "activation": "input",
    "weight": "weight",
    "psum": "psum",
    "output": "output",
    "address": "address",
    "psum_kij": "psum",
    "psum_acc": "psum",
    "psum_run": "psum",
}
"""The manifest's ``tensor`` of each file kind."""

REQUIRED = {
    "weight_stationary": ("activation", "weight", "psum", "output", "address"),
    "output_stationary": ("activation", "weight", "output"),
    "input_stationary": ("activation", "weight", "psum", "output"),
}
"""The kinds a dataflow's profile must lay out (psum is written for several input tiles only);
``psum_kij`` / ``psum_acc`` / ``psum_run`` are written when a profile has their table."""

STEP_KINDS = ("psum_kij", "psum_acc", "psum_run")
"""The per-step psum kinds (weight-stationary only: its psum memory between passes)."""

ALIASES = {"i": "itile", "o": "otile", "k": "kij", "p": "pass"}
"""Short placeholders of the old ``[names]`` patterns: ``{i}`` is ``{itile}``."""
PLACEHOLDER_MEANING = {
    "a": "the file's number over its file axes, e.g. s*itiles + itile for an activation",
    "layer": "the layer, layer33 or layer1.0.conv2",
}


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One file kind as data.

    ``files``: axes, one file per index (outer to inner, which also numbers ``{a}``); ``lines``:
    groups of axes ordering a file's words, outer to inner, each group one axis of the file's
    array; ``lanes``: the axes (merged) filling a word's lanes, first axis slowest; empty = one
    value a word. ``axes``: the manifest's axis names for the file array (``"kh=1"`` a unit axis);
    empty = the line groups' and lanes' own names. ``single``: the name when the kind has one file.
    """

    kind: str
    files: tuple[str, ...]
    lines: tuple[tuple[str, ...], ...]
    lanes: tuple[str, ...]
    name: str
    single: str | None = None
    lane_order: LaneOrder | None = None
    split: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)
    axes: tuple[str, ...] = ()

    def leaves(self) -> tuple[str, ...]:
        return (*self.files, *(a for g in self.lines for a in g), *self.lanes)

    def manifest_axes(self) -> tuple[str, ...]:
        if self.axes:
            return tuple(a.split("=")[0] for a in self.axes)
        return (*("_".join(g) for g in self.lines), *(("_".join(self.lanes),) if self.lanes else ()))


@dataclass(frozen=True, slots=True)
class Named:
    """An array with one name an axis: ``Named(x, ("n", "ty", "tx", "itile", "y", "x", "ic"))``."""

    array: np.ndarray
    axes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Laid:
    """A kind cut into files: ``blocks[f]`` is file f's array; ``rows[f]`` its indices, one a name
    of ``keys`` (the file axes, merged names and their parts, the short aliases: ``s``, ``n``,
    ``ty``, ``tx``, ``itile``, ``i``)."""

    keys: tuple[str, ...]
    rows: list[list[int]]
    blocks: np.ndarray

    def column(self, key: str) -> int | None:
        return self.keys.index(key) if key in self.keys else None


def _fail(where: str, kind: str, problem: str) -> InputError:
    return InputError(f"{where}: [files.{kind}] {problem}")


def _group(where: str, kind: str, key: str, item: object) -> tuple[str, ...]:
    if not isinstance(item, str):
        raise _fail(where, kind, f"{key} holds {item!r}; write an axis name or a group '(a b)'")
    text = item.strip()
    if _NAME.match(text):
        return (text,)
    found = _GROUP.match(text)
    if not found:
        raise _fail(where, kind, f"{key} holds {item!r}; write an axis name or a group '(a b)'")
    return tuple(found.group(1).split())


def parse_file_spec(where: str, kind: str, raw: object, dataflow: str) -> FileSpec:
    """A ``[files.<kind>]`` table, checked against the dataflow's axes for ``kind``."""
    vocab = VOCABULARY[dataflow]
    if kind in STEP_KINDS and kind not in vocab:
        raise InputError(
            f"{where}: [files.{kind}] is a step psum, what a weight-stationary core's psum memory "
            f"holds between its kernel passes; the {dataflow} array accumulates in its PEs and has "
            f'no psum memory to check; leave [files.{kind}] out or use dataflow = "weight_stationary"'
        )
    if kind not in vocab:
        raise InputError(
            f"{where}: [files.{kind}] is not a file kind of the {dataflow} dataflow; "
            f"its kinds are {', '.join(vocab)}"
        )
    if not isinstance(raw, dict):
        raise _fail(where, kind, "must be a table")
    known = {"files", "lines", "lanes", "name", "single", "lane_order", "split", "sizes", "axes"}
    for key in raw:
        if key not in known:
            raise _fail(where, kind, f"has unknown key {key!r}; known keys are {', '.join(sorted(known))}")
    if "name" not in raw or "lines" not in raw:
        raise _fail(where, kind, "needs 'lines' and 'name'")

    def listed(key: str) -> list[object]:
        value = raw.get(key, [])
        if isinstance(value, str):
            return [value] if value else []
        if not isinstance(value, list):
            raise _fail(where, kind, f"{key} must be a list of axis names")
        return value

    files = tuple(a for item in listed("files") for a in _group(where, kind, "files", item))
    lines = tuple(_group(where, kind, "lines", item) for item in listed("lines"))
    lanes = tuple(a for item in listed("lanes") for a in _group(where, kind, "lanes", item))
    split: dict[str, tuple[str, ...]] = {}
    for axis, parts in dict(raw.get("split", {})).items():
        split[axis] = _group(where, kind, f"split.{axis}", parts)
    sizes = dict(raw.get("sizes", {}))
    for part, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise _fail(where, kind, f"sizes.{part} = {size!r}; expected a positive integer")
        if not any(part in parts for parts in split.values()):
            raise _fail(where, kind, f"sizes.{part}: {part} is no part of a split")
    lane_order = raw.get("lane_order")
    if lane_order not in (None, "lsb_first", "msb_first"):
        raise _fail(where, kind, f"lane_order = {lane_order!r}; choose lsb_first or msb_first")
    names = [raw["name"], *([raw["single"]] if "single" in raw else [])]
    if not all(isinstance(n, str) and n and "/" not in n for n in names):
        raise _fail(where, kind, "name and single must be file name patterns without '/'")
    axes = tuple(str(a) for a in listed("axes"))
    spec = FileSpec(kind, files, lines, lanes, raw["name"], raw.get("single"), lane_order, split, sizes, axes)
    _check_cover(where, spec, vocab[kind])
    _check_names(where, spec)
    data_dims = len(lines) + (1 if lanes else 0)
    if axes and sum("=" not in a for a in axes) != data_dims:
        raise _fail(
            where,
            kind,
            f"axes {list(axes)} name {data_dims} data axes (the line groups and the lanes); "
            "mark unit axes as 'name=1'",
        )
    return spec


def _check_cover(where: str, spec: FileSpec, base: tuple[str, ...]) -> None:
    """Every axis of the kind exactly once: no unknown axis, none twice, none left out."""
    kind, used = spec.kind, list(spec.leaves())
    seen: set[str] = set()
    for a in used:
        if a in seen:
            raise _fail(where, kind, f"uses axis {a!r} twice")
        seen.add(a)
    for axis, parts in spec.split.items():
        missing = [p for p in parts if p not in seen]
        if missing:
            raise _fail(
                where, kind, f"splits {axis} into {' '.join(parts)} but never uses {', '.join(missing)}"
            )
        if axis in seen:
            raise _fail(where, kind, f"uses axis {axis!r} both whole and split")
        used = [a for a in used if a not in parts] + [axis]
    atoms: list[str] = []
    for a in used:
        parts = MERGES.get(a, (a,))
        for p in parts:
            if p not in base:
                raise _fail(
                    where,
                    kind,
                    f"names unknown axis {a!r}; its axes are {', '.join(base)} "
                    f"(merged: {', '.join(m for m, ps in MERGES.items() if set(ps) <= set(base))})",
                )
        atoms += parts
    twice = sorted({a for a in atoms if atoms.count(a) > 1})
    if twice:
        raise _fail(where, kind, f"uses axis {', '.join(twice)} twice (once in a merged name)")
    left = [a for a in base if a not in atoms]
    if left:
        raise _fail(
            where,
            kind,
            f"does not cover the tensor exactly once: axis {', '.join(left)} is in no "
            "files, lines or lanes entry",
        )


def placeholders(spec: FileSpec) -> tuple[str, ...]:
    """The placeholders a kind's name pattern may use: its file axes (merged names and their parts),
    their short aliases, ``{a}`` and ``{layer}``."""
    valid = set(spec.files) | {"a", "layer"}
    for a in spec.files:
        valid |= set(MERGES.get(a, ()))
    for merged, parts in MERGES.items():
        if set(parts) <= valid:
            valid.add(merged)
    valid |= {alias for alias, axis in ALIASES.items() if axis in valid}
    return tuple(sorted(valid))


def _check_names(where: str, spec: FileSpec) -> None:
    valid = placeholders(spec)
    for key, pattern in (("name", spec.name), ("single", spec.single)):
        if pattern is None:
            continue
        what = f"{key} = {pattern!r}"
        try:
            used = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        except ValueError as err:
            raise _fail(where, spec.kind, f"{what} is not a valid pattern ({err})") from err
        for name in used:
            if name not in valid:
                raise _fail(
                    where,
                    spec.kind,
                    f"{what} uses unknown placeholder {{{name}}}; valid: "
                    + ", ".join(f"{{{v}}}" for v in valid),
                )
        if key == "name" and spec.files and "a" not in used:
            named = {ALIASES.get(n, n) for n in used}
            named |= {p for n in list(named) for p in MERGES.get(n, ())}
            apart = [a for a in spec.files if a not in named and not set(MERGES.get(a, ("?",))) <= named]
            if apart:
                raise _fail(
                    where, spec.kind, f"{what} does not tell its files apart: add {{{apart[0]}}} (or {{a}})"
                )
        try:
            pattern.format(**dict.fromkeys(valid, 0))
        except (KeyError, ValueError, IndexError) as err:
            raise _fail(where, spec.kind, f"{what} cannot be formatted with integers ({err})") from err


def _expand(named: Named, spec: FileSpec, where: str) -> tuple[np.ndarray, list[str]]:
    """``named`` with the spec's merged names merged and its splits split (reshapes only)."""
    arr, axes = named.array, list(named.axes)
    for merged, parts in MERGES.items():
        if merged in spec.leaves() or merged in spec.split:
            at = axes.index(parts[0])
            if tuple(axes[at : at + len(parts)]) != parts:  # the dataflows keep merged parts adjacent
                raise ValueError(f"{spec.kind}: axes {parts} are not adjacent in {named.axes}")
            arr = arr.reshape(*arr.shape[:at], -1, *arr.shape[at + len(parts) :])
            axes[at : at + len(parts)] = [merged]
    for axis, parts in spec.split.items():
        at = axes.index(axis)
        size = arr.shape[at]
        fixed = [spec.sizes.get(p) for p in parts]
        known = prod(f for f in fixed if f is not None)
        open_parts = [p for p, f in zip(parts, fixed, strict=True) if f is None]
        if len(open_parts) > 1:
            raise _fail(
                where,
                spec.kind,
                f"split {axis}: give the sizes of all parts but one ({', '.join(open_parts)})",
            )
        if size % known or (not open_parts and size != known):
            raise _fail(
                where,
                spec.kind,
                f"split {axis} = ({' '.join(parts)}): {axis} has {size} values, which "
                f"parts of {known} do not divide; change sizes",
            )
        shape = [f if f is not None else size // known for f in fixed]
        arr = arr.reshape(*arr.shape[:at], *shape, *arr.shape[at + 1 :])
        axes[at : at + 1] = list(parts)
    return arr, axes


def lay_out(named: Named, spec: FileSpec, where: str) -> Laid:
    """The files of ``spec`` over ``named``: one transpose and one reshape, then a view a file.

    Activation of the course core, (n, ty, tx, itile, y, x, ic) = (1, 1, 1, 1, 6, 6, 8) with
    files ["s", "itile"], lines ["y", "x"], lanes "ic": one file, block (6, 6, 8) (36 words, 8 lanes).
    """
    arr, axes = _expand(named, spec, where)
    order = [*spec.files, *(a for g in spec.lines for a in g), *spec.lanes]
    arr = arr.transpose([axes.index(a) for a in order])
    size = dict(zip(order, arr.shape, strict=True))
    file_shape = tuple(size[a] for a in spec.files)
    data_shape = [prod(size[a] for a in g) for g in spec.lines]
    if spec.lanes:
        data_shape.append(prod(size[a] for a in spec.lanes))
    if spec.axes:  # the manifest's shape: unit axes where it names them
        units = iter(data_shape)
        data_shape = [1 if "=" in a else next(units) for a in spec.axes]
    arr = arr.reshape(-1, *data_shape)
    # per file its indices by every name a pattern or placement reads, for all files at once
    count = prod(file_shape)
    columns: dict[str, np.ndarray] = dict(
        zip(spec.files, (c.ravel() for c in np.indices(file_shape, dtype=np.int64)), strict=True)
    )
    for merged, parts in MERGES.items():
        if merged in columns:
            sizes = [_size(named, q) for q in parts]
            columns.update(zip(parts, np.unravel_index(columns[merged], sizes), strict=True))
        elif all(q in columns for q in parts):
            sizes = [_size(named, q) for q in parts]
            columns[merged] = np.ravel_multi_index([columns[q] for q in parts], sizes)
    for alias, axis in ALIASES.items():
        if axis in columns:
            columns[alias] = columns[axis]
    keys = tuple(columns)
    rows = np.stack([columns[k] for k in keys], axis=1).tolist() if keys else [[] for _ in range(count)]
    return Laid(keys, rows, arr)


def _size(named: Named, axis: str) -> int:
    return int(named.array.shape[named.axes.index(axis)])


def file_names(spec: FileSpec, laid: Laid, single: bool, layer: str) -> list[str]:
    """The files' names: ``single`` when the layer is one tile of the array, else ``name`` with
    the file's indices (``{itile}`` and ``{i}`` alike), ``{a}`` (its number) and ``{layer}``.

    The pattern is compiled once to positional fields (``"w_{i}_{k}"`` -> ``"w_{2}_{5}"``), so a
    file costs one ``str.format`` call.
    """
    pattern = spec.single if spec.single is not None and single else spec.name
    where = {key: str(i) for i, key in enumerate(laid.keys)}
    where |= {"a": str(len(laid.keys)), "layer": str(len(laid.keys) + 1)}
    compiled = []
    for literal, name, fmt, _ in string.Formatter().parse(pattern):
        compiled.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is not None:
            compiled.append("{" + where[name] + (":" + fmt if fmt else "") + "}")
    positional = "".join(compiled)
    return [positional.format(*row, number, layer) for number, row in enumerate(laid.rows)]


def default_files(dataflow: str, names: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The ``[files.*]`` tables a profile without them gets, from its ``[names]`` patterns: the
    weight-stationary layout the built-in ``course`` and ``systolic`` profiles spell out."""
    if dataflow != "weight_stationary":
        return {}
    pixels = ["n=1", "h", "w", "c"]
    table: dict[str, dict[str, Any]] = {
        "activation": {"files": ["s", "itile"], "lines": ["y", "x"], "lanes": "ic", "axes": pixels},
        "weight": {
            "files": ["itile", "otile", "kij"],
            "lines": ["oc"],
            "lanes": "ic",
            "axes": ["oc", "kh=1", "kw=1", "ic"],
        },
        "psum": {"files": ["s", "itile", "otile"], "lines": ["oy", "ox"], "lanes": "oc", "axes": pixels},
        "output": {"files": ["s", "otile"], "lines": ["oy", "ox"], "lanes": "oc", "axes": pixels},
        "address": {"lines": ["(oy ox)", "kij"], "axes": ["pixel", "kij"]},
    }
    out: dict[str, dict[str, Any]] = {}
    for kind, spec in table.items():
        key = "output_tiled" if kind == "output" else kind
        if key in names:
            out[kind] = {**spec, "name": names[key]}
            if kind == "output" and "output" in names:
                out[kind]["single"] = names["output"]
    return out
