"""Layout for output-tiled systolic cores such as the course's 8×8 weight-stationary core, and
for output- and input-stationary arrays (``dataflow``). Per file kind this module builds one
named array over the whole layer (``declare.VOCABULARY``); the profile's ``[files.<kind>]``
tables cut it into files (``declare.lay_out``). The weight-stationary files below are the
built-in ``course`` / ``systolic`` tables; README "File layouts as data" draws all three sets.

One tile = ``rows`` input channels × ``cols`` output channels × a ``tile``×``tile`` output window.
For a k×k conv with stride s and padding p its input is a G×G grid, G = (tile-1)*s + k (tile+2 for
the course's 3×3 stride-1 convs), read from the padded map: tile row ty starts at input row
ty*tile*s - p (zeros outside the map), likewise for columns.

    activation   grid position r*G+c a word, lane = input channel (channel 0 in the low bits)
    weight       one file a kernel position kk = ki*k+kj (k*k files, one for a 1×1 conv); output
                 channel a word, lane = input channel
    address      (weight-stationary only) per output pixel (orow, ocol) its k*k psum-memory
                 addresses G*G*kk + (orow*s+ki)*G + (ocol*s+kj), where kernel pass kk wrote grid
                 position n at G*G*kk + n
    output       output pixel orow*tile+ocol a word, lane = output channel: ReLU(sum over taps and
                 all input channels) — the fully accumulated result
    psum         (layers with several input-channel tiles) one tile's partial sums, no ReLU

Worked example: a 3×3 conv, stride 2, padding 1, tile 2: G = (2-1)*2+3 = 5; tile (0, 1) reads input
rows -1..3 and columns 3..7; output pixel (1, 1) at kernel position (0, 2), kk = 2, reads grid
position (1*2+0)*5 + (1*2+2) = 14, psum address 25*2 + 14 = 64. A 1×1 conv, stride 2, padding 0,
tile 4: G = 7, one kernel pass; output pixel (orow, ocol) reads grid position 2*orow*7 + 2*ocol.

``geometry = "valid"``: the core computes a valid conv over the bare map instead (``padding`` a
multiple of ``stride``): the grids are read as above with no zero border (tile row ty starts at
input row ty*tile*s; zeros only beyond the map's bottom and right, to whole tiles), and the golden
holds the (h-k)//s+1 interior outputs a side, the layer's output pixels p/s.. of its own
coordinates (the manifest's ``y`` / ``x``); ``acc_address`` is the same table (G and the taps are).

Tiles ``s`` are numbered image-major, then tile row, then tile column; activation tile
``a = s * itiles + i`` for input-channel tile ``i``; ``o`` is the output-channel tile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

import numpy as np

from qexport.errors import BitWidthError, InputError
from qexport.ir.fixed_point import LayerFixedPoint
from qexport.ir.integerize import IntLayer
from qexport.ir.reference import Psums, TiledPsums, check_requantizable, step_psums
from qexport.ir.sfu import LayerSfu
from qexport.layout.declare import TENSOR_OF, VOCABULARY, Laid, Named, file_names, lay_out
from qexport.layout.flat import (
    Tensor,
    TensorPlan,
    check_psum_width,
    fixed_point_specs,
    sfu_specs,
    signed_bits_of,
    threshold_values,
)
from qexport.layout.placement import Placement, Span
from qexport.layout.profile import Profile, name_pattern
from qexport.writer.pack import PackSpec, check_fits, smallest_signed_bits


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def grid_size(layer: IntLayer, tile: int) -> int:
    """G, the side of a tile's input grid: (tile-1)*stride + kernel input pixels."""
    return (tile - 1) * layer.stride + layer.kernel


def check_systolic(layer: IntLayer, p: Profile) -> None:
    """Refuse layers and values the core of profile ``p`` cannot take (run before the reference's
    ``tiled_psums``, so these messages come first)."""
    takes = (not p.kernels or layer.kernel in p.kernels) and (not p.strides or layer.stride in p.strides)
    if not takes:
        kernels = "/".join(f"{k}x{k}" for k in p.kernels) if p.kernels else "any"
        strides = "/".join(str(s) for s in p.strides) if p.strides else "any"
        raise InputError(
            f"layer {layer.label} is a {layer.kernel}x{layer.kernel} conv with stride {layer.stride}; "
            f"the {p.name} core takes {kernels} kernels with stride {strides} only (its input grid is "
            f"fixed at {p.tile + 2}x{p.tile + 2} and its kernel passes at 9); use --profile systolic "
            "(or a copy of it), which takes any kernel and stride"
        )
    if p.geometry == "valid":
        _check_valid(layer, p)
    act_spec, w_spec = _act_spec(p), _w_spec(p)
    check_fits(
        layer.x_int,
        act_spec,
        f"layer {layer.label} x_int",
        (
            f"layer {layer.label}'s input is the normalised image, which is signed, and the {p.name} "
            f"core's activation lanes are unsigned {p.act_bits}-bit; add --act-clip relu (the image "
            "clipped at 0), or use the flat profile, which writes signed lanes"
            if layer.conv_number == 0
            else f"the {p.name} profile has unsigned {p.act_bits}-bit activation lanes; use --act-clip "
            "relu, or the flat profile, which writes signed lanes"
        ),
    )
    check_fits(
        layer.w_int, w_spec, f"layer {layer.label} w_int", f"the {p.name} core has {p.w_bits}-bit weights"
    )
    if "requantize" in p.golden:
        check_requantizable(layer)


