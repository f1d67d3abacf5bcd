"""The systolic layout arranges the psums the reference stage computed; it computes none itself."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qexport.layout
from qexport.frontend.capture import capture
from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.vgg import BUILTIN
from qexport.ir import reference
from qexport.ir.integerize import IntLayer, integerize
from qexport.ir.reference import Psums, TiledPsums, check_tiled, conv_psum, tiled_psums
from qexport.layout.profile import load_profile
from qexport.layout.systolic import check_systolic, systolic_layout


@pytest.fixture(scope="module")
def layer27() -> tuple[IntLayer, Psums]:
    """features.27 of the demo: 128 -> 32 channels on a 4x4 map, 16 input-channel tiles on the 8x8 core."""
    model = demo_model(BUILTIN["VGG16_quant_gradual"])
    t = next(t for t in capture(model, load_demo("0:2").images) if t.layer == 27)
    layer = integerize(t)
    return layer, conv_psum(layer)


def _no_conv(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("the layout ran a conv")


def test_the_tiled_layout_makes_no_conv_call(
    layer27: tuple[IntLayer, Psums], monkeypatch: pytest.MonkeyPatch
) -> None:
    layer, psums = layer27
    prof = load_profile("course")
    check_systolic(layer, prof)
    tiled = tiled_psums(layer, prof.rows, prof.tile, prof.golden)  # the reference stage
    check_tiled(layer, psums, tiled, prof.golden)
    # from here on every conv raises: torch's, the reference's, and any layout module's own import
    monkeypatch.setattr(reference, "integer_conv", _no_conv)
    monkeypatch.setattr(reference, "_int64_conv", _no_conv)
    monkeypatch.setattr(F, "conv2d", _no_conv)
    monkeypatch.setattr(torch, "conv2d", _no_conv)
    for info in pkgutil.iter_modules(qexport.layout.__path__):
        module = importlib.import_module(f"qexport.layout.{info.name}")
        for name in ("integer_conv", "requantize", "conv_psum"):
            monkeypatch.setattr(module, name, _no_conv, raising=False)
    plans = systolic_layout(layer, psums, tiled, prof, "layer27/")
    assert layer.x_int.shape == (2, 128, 4, 4)
    _assert_arranges(plans, tiled)


def _assert_arranges(plans: list[Any], tiled: TiledPsums) -> None:
    """Every psum and output file is a slice of the reference's arrays, (n, oc, y, x) -> (y, x, oc)."""
    kinds = [tp.tensor for tp in plans]
    assert kinds.count("psum") == 2 * 16 * 4  # images x itiles x otiles (one 4x4 spatial tile)
    assert kinds.count("output") == 2 * 4
    for tp in plans:
        if tp.tensor not in ("psum", "output"):
            continue
        at = tp.where
        assert at.y is not None and at.x is not None and at.oc is not None
        y, x, oc = at.y[0], at.x[0], at.oc[0]
        source = tiled.partial[at.itile] if tp.tensor == "psum" else tiled.golden
        expected = source[at.n, oc : oc + 8, y : y + 4, x : x + 4].transpose(1, 2, 0)
        np.testing.assert_array_equal(tp.array[0], expected, err_msg=tp.stem)


# issue 15 item 6: strided and 1x1 convs, G = (tile-1)*stride + kernel


def _unrestricted(name: str) -> Any:
    """A copy of a course profile without its kernels/strides limits (a core that takes any)."""
    from qexport.layout.profile import parse_profile

    text = load_profile(name).source
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("kernels", "strides")))
    return parse_profile(text.replace(f'name = "{name}"', 'name = "mine"'), "mine")


