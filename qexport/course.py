"""Layout for output-tiled systolic cores such as the course's 8×8 weight-stationary core.

One tile = ``rows`` input channels × ``cols`` output channels × a ``tile``×``tile`` output window,
given as its (tile+2)×(tile+2) input grid with the 1-pixel halo (zeros outside the map). File set
and bit order follow the course core's testbench (see README, "The course profile"):

    activation_tile<a>.txt             grid positions r*G+c, lane ic (ic 0 in the low bits)
    weight_itile<i>_otile<o>_kij<k>.txt line oc, lane ic, k = ki*3+kj
    acc_address.txt                    per output pixel, the 9 psum addresses 36*k + (orow+ki)*6 + (ocol+kj)
    out.txt / out_tile<s>_otile<o>.txt ReLU(sum over kernel taps and input channels), lane oc

Tiles are numbered image-major, then tile row, then tile column (``s``); activation tile
``a = s * itiles + i``. Partial sums of one input-channel tile (no ReLU) are in
``psum_tile<s>_itile<i>_otile<o>.txt`` when a layer has more than one input-channel tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qexport.errors import BitWidthError, CheckFailed, InputError
from qexport.integerize import IntLayer
from qexport.pack import PackSpec, check_fits, format_words, smallest_signed_bits
from qexport.reference import Psums, integer_conv


@dataclass(frozen=True, slots=True)
class CoreProfile:
    """A weight-stationary systolic core: rows = input channels, cols = output channels."""

    name: str = "course"
    rows: int = 8
    cols: int = 8
    act_bits: int = 4
    w_bits: int = 4
    psum_bits: int = 16
    tile: int = 4
    address_bits: int = 11
    header_lines: int = 3


COURSE = CoreProfile()


@dataclass(frozen=True)
class CourseFile:
    """One text file of the core's set: its name, header tokens, words and their spec."""

    path: str
    kind: str
    values: np.ndarray  # (words, lanes)
    spec: PackSpec
    header: tuple[str, ...]
    meta: dict[str, Any]

    def body(self) -> str:
        return format_words(self.values, self.spec, "bin")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def course_layout(layer: IntLayer, psums: Psums, profile: CoreProfile, label: str) -> list[CourseFile]:
    """Tile ``layer`` for ``profile``; refuses layers and values the core cannot take."""
    p = profile
    if layer.kernel != 3 or layer.stride != 1 or layer.padding != 1:
        raise InputError(
            f"layer {layer.layer} is a {layer.kernel}x{layer.kernel} conv with stride {layer.stride}, "
            f"padding {layer.padding}; the {p.name} core computes 3x3, stride 1, padding 1 convs only"
        )
    act_spec = PackSpec(p.act_bits, p.rows, False)
    w_spec = PackSpec(p.w_bits, p.rows, True)
    check_fits(
        layer.x_int,
        act_spec,
        f"layer {layer.layer} x_int",
        f"the {p.name} profile has unsigned {p.act_bits}-bit activation lanes; "
        "use --act-clip relu, or the flat layout (no --profile), which writes signed lanes",
    )
    check_fits(
        layer.w_int, w_spec, f"layer {layer.layer} w_int", f"the {p.name} core has {p.w_bits}-bit weights"
    )
    n, c_in, h, w = layer.x_int.shape
    c_out = layer.out_channels
    itiles, otiles = _ceil_div(c_in, p.rows), _ceil_div(c_out, p.cols)
    ty_count, tx_count = _ceil_div(h, p.tile), _ceil_div(w, p.tile)
    grid = p.tile + 2
    # zero border of 1 (the conv's padding) plus zeros up to whole tiles and whole channel tiles
    x = np.zeros((n, itiles * p.rows, ty_count * p.tile + 2, tx_count * p.tile + 2), dtype=np.int64)
    x[:, :c_in, 1 : h + 1, 1 : w + 1] = layer.x_int
    weights = np.zeros((otiles * p.cols, itiles * p.rows, 3, 3), dtype=np.int64)
    weights[:c_out, :c_in] = layer.w_int
    tag = "_".join(part for part in label.replace(",", " ").split() if part)
    files: list[CourseFile] = []
    single = itiles == otiles == 1 and n * ty_count * tx_count == 1

    def header(what: str) -> tuple[str, ...]:
        return tuple(
            f"#{t}#" for t in (f"qexport_{_version()}_do_not_edit", tag, f"layer{layer.layer}_{what}")
        )

    for i in range(itiles):
        for o in range(otiles):
            block = weights[o * p.cols : (o + 1) * p.cols, i * p.rows : (i + 1) * p.rows]
            for k in range(9):
                name = f"weight_itile{i}_otile{o}_kij{k}"
                files.append(
                    CourseFile(
                        f"{name}.txt",
                        "weight",
                        block[:, :, k // 3, k % 3],
                        w_spec,
                        header(name),
                        {
                            "itile": i,
                            "otile": o,
                            "kij": k,
                            "oc": [o * p.cols, min((o + 1) * p.cols, c_out)],
                            "ic": [i * p.rows, min((i + 1) * p.rows, c_in)],
                        },
                    )
                )
    out_bits = max(p.psum_bits, smallest_signed_bits(*_accumulated_range(psums.psum)))
    psum_spec = PackSpec(p.psum_bits, p.cols, True)
    out_spec = PackSpec(out_bits, p.cols, True)
    s = 0
    for image in range(n):
        for ty in range(ty_count):
            for tx in range(tx_count):
                rows = slice(ty * p.tile, ty * p.tile + grid)
                cols = slice(tx * p.tile, tx * p.tile + grid)
                pixels = {
                    "n": image,
                    "y": [ty * p.tile, min((ty + 1) * p.tile, h)],
                    "x": [tx * p.tile, min((tx + 1) * p.tile, w)],
                }
                total = np.zeros((1, otiles * p.cols, p.tile, p.tile), dtype=np.int64)
                for i in range(itiles):
                    chans = slice(i * p.rows, (i + 1) * p.rows)
                    tile_x = x[image : image + 1, chans, rows, cols]
                    a = s * itiles + i
                    name = f"activation_tile{a}"
                    positions = tile_x[0].reshape(p.rows, grid * grid).T  # (grid positions, ic)
                    files.append(
                        CourseFile(
                            f"{name}.txt",
                            "activation",
                            positions,
                            act_spec,
                            header(name),
                            {"tile": s, "itile": i, **pixels},
                        )
                    )
                    partial = integer_conv(tile_x, weights[:, chans], 1, 0)
                    total += partial
                    if itiles > 1:
                        for o in range(otiles):
                            values = _pixels_by_oc(partial, o, p)
                            _fit(values, psum_spec, layer.layer, f"tile {s} itile {i} psum")
                            name = f"psum_tile{s}_itile{i}_otile{o}"
                            files.append(
                                CourseFile(
                                    f"{name}.txt",
                                    "psum",
                                    values,
                                    psum_spec,
                                    header(name),
                                    {"tile": s, "itile": i, "otile": o, **pixels},
                                )
                            )
                _check_tile(total, psums.psum, image, pixels, c_out, layer.layer)
                for o in range(otiles):
                    name = "out" if single else f"out_tile{s}_otile{o}"
                    values = np.maximum(_pixels_by_oc(total, o, p), 0)
                    files.append(
                        CourseFile(
                            f"{name}.txt",
                            "output",
                            values,
                            out_spec,
                            header(name),
                            {"tile": s, "otile": o, **pixels},
                        )
                    )
                s += 1
    files.append(_address_file(p))
    return files


def _accumulated_range(psum: np.ndarray) -> tuple[int, int]:
    return min(int(psum.min(initial=0)), 0), max(int(psum.max(initial=0)), 0)


def _pixels_by_oc(total: np.ndarray, otile: int, p: CoreProfile) -> np.ndarray:
    block = total[0, otile * p.cols : (otile + 1) * p.cols]  # (cols, tile, tile)
    return block.reshape(p.cols, p.tile * p.tile).T  # (output pixel orow*tile+ocol, oc)


def _fit(values: np.ndarray, spec: PackSpec, layer: int, what: str) -> None:
    check_fits(
        values,
        spec,
        f"layer {layer} {what}",
        f"overflow: the core's psums need more than {spec.lane_bits} bits",
    )


def _check_tile(
    total: np.ndarray, psum: np.ndarray, image: int, pixels: dict[str, Any], c_out: int, layer: int
) -> None:
    """The tiled sum must equal the layer's reference psums wherever the tile covers the map."""
    y0, y1 = pixels["y"]
    x0, x1 = pixels["x"]
    inside = total[0, :c_out, : y1 - y0, : x1 - x0]
    if not np.array_equal(inside, psum[image, :, y0:y1, x0:x1]):
        raise CheckFailed(f"layer {layer}: tile at n={image} y={y0} x={x0} disagrees with the reference conv")


def _address_file(p: CoreProfile) -> CourseFile:
    grid = p.tile + 2
    o = np.arange(p.tile * p.tile)
    k = np.arange(9)
    orow, ocol = (o // p.tile)[:, None], (o % p.tile)[:, None]
    ki, kj = (k // 3)[None, :], (k % 3)[None, :]
    addresses = grid * grid * k[None, :] + (orow + ki) * grid + (ocol + kj)
    spec = PackSpec(p.address_bits, 1, False)
    if int(addresses.max()) >= 1 << p.address_bits:
        raise BitWidthError(
            f"psum addresses reach {addresses.max()}; {p.address_bits} address bits are too few"
        )
    return CourseFile("acc_address.txt", "address", addresses.reshape(-1, 1), spec, (), {})


def _version() -> str:
    from qexport import __version__

    return __version__