def _check_valid(layer: IntLayer, p: Profile) -> None:
    """A valid conv over the bare map must exist and its outputs must be the layer's own."""
    _, _, h, w = layer.x_int.shape
    k, stride, pad = layer.kernel, layer.stride, layer.padding
    if h < k or w < k:
        raise InputError(
            f"layer {layer.label}: profile {p.name} computes a valid conv over the bare map "
            f'(geometry = "valid"), and its {h}x{w} map is smaller than the {k}x{k} kernel, so it has '
            'no interior output; use a profile with geometry = "padded_grid" for this layer'
        )
    if pad % stride:
        raise InputError(
            f"layer {layer.label}: profile {p.name} computes a valid conv over the bare map "
            f'(geometry = "valid"), whose outputs are the layer\'s only when its padding ({pad}) is a '
            f"multiple of its stride ({stride}); a stride-{stride} valid conv from input row 0 reads "
            'windows the layer never reads; use a profile with geometry = "padded_grid" for this layer'
        )


def _act_spec(p: Profile) -> PackSpec:
    return PackSpec(p.act_bits, p.rows, False, p.lane_order)


def _w_spec(p: Profile) -> PackSpec:
    return PackSpec(p.w_bits, p.rows, True, p.lane_order)


def systolic_layout(
    layer: IntLayer,
    psums: Psums,
    tiled: TiledPsums,
    p: Profile,
    prefix: str,
    sfu: LayerSfu | LayerFixedPoint | None = None,
) -> list[TensorPlan]:
    """Tile ``layer`` for profile ``p``: slice and arrange the reference's ``tiled`` psums.

    Per file kind one named array covers the whole layer (``declare.VOCABULARY``); the profile's
    ``[files.<kind>]`` spec cuts it into files (``declare.lay_out``). ``check_systolic`` has
    accepted the layer; only the psums' width is checked here. With ``sfu``, per output-channel
    tile a ``threshold`` file (t, c: threshold k of every column a word) and a ``direction`` word
    (c), and per output tile a ``requant`` file: the next ``x_int`` of the tile's output pixels
    (after the max-pool, tile / pool pixels a side), output channel a lane. A fixed-point ``sfu``
    (a ResNet block end) gets per output-channel tile its ``multiplier``, ``shift`` and ``bias``
    words (c), and per output tile its ``skip`` (identity shortcut) and ``requant`` /
    ``requant_shortcut`` files, laid out as ``requant``.
    """
    if sfu is not None and p.geometry == "valid":
        raise InputError(
            f'layer {layer.label}: profile {p.name} computes a valid conv (geometry = "valid"), whose '
            "golden is the interior outputs only, and the SFU files (--sfu, --chain) are cut from the "
            'whole output map; leave out --sfu, or use a profile with geometry = "padded_grid"'
        )
    g = _geometry(layer, tiled, p)
    named = _ARRAYS[p.dataflow](layer, tiled, p, g)
    out_bits = max(p.psum_bits, signed_bits_of(psums.psum))
    specs = {
        "activation": _act_spec(p),
        "weight": _w_spec(p),
        "psum": PackSpec(p.psum_bits, p.cols, True, p.lane_order),
        "psum_kij": PackSpec(p.psum_bits, p.cols, True, p.lane_order),
        "psum_acc": PackSpec(p.psum_bits, p.cols, True, p.lane_order),
        "psum_run": PackSpec(p.psum_bits, p.cols, True, p.lane_order),
        "output": PackSpec(p.act_bits, p.cols, False, p.lane_order)
        if "requantize" in p.golden
        else PackSpec(out_bits, p.cols, True, p.lane_order),
        "address": PackSpec(p.address_bits, 1, False),
    }
    _check_psum_fit(layer, tiled, p, g)
    plans: list[TensorPlan] = []
    keys: list[np.ndarray] = []  # per plan its place in the manifest's order (see _order_keys)
    for kind, spec in p.files.items():
        if kind not in named:
            continue
        laid = lay_out(named[kind], spec, f"layer {layer.label}: profile {p.name}")
        if not laid.rows:
            continue
        base, blocks = specs[kind], laid.blocks
        lanes = int(blocks.shape[-1]) if spec.lanes else 1  # every file of a kind has the same lanes
        _check_lanes(layer, p, kind, spec.lanes, lanes)
        pack = replace(base, lanes=lanes, lane_order=spec.lane_order or base.lane_order)
        # a valid conv's grids hold real pixels only: no zero border (manifest ``padded`` false)
        padded = (p.geometry == "padded_grid") if kind == "activation" else None
        axes, tensor = spec.manifest_axes(), TENSOR_OF[kind]
        place = _placer(kind, p, g, laid)
        names = file_names(spec, laid, g.single, layer.folder)
        for number, (row, name) in enumerate(zip(laid.rows, names, strict=True)):
            plans.append(
                TensorPlan(
                    tensor,  # type: ignore[arg-type]  # the kinds' tensors are Tensor names
                    prefix + name,
                    blocks[number],
                    axes,
                    pack,
                    padded=padded,
                    where=place(row),
                )
            )
        keys.append(_order_keys(kind, laid))
    if kind_addresses := [tp for tp in plans if tp.tensor == "address"]:
        _check_addresses(layer, p, kind_addresses[0].array)
    if sfu is not None:
        if isinstance(sfu, LayerFixedPoint):
            maps = _fixed_point_maps(sfu, p, g.otiles, g.ty, g.tx)
            rules = _fixed_point_rule_plans(layer, sfu, p, g.otiles, prefix, g.oc_range)
        else:
            requant, pooled_tile = _sfu_tiles(layer, sfu, p, g.otiles, g.ty, g.tx)
            requant_spec = PackSpec(sfu.next_act_bit, p.cols, False, p.lane_order)
            maps = [_TileMap("requant", requant, pooled_tile, requant_spec, sfu.requant.shape[2:])]
            rules = _sfu_rule_plans(layer, sfu, p, g.otiles, out_bits, prefix, g.oc_range)
        plans += rules
        keys.append(
            np.array([[1, i, 0, 0, 0, 0, 0] for i in range(len(rules))], dtype=np.int64).reshape(-1, 7)
        )
        map_keys, map_plans = _map_plans(layer, maps, p, g, prefix)
        plans += map_plans
        keys.append(map_keys)
    # a stable sort: the files of a kind stay in their spec's order within one key
    ranked = np.lexsort(np.concatenate(keys)[:, ::-1].T)
    plans = [plans[int(r)] for r in ranked]
    stems = [tp.stem for tp in plans]
    if len(set(stems)) < len(stems):
        twice = next(st for st in stems if stems.count(st) > 1)
        raise InputError(
            f"layer {layer.label}: profile {p.name} names two files {twice}; give each [files.<kind>] "
            "name pattern the placeholders of all its file axes"
        )
    return plans


