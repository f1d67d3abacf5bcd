"""Layout for output-tiled systolic cores such as the course's 8×8 weight-stationary core.

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
from qexport.ir.reference import Psums, TiledPsums, check_requantizable
from qexport.ir.sfu import LayerSfu
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

    ``check_systolic`` has accepted the layer; only the psums' width is checked here. With ``sfu``,
    per output-channel tile a ``threshold`` file (t, c: threshold k of every column a word) and a
    ``direction`` word (c), and per output tile a ``requant`` file: the next ``x_int`` of the
    tile's output pixels (after the max-pool, tile / pool pixels a side), output channel a lane.
    A fixed-point ``sfu`` (a ResNet block end) gets per output-channel tile its ``multiplier``,
    ``shift`` and ``bias`` words (c), and per output tile its ``skip`` (identity shortcut) and
    ``requant`` / ``requant_shortcut`` files, laid out as ``requant``.
    """
    act_spec, w_spec = _act_spec(p), _w_spec(p)
    n, c_in, h, w = layer.x_int.shape
    c_out, k, stride, pad = layer.out_channels, layer.kernel, layer.stride, layer.padding
    itiles, otiles = _ceil_div(c_in, p.rows), _ceil_div(c_out, p.cols)
    _, _, h_out, w_out = tiled.total.shape  # the output map rounded up to whole tiles
    ty_count, tx_count = h_out // p.tile, w_out // p.tile
    grid = grid_size(layer, p.tile)
    # the padded map (padded row r is input row r - pad), then zeros to the last tile's grid and
    # up to whole channel tiles: the input the reference's tiled psums were summed over
    x = np.zeros(
        (
            n,
            itiles * p.rows,
            max((ty_count - 1) * p.tile * stride + grid, h + pad),
            max((tx_count - 1) * p.tile * stride + grid, w + pad),
        ),
        dtype=np.int64,
    )
    x[:, :c_in, pad : h + pad, pad : w + pad] = layer.x_int
    weights = np.zeros((otiles * p.cols, itiles * p.rows, k, k), dtype=np.int64)
    weights[:c_out, :c_in] = layer.w_int
    # output channels up to whole output-channel tiles, as the zero weights above give them
    extra = ((0, 0), (0, otiles * p.cols - c_out), (0, 0), (0, 0))
    partial = np.pad(tiled.partial, ((0, 0), *extra))
    total = np.pad(tiled.total, extra)
    golden = np.pad(tiled.golden, extra)
    names = p.names
    plans: list[TensorPlan] = []
    single = itiles == otiles == 1 and n * ty_count * tx_count == 1

    def ic_range(i: int) -> Span:
        return (i * p.rows, min((i + 1) * p.rows, c_in))

    def oc_range(o: int) -> Span:
        return (o * p.cols, min((o + 1) * p.cols, c_out))

    for i in range(itiles):
        for o in range(otiles):
            block = weights[o * p.cols : (o + 1) * p.cols, i * p.rows : (i + 1) * p.rows]
            for kk in range(k * k):
                taps = block[:, :, kk // k, kk % k].reshape(p.cols, 1, 1, p.rows)
                plans.append(
                    TensorPlan(
                        "weight",
                        prefix + names["weight"].format(i=i, o=o, k=kk, layer=layer.folder),
                        taps,
                        ("oc", "kh", "kw", "ic"),
                        w_spec,
                        where=Placement(itile=i, otile=o, kij=kk, ic=ic_range(i), oc=oc_range(o)),
                    )
                )
    out_bits = max(p.psum_bits, signed_bits_of(psums.psum))
    psum_spec = PackSpec(p.psum_bits, p.cols, True, p.lane_order)
    out_spec = PackSpec(out_bits, p.cols, True, p.lane_order)
    if "requantize" in p.golden:
        out_spec = PackSpec(p.act_bits, p.cols, False, p.lane_order)
    maps: list[_TileMap] = []
    if isinstance(sfu, LayerFixedPoint):
        maps = _fixed_point_maps(sfu, p, otiles, ty_count, tx_count)
        plans += _fixed_point_rule_plans(layer, sfu, p, otiles, prefix, oc_range)
    elif sfu is not None:
        requant, pooled_tile = _sfu_tiles(layer, sfu, p, otiles, ty_count, tx_count)
        spec = PackSpec(sfu.next_act_bit, p.cols, False, p.lane_order)
        maps = [_TileMap("requant", requant, pooled_tile, spec, sfu.requant.shape[2:])]
        plans += _sfu_rule_plans(layer, sfu, p, otiles, out_bits, prefix, oc_range)

    # the worst case of one tile's psums: its input channels (rows or fewer) x k*k taps at the extremes
    worst = min(c_in, p.rows) * k * k * (2 ** (layer.w_bit - 1) - 1) * act_spec.value_range[1]
    worst_bits = smallest_signed_bits(-worst, worst)
    # the psums a file holds: each tile's partial sums, or the totals when there is one tile
    written = partial if itiles > 1 else total[None]
    fits = signed_bits_of(written) <= p.psum_bits

    def fit_psum(values: np.ndarray, where: str) -> None:
        if fits:  # the whole layer fits: no tile needs its own look
            return
        check_psum_width(
            values,
            p.psum_bits,
            f"layer {layer.label} {where}",
            f"the {p.name} core's {p.psum_bits}-bit psums are too narrow",
            "a profile with psum_bits =",
            worst_bits,
        )

    s = 0
    for image in range(n):
        for ty in range(ty_count):
            for tx in range(tx_count):
                pixels = Placement(
                    tile=s,
                    n=image,
                    y=(ty * p.tile, min((ty + 1) * p.tile, h)),
                    x=(tx * p.tile, min((tx + 1) * p.tile, w)),
                )
                rows = slice(ty * p.tile * stride, ty * p.tile * stride + grid)
                cols = slice(tx * p.tile * stride, tx * p.tile * stride + grid)
                # this tile's outputs in the reference's (n, oc, H, W) arrays
                window = (
                    slice(image, image + 1),
                    slice(None),
                    slice(ty * p.tile, (ty + 1) * p.tile),
                    slice(tx * p.tile, (tx + 1) * p.tile),
                )
                for i in range(itiles):
                    chans = slice(i * p.rows, (i + 1) * p.rows)
                    plans.append(
                        TensorPlan(
                            "input",
                            prefix + names["activation"].format(a=s * itiles + i, layer=layer.folder),
                            x[image : image + 1, chans, rows, cols].transpose(0, 2, 3, 1),
                            ("n", "h", "w", "c"),
                            act_spec,
                            padded=True,
                            where=replace(pixels, itile=i, ic=ic_range(i)),
                        )
                    )
                    if itiles > 1:
                        for o in range(otiles):
                            values = _by_pixel(partial[i][window], o, p)
                            fit_psum(values, f"tile {s} itile {i} otile {o}")
                            plans.append(
                                TensorPlan(
                                    "psum",
                                    prefix + names["psum"].format(s=s, i=i, o=o, layer=layer.folder),
                                    values,
                                    ("n", "h", "w", "c"),
                                    psum_spec,
                                    where=replace(pixels, itile=i, otile=o, ic=ic_range(i), oc=oc_range(o)),
                                )
                            )
                for o in range(otiles):
                    if itiles == 1:
                        fit_psum(_by_pixel(total[window], o, p), f"tile {s} otile {o}")
                    name = (
                        names["output"].format(layer=layer.folder)
                        if single
                        else names["output_tiled"].format(s=s, o=o, layer=layer.folder)
                    )
                    plans.append(
                        TensorPlan(
                            "output",
                            prefix + name,
                            _by_pixel(golden[window], o, p),
                            ("n", "h", "w", "c"),
                            out_spec,
                            where=replace(pixels, otile=o, oc=oc_range(o)),
                        )
                    )
                    for m in maps:
                        r0, c0 = ty * m.side, tx * m.side
                        part = m.full[image : image + 1, :, r0 : r0 + m.side, c0 : c0 + m.side]
                        high_y, high_x = m.size
                        plans.append(
                            TensorPlan(
                                m.tensor,
                                prefix + name_pattern(p, m.tensor).format(s=s, o=o, layer=layer.folder),
                                _by_pixel(part, o, p),
                                ("n", "h", "w", "c"),
                                m.spec,
                                where=Placement(
                                    tile=s,
                                    n=image,
                                    y=(min(r0, high_y), min(r0 + m.side, high_y)),
                                    x=(min(c0, high_x), min(c0 + m.side, high_x)),
                                    otile=o,
                                    oc=oc_range(o),
                                ),
                            )
                        )
                s += 1
    if p.dataflow == "weight_stationary":
        plans.append(_address_plan(p, layer, prefix + names["address"].format(layer=layer.folder)))
    return plans


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


def _by_pixel(total: np.ndarray, otile: int, p: Profile) -> np.ndarray:
    """(1, C, tile, tile) -> (1, tile, tile, cols): output pixel a word, output channel a lane."""
    return total[:, otile * p.cols : (otile + 1) * p.cols].transpose(0, 2, 3, 1)


def _address_plan(p: Profile, layer: IntLayer, stem: str) -> TensorPlan:
    """Per output pixel (orow, ocol), its k*k addresses G*G*kk + (orow*s+ki)*G + (ocol*s+kj)."""
    grid, k, stride = grid_size(layer, p.tile), layer.kernel, layer.stride
    o = np.arange(p.tile * p.tile)
    kk = np.arange(k * k)
    orow, ocol = (o // p.tile)[:, None], (o % p.tile)[:, None]
    ki, kj = (kk // k)[None, :], (kk % k)[None, :]
    addresses = grid * grid * kk[None, :] + (orow * stride + ki) * grid + (ocol * stride + kj)
    if int(addresses.max()) >= 1 << p.address_bits:
        raise BitWidthError(
            f"layer {layer.label}: psum addresses reach {addresses.max()}; profile {p.name}'s "
            f"{p.address_bits} address bits are too few"
        )
    return TensorPlan("address", stem, addresses, ("pixel", "kij"), PackSpec(p.address_bits, 1, False))
