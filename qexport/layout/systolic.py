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

from qexport.errors import BitWidthError, InputError
from qexport.ir.integerize import IntLayer
from qexport.ir.reference import Psums, TiledPsums, check_requantizable
from qexport.layout.flat import TensorPlan, check_psum_width, signed_bits_of
from qexport.layout.placement import Placement, Span
from qexport.layout.profile import Profile
from qexport.writer.pack import PackSpec, check_fits, smallest_signed_bits


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def check_systolic(layer: IntLayer, p: Profile) -> None:
    """Refuse layers and values the core of profile ``p`` cannot take (run before the reference's
    ``tiled_psums``, so these messages come first)."""
    if layer.kernel != 3 or layer.stride != 1 or layer.padding != 1:
        raise InputError(
            f"layer {layer.label} is a {layer.kernel}x{layer.kernel} conv with stride {layer.stride}, "
            f"padding {layer.padding}; the {p.name} core computes 3x3, stride 1, padding 1 convs only"
        )
    act_spec, w_spec = _act_spec(p), _w_spec(p)
    check_fits(
        layer.x_int,
        act_spec,
        f"layer {layer.label} x_int",
        f"the {p.name} profile has unsigned {p.act_bits}-bit activation lanes; use --act-clip relu, "
        "or the flat profile, which writes signed lanes",
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
    layer: IntLayer, psums: Psums, tiled: TiledPsums, p: Profile, prefix: str
) -> list[TensorPlan]:
    """Tile ``layer`` for profile ``p``: slice and arrange the reference's ``tiled`` psums.

    ``check_systolic`` has accepted the layer; only the psums' width is checked here.
    """
    act_spec, w_spec = _act_spec(p), _w_spec(p)
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
    out_bits = max(p.psum_bits, signed_bits_of(psums.psum))
    psum_spec = PackSpec(p.psum_bits, p.cols, True, p.lane_order)
    out_spec = PackSpec(out_bits, p.cols, True, p.lane_order)
    if "requantize" in p.golden:
        out_spec = PackSpec(p.act_bits, p.cols, False, p.lane_order)

    # the worst case of one tile's psums: its input channels (rows or fewer) x 9 taps at the extremes
    worst = min(c_in, p.rows) * 9 * (2 ** (layer.w_bit - 1) - 1) * act_spec.value_range[1]
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
                rows = slice(ty * p.tile, ty * p.tile + grid)
                cols = slice(tx * p.tile, tx * p.tile + grid)
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
                            prefix + names["activation"].format(a=s * itiles + i),
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
                                    prefix + names["psum"].format(s=s, i=i, o=o),
                                    values,
                                    ("n", "h", "w", "c"),
                                    psum_spec,
                                    where=replace(pixels, itile=i, otile=o, ic=ic_range(i), oc=oc_range(o)),
                                )
                            )
                for o in range(otiles):
                    if itiles == 1:
                        fit_psum(_by_pixel(total[window], o, p), f"tile {s} otile {o}")
                    name = names["output"] if single else names["output_tiled"].format(s=s, o=o)
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
                s += 1
    if p.dataflow == "weight_stationary":
        plans.append(_address_plan(p, prefix + names["address"]))
    return plans


def _by_pixel(total: np.ndarray, otile: int, p: Profile) -> np.ndarray:
    """(1, C, tile, tile) -> (1, tile, tile, cols): output pixel a word, output channel a lane."""
    return total[:, otile * p.cols : (otile + 1) * p.cols].transpose(0, 2, 3, 1)


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
