"""Declarative file layouts (issue 17): each built-in and custom layout against a reading written
here from the README's description (index arithmetic per line and lane, no layout code), the
validation messages, and the step psums."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import conv_tensors

from qexport.errors import InputError
from qexport.ir.integerize import IntLayer, integerize
from qexport.ir.reference import check_tiled, conv_psum, tiled_psums
from qexport.layout.flat import TensorPlan
from qexport.layout.profile import Profile, load_profile, parse_profile
from qexport.layout.systolic import check_systolic, systolic_layout

ROOT = Path(__file__).resolve().parents[2]


def _plans(layer: IntLayer, prof: Profile) -> list[TensorPlan]:
    psums = conv_psum(layer)
    check_systolic(layer, prof)
    tiled = tiled_psums(layer, prof.rows, prof.tile, prof.golden)
    check_tiled(layer, psums, tiled, prof.golden)
    return systolic_layout(layer, psums, tiled, prof, "L/")


def _words(tp: TensorPlan) -> np.ndarray:
    """A file's values as (words, lanes), as the packer reads the plan (C order, lanes innermost)."""
    return tp.array.reshape(-1, tp.spec.lanes)


def _by_stem(plans: list[TensorPlan]) -> dict[str, TensorPlan]:
    return {tp.stem.removeprefix("L/"): tp for tp in plans}


def _padded(layer: IntLayer, big: int = 80) -> np.ndarray:
    """x_int in a zero map: padded row r is input row r - padding."""
    n, c, h, w = layer.x_int.shape
    p = layer.padding
    x = np.zeros((n, c, big, big), dtype=np.int64)
    x[:, :, p : p + h, p : p + w] = layer.x_int
    return x


def _conv(layer: IntLayer, x: np.ndarray, img: int, oy: int, ox: int) -> np.ndarray:
    """The plain conv at output pixel (oy, ox) of the map: one value an output channel."""
    k, s = layer.kernel, layer.stride
    window = x[img, :, oy * s : oy * s + k, ox * s : ox * s + k]
    return np.einsum("cij,ocij->o", window, layer.w_int.astype(np.int64))


# --- course-os: the output-stationary layout, read from README "Layout profiles" ---------------