_LANE_EDGE: dict[str, dict[str, str]] = {
    "weight_stationary": {"activation": "rows", "weight": "rows"},
    "output_stationary": {"activation": "rows", "weight": "cols", "output": "cols"},
    "input_stationary": {"activation": "cols", "weight": "rows"},
}
"""Per dataflow the array edge a kind's word crosses (``rows`` or ``cols``); a kind not listed
(psums, step psums, outputs) is written by the PE columns: ``cols``. The address table is no
array word and has no limit."""


def _check_lanes(layer: IntLayer, p: Profile, kind: str, axes: tuple[str, ...], lanes: int) -> None:
    """A word is what one array edge reads or writes at once: its lanes fit the edge's PEs."""
    if kind == "address":
        return
    edge = _LANE_EDGE[p.dataflow].get(kind, "cols")
    limit, pe = (p.rows, "row") if edge == "rows" else (p.cols, "column")
    if lanes > limit:
        raise InputError(
            f"layer {layer.label}: profile {p.name}: [files.{kind}] packs {lanes} lanes a word "
            f"(lanes = {' '.join(axes)}), and the {p.dataflow} {p.rows}x{p.cols} array's {kind} word "
            f"holds one value a PE {pe}, {limit} at most; move an axis from lanes to lines"
        )


@dataclass(frozen=True, slots=True)
class _Geometry:
    """A layer's tiling on one profile's array."""

    n: int
    itiles: int
    otiles: int
    ty: int
    tx: int
    grid: int
    passes: int
    per_pass: int
    """Output pixels a pass (output-stationary: rows; input-stationary: cols)."""
    single: bool
    """The layer is one tile of the array: the kinds' ``single`` names apply."""
    c_in: int
    c_out: int
    rows: int
    cols: int
    h: int
    w: int
    """Where the placements' pixel ranges stop: the input map's size (padded_grid), or a valid
    conv's interior output map."""
    origin: int
    """The layer's output pixel (row and column) of the first tile's [0, 0]: 0, or for a valid
    conv ``padding / stride``."""
    pad: int
    """The zero border the grids are read with: the layer's padding, 0 for a valid conv."""

    def ic_range(self, i: int) -> Span:
        return (i * self.rows, min((i + 1) * self.rows, self.c_in))

    def oc_range(self, o: int) -> Span:
        return (o * self.cols, min((o + 1) * self.cols, self.c_out))


