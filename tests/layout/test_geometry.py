"""The geometry a core computes (issue 17 item 1) and the files' checks against the array.

``geometry = "valid"`` is read here from README "Layout profiles" (geometry): tiles of the bare
map, G×G real pixels stepping by tile·stride, golden = the interior outputs of a valid numpy conv
over the bare map, placed in the layer's own output coordinates. Index arithmetic only, no
layout code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from helpers import conv_tensors

from qexport.errors import InputError
from qexport.ir.integerize import IntLayer, integerize
from qexport.ir.reference import check_tiled, conv_psum, tiled_psums
from qexport.ir.sfu import LayerSfu
from qexport.layout.flat import TensorPlan
from qexport.layout.profile import Profile, load_profile, parse_profile
from qexport.layout.systolic import check_systolic, systolic_layout


def _valid(base: str, **numbers: int) -> Profile:
    """A built-in profile's text with ``geometry = "valid"`` (and numbers such as rows changed)."""
    text = load_profile(base).source.replace('kind = "systolic"', 'kind = "systolic"\ngeometry = "valid"', 1)
    for key, value in numbers.items():
        text = re.sub(rf"(?m)^{key} = \d+", f"{key} = {value}", text)
    return parse_profile(text, f"profile valid-{base}")


def _plans(layer: IntLayer, prof: Profile) -> dict[str, TensorPlan]:
    psums = conv_psum(layer)
    check_systolic(layer, prof)
    tiled = tiled_psums(layer, prof.rows, prof.tile, prof.golden, prof.geometry)
    check_tiled(layer, psums, tiled, prof.golden)
    return {tp.stem.removeprefix("L/"): tp for tp in systolic_layout(layer, psums, tiled, prof, "L/")}


def _words(tp: TensorPlan) -> np.ndarray:
    return tp.array.reshape(-1, tp.spec.lanes)


def _bare(layer: IntLayer, big: int = 64) -> np.ndarray:
    """x_int at the top left of a zero map: no border, zeros only beyond the map."""
    n, c, h, w = layer.x_int.shape
    x = np.zeros((n, c, big, big), dtype=np.int64)
    x[:, :, :h, :w] = layer.x_int
    return x


def _valid_conv(layer: IntLayer, x: np.ndarray, img: int, vy: int, vx: int) -> np.ndarray:
    """The valid conv of the bare map at its output (vy, vx): window rows vy*s .. vy*s+k-1."""
    k, s = layer.kernel, layer.stride
    window = x[img, :, vy * s : vy * s + k, vx * s : vx * s + k]
    return np.einsum("cij,ocij->o", window, layer.w_int.astype(np.int64))