@pytest.mark.parametrize(
    ("c_in", "c_out", "side", "images"),
    [(8, 8, 4, 1), (5, 12, 8, 2)],
    ids=["layer33-shape-2-passes", "2x2-tiles-2-otiles-2-images"],
)
def test_course_os_files_are_the_readme_reading(c_in: int, c_out: int, side: int, images: int) -> None:
    layer = integerize(conv_tensors(c_in, c_out, side, 3, 1, 1, images=images))
    files = _by_stem(_plans(layer, load_profile("course-os")))
    x = _padded(layer)
    tiles = side // 4
    otiles = -(-c_out // 8)
    assert "acc_address" not in files and not any(tp.tensor == "psum" for tp in files.values())
    # weights: one file a kernel position (and output tile), line = input channel, lane = oc
    for o in range(otiles):
        for kij in range(9):
            words = _words(files[f"weight_otile{o}_kij{kij}"])
            assert words.shape == (c_in, 8)
            for ic in range(c_in):
                for lane in range(8):
                    oc = o * 8 + lane
                    want = layer.w_int[oc, ic, kij // 3, kij % 3] if oc < c_out else 0
                    assert words[ic, lane] == want
    s = 0
    for img in range(images):
        for ty in range(tiles):
            for tx in range(tiles):
                for p in range(2):  # 16 pixels of a 4x4 tile, 8 a pass
                    act = _words(files[f"activation_tile{s}_pass{p}"])
                    assert act.shape == (c_in * 9, 8)  # 72 lines for 8 channels
                    for ic in range(c_in):
                        for kij in range(9):
                            for r in range(8):
                                q = p * 8 + r  # PE row r
                                gy, gx = q // 4 + kij // 3, q % 4 + kij % 3  # the 6x6 grid's row, column
                                want = x[img, ic, ty * 4 + gy, tx * 4 + gx]
                                assert act[ic * 9 + kij, r] == want, (s, p, ic, kij, r)
                    for o in range(otiles):
                        out = _words(files[f"out_tile{s}_pass{p}_otile{o}"])
                        assert out.shape == (8, 8)
                        for r in range(8):
                            q = p * 8 + r  # PE row r
                            conv = np.maximum(_conv(layer, x, img, ty * 4 + q // 4, tx * 4 + q % 4), 0)
                            for lane in range(8):
                                oc = o * 8 + lane
                                assert out[r, lane] == (conv[oc] if oc < c_out else 0)
                        where = files[f"out_tile{s}_pass{p}_otile{o}"].where
                        assert (where.tile, where.pixels, where.otile) == (s, (8 * p, 8 * p + 8), o)
                s += 1
    assert len(files) == otiles * 9 + s * 2 * (1 + otiles)


def test_an_os_tile_whose_pixels_do_not_fill_passes_is_refused() -> None:
    text = load_profile("course-os").source.replace("tile = 4 ", "tile = 3 ")
    prof = parse_profile(text, "mine")
    layer = integerize(conv_tensors(8, 8, 6, 3, 1, 1))
    with pytest.raises(InputError, match=r"3x3 tile has 9 output pixels, which passes of 8 rows"):
        _plans(layer, prof)


# --- custom profiles: other names, reversed output lanes, tile 16, packed channels -------------

CUSTOM = """
name = "mine16"
description = "16x16 tiles, output lanes msb first"
kind = "systolic"
rows = 8
cols = 8
tile = 16
address_bits = 12
psum_bits = 16
header = "comment"
format = "hex"

[files.activation]
files = ["itile", "s"]
lines = ["y", "x"]
lanes = "ic"
name = "x_t{s}_c{i}"

[files.weight]
files = ["otile", "itile", "kij"]
lines = ["oc"]
lanes = "ic"
name = "w_{k}_{o}_{i}"

[files.psum]
files = ["s", "itile", "otile"]
lines = ["oy", "ox"]
lanes = "oc"
name = "p_{s}_{i}_{o}"

[files.output]
files = ["s", "otile"]
lines = ["oy", "ox"]
lanes = "oc"
lane_order = "msb_first"
name = "golden_{s}_{o}"

[files.address]
lines = ["(oy ox)", "kij"]
name = "addr"
"""


def test_tile_16_on_a_32x32_layer_with_reversed_output_lanes_and_other_names() -> None:
    layer = integerize(conv_tensors(8, 8, 32, 3, 1, 1))
    plans = _plans(layer, parse_profile(CUSTOM, "mine16"))
    files = _by_stem(plans)
    x = _padded(layer)
    assert sorted(files) == sorted(
        [f"x_t{s}_c0" for s in range(4)]
        + [f"w_{k}_0_0" for k in range(9)]
        + [f"golden_{s}_0" for s in range(4)]
        + ["addr"]
    )
    for s in range(4):
        ty, tx = divmod(s, 2)
        act = _words(files[f"x_t{s}_c0"])
        assert act.shape == (18 * 18, 8)  # the (t+2)^2 grid of a 16x16 tile
        for n in range(324):
            np.testing.assert_array_equal(act[n], x[0, :, ty * 16 + n // 18, tx * 16 + n % 18])
        out = files[f"golden_{s}_0"]
        assert out.spec.lane_order == "msb_first" and out.spec.lanes == 8
        words = _words(out)
        for o in range(256):
            conv = _conv(layer, x, 0, ty * 16 + o // 16, tx * 16 + o % 16)
            np.testing.assert_array_equal(words[o], np.maximum(conv, 0))
    assert files["w_4_0_0"].spec.lane_order == "lsb_first"  # the weights keep the profile's order
    address = _words(files["addr"]).ravel()
    assert address.size == 256 * 9
    for o in range(256):
        for kij in range(9):
            orow, ocol, ki, kj = o // 16, o % 16, kij // 3, kij % 3
            assert address[o * 9 + kij] == 324 * kij + (orow + ki) * 18 + (ocol + kj)


def test_the_reversed_lanes_reach_the_written_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qexport import api
    from qexport.frontend.source import SourceOptions

    t = conv_tensors(8, 8, 32, 3, 1, 1, name="features.33", layer=33)
    monkeypatch.setattr(api, "capture", lambda model, images, device=None, bits=None: [t])
    (tmp_path / "mine.toml").write_text(CUSTOM)
    api.export(SourceOptions(), [33], tmp_path / "set", profile=str(tmp_path / "mine.toml"))
    layer = integerize(t)
    x = _padded(layer)
    lines = (tmp_path / "set" / "layer33" / "golden_0_0.hex").read_text().splitlines()
    data = [ln for ln in lines if not ln.startswith("//")]
    conv = np.maximum(_conv(layer, x, 0, 0, 0), 0)
    bits = int(data[0], 16)
    width = len(data[0]) * 4 // 8  # 8 lanes of the output's width
    # msb_first: output channel 0 in the highest lane
    got = [(bits >> (width * (7 - lane))) & ((1 << width) - 1) for lane in range(8)]
    assert got == [int(v) for v in conv]
    weight = [
        ln for ln in (tmp_path / "set" / "layer33" / "w_0_0_0.hex").read_text().splitlines() if "//" not in ln
    ]
    w0 = int(weight[0], 16)
    assert [((w0 >> (4 * lane)) & 15) for lane in range(8)] == [int(v) & 15 for v in layer.w_int[0, :, 0, 0]]


TWO_BIT = (
    CUSTOM.replace("rows = 8", "rows = 16")
    .replace("tile = 16", "tile = 4")
    .replace(
        """[files.weight]
files = ["otile", "itile", "kij"]
lines = ["oc"]
lanes = "ic"
""",
        """[files.weight]
files = ["otile", "itile", "kij"]
lines = ["oc", "pair"]          # two lines a column
lanes = "row"                   # PE row r holds input channels 2r and 2r+1
split = {ic = "(row pair)"}
sizes = {pair = 2}
""",
    )
)


def test_a_two_channel_a_row_core_splits_ic_in_toml() -> None:
    prof = parse_profile(TWO_BIT, "two-bit")
    layer = integerize(conv_tensors(16, 8, 4, 3, 1, 1))
    files = _by_stem(_plans(layer, prof))
    for kij in range(9):
        words = _words(files[f"w_{kij}_0_0"])
        assert words.shape == (16, 8)  # 8 columns x 2 lines, 8 PE rows
        for oc in range(8):
            for pair in range(2):
                for row in range(8):
                    assert words[oc * 2 + pair, row] == layer.w_int[oc, 2 * row + pair, kij // 3, kij % 3]


def test_a_split_that_does_not_divide_is_refused_naming_the_kind() -> None:
    prof = parse_profile(TWO_BIT.replace("sizes = {pair = 2}", "sizes = {pair = 3}"), "two-bit")
    layer = integerize(conv_tensors(16, 8, 4, 3, 1, 1))
    with pytest.raises(InputError, match=r"\[files.weight\] split ic = \(row pair\): ic has 16 values"):
        _plans(layer, prof)


# --- [names] profiles and the built-ins' [files] tables agree ---------------------------------


def test_a_names_only_profile_reads_as_the_builtin_files_tables() -> None:
    legacy = parse_profile((ROOT / "vectors" / "systolic16.toml").read_text(), "systolic16")
    assert legacy.files == load_profile("systolic").files
    course = load_profile("course")
    names = re.sub(r"(?s)\n# The file kinds as data.*", "", course.source) + (
        '\n[names]\nactivation = "activation_tile{a}"\nweight = "weight_itile{i}_otile{o}_kij{k}"\n'
        'address = "acc_address"\noutput = "out"\noutput_tiled = "out_tile{s}_otile{o}"\n'
        'psum = "psum_tile{s}_itile{i}_otile{o}"\n'
    )
    assert parse_profile(names, "course by names").files == course.files


# --- validation: exit 2 naming the kind and the problem ---------------------------------------


def _with_activation(table: str) -> str:
    base = load_profile("course").source
    start = base.index("[files.activation]")
    end = base.index("[files.weight]")
    return base[:start] + "[files.activation]\n" + table + "\n" + base[end:]


def _table(
    files: str = '["s", "itile"]',
    lines: str = '["y", "x"]',
    lanes: str = "ic",
    name: str = "a{a}",
    extra: str = "",
) -> str:
    return f'files = {files}\nlines = {lines}\nlanes = "{lanes}"\nname = "{name}"\n{extra}'


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (_table(lines='["y", "q"]'), "names unknown axis 'q'"),
        (_table(lines='["y", "y"]'), "uses axis 'y' twice"),
        (_table(lines='["y"]'), "does not cover the tensor exactly once: axis x"),
        (_table(files='["s", "itile", "n"]'), "uses axis n twice"),
        (_table(name="a{s}"), "does not tell its files apart: add {itile}"),
        (_table(name="a{o}"), "unknown placeholder {o}"),
        (_table(lines='["(y x"]'), "write an axis name or a group"),
        (_table(extra="shape = 3"), "unknown key 'shape'"),
        (_table(lanes="hi", extra='split = {ic = "(hi lo)"}'), "splits ic into hi lo but never uses lo"),
    ],
    ids=["unknown", "twice", "missing", "merged-twice", "apart", "placeholder", "group", "key", "split-part"],
)
def test_a_bad_files_table_is_refused_naming_kind_and_problem(table: str, message: str) -> None:
    with pytest.raises(InputError, match=r"profile mine: \[files.activation\] .*" + re.escape(message)):
        parse_profile(_with_activation(table), "profile mine")


def test_a_kind_the_dataflow_lacks_is_refused() -> None:
    text = load_profile("course-os").source + '\n[files.address]\nlines = ["(oy ox)", "kij"]\nname = "a"\n'
    with pytest.raises(InputError, match=r"\[files.address\] is not a file kind of the output_stationary"):
        parse_profile(text, "mine")


# --- per-step golden psums (psum_kij, psum_acc) -----------------------------------------------

STEPS = """
[files.psum_kij]
files = ["s", "itile", "otile", "kij"]
lines = ["y", "x"]
lanes = "oc"
name = "psum_tile{s}_itile{i}_otile{o}_kij{k}"
single = "psum_kij{k}"   # the layer is one tile of the array

[files.psum_acc]
files = ["s", "itile", "otile", "kij"]
lines = ["oy", "ox"]
lanes = "oc"
name = "acc_tile{s}_itile{i}_otile{o}_kij{k}"
single = "acc_kij{k}"
"""


def test_step_psums_are_each_kernel_position_alone_and_their_running_sums() -> None:
    prof = parse_profile(load_profile("course").source + STEPS, "steps")
    layer = integerize(conv_tensors(8, 8, 4, 3, 1, 1))
    files = _by_stem(_plans(layer, prof))
    x = _padded(layer)[0]  # the one tile's 6x6 grid is x[:, :6, :6]
    w = layer.w_int.astype(np.int64)
    running = np.zeros((16, 8), dtype=np.int64)
    for kij in range(9):
        ki, kj = divmod(kij, 3)
        step = _words(files[f"psum_kij{kij}"])
        assert step.shape == (36, 8)
        for n in range(36):
            for oc in range(8):
                assert step[n, oc] == sum(x[ic, n // 6, n % 6] * w[oc, ic, ki, kj] for ic in range(8))
        for o in range(16):
            running[o] += step[(o // 4 + ki) * 6 + (o % 4 + kj)]  # the address acc_address names
        np.testing.assert_array_equal(_words(files[f"acc_kij{kij}"]), running)
    out = _words(files["out"])
    np.testing.assert_array_equal(out, np.maximum(running, 0))  # after the last position: the golden


def _count(plans: list[TensorPlan]) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for tp in plans:
        kinds[tp.tensor] = kinds.get(tp.tensor, 0) + 1
    return kinds


def test_the_step_psums_are_written_only_when_asked() -> None:
    layer = integerize(conv_tensors(8, 8, 4, 3, 1, 1))
    assert _count(_plans(layer, load_profile("course"))) == {
        "weight": 9,
        "input": 1,
        "output": 1,
        "address": 1,
    }


# --- systolic-is: the input-stationary layout, read from README "Layout profiles" -------------


@pytest.mark.parametrize(
    ("c_in", "c_out", "side"),
    [(8, 8, 4), (12, 10, 8)],
    ids=["one-tile-2-passes", "2-itiles-2-otiles-4-tiles"],
)
def test_systolic_is_files_are_the_readme_reading(c_in: int, c_out: int, side: int) -> None:
    layer = integerize(conv_tensors(c_in, c_out, side, 3, 1, 1))
    files = _by_stem(_plans(layer, load_profile("systolic-is")))
    x = _padded(layer)
    tiles, itiles, otiles = side // 4, -(-c_in // 8), -(-c_out // 8)
    for i in range(itiles):
        for o in range(otiles):
            for kij in range(9):  # streamed as the weight-stationary file: a line per oc, lane = ic
                words = _words(files[f"weight_itile{i}_otile{o}_kij{kij}"])
                for line in range(8):
                    for lane in range(8):
                        oc, ic = o * 8 + line, i * 8 + lane
                        want = layer.w_int[oc, ic, kij // 3, kij % 3] if oc < c_out and ic < c_in else 0
                        assert words[line, lane] == want
    for s in range(tiles * tiles):
        ty, tx = divmod(s, tiles)
        for p in range(2):
            for i in range(itiles):
                act = _words(files[f"activation_tile{s}_itile{i}_pass{p}"])
                assert act.shape == (9 * 8, 8)  # a line per (kernel position, PE row), lane = column
                for kij in range(9):
                    for row in range(8):
                        for col in range(8):
                            q, ic = p * 8 + col, i * 8 + row
                            gy, gx = q // 4 + kij // 3, q % 4 + kij % 3
                            want = x[0, ic, ty * 4 + gy, tx * 4 + gx] if ic < c_in else 0
                            assert act[kij * 8 + row, col] == want
            for o in range(otiles):
                out = _words(files[f"out_tile{s}_pass{p}_otile{o}"])
                assert out.shape == (8, 8)  # a line per output channel, lane = the pass's pixel
                for col in range(8):
                    q = p * 8 + col
                    conv = np.maximum(_conv(layer, x, 0, ty * 4 + q // 4, tx * 4 + q % 4), 0)
                    for line in range(8):
                        oc = o * 8 + line
                        assert out[line, col] == (conv[oc] if oc < c_out else 0)
                if itiles > 1:  # each input tile's own sums, no ReLU; they add up to the output
                    total = sum(
                        _words(files[f"psum_tile{s}_itile{i}_pass{p}_otile{o}"]) for i in range(itiles)
                    )
                    np.testing.assert_array_equal(np.maximum(total, 0), out)


def test_the_running_sums_after_each_input_tile_end_at_the_total() -> None:
    table = '[files.psum_run]\nfiles = ["s", "itile", "otile"]\nlines = ["oy", "ox"]\nlanes = "oc"\n'
    prof = parse_profile(load_profile("course").source + table + 'name = "run_t{s}_i{i}_o{o}"\n', "runs")
    layer = integerize(conv_tensors(20, 8, 4, 3, 1, 1))  # 3 input tiles of 8 channels (the last 4 real)
    files = _by_stem(_plans(layer, prof))
    x = _padded(layer)
    running = np.zeros((16, 8), dtype=np.int64)
    for i in range(3):
        for o in range(16):
            window = x[0, i * 8 : (i + 1) * 8, o // 4 : o // 4 + 3, o % 4 : o % 4 + 3]
            running[o] += np.einsum(
                "cij,ocij->o", window, layer.w_int[:, i * 8 : (i + 1) * 8].astype(np.int64)
            )
        np.testing.assert_array_equal(_words(files[f"run_t0_i{i}_o0"]), running)
    np.testing.assert_array_equal(_words(files["out_tile0_otile0"]), np.maximum(running, 0))