def _geometry(layer: IntLayer, tiled: TiledPsums, p: Profile) -> _Geometry:
    n, c_in, h, w = layer.x_int.shape
    c_out = layer.out_channels
    os = p.dataflow == "output_stationary"
    itiles = 1 if os else _ceil_div(c_in, p.rows)
    otiles = _ceil_div(c_out, p.cols)
    _, _, h_out, w_out = tiled.total.shape  # the output map rounded up to whole tiles
    ty, tx = h_out // p.tile, w_out // p.tile
    passes, per_pass = 1, p.tile * p.tile
    if p.dataflow != "weight_stationary":
        per_pass, unit = (p.rows, "row") if os else (p.cols, "column")
        if (p.tile * p.tile) % per_pass:
            raise InputError(
                f"layer {layer.label}: profile {p.name}'s {p.tile}x{p.tile} tile has "
                f"{p.tile * p.tile} output pixels, which passes of {per_pass} {unit}s (one pixel a {unit}) "
                f"do not divide; choose a tile whose pixel count is a multiple of {unit}s"
            )
        passes = p.tile * p.tile // per_pass
    single = itiles == otiles == passes == 1 and n * ty * tx == 1
    rows = c_in if os else p.rows
    grid = grid_size(layer, p.tile)
    pad = 0 if p.geometry == "valid" else layer.padding
    if p.geometry == "valid":
        h, w = tiled.size
    else:  # the output map's own size (the input's for a stride-1 "same" conv)
        k, s = layer.kernel, layer.stride
        h, w = (h + 2 * layer.padding - k) // s + 1, (w + 2 * layer.padding - k) // s + 1
    return _Geometry(
        n,
        itiles,
        otiles,
        ty,
        tx,
        grid,
        passes,
        per_pass,
        single,
        c_in,
        c_out,
        rows,
        p.cols,
        h,
        w,
        tiled.origin,
        pad,
    )


def _grids(layer: IntLayer, p: Profile, g: _Geometry, channels: int) -> np.ndarray:
    """Every tile's G×G input grid, (n, channels, ty, tx, G, G): read from the map with a zero
    border of ``g.pad`` (the layer's padding; 0 for a valid conv over the bare map: padded row r is
    input row r - pad), zeros beyond it and beyond the real channels — the input the reference's
    tiled psums were summed over."""
    n, c_in, h, w = layer.x_int.shape
    stride, pad = layer.stride, g.pad
    x = np.zeros(
        (
            n,
            channels,
            max((g.ty - 1) * p.tile * stride + g.grid, h + pad),
            max((g.tx - 1) * p.tile * stride + g.grid, w + pad),
        ),
        dtype=np.int64,
    )
    x[:, :c_in, pad : h + pad, pad : w + pad] = layer.x_int
    rows = (np.arange(g.ty) * p.tile * stride)[:, None] + np.arange(g.grid)  # (ty, G)
    cols = (np.arange(g.tx) * p.tile * stride)[:, None] + np.arange(g.grid)  # (tx, G)
    return x[:, :, rows[:, None, :, None], cols[None, :, None, :]]


def _weights(layer: IntLayer, g: _Geometry, channels: int) -> np.ndarray:
    """w_int (oc, ic, k, k), zero output channels to whole tiles, zero input channels to ``channels``."""
    weights = np.zeros((g.otiles * g.cols, channels, layer.kernel, layer.kernel), dtype=np.int64)
    weights[: g.c_out, : g.c_in] = layer.w_int
    return weights


def _by_tile(values: np.ndarray, p: Profile, g: _Geometry) -> np.ndarray:
    """(n, oc, H, W) over whole tiles -> (n, ty, tx, otile, oy, ox, oc), zero channels to whole tiles."""
    n = values.shape[0]
    full = np.pad(values, ((0, 0), (0, g.otiles * g.cols - values.shape[1]), (0, 0), (0, 0)))
    shaped = full.reshape(n, g.otiles, g.cols, g.ty, p.tile, g.tx, p.tile)
    return shaped.transpose(0, 3, 5, 1, 4, 6, 2)


