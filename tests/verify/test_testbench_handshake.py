"""Issue 13, items 4, 9 and 12: the testbench keeps the DUT's handshake, its script names a
missing simulator, and the built-in systolic profile works on every layer it can tile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from qexport import api
from qexport.api import SourceOptions
from qexport.cli.main import main
from qexport.frontend.models.vgg import BUILTIN, DEFAULT_MODEL
from qexport.layout.profile import load_profile
from qexport.verify.compare import compare
from qexport.writer.pack import smallest_signed_bits

needs_iverilog = pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not installed")

NEVER = -1  # a wrapper that never raises done

# The shipped core (renamed qexport_inner_core) behind a wrapper with the same name and ports
# that passes start on EXTRA clocks late, so done comes EXTRA clocks late, and shows X on out_data
# from start until the inner core's done: a DUT read before its done fails.
_WRAPPER = """
`timescale 1ns/1ps
module qexport_ref_core #(
    parameter ROWS = 8, parameter COLS = 8, parameter ACT_BITS = 4, parameter W_BITS = 4,
    parameter PSUM_BITS = 16, parameter OUT_BITS = 16, parameter TILE = 4, parameter ADDR_BITS = 11,
    parameter WEIGHT_STATIONARY = 1, parameter RELU = 1
) (
    input wire clk,
    input wire act_we, input wire [15:0] act_addr, input wire [ROWS*ACT_BITS-1:0] act_data,
    input wire w_we, input wire [3:0] w_kij, input wire [15:0] w_col, input wire [ROWS*W_BITS-1:0] w_data,
    input wire addr_we, input wire [15:0] addr_index, input wire [ADDR_BITS-1:0] addr_data,
    input wire clear, input wire start, output wire done,
    input wire [15:0] out_addr, output wire [COLS*OUT_BITS-1:0] out_data
);
    localparam EXTRA = @EXTRA@;
    wire core_done;
    wire [COLS*OUT_BITS-1:0] core_out;
    reg pending = 0, busy = 0;
    integer left = 0;
    wire core_start = (EXTRA == 0) ? start : (pending && left == 1);
    qexport_inner_core #(
        .ROWS(ROWS), .COLS(COLS), .ACT_BITS(ACT_BITS), .W_BITS(W_BITS), .PSUM_BITS(PSUM_BITS),
        .OUT_BITS(OUT_BITS), .TILE(TILE), .ADDR_BITS(ADDR_BITS),
        .WEIGHT_STATIONARY(WEIGHT_STATIONARY), .RELU(RELU)
    ) core (
        .clk(clk), .act_we(act_we), .act_addr(act_addr), .act_data(act_data),
        .w_we(w_we), .w_kij(w_kij), .w_col(w_col), .w_data(w_data),
        .addr_we(addr_we), .addr_index(addr_index), .addr_data(addr_data),
        .clear(clear), .start(core_start), .done(core_done), .out_addr(out_addr), .out_data(core_out)
    );
    always @(posedge clk) begin
        if (start) busy <= 1'b1;
        else if (core_done) busy <= 1'b0;
        if (EXTRA > 0) begin
            if (start) begin
                pending <= 1'b1;
                left <= EXTRA;
            end else if (pending) begin
                left <= left - 1;
                if (left == 1) pending <= 1'b0;
            end
        end
    end
    assign done = (EXTRA < 0) ? 1'b0 : core_done;
    assign out_data = (busy && !core_done) ? {COLS*OUT_BITS{1'bx}} : core_out;
endmodule
"""


def _run(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash") or "/bin/bash"
    return subprocess.run(
        [bash, str(folder / "run_iverilog.sh"), *args], capture_output=True, text=True, env=env
    )


def _wrap_core(folder: Path, extra: int) -> None:
    """Swap the folder's qexport_ref_core.v for the late wrapper around the shipped core."""
    core = folder / "qexport_ref_core.v"
    inner = core.read_text().replace("module qexport_ref_core", "module qexport_inner_core")
    assert "module qexport_inner_core" in inner
    core.write_text(inner + _WRAPPER.replace("@EXTRA@", str(extra)))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Testbenches rendered once: course layer 33 (one tile) and course layer 27 (16 x 4 tiles)."""
    root = tmp_path_factory.mktemp("rendered")
    api.testbench(SourceOptions(), 33, root / "course33", "course", "hex")
    api.testbench(SourceOptions(), 27, root / "course27", "course", "hex")
    return {"course33": root / "course33", "course27": root / "course27"}


def _copy(rendered: dict[str, Path], name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(rendered[name], folder)
    return folder


# ---- item 4: the handshake ----


@pytest.mark.sim
@needs_iverilog
@pytest.mark.parametrize(
    ("name", "extra", "values"),
    [
        ("course33", 0, 128),
        ("course33", 1, 128),
        ("course33", 4, 128),
        ("course33", 17, 128),
        ("course27", 4, 512),  # 16 input-channel tiles x 4 output tiles: done is awaited per start
    ],
    ids=["extra-0", "extra-1", "extra-4", "extra-17", "course27-extra-4"],
)
def test_late_dut_that_signals_done_passes(
    rendered: dict[str, Path], tmp_path: Path, name: str, extra: int, values: int
) -> None:
    folder = _copy(rendered, name, tmp_path)
    _wrap_core(folder, extra)
    result = _run(folder)
    layer = 33 if name == "course33" else 27
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS layer {layer}: {values} output values match" in result.stdout
    assert "MISMATCH" not in result.stdout


@pytest.mark.sim
@needs_iverilog
def test_dut_that_never_raises_done_times_out(rendered: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(rendered, "course33", tmp_path)
    _wrap_core(folder, NEVER)
    result = _run(folder)
    assert result.returncode != 0
    assert "TIMEOUT tile 0 otile 0 itile 0: done not raised within 100000 cycles of start" in result.stdout, (
        result.stdout + result.stderr
    )
    assert "FAIL layer 33: the DUT did not finish tile 0 otile 0 itile 0" in result.stdout
    assert "PASS" not in result.stdout


@pytest.mark.sim
@needs_iverilog
def test_timeout_is_a_parameter_given_through_the_script(rendered: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(rendered, "course27", tmp_path)
    _wrap_core(folder, 17)
    result = _run(folder, "-Ptb.TIMEOUT_CYCLES=10")
    assert result.returncode != 0
    assert "TIMEOUT tile 0 otile 0 itile 0: done not raised within 10 cycles of start" in result.stdout
    result = _run(folder, "-Ptb.TIMEOUT_CYCLES=18")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS layer 27: 512 output values match" in result.stdout


@pytest.mark.sim
@needs_iverilog
def test_mismatch_prints_signed_values_where_the_file_is_signed(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    folder = _copy(rendered, "course33", tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (out,) = [f for f in manifest["layers"][0]["files"] if f["tensor"] == "output"]
    assert out["signed"] and out["lane_bits"] == 16
    golden = folder / "vectors" / "layer33" / "out.hex"
    lines = golden.read_text().splitlines()
    data = [i for i, line in enumerate(lines) if not line.startswith("//")]
    want = int(lines[data[2]][-4:], 16)
    lines[data[2]] = lines[data[2]][:-4] + "ffff"  # channel 0 of pixel 2 = -1 in signed 16 bits
    golden.write_text("\n".join(lines) + "\n")
    result = _run(folder)
    assert result.returncode != 0
    line = f"MISMATCH tile 0 otile 0 pixel (n=0, y=0, x=2) channel 0 expected -1 got {want}"
    assert line in result.stdout, result.stdout
    log = tmp_path / "sim.log"
    log.write_text(result.stdout)
    (diff,) = compare(folder, log).files[0].diffs
    assert (diff.expected, diff.got) == (-1, want)


# ---- item 9: a missing simulator ----


def test_script_without_icarus_names_it_and_exits_2(rendered: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(rendered, "course33", tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "grep"):  # what the script needs besides Icarus
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir)}
    result = _run(folder, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "command not found" not in result.stderr
    assert "error: iverilog vvp not found on PATH" in result.stderr
    assert "apt-get install iverilog" in result.stderr
    assert "brew install icarus-verilog" in result.stderr
    assert not (folder / "tb.vvp").exists()


@needs_iverilog
def test_script_without_vvp_names_vvp(rendered: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(rendered, "course33", tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "grep", "iverilog"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    result = _run(folder, env={**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 2
    assert "error: vvp not found on PATH" in result.stderr


# ---- item 12: the built-in systolic profile ----


def test_systolic_psums_hold_the_worst_case_of_every_built_in_layer_it_tiles() -> None:
    p = load_profile("systolic")
    x_max, w_min = 2**p.act_bits - 1, -(2 ** (p.w_bits - 1))  # the widest values its lanes take
    checked = 0
    for name, arch in BUILTIN.items():
        for index in arch.qconv_indices():
            conv = arch.features[index]
            if (conv.kernel, conv.stride, conv.padding) != (3, 1, 1):
                continue
            # one input-channel tile's psum sums at most `rows` channels x 9 taps
            bound = min(conv.in_channels, p.rows) * 9 * x_max * -w_min
            assert smallest_signed_bits(-bound, bound) <= p.psum_bits, (name, index, bound)
            checked += 1
    assert checked >= 40


@pytest.mark.sim
@needs_iverilog
def test_headline_layer_testbench_on_the_systolic_profile_passes(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    result = CliRunner().invoke(main, ["testbench", "--layer", "33", "--profile", "systolic", "-o", str(out)])
    assert result.exit_code == 0, result.output
    run = _run(out)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS layer 33: 256 output values match" in run.stdout  # 16 lanes, 8 of them padding


@pytest.mark.slow
def test_dump_on_the_systolic_profile_works_for_every_layer_it_tiles(tmp_path: Path) -> None:
    arch = BUILTIN[DEFAULT_MODEL]
    layers = [i for i in arch.qconv_indices() if i != 0]  # layer 0's normalised image is negative
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["dump", "--layer", ",".join(map(str, layers)), "--profile", "systolic", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(next(out.rglob("manifest.json")).read_text())
    assert [entry["index"] for entry in manifest["layers"]] == layers
    shutil.rmtree(out)  # some 250 MB of vectors


def test_layer_0_is_refused_for_its_negative_input_not_its_psums(tmp_path: Path) -> None:
    args = ["dump", "--layer", "0", "--profile", "systolic", "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "unsigned 4-bit" in result.output and "overflow" not in result.output


def test_a_narrow_custom_profile_shows_psum_overflow(tmp_path: Path) -> None:
    text = re.sub(r"(?m)^psum_bits = \d+.*$", "psum_bits = 8", load_profile("systolic").source)
    narrow = tmp_path / "narrow.toml"
    narrow.write_text(text.replace('name = "systolic"', 'name = "narrow"'))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["dump", "--layer", "30", "--profile", str(narrow), "-o", str(out)])
    assert result.exit_code == 2, result.output
    message = "need 10 bits signed; the narrow core's 8-bit psums are too narrow; use a profile with"
    assert message in result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.sim
@needs_iverilog
def test_a_run_leaves_the_set_as_written_so_check_still_passes(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    assert CliRunner().invoke(main, ["testbench", "--layer", "33", "-o", str(out)]).exit_code == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    run = _run(out)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # no tb.vvp left behind
    result = CliRunner().invoke(main, ["check", str(out)])
    assert result.exit_code == 0, result.output