def _numpy_tiles(layer: IntLayer, rows: int, cols: int, tile: int) -> dict[str, Any]:
    """The tiled files read straight off the spec, in plain int64 numpy (no qexport code)."""
    n, c_in, h, w = layer.x_int.shape
    k, s, p = layer.kernel, layer.stride, layer.padding
    c_out = layer.out_channels
    h_out, w_out = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    ty, tx = -(-h_out // tile), -(-w_out // tile)
    itiles, otiles = -(-c_in // rows), -(-c_out // cols)
    g = (tile - 1) * s + k
    big = 64  # room for every grid, zeros beyond the map
    padded = np.zeros((n, itiles * rows, big, big), dtype=np.int64)
    padded[:, :c_in, p : p + h, p : p + w] = layer.x_int
    wts = np.zeros((otiles * cols, itiles * rows, k, k), dtype=np.int64)
    wts[:c_out, :c_in] = layer.w_int
    grids, psums, outs = {}, {}, {}
    for img in range(n):
        for r in range(ty):
            for c in range(tx):
                t = (img * ty + r) * tx + c
                total = np.zeros((tile, tile, otiles * cols), dtype=np.int64)
                for i in range(itiles):
                    # input row r*tile*s - p of the map is row r*tile*s of the padded map
                    grid = padded[img, i * rows : (i + 1) * rows, r * tile * s : r * tile * s + g]
                    grid = grid[:, :, c * tile * s : c * tile * s + g]
                    grids[t, i] = grid.transpose(1, 2, 0)
                    part = np.zeros_like(total)
                    for orow in range(tile):
                        for ocol in range(tile):
                            for ki in range(k):
                                for kj in range(k):
                                    xs = grid[:, orow * s + ki, ocol * s + kj]
                                    ws = wts[:, i * rows : (i + 1) * rows, ki, kj]
                                    part[orow, ocol] += ws @ xs
                    psums[t, i] = part
                    total += part
                outs[t] = np.maximum(total, 0)
                # where the tile lies inside the map, it is the plain conv of the whole layer
                y1, x1 = min(tile, h_out - r * tile), min(tile, w_out - c * tile)
                for orow in range(y1):
                    for ocol in range(x1):
                        ys, xs0 = (r * tile + orow) * s, (c * tile + ocol) * s
                        window = padded[img, :c_in, ys : ys + k, xs0 : xs0 + k]
                        conv = np.einsum("cij,ocij->o", window, layer.w_int.astype(np.int64))
                        np.testing.assert_array_equal(total[orow, ocol, :c_out], conv)
    addresses = np.array(
        [
            [
                g * g * (ki * k + kj) + (orow * s + ki) * g + (ocol * s + kj)
                for ki in range(k)
                for kj in range(k)
            ]
            for orow in range(tile)
            for ocol in range(tile)
        ]
    )
    return {"weights": wts, "grids": grids, "psums": psums, "outs": outs, "addresses": addresses, "grid": g}


STRIDED = [
    # (c_in, c_out, side, kernel, stride, padding, images)
    (8, 8, 16, 3, 2, 1, 1),  # 8x8 output: 2x2 tiles of a 9x9 grid
    (16, 16, 16, 1, 2, 0, 1),  # 1x1, 8x8 output: one kernel pass, 7x7 grid
    (16, 8, 12, 3, 2, 1, 2),  # 6x6 output rounded up to 8x8; two input-channel tiles on 8 rows
    (8, 8, 9, 3, 1, 0, 1),  # stride 1, padding 0: 7x7 output rounded up to 8x8
]


@pytest.mark.parametrize("case", STRIDED, ids=["3x3s2", "1x1s2", "3x3s2-itiles", "3x3s1p0"])
# course-os is output-stationary (issue 17): its own independent reading is in test_declare.py
@pytest.mark.parametrize("profile", ["course", "systolic"])
def test_strided_tiles_match_an_independent_reading(case: tuple[int, ...], profile: str) -> None:
    from helpers import conv_tensors

    c_in, c_out, side, kernel, stride, padding, images = case
    prof = load_profile("systolic") if profile == "systolic" else _unrestricted(profile)
    layer = integerize(conv_tensors(c_in, c_out, side, kernel, stride, padding, images=images))
    psums = conv_psum(layer)
    check_systolic(layer, prof)
    tiled = tiled_psums(layer, prof.rows, prof.tile, prof.golden)
    check_tiled(layer, psums, tiled, prof.golden)
    plans = systolic_layout(layer, psums, tiled, prof, "layer33/")
    want = _numpy_tiles(layer, prof.rows, prof.cols, prof.tile)
    kinds = [tp.tensor for tp in plans]
    itiles, otiles = -(-c_in // prof.rows), -(-c_out // prof.cols)
    assert kinds.count("weight") == itiles * otiles * kernel * kernel
    assert kinds.count("input") == len(want["grids"])
    assert kinds.count("output") == len(want["outs"]) * otiles
    assert kinds.count("address") == (prof.dataflow == "weight_stationary")
    rows, cols = prof.rows, prof.cols
    for tp in plans:
        at = tp.where
        if tp.tensor == "weight":
            assert at.itile is not None and at.otile is not None and at.kij is not None
            ki, kj = divmod(at.kij, kernel)
            block = want["weights"][
                at.otile * cols : (at.otile + 1) * cols, at.itile * rows : (at.itile + 1) * rows
            ]
            np.testing.assert_array_equal(tp.array.reshape(cols, rows), block[:, :, ki, kj], err_msg=tp.stem)
        elif tp.tensor == "input":
            assert tp.array.shape == (1, want["grid"], want["grid"], rows)
            np.testing.assert_array_equal(tp.array[0], want["grids"][at.tile, at.itile], err_msg=tp.stem)
        elif tp.tensor in ("psum", "output"):
            assert at.otile is not None
            lanes = slice(at.otile * cols, (at.otile + 1) * cols)
            source = want["psums"][at.tile, at.itile] if tp.tensor == "psum" else want["outs"][at.tile]
            np.testing.assert_array_equal(tp.array[0], source[:, :, lanes], err_msg=tp.stem)
        else:
            np.testing.assert_array_equal(tp.array, want["addresses"], err_msg=tp.stem)


def test_stride_two_address_table_worked_example() -> None:
    """The docstring's example: 3x3, stride 2, tile 2 -> G = 5; pixel (1, 1) at kk = 2 reads 64."""
    from helpers import conv_tensors

    from qexport.layout.profile import parse_profile

    text = load_profile("systolic").source.replace("tile = 4", "tile = 2")
    prof = parse_profile(text, "tile2")
    layer = integerize(conv_tensors(8, 8, 8, 3, 2, 1))
    psums = conv_psum(layer)
    tiled = tiled_psums(layer, prof.rows, prof.tile, prof.golden)
    (address,) = [tp for tp in systolic_layout(layer, psums, tiled, prof, "") if tp.tensor == "address"]
    assert address.array.shape == (4, 9)
    assert address.array[3, 2] == 64
    assert list(address.array[0]) == [0, 26, 52, 80, 106, 132, 160, 186, 212]  # 25*kk + ki*5 + kj


def _limited(name: str) -> Any:
    """A copy of a course profile for a core that fixes its 6x6 grid and 9 passes (kernels, strides)."""
    from qexport.layout.profile import parse_profile

    text = load_profile(name).source.replace(f'name = "{name}"', 'name = "fixed"')
    return parse_profile(text.replace('format = "', 'kernels = [3]\nstrides = [1]\nformat = "', 1), "fixed")


@pytest.mark.parametrize("profile", ["course", "course-os"])
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 2, 1), (1, 2, 0), (1, 1, 0), (5, 1, 2)])
def test_a_core_with_fixed_geometry_refuses_what_it_cannot_take(
    profile: str, kernel: int, stride: int, padding: int
) -> None:
    from helpers import conv_tensors

    from qexport.errors import InputError

    layer = integerize(conv_tensors(8, 8, 8, kernel, stride, padding))
    check_systolic(layer, load_profile(profile))  # the built-in course profiles tile it
    with pytest.raises(InputError) as err:
        check_systolic(layer, _limited(profile))
    message = str(err.value)
    assert message.startswith(f"layer layer2.0.conv1 is a {kernel}x{kernel} conv with stride {stride};")
    assert "the fixed core takes 3x3 kernels with stride 1 only" in message
    assert "6x6" in message and "--profile systolic" in message


def test_course_core_still_takes_3x3_stride_1_at_any_padding() -> None:
    from helpers import conv_tensors

    for padding in (0, 1, 2):
        check_systolic(integerize(conv_tensors(8, 8, 8, 3, 1, padding)), load_profile("course"))