def _ws_arrays(layer: IntLayer, tiled: TiledPsums, p: Profile, g: _Geometry) -> dict[str, Named]:
    """The weight-stationary kinds' arrays (axes as ``declare.VOCABULARY``)."""
    k, stride, grid = layer.kernel, layer.stride, g.grid
    grids = _grids(layer, p, g, g.itiles * p.rows)
    act = grids.reshape(g.n, g.itiles, p.rows, g.ty, g.tx, grid, grid).transpose(0, 3, 4, 1, 5, 6, 2)
    weights = _weights(layer, g, g.itiles * p.rows)
    w = weights.reshape(g.otiles, p.cols, g.itiles, p.rows, k, k).transpose(2, 0, 4, 5, 1, 3)
    # (itile, n, ty, tx, otile, oy, ox, oc) -> (n, ty, tx, itile, otile, oy, ox, oc)
    partial = np.stack([_by_tile(part, p, g) for part in tiled.partial], axis=3)
    oy = np.arange(p.tile)[:, None, None, None]
    ox = np.arange(p.tile)[None, :, None, None]
    ki = np.arange(k)[None, None, :, None]
    kj = np.arange(k)[None, None, None, :]
    # kernel pass kk = ki*k + kj wrote grid position n at G*G*kk + n
    addresses = grid * grid * (ki * k + kj) + (oy * stride + ki) * grid + (ox * stride + kj)
    vocab = VOCABULARY["weight_stationary"]
    named = {
        "activation": Named(act, vocab["activation"]),
        "weight": Named(w, vocab["weight"]),
        "psum": Named(partial, vocab["psum"]),
        "output": Named(_by_tile(tiled.golden, p, g), vocab["output"]),
        "address": Named(addresses, vocab["address"]),
    }
    if "psum_run" in p.files:  # the running sums after each input-channel tile
        named["psum_run"] = Named(np.cumsum(partial, axis=3), vocab["psum_run"])
    if g.itiles == 1:
        del named["psum"]  # one input tile: its psums are the output before the golden ops
    if "psum_kij" in p.files or "psum_acc" in p.files:
        steps = step_psums(act, w)  # (n, ty, tx, itile, otile, ki, kj, y, x, oc)
        named["psum_kij"] = Named(steps, vocab["psum_kij"])
        named["psum_acc"] = Named(_running_sums(steps, k, stride, p.tile), vocab["psum_acc"])
    for kind in ("psum_kij", "psum_acc", "psum_run"):
        if kind in p.files:  # what the core's psum memory holds must fit it
            check_psum_width(
                named[kind].array,
                p.psum_bits,
                f"layer {layer.label} {kind}",
                f"the {p.name} core's {p.psum_bits}-bit psum memory is too narrow",
                "a profile with psum_bits =",
                signed_bits_of(named[kind].array),
            )
    return named


def _running_sums(steps: np.ndarray, k: int, stride: int, tile: int) -> np.ndarray:
    """Per output pixel the sum over kernel positions 0..kk of what pass kk wrote at the grid
    position that pixel reads, ``psum[kk][(oy*s+ki)*G + (ox*s+kj)]``: the running sums an
    accumulating core holds after each kernel position (within its input tile), kk = ki*k + kj."""
    ki = np.arange(k)[:, None, None, None]
    kj = np.arange(k)[None, :, None, None]
    ys = np.arange(tile)[None, None, :, None] * stride + ki  # (ki, 1, oy, 1)
    xs = np.arange(tile)[None, None, None, :] * stride + kj  # (1, kj, 1, ox)
    # adjacent advanced indices keep their place: (n, ty, tx, itile, otile, ki, kj, oy, ox, oc)
    read = steps[:, :, :, :, :, ki, kj, ys, xs]
    shape = read.shape
    flat = read.reshape(*shape[:5], k * k, *shape[7:])
    return np.cumsum(flat, axis=5).reshape(shape)


def _reads(layer: IntLayer, p: Profile, g: _Geometry, channels: int) -> np.ndarray:
    """Per tile, output pixel (row-major) and kernel position the grid value it reads:
    (n, channels, ty, tx, pixel, ki, kj), ``grid[(oy*s + ki), (ox*s + kj)]``."""
    k, stride = layer.kernel, layer.stride
    grids = _grids(layer, p, g, channels)  # (n, channels, ty, tx, G, G)
    pixel = np.arange(p.tile * p.tile)
    py, px = pixel // p.tile, pixel % p.tile
    ys = (py * stride)[:, None, None] + np.arange(k)[None, :, None]  # (pixel, ki, 1)
    xs = (px * stride)[:, None, None] + np.arange(k)[None, None, :]  # (pixel, 1, kj)
    return grids[:, :, :, :, ys, xs]


