"""Layout for output-tiled systolic cores such as the course's 8×8 weight-stationary core.

One tile = ``rows`` input channels × ``cols`` output channels × a ``tile``×``tile`` output window,
given as its (tile+2)×(tile+2) input grid with the 1-pixel halo (zeros outside the map):

    activation   grid position r*G+c a word, lane = input channel (channel 0 in the low bits)
    weight       one file a kernel position k = ki*3+kj; output channel a word, lane = input channel
    address      (weight-stationary only) per output pixel the 9 psum-memory addresses
                 G*G*k + (orow+ki)*G + (ocol+kj), where kernel pass k wrote grid row n at G*G*k + n
    output       output pixel orow*tile+ocol a word, lane = output channel: ReLU(sum over taps and
                 all input channels) — the fully accumulated result
    psum         (layers with several input-channel tiles) one tile's partial sums, no ReLU

Tiles ``s`` are numbered image-major, then tile row, then tile column; activation tile
``a = s * itiles + i`` for input-channel tile ``i``; ``o`` is the output-channel tile.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from qexport.errors import BitWidthError, CheckFailed, InputError
from qexport.ir.integerize import IntLayer
from qexport.ir.reference import Psums, integer_conv, requantize
from qexport.layout.flat import TensorPlan, check_psum_width
from qexport.layout.placement import Placement, Span
from qexport.layout.profile import Profile
from qexport.writer.pack import PackSpec, check_fits, smallest_signed_bits


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def systolic_layout(layer: IntLayer, psums: Psums, p: Profile, prefix: str) -> list[TensorPlan]:
    """Tile ``layer`` for profile ``p``; refuses layers and values the core cannot take."""
    if layer.kernel != 3 or layer.stride != 1 or layer.padding != 1:
        raise InputError(
            f"layer {layer.layer} is a {layer.kernel}x{layer.kernel} conv with stride {layer.stride}, "
            f"padding {layer.padding}; the {p.name} core computes 3x3, stride 1, padding 1 convs only"
        )
    act_spec = PackSpec(p.act_bits, p.rows, False, p.lane_order)
    w_spec = PackSpec(p.w_bits, p.rows, True, p.lane_order)
    check_fits(
        layer.x_int,
        act_spec,
        f"layer {layer.layer} x_int",
        f"the {p.name} profile has unsigned {p.act_bits}-bit activation lanes; use --act-clip relu, "
        "or the flat profile, which writes signed lanes",
    )
    check_fits(
        layer.w_int, w_spec, f"layer {layer.layer} w_int", f"the {p.name} core has {p.w_bits}-bit weights"
    )
    n, c_in, h, w = layer.x_int.shape
    c_out = layer.out_channels
    itiles, otiles = _ceil_div(c_in, p.rows), _ceil_div(c_out, p.cols)
    ty_count, tx_count = _ceil_div(h, p.tile), _ceil_div(w, p.tile)
    grid = p.tile + 2
    # the conv's zero border, then zeros up to whole tiles and whole channel tiles
    x = np.zeros((n, itiles * p.rows, ty_count * p.tile + 2, tx_count * p.tile + 2), dtype=np.int64)
    x[:, :c_in, 1 : h + 1, 1 : w + 1] = layer.x_int
    weights = np.zeros((otiles * p.cols, itiles * p.rows, 3, 3), dtype=np.int64)
    weights[:c_out, :c_in] = layer.w_int
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
            for k in range(9):
                taps = block[:, :, k // 3, k % 3].reshape(p.cols, 1, 1, p.rows)
                plans.append(
                    TensorPlan(
                        "weight",
                        prefix + names["weight"].format(i=i, o=o, k=k),
                        taps,
                        ("oc", "kh", "kw", "ic"),
                        w_spec,
                        where=Placement(itile=i, otile=o, kij=k, ic=ic_range(i), oc=oc_range(o)),
                    )
                )
    out_bits = max(
        p.psum_bits, smallest_signed_bits(min(int(psums.psum.min()), 0), max(int(psums.psum.max()), 0))
    )
    psum_spec = PackSpec(p.psum_bits, p.cols, True, p.lane_order)
    out_spec = PackSpec(out_bits, p.cols, True, p.lane_order)
    relu = "relu" in p.golden

    # the worst case of one tile's psums: its input channels (rows or fewer) x 9 taps at the extremes
    worst = min(c_in, p.rows) * 9 * (2 ** (layer.w_bit - 1) - 1) * act_spec.value_range[1]
    worst_bits = smallest_signed_bits(-worst, worst)

    def fit_psum(values: np.ndarray, where: str) -> None:
        check_psum_width(
            values,
            p.psum_bits,
            f"layer {layer.layer} {where}",
            f"the {p.name} core's {p.psum_bits}-bit psums are too narrow",
            "a profile with psum_bits =",
            worst_bits,
        )

    requant = "requantize" in p.golden
    if requant:
        requantize(layer, psums.psum)  # proves the formula against the next layer's integers
        out_spec = PackSpec(p.act_bits, p.cols, False, p.lane_order)
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
                rows = slice(ty * p.tile, ty * p.tile + grid)
                cols = slice(tx * p.tile, tx * p.tile + grid)
                total = np.zeros((1, otiles * p.cols, p.tile, p.tile), dtype=np.int64)
                for i in range(itiles):
                    chans = slice(i * p.rows, (i + 1) * p.rows)
                    tile_x = x[image : image + 1, chans, rows, cols]
                    plans.append(
                        TensorPlan(
                            "input",
                            prefix + names["activation"].format(a=s * itiles + i),
                            tile_x.transpose(0, 2, 3, 1),
                            ("n", "h", "w", "c"),
                            act_spec,
                            padded=True,
                            where=replace(pixels, itile=i, ic=ic_range(i)),
                        )
                    )
                    partial = integer_conv(tile_x, weights[:, chans], 1, 0)
                    total += partial
                    if itiles > 1:
                        for o in range(otiles):
                            values = _by_pixel(partial, o, p)
                            fit_psum(values, f"tile {s} itile {i} otile {o}")
                            plans.append(
                                TensorPlan(
                                    "psum",
                                    prefix + names["psum"].format(s=s, i=i, o=o),
                                    values,
                                    ("n", "h", "w", "c"),
                                    psum_spec,
                                    where=replace(pixels, itile=i, otile=o, ic=ic_range(i), oc=oc_range(o)),
                                )
                            )
                _check_tile(total, psums.psum, pixels, c_out, layer.layer)
                for o in range(otiles):
                    values = _by_pixel(total, o, p)
                    if itiles == 1:
                        fit_psum(values, f"tile {s} otile {o}")
                    name = names["output"] if single else names["output_tiled"].format(s=s, o=o)
                    plans.append(
                        TensorPlan(
                            "output",
                            prefix + name,
                            _golden(layer, values, relu, requant),
                            ("n", "h", "w", "c"),
                            out_spec,
                            where=replace(pixels, otile=o, oc=oc_range(o)),
                        )
                    )
                s += 1
    if p.dataflow == "weight_stationary":
        plans.append(_address_plan(p, prefix + names["address"]))
    return plans


def _golden(layer: IntLayer, values: np.ndarray, relu: bool, requant: bool) -> np.ndarray:
    if requant:
        return requantize(layer, values, check=False)
    return np.maximum(values, 0) if relu else values


def _by_pixel(total: np.ndarray, otile: int, p: Profile) -> np.ndarray:
    """(1, C, tile, tile) -> (1, tile, tile, cols): output pixel a word, output channel a lane."""
    return total[:, otile * p.cols : (otile + 1) * p.cols].transpose(0, 2, 3, 1)


def _check_tile(total: np.ndarray, psum: np.ndarray, pixels: Placement, c_out: int, layer: int) -> None:
    """The tiled sum must equal the layer's reference psums wherever the tile covers the map."""
    if pixels.y is None or pixels.x is None or pixels.n is None:
        raise ValueError("a tile's placement names its image and pixels")
    (y0, y1), (x0, x1), image = pixels.y, pixels.x, pixels.n
    inside = total[0, :c_out, : y1 - y0, : x1 - x0]
    if not np.array_equal(inside, psum[image, :, y0:y1, x0:x1]):
        raise CheckFailed(f"layer {layer}: tile at n={image} y={y0} x={x0} disagrees with the reference conv")


def _address_plan(p: Profile, stem: str) -> TensorPlan:
    grid = p.tile + 2
    o = np.arange(p.tile * p.tile)
    k = np.arange(9)
    orow, ocol = (o // p.tile)[:, None], (o % p.tile)[:, None]
    ki, kj = (k // 3)[None, :], (k % 3)[None, :]
    addresses = grid * grid * k[None, :] + (orow + ki) * grid + (ocol + kj)
    if int(addresses.max()) >= 1 << p.address_bits:
        raise BitWidthError(
            f"psum addresses reach {addresses.max()}; profile {p.name}'s {p.address_bits} address bits are "
            "too few"
        )
    return TensorPlan("address", stem, addresses, ("pixel", "kij"), PackSpec(p.address_bits, 1, False))