def test_a_single_tile_layer_is_the_bare_map_and_its_interior_outputs() -> None:
    # 6x6 map, 3x3 stride 1 pad 1, tile 4: the 6x6 grid is the whole bare map, 4x4 interior outputs
    layer = integerize(conv_tensors(8, 8, 6, 3, 1, 1))
    files = _plans(layer, _valid("course"))
    assert sorted(files) == sorted(
        ["activation_tile0", "out", "acc_address"] + [f"weight_itile0_otile0_kij{k}" for k in range(9)]
    )
    act = files["activation_tile0"]
    assert act.padded is False
    words = _words(act)
    assert words.shape == (36, 8)
    for n in range(36):  # grid position r*6+c is bare pixel (r, c): no zero border
        np.testing.assert_array_equal(words[n], layer.x_int[0, :, n // 6, n % 6])
    x, psum = _bare(layer), conv_psum(layer).psum
    out = files["out"]
    assert (out.where.y, out.where.x) == ((1, 5), (1, 5))  # the layer's output pixels 1..4
    golden = _words(out)
    assert golden.shape == (16, 8)
    for o in range(16):
        vy, vx = divmod(o, 4)
        conv = _valid_conv(layer, x, 0, vy, vx)
        np.testing.assert_array_equal(conv, psum[0, :, vy + 1, vx + 1])  # the interior output
        np.testing.assert_array_equal(golden[o], np.maximum(conv, 0))
    address = _words(files["acc_address"]).ravel()
    for o in range(16):
        for kij in range(9):
            (orow, ocol), (ki, kj) = divmod(o, 4), divmod(kij, 3)
            assert address[o * 9 + kij] == 36 * kij + (orow + ki) * 6 + (ocol + kj)


@pytest.mark.parametrize(
    ("c_in", "c_out", "side", "kernel", "stride", "padding", "images"),
    [(12, 10, 13, 3, 1, 1, 2), (8, 8, 15, 5, 2, 2, 1), (9, 3, 9, 3, 1, 0, 1), (8, 8, 8, 3, 1, 1, 1)],
    ids=["3x3-s1-p1-2itiles-2otiles-2images", "5x5-s2-p2", "3x3-p0", "readme-8x8"],
)
def test_a_multi_tile_layer_against_a_valid_conv_of_the_bare_map(
    c_in: int, c_out: int, side: int, kernel: int, stride: int, padding: int, images: int
) -> None:
    layer = integerize(conv_tensors(c_in, c_out, side, kernel, stride, padding, images=images))
    prof = _valid("systolic", rows=8, cols=8)
    files = _plans(layer, prof)
    t, k, s = prof.tile, kernel, stride
    g = (t - 1) * s + k
    interior = (side - k) // s + 1  # the valid conv's outputs a side
    origin = padding // stride  # its output 0 is the layer's output origin
    tiles = -(-interior // t)
    itiles, otiles = -(-c_in // 8), -(-c_out // 8)
    x, psum = _bare(layer), conv_psum(layer).psum
    np.testing.assert_array_equal(  # the valid conv is the layer's interior
        np.stack([[_valid_conv(layer, x, n, vy, 0) for vy in range(interior)] for n in range(images)]),
        psum[:, :, origin : origin + interior, origin].transpose(0, 2, 1),
    )
    xc = np.zeros((images, itiles * 8, 64, 64), dtype=np.int64)
    xc[:, :c_in] = x
    wc = np.zeros((otiles * 8, itiles * 8, k, k), dtype=np.int64)
    wc[:c_out, :c_in] = layer.w_int
    checked = 0
    for sp in range(images * tiles * tiles):
        n, rest = divmod(sp, tiles * tiles)
        ty, tx = divmod(rest, tiles)
        r0, c0 = ty * t * s, tx * t * s  # the tile's grid starts at bare pixel (r0, c0)
        for i in range(itiles):
            act = files[f"activation_tile{sp * itiles + i}"]
            assert act.padded is False
            words = _words(act)
            for pos in range(g * g):
                np.testing.assert_array_equal(
                    words[pos], xc[n, i * 8 : i * 8 + 8, r0 + pos // g, c0 + pos % g]
                )
        for o in range(otiles):
            out = files[f"out_tile{sp}_otile{o}"]
            assert out.where.y == (origin + ty * t, origin + min((ty + 1) * t, interior))
            assert out.where.x == (origin + tx * t, origin + min((tx + 1) * t, interior))
            golden = _words(out)
            for pix in range(t * t):
                vy, vx = ty * t + pix // t, tx * t + pix % t
                window = xc[n, :, vy * s : vy * s + k, vx * s : vx * s + k]
                per_tile = np.einsum("cij,ocij->oc", window, wc[o * 8 : o * 8 + 8])
                per_tile = per_tile.reshape(8, itiles, 8).sum(axis=2)  # (oc, itile)
                np.testing.assert_array_equal(golden[pix], np.maximum(per_tile.sum(axis=1), 0))
                for i in range(itiles if itiles > 1 else 0):
                    part = _words(files[f"psum_tile{sp}_itile{i}_otile{o}"])
                    np.testing.assert_array_equal(part[pix], per_tile[:, i])
                checked += 1
    assert checked == images * tiles * tiles * otiles * t * t


@pytest.mark.parametrize("base", ["course-os", "systolic-is"])
def test_the_os_and_is_layouts_read_the_bare_map_too(base: str) -> None:
    # 10x10 map, 3x3 stride 1 pad 1, tile 4: 8x8 interior outputs, 2x2 tiles of 2 passes of 8 pixels
    layer = integerize(conv_tensors(8, 8, 10, 3, 1, 1))
    files = _plans(layer, _valid(base))
    x = _bare(layer)
    for sp in range(4):
        ty, tx = divmod(sp, 2)
        for q in range(2):
            stem = (
                f"activation_tile{sp}_pass{q}"
                if base == "course-os"
                else f"activation_tile{sp}_itile0_pass{q}"
            )
            act = _words(files[stem])
            golden = _words(files[f"out_tile{sp}_pass{q}_otile0"])
            for lane in range(8):  # pixel 8q + lane of the tile, row-major
                oy, ox = divmod(8 * q + lane, 4)
                vy, vx = ty * 4 + oy, tx * 4 + ox
                for ic in range(8):
                    for kij in range(9):
                        ki, kj = divmod(kij, 3)
                        line = ic * 9 + kij if base == "course-os" else kij * 8 + ic
                        assert act[line, lane] == x[0, ic, vy + ki, vx + kj]
                conv = np.maximum(_valid_conv(layer, x, 0, vy, vx), 0)
                got = golden[lane] if base == "course-os" else golden[:, lane]
                np.testing.assert_array_equal(got, conv)
            out = files[f"out_tile{sp}_pass{q}_otile0"]
            assert (out.where.y, out.where.x) == ((1 + ty * 4, 5 + ty * 4), (1 + tx * 4, 5 + tx * 4))


@pytest.mark.parametrize(
    ("side", "kernel", "stride", "padding", "message"),
    [
        (2, 3, 1, 1, "its 2x2 map is smaller than the 3x3 kernel"),
        (9, 3, 2, 1, "padding (1) is a multiple of its stride (2)"),
    ],
    ids=["map-smaller-than-kernel", "padding-not-a-multiple-of-stride"],
)
def test_what_a_valid_conv_cannot_express_is_refused_naming_profile_and_layer(
    side: int, kernel: int, stride: int, padding: int, message: str
) -> None:
    layer = integerize(conv_tensors(8, 8, side, kernel, stride, padding))
    with pytest.raises(InputError, match=r"layer layer2\.0\.conv1: profile systolic .*" + re.escape(message)):
        check_systolic(layer, _valid("systolic"))


def test_sfu_files_are_refused_with_a_valid_geometry() -> None:
    layer = integerize(conv_tensors(8, 8, 6, 3, 1, 1))
    prof = _valid("course")
    psums = conv_psum(layer)
    tiled = tiled_psums(layer, prof.rows, prof.tile, prof.golden, prof.geometry)
    with pytest.raises(InputError, match=r"layer layer2\.0\.conv1: profile course .*leave out --sfu"):
        systolic_layout(layer, psums, tiled, prof, "L/", cast(LayerSfu, object()))


def test_an_unknown_geometry_is_refused() -> None:
    text = load_profile("course").source.replace('kind = "systolic"', 'kind = "systolic"\ngeometry = "same"')
    with pytest.raises(InputError, match="key 'geometry' = 'same'; choose one of padded_grid, valid"):
        parse_profile(text, "mine")


# --- the files' checks against the array ------------------------------------------------------


def _with(base: str, kind: str, table: str) -> Profile:
    """``base`` with its [files.<kind>] table replaced by (or, if it has none, added as) ``table``."""
    text = load_profile(base).source
    head = f"[files.{kind}]"
    if head in text:
        start = text.index(head)
        end = text.find("\n[files.", start + 1)
        text = text[:start] + (text[end + 1 :] if end >= 0 else "")
    return parse_profile(text + f"\n{head}\n{table}\n", "mine")


@pytest.mark.parametrize(
    ("base", "kind", "table", "lanes", "edge"),
    [
        (
            "course",
            "activation",
            'files = ["s", "itile"]\nlines = ["y"]\nlanes = "(x ic)"\nname = "a{a}"',
            48,
            "the weight_stationary 8x8 array's activation word holds one value a PE row, 8 at most",
        ),
        (
            "course",
            "psum_kij",
            'files = ["s", "itile", "otile", "kij"]\nlines = ["y"]\nlanes = "(x oc)"\n'
            'name = "p{s}_{i}_{o}_{k}"',
            48,
            "psum_kij word holds one value a PE column, 8 at most",
        ),
        (
            "course-os",
            "weight",
            'files = ["otile", "kij"]\nlines = []\nlanes = "(ic oc)"\nname = "w{o}_{k}"',
            64,
            "output_stationary 8x8 array's weight word holds one value a PE column, 8 at most",
        ),
        (
            "systolic-is",
            "activation",
            'files = ["s", "itile", "pass"]\nlines = ["kij"]\nlanes = "(ic col)"\nname = "a{s}_{i}_{p}"',
            64,
            "input_stationary 8x8 array's activation word holds one value a PE column",
        ),
    ],
    ids=["ws-activation", "ws-psum_kij", "os-weight", "is-activation"],
)
def test_lanes_beyond_the_array_are_refused_naming_the_kind(
    base: str, kind: str, table: str, lanes: int, edge: str
) -> None:
    prof = _with(base, kind, table)
    layer = integerize(conv_tensors(8, 8, 4, 3, 1, 1))
    with pytest.raises(
        InputError,
        match=rf"layer layer2\.0\.conv1: profile {base}: \[files.{kind}\] packs {lanes} lanes a word .*"
        + re.escape(edge),
    ):
        _layout(layer, prof)


def _layout(layer: IntLayer, prof: Profile) -> list[TensorPlan]:
    psums = conv_psum(layer)
    tiled = tiled_psums(layer, prof.rows, prof.tile, prof.golden)
    return systolic_layout(layer, psums, tiled, prof, "L/")


@pytest.mark.parametrize("kind", ["psum_kij", "psum_acc", "psum_run"])
@pytest.mark.parametrize("base", ["course-os", "systolic-is"])
def test_a_step_psum_kind_on_an_array_without_psum_memory_is_refused(base: str, kind: str) -> None:
    table = 'files = ["s"]\nlines = ["oy", "ox"]\nlanes = "oc"\nname = "p{s}"'
    with pytest.raises(InputError, match=rf"mine: \[files.{kind}\] is a step psum.* no psum memory"):
        _with(base, kind, table)


def test_the_cli_refuses_a_valid_conv_of_a_map_smaller_than_the_kernel(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from qexport.cli.main import main

    mine = tmp_path / "valid.toml"
    text = load_profile("course").source.replace('kind = "systolic"', 'kind = "systolic"\ngeometry = "valid"')
    mine.write_text(text.replace('name = "course"', 'name = "course-valid"'), encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["dump", "--layer", "45", "--profile", str(mine), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "layer 45: profile course-valid computes a valid conv over the bare map" in result.output
    assert "its 2x2 map is smaller than the 3x3 kernel" in result.output
    assert "Traceback" not in result.output and not out.exists()