def _is_arrays(layer: IntLayer, tiled: TiledPsums, p: Profile, g: _Geometry) -> dict[str, Named]:
    """The input-stationary kinds' arrays: PE (row, col) holds input channel ``row`` (of its input
    tile) of the grid value that output pixel pass*cols + col reads at kernel position (ki, kj);
    each output channel's weights (lane = ic) stream past, and column col sums its pixel."""
    k = layer.kernel
    read = _reads(layer, p, g, g.itiles * p.rows)
    read = read.reshape(g.n, g.itiles, p.rows, g.ty, g.tx, g.passes, p.cols, k, k)
    act = read.transpose(0, 3, 4, 1, 5, 7, 8, 2, 6)  # (n, ty, tx, itile, pass, ki, kj, ic, col)
    weights = _weights(layer, g, g.itiles * p.rows)
    w = weights.reshape(g.otiles, p.cols, g.itiles, p.rows, k, k).transpose(2, 0, 4, 5, 1, 3)

    def by_pass(values: np.ndarray) -> np.ndarray:  # (n, oc, H, W) -> (n, ty, tx, pass, otile, oc, col)
        tiles = _by_tile(values, p, g).reshape(g.n, g.ty, g.tx, g.otiles, g.passes, p.cols, p.cols)
        return tiles.transpose(0, 1, 2, 4, 3, 6, 5)

    vocab = VOCABULARY["input_stationary"]
    named = {
        "activation": Named(act, vocab["activation"]),
        "weight": Named(w, vocab["weight"]),
        "psum": Named(np.stack([by_pass(part) for part in tiled.partial], axis=3), vocab["psum"]),
        "output": Named(by_pass(tiled.golden), vocab["output"]),
    }
    if g.itiles == 1:
        del named["psum"]
    return named


def _os_arrays(layer: IntLayer, tiled: TiledPsums, p: Profile, g: _Geometry) -> dict[str, Named]:
    """The output-stationary kinds' arrays: row r of pass q holds output pixel q*rows + r of the
    tile (row-major); its activation lane at (ic, ki, kj) is the grid value that pixel reads."""
    k = layer.kernel
    read = _reads(layer, p, g, g.c_in).reshape(g.n, g.c_in, g.ty, g.tx, g.passes, p.rows, k, k)
    act = read.transpose(0, 2, 3, 4, 1, 6, 7, 5)  # (n, ty, tx, pass, ic, ki, kj, row)
    weights = _weights(layer, g, g.c_in).reshape(g.otiles, p.cols, g.c_in, k, k).transpose(0, 3, 4, 2, 1)
    golden = _by_tile(tiled.golden, p, g).reshape(g.n, g.ty, g.tx, g.otiles, g.passes, p.rows, p.cols)
    vocab = VOCABULARY["output_stationary"]
    return {
        "activation": Named(act, vocab["activation"]),
        "weight": Named(weights, vocab["weight"]),
        "output": Named(golden.transpose(0, 1, 2, 4, 3, 5, 6), vocab["output"]),
    }


_ARRAYS = {
    "weight_stationary": _ws_arrays,
    "output_stationary": _os_arrays,
    "input_stationary": _is_arrays,
}


def _placer(kind: str, p: Profile, g: _Geometry, laid: Laid) -> Callable[[list[int]], Placement]:
    """Where a kind's file sits in the layer, from its index row (columns and ranges looked up once
    a kind; the returned function runs once a file)."""
    axes = VOCABULARY[p.dataflow][kind]
    col = laid.column
    s, n, ty, tx = col("s"), col("n"), col("ty"), col("tx")
    i, o, k, q = col("itile"), col("otile"), col("kij"), col("pass")
    ic = [g.ic_range(t) for t in range(g.itiles)]
    oc = [g.oc_range(t) for t in range(g.otiles)]
    first = g.origin  # the layer's own output coordinates
    ys = [(first + t * p.tile, first + min((t + 1) * p.tile, g.h)) for t in range(g.ty)]
    xs = [(first + t * p.tile, first + min((t + 1) * p.tile, g.w)) for t in range(g.tx)]
    pixels = [(t * g.per_pass, (t + 1) * g.per_pass) for t in range(g.passes)]
    all_ic = (0, g.c_in) if "ic" in axes else None  # a file without itile holds every input channel
    all_oc = (0, g.c_out) if "oc" in axes else None

    def place(row: list[int]) -> Placement:
        spatial = s is not None and n is not None and ty is not None and tx is not None
        return Placement(
            tile=row[s] if spatial and s is not None else None,
            n=row[n] if spatial and n is not None else None,
            y=ys[row[ty]] if spatial and ty is not None else None,
            x=xs[row[tx]] if spatial and tx is not None else None,
            itile=None if i is None else row[i],
            otile=None if o is None else row[o],
            kij=None if k is None else row[k],
            ic=all_ic if i is None else ic[row[i]],
            oc=all_oc if o is None else oc[row[o]],
            pixels=None if q is None else pixels[row[q]],
        )

    return place


_PHASE = {
    "activation": (0, 0),
    "psum": (0, 1),
    "psum_kij": (0, 2),
    "psum_acc": (0, 3),
    "psum_run": (0, 4),
    "output": (1, 0),
}


