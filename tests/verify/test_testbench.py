"""Rendered testbenches compile and run in Icarus Verilog, and fail loudly on a bad golden word."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from qexport import api
from qexport.api import SourceOptions
from qexport.cli.main import main
from qexport.errors import BitWidthError, InputError
from qexport.frontend.capture import LayerTensors
from qexport.ir.integerize import integerize
from qexport.layout.profile import Profile, load_profile, parse_profile

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not installed"),
]


def _systolic(rows: int, cols: int, psum_bits: int) -> str:
    text = load_profile("systolic").source
    text = text.replace("rows = 16", f"rows = {rows}").replace("cols = 16", f"cols = {cols}")
    text = re.sub(r"(?m)^psum_bits = \d+", f"psum_bits = {psum_bits}", text)
    return text.replace('name = "systolic"', 'name = "mine"')


def _run(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(folder / "run_iverilog.sh")], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("layer", "profile", "fmt", "values"),
    [
        (33, "course", "hex", 128),
        (33, "course", "bin", 128),
        (27, "course", "hex", 512),  # 128 -> 32 channels: 16 input and 4 output channel tiles
        (33, "2x2", "bin", 128),
        (30, "16x16", "hex", 256),  # 32 -> 8 channels on a 16x16 array: 2 input tiles, padded columns
    ],
    ids=["course-33-hex", "course-33-bin", "course-27-tiled", "systolic-2x2", "systolic-16x16"],
)
def test_testbench_passes(tmp_path: Path, layer: int, profile: str, fmt: str, values: int) -> None:
    prof = {
        "2x2": parse_profile(_systolic(2, 2, 16), "2x2"),
        "16x16": parse_profile(_systolic(16, 16, 16), "16x16"),
    }.get(profile, profile)
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), layer, out, prof, fmt)
    result = _run(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS layer {layer}: {values} output values match" in result.stdout


def test_corrupted_golden_word_fails_with_the_mismatch(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    result = CliRunner().invoke(main, ["testbench", "--layer", "33", "-o", str(out)])
    assert result.exit_code == 0, result.output
    golden = out / "vectors" / "layer33" / "out.hex"
    lines = golden.read_text().splitlines()
    # data line 2 = output pixel 2 (y=0, x=2); flip the lowest bit of channel 0's lane
    word = int(lines[3 + 2], 16) ^ 1
    lines[3 + 2] = f"{word:032x}"
    golden.write_text("\n".join(lines) + "\n")
    run = _run(out)
    assert run.returncode != 0
    assert "MISMATCH tile 0 otile 0 pixel (n=0, y=0, x=2) channel 0" in run.stdout
    assert "FAIL layer 33: 1 of 128 output values differ" in run.stdout


def test_narrow_psum_profile_shows_psum_overflow(tmp_path: Path) -> None:
    narrow = tmp_path / "narrow.toml"
    narrow.write_text(_systolic(16, 16, 8))
    with pytest.raises(BitWidthError, match=r"8-bit psums are too narrow"):
        api.testbench(SourceOptions(), 30, tmp_path / "tb", load_profile(str(narrow)))
    assert not (tmp_path / "tb").exists()


def test_flat_profile_and_text_formats_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="systolic core profile"):
        api.testbench(SourceOptions(), 33, tmp_path / "a", "flat")
    with pytest.raises(InputError, match="use --format hex or bin"):
        api.testbench(SourceOptions(), 33, tmp_path / "b", "course", "coe")


def test_an_output_stationary_layout_other_than_course_os_is_refused_naming_it(tmp_path: Path) -> None:
    # issue 17 item 8: course-os is driven (tests/verify/test_testbench_dataflows.py); a layout its
    # core does not read (output lanes msb_first) is refused before anything is written
    text = load_profile("course-os").source.replace('name = "course-os"', 'name = "mine"')
    prof = parse_profile(
        text.replace(
            'name = "out_tile{s}_pass{p}_otile{o}"',
            'name = "out_tile{s}_pass{p}_otile{o}"\nlane_order = "msb_first"',
        ),
        "mine",
    )
    with pytest.raises(InputError, match=r"profile mine: its \[files.output\] is not the course-os layout"):
        api.testbench(SourceOptions(), 33, tmp_path / "os", prof, "hex")
    assert not (tmp_path / "os").exists()


def test_two_bit_layer_on_the_course_core(tmp_path: Path) -> None:
    """A 2-bit layer (--bits-config) rides in the core's 4-bit lanes and passes in Icarus."""
    import json

    config = tmp_path / "bits.json"
    config.write_text('{"act_bits": {"33": 2}}')
    out = tmp_path / "tb"
    api.testbench(SourceOptions(bits_config=config), 33, out, "course", "bin")
    manifest = json.loads((out / "manifest.json").read_text())
    (layer,) = manifest["layers"]
    assert layer["act_bit"] == 2
    assert abs(layer["x_delta"] - layer["act_alpha"] / 3) < 1e-12
    result = _run(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS layer 33: 128 output values match" in result.stdout


def test_context_comes_from_the_layout_plan_not_the_manifest() -> None:
    # issue 14 item 3: the testbench context is built from the layer's plan, before any manifest
    from qexport.layout.flat import LayerPlan
    from qexport.verify.testbench import testbench_context
    from qexport.writer.render import MemoryContext
    from qexport.writer.write import ExportPlan

    prof = load_profile("course")
    files = ExportPlan()
    plans: list[tuple[LayerPlan, MemoryContext]] = []
    manifest, _ = api._render_set(
        files, SourceOptions(), [27], "hex", None, prof, "exact", None, "vectors/", plans=plans
    )
    ((plan, memory),) = plans
    assert (plan.name, plan.layer) == ("features.27", 27)
    context = testbench_context(plan, memory, prof)
    assert (context["layer"], context["model"], context["radix"]) == ("27", manifest.model, "h")
    named = {context["address_file"]}
    for tile in context["tiles"]:
        named.add(tile["out"])
        for itile in tile["itiles"]:
            named |= {itile["activation"], *itile["weights"]}
    (entry,) = manifest.layers
    assert named == {f.path for f in entry.files if f.tensor != "psum"}
    assert named <= set(files.files)
    assert len(context["tiles"]) == 4 and len(context["tiles"][0]["itiles"]) == 16


# issue 15 item 6: strided and 1x1 convs through the rendered testbench and the reference core


def _course_like(name: str) -> Profile:
    """A course profile under another name: the 8x8 core, which tiles any kernel and stride."""
    text = load_profile(name).source
    return parse_profile(text.replace(f'name = "{name}"', 'name = "mine"'), "mine")


@pytest.fixture
def strided_layer(monkeypatch: pytest.MonkeyPatch) -> Callable[..., LayerTensors]:
    """Make layer 33 of the demo model a synthetic conv (any kernel, stride, padding)."""
    from helpers import conv_tensors

    def use(*args: int) -> LayerTensors:
        t = conv_tensors(*args, name="features.33", layer=33)
        monkeypatch.setattr(api, "capture", lambda model, images, device=None, bits=None: [t])
        return t

    return use


STRIDED_TB = [
    # (c_in, c_out, side, kernel, stride, padding), profile, output values compared
    ((8, 8, 16, 3, 2, 1), "mine", 4 * 16 * 8),  # 8x8 output: four tiles of a 9x9 grid
    ((8, 8, 16, 3, 2, 1), "systolic", 4 * 16 * 16),  # 16 lanes, channels 8..15 padded
    ((16, 16, 16, 1, 2, 0), "mine", 4 * 2 * 16 * 8),  # 1x1: one pass; 2 input and 2 output tiles
    ((16, 16, 16, 1, 2, 0), "systolic", 4 * 16 * 16),
    ((8, 8, 12, 3, 2, 1), "mine", 4 * 16 * 8),  # 6x6 output rounded up to 8x8
]


@pytest.mark.parametrize(
    ("conv", "profile", "values"),
    STRIDED_TB,
    ids=["3x3s2-ws", "3x3s2-16x16", "1x1s2-ws", "1x1s2-16x16", "3x3s2-6x6"],
)
def test_strided_testbench_passes_and_a_corrupted_golden_fails(
    tmp_path: Path,
    strided_layer: Callable[..., LayerTensors],
    conv: tuple[int, ...],
    profile: str,
    values: int,
) -> None:
    import numpy as np

    from qexport.verify.compare import compare
    from qexport.verify.decode import decode_file
    from qexport.writer.manifest import loads

    ints = integerize(strided_layer(*conv))
    prof = {"mine": _course_like("course")}.get(profile) or load_profile(profile)
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), 33, out, prof, "hex")
    c_in, c_out, side, kernel, stride, padding = conv
    grid = 3 * stride + kernel
    tb = (out / "tb.sv").read_text()
    assert f"localparam KERNEL = {kernel};" in tb and f"localparam STRIDE = {stride};" in tb
    assert f"localparam GRID = {grid};" in tb
    result = _run(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS layer 33: {values} output values match" in result.stdout
    # `compare` reads the log as it reads any testbench's
    log = tmp_path / "pass.log"
    log.write_text(result.stdout)
    assert compare(out, log).identical

    # the written golden words, decoded, are the plain numpy conv of the layer (int64, in the test)
    manifest = loads((out / "manifest.json").read_text())
    (layer,) = manifest.layers
    x = np.zeros((1, c_in, 64, 64), dtype=np.int64)
    x[:, :, padding : padding + side, padding : padding + side] = ints.x_int
    outputs = [f for f in layer.files if f.tensor == "output"]
    assert outputs
    for entry in outputs:
        got = decode_file(out / entry.path, entry)  # (1, tile, tile, lanes)
        assert entry.where.y is not None and entry.where.x is not None and entry.where.oc is not None
        y0, x0, (oc0, oc1) = entry.where.y[0], entry.where.x[0], entry.where.oc
        for orow in range(4):
            for ocol in range(4):
                ys, xs = (y0 + orow) * stride, (x0 + ocol) * stride
                window = x[0, :, ys : ys + kernel, xs : xs + kernel]
                want = np.maximum(np.einsum("cij,ocij->o", window, ints.w_int.astype(np.int64)), 0)
                np.testing.assert_array_equal(
                    got[0, orow, ocol, : oc1 - oc0], want[oc0:oc1], err_msg=entry.path
                )
                np.testing.assert_array_equal(got[0, orow, ocol, oc1 - oc0 :], 0, err_msg=entry.path)
    # `check` regenerates the set from its recipe byte for byte
    from qexport.verify.check import check_set

    checked = check_set(out, tmp_path)
    assert checked.identical, checked.problems

    # one flipped bit in a golden word: the testbench fails naming it
    golden = out / outputs[-1].path
    lines = golden.read_text().splitlines()
    data = [i for i, line in enumerate(lines) if not line.startswith("//")]
    lines[data[5]] = f"{int(lines[data[5]], 16) ^ 1:0{len(lines[data[5]])}x}"
    golden.write_text("\n".join(lines) + "\n")
    run = _run(out)
    assert run.returncode != 0
    tile, otile = outputs[-1].where.tile, outputs[-1].where.otile
    assert (
        f"MISMATCH tile {tile} otile {otile} pixel (n=0, y={y0 + 1}, x={x0 + 1}) channel {oc0}" in run.stdout
    )
    assert f"FAIL layer 33: 1 of {values} output values differ" in run.stdout


def test_testbench_refuses_more_kernel_passes_than_its_port_holds(
    tmp_path: Path, strided_layer: Callable[..., LayerTensors]
) -> None:
    strided_layer(8, 8, 8, 5, 1, 2)
    with pytest.raises(
        InputError, match=r"5x5 conv: 25 kernel passes; the testbench's w_kij port has 4 bits"
    ):
        api.testbench(SourceOptions(), 33, tmp_path / "tb", load_profile("systolic"))
    assert not (tmp_path / "tb").exists()


def _vcd_scopes_and_signals(vcd: Path) -> tuple[list[str], set[str]]:
    text = vcd.read_text()
    scopes = re.findall(r"\$scope module (\S+) \$end", text)
    signals = set(re.findall(r"\$var \w+ \d+ \S+ (\w+)", text))
    return scopes, signals


def test_vcd_testbench_dumps_the_duts_signals_where_the_script_runs(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    result = CliRunner().invoke(main, ["testbench", "--layer", "33", "--vcd", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "$dumpvars(0, tb);" in (out / "tb.sv").read_text()
    here = tmp_path / "run"
    here.mkdir()
    run = subprocess.run(["bash", str(out / "run_iverilog.sh")], capture_output=True, text=True, cwd=here)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS layer 33: 128 output values match" in run.stdout
    scopes, signals = _vcd_scopes_and_signals(here / "tb.vcd")
    assert scopes[:2] == ["tb", "dut"]
    assert {"clk", "start", "done", "act_data", "w_data", "out_addr", "out_data"} <= signals
    assert not list(out.rglob("*.vcd"))  # the set stays as qexport wrote it
    from qexport.verify.check import check_set

    assert check_set(out).problems == []  # the recipe remembers --vcd


def test_without_vcd_nothing_dumps(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), 33, out)
    assert "$dump" not in (out / "tb.sv").read_text()
    assert "vcd" not in (out / "run_iverilog.sh").read_text() + (out / "run_verilator.sh").read_text()
    run = subprocess.run(["bash", str(out / "run_iverilog.sh")], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and not list(tmp_path.rglob("*.vcd"))