def _order_keys(kind: str, laid: Laid) -> np.ndarray:
    """Each file's key in the manifest's order, (files, 7): weights, the SFU rules, then tile by
    tile (and pass by pass) its activation and psums by input tile, then its outputs (and requant)
    by output tile, then the address table."""
    rows = np.asarray(laid.rows, dtype=np.int64).reshape(len(laid.rows), len(laid.keys))
    count = rows.shape[0]
    out = np.zeros((count, 7), dtype=np.int64)
    out[:, -1] = np.arange(count)
    if kind in ("weight", "address"):
        out[:, 0] = 0 if kind == "weight" else 3
        return out
    phase, sub = _PHASE[kind]
    major = laid.column("itile") if phase == 0 else laid.column("otile")
    out[:, 0], out[:, 3], out[:, 5] = 2, phase, sub
    for at, column in ((1, laid.column("s")), (2, laid.column("pass")), (4, major)):
        if column is not None:
            out[:, at] = rows[:, column]
    return out


def _check_psum_fit(layer: IntLayer, tiled: TiledPsums, p: Profile, g: _Geometry) -> None:
    """Each tile's psums (its partial sums, or its totals with one input tile; an output-stationary
    PE's whole sum) must fit ``psum_bits``; the first tile that does not is named."""
    k = layer.kernel
    several = g.itiles > 1
    written = tiled.partial if several else tiled.total[None]
    if signed_bits_of(written) <= p.psum_bits:
        return
    # the worst case of one tile's psums: its input channels (rows or fewer) x k*k taps at the extremes
    worst = min(g.c_in, g.rows) * k * k * (2 ** (layer.w_bit - 1) - 1) * _act_spec(p).value_range[1]
    blocks = np.stack([_by_tile(part, p, g) for part in written], axis=3)  # (n, ty, tx, i, o, oy, ox, oc)
    blocks = blocks.reshape(g.n * g.ty * g.tx, len(written), g.otiles, -1)
    low, high = blocks.min(axis=3), blocks.max(axis=3)
    bound = 1 << (p.psum_bits - 1)
    s, i, o = (int(v[0]) for v in np.nonzero((low < -bound) | (high >= bound)))
    check_psum_width(
        blocks[s, i, o],
        p.psum_bits,
        f"layer {layer.label} tile {s} itile {i} otile {o}"
        if several
        else f"layer {layer.label} tile {s} otile {o}",
        f"the {p.name} core's {p.psum_bits}-bit psums are too narrow",
        "a profile with psum_bits =",
        smallest_signed_bits(-worst, worst),
    )


def _map_plans(
    layer: IntLayer, maps: list[_TileMap], p: Profile, g: _Geometry, prefix: str
) -> tuple[np.ndarray, list[TensorPlan]]:
    """Per output tile (s, o) each map's pixels (the next ``x_int`` after the pool, a skip), output
    channel a lane; after the tile's outputs, in the maps' order."""
    plans: list[TensorPlan] = []
    keys: list[list[int]] = []
    for s, (image, ty, tx) in enumerate(np.ndindex(g.n, g.ty, g.tx)):
        for o in range(g.otiles):
            for number, m in enumerate(maps):
                r0, c0 = ty * m.side, tx * m.side
                part = m.full[image : image + 1, :, r0 : r0 + m.side, c0 : c0 + m.side]
                high_y, high_x = m.size
                plans.append(
                    TensorPlan(
                        m.tensor,
                        prefix + name_pattern(p, m.tensor).format(s=s, o=o, layer=layer.folder),
                        part[:, o * p.cols : (o + 1) * p.cols].transpose(0, 2, 3, 1),
                        ("n", "h", "w", "c"),
                        m.spec,
                        where=Placement(
                            tile=s,
                            n=int(image),
                            y=(min(r0, high_y), min(r0 + m.side, high_y)),
                            x=(min(c0, high_x), min(c0 + m.side, high_x)),
                            otile=o,
                            oc=g.oc_range(o),
                        ),
                    )
                )
                keys.append([2, s, 0, 1, o, 1, number])
    return np.array(keys, dtype=np.int64).reshape(-1, 7), plans


@dataclass(frozen=True)
class _TileMap:
    """A per-pixel SFU tensor cut per output tile: ``full`` (N, C', H', W') zero-padded to whole
    tiles and channel tiles, ``side`` pixels a tile side in it, ``size`` its real (H, W)."""

    tensor: Tensor
    full: np.ndarray
    side: int
    spec: PackSpec
    size: tuple[int, ...]


def _padded_map(values: np.ndarray, p: Profile, otiles: int, ty_count: int, tx_count: int) -> np.ndarray:
    n, c, h, w = values.shape
    full = np.zeros((n, otiles * p.cols, ty_count * p.tile, tx_count * p.tile), dtype=np.int64)
    full[:, :c, :h, :w] = values
    return full


def _fixed_point_maps(
    fp: LayerFixedPoint, p: Profile, otiles: int, ty_count: int, tx_count: int
) -> list[_TileMap]:
    """The skip (identity shortcut) and each requant of a block end, per output tile (no pool)."""
    _, _, _, k_spec = fixed_point_specs(fp, p.cols, p.lane_order)
    maps = []
    if fp.skip is not None:
        full = _padded_map(fp.skip, p, otiles, ty_count, tx_count)
        maps.append(_TileMap("skip", full, p.tile, k_spec, fp.skip.shape[2:]))
    for rq in fp.requants:
        spec = PackSpec(int(rq.rule.levels).bit_length(), p.cols, False, p.lane_order)
        full = _padded_map(rq.x_int, p, otiles, ty_count, tx_count)
        maps.append(_TileMap(cast(Tensor, rq.tensor), full, p.tile, spec, rq.x_int.shape[2:]))
    return maps


def _fixed_point_rule_plans(
    layer: IntLayer,
    fp: LayerFixedPoint,
    p: Profile,
    otiles: int,
    prefix: str,
    oc_range: Callable[[int], Span],
) -> list[TensorPlan]:
    """Per output-channel tile its multipliers, shifts and biases (c); padding columns are zero."""
    m_spec, s_spec, b_spec, _ = fixed_point_specs(fp, p.cols, p.lane_order)
    plans: list[TensorPlan] = []
    for tensor, values, spec in (
        ("multiplier", fp.fold.multiplier, m_spec),
        ("shift", fp.fold.shift, s_spec),
        ("bias", fp.fold.bias, b_spec),
    ):
        padded = np.zeros(otiles * p.cols, dtype=np.int64)
        padded[: layer.out_channels] = values
        plans.extend(
            TensorPlan(
                cast(Tensor, tensor),
                prefix + name_pattern(p, tensor).format(o=o, layer=layer.folder),
                padded[o * p.cols : (o + 1) * p.cols],
                ("c",),
                spec,
                where=Placement(otile=o, oc=oc_range(o)),
            )
            for o in range(otiles)
        )
    return plans


def _sfu_tiles(
    layer: IntLayer, sfu: LayerSfu, p: Profile, otiles: int, ty_count: int, tx_count: int
) -> tuple[np.ndarray, int]:
    """The requant map padded with zeros to whole tiles and output-channel tiles, and a tile's side
    in it (``tile / pool``); a tile the pool window does not divide is refused."""
    pool = sfu.pool or 1
    if p.tile % pool:
        raise InputError(
            f"layer {layer.label}: a {pool}x{pool} max-pool follows it, and the {p.name} profile's "
            f"{p.tile}x{p.tile} output tiles do not split into whole pool windows, so a tile's requant "
            "is not its own; use a profile whose tile is a multiple of the pool"
        )
    side = p.tile // pool
    n, c, h, w = sfu.requant.shape
    full = np.zeros((n, otiles * p.cols, ty_count * side, tx_count * side), dtype=np.int64)
    full[:, :c, :h, :w] = sfu.requant
    return full, side


def _sfu_rule_plans(
    layer: IntLayer,
    sfu: LayerSfu,
    p: Profile,
    otiles: int,
    psum_bits: int,
    prefix: str,
    oc_range: Callable[[int], Span],
) -> list[TensorPlan]:
    """Per output-channel tile its thresholds (t, c) and directions (c); padding columns are zero."""
    t_spec, d_spec, _ = sfu_specs(sfu, psum_bits, p.cols, p.cols, p.lane_order)
    values = np.zeros((otiles * p.cols, sfu.thresholds.thresholds.shape[1]), dtype=np.int64)
    values[: layer.out_channels] = threshold_values(sfu, psum_bits)
    direction = np.zeros(otiles * p.cols, dtype=np.int64)
    direction[: layer.out_channels] = sfu.thresholds.direction
    plans = []
    for o in range(otiles):
        cols = slice(o * p.cols, (o + 1) * p.cols)
        where = Placement(otile=o, oc=oc_range(o))
        plans += [
            TensorPlan(
                "threshold",
                prefix + name_pattern(p, "threshold").format(o=o, layer=layer.folder),
                values[cols].T.copy(),
                ("t", "c"),
                t_spec,
                where=where,
            ),
            TensorPlan(
                "direction",
                prefix + name_pattern(p, "direction").format(o=o, layer=layer.folder),
                direction[cols],
                ("c",),
                d_spec,
                where=where,
            ),
        ]
    return plans


def _check_addresses(layer: IntLayer, p: Profile, addresses: np.ndarray) -> None:
    if int(addresses.max()) >= 1 << p.address_bits:
        raise BitWidthError(
            f"layer {layer.label}: psum addresses reach {addresses.max()}; profile {p.name}'s "
            f"{p.address_bits} address bits are too few"
        )
