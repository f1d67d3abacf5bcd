"""Issue 17 item 8: the output- and input-stationary sets (`course-os`, `systolic-is`) through their
shipped reference cores (qexport_ref_core_os.v, qexport_ref_core_is.v) in Icarus and Verilator,
with the weight-stationary testbench's contract: 0 PASS, 1 FAIL naming tile / pass / pixel /
channel / expected / got."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from qexport import api
from qexport.api import SourceOptions
from qexport.errors import InputError
from qexport.frontend.capture import LayerTensors
from qexport.layout.profile import load_profile, parse_profile

pytestmark = pytest.mark.sim  # no skip: CI installs Icarus and Verilator; missing, these fail

_CORE = {"course-os": "qexport_ref_core_os.v", "systolic-is": "qexport_ref_core_is.v"}


def _run(folder: Path, simulator: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(folder / f"run_{simulator}.sh")], capture_output=True, text=True)


@pytest.fixture
def synthetic_layer(monkeypatch: pytest.MonkeyPatch) -> Callable[..., LayerTensors]:
    """Make layer 33 of the demo model a synthetic conv (channels, side, images of our choosing)."""
    from helpers import conv_tensors

    def use(c_in: int, c_out: int, side: int, images: int) -> LayerTensors:
        t = conv_tensors(c_in, c_out, side, 3, 1, 1, images=images, name="features.33", layer=33)
        monkeypatch.setattr(api, "capture", lambda model, images, device=None, bits=None: [t])
        return t

    return use


def _flip_lane0(golden: Path, line: int) -> tuple[int, int]:
    """Flip bit 0 of lane 0 (the rightmost hex digit: $readmemh puts it at bit 0) of data line
    ``line``; return that 16-bit signed lane's value before and after."""
    lines = golden.read_text().splitlines()
    data = [i for i, text in enumerate(lines) if not text.startswith("//")]
    word = int(lines[data[line]], 16)
    lines[data[line]] = f"{word ^ 1:0{len(lines[data[line]])}x}"
    golden.write_text("\n".join(lines) + "\n")

    def signed(v: int) -> int:
        return v - (1 << 16) if v & 0x8000 else v

    return signed(word & 0xFFFF), signed((word ^ 1) & 0xFFFF)


# (case id, the synthetic conv (c_in, c_out, side, images) or None for the demo layer, layer,
# output values compared)
CASES = [
    ("demo-33", None, 33, 16 * 8),  # 8 -> 8 channels, 4x4: one tile, 2 passes
    ("demo-27", None, 27, 32 * 16),  # 128 -> 32: 16 input tiles (IS), 4 output tiles
    ("multi-tile", (16, 16, 4, 2), 33, 2 * 16 * 16),  # 2 input, 2 output, 2 spatial tiles (images)
]
SIMULATORS = ["iverilog", "verilator"]
RUNS = [
    pytest.param(profile, case, sim, id=f"{profile}-{case[0]}-{sim}")
    for profile in _CORE
    for case in CASES
    for sim in SIMULATORS
    if not (sim == "verilator" and case[0] == "demo-27")  # a Verilator build a case; 27 adds no path
]


@pytest.mark.parametrize(("profile", "case", "simulator"), RUNS)
def test_streamed_sets_pass_through_their_core_and_a_flipped_golden_bit_fails(
    tmp_path: Path,
    synthetic_layer: Callable[..., LayerTensors],
    profile: str,
    case: tuple[str, tuple[int, int, int, int] | None, int, int],
    simulator: str,
) -> None:
    name, conv, layer, values = case
    if conv is not None:
        synthetic_layer(*conv)
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), layer, out, profile, "hex")
    assert (out / _CORE[profile]).is_file() and not (out / "qexport_ref_core.v").exists()
    result = _run(out, simulator)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS layer {layer}: {values} output values match" in result.stdout
    if simulator == "verilator" and name != "multi-tile":
        return  # one more Verilator build for the flipped bit is spent on the multi-tile case

    # the last tile's second pass and output tile: the decode of pass, line and lane is checked
    tile, otile = (1, 1) if name == "multi-tile" else (0, 1) if name == "demo-27" else (0, 0)
    golden = out / "vectors" / f"layer{layer}" / f"out_tile{tile}_pass1_otile{otile}.hex"
    before, after = _flip_lane0(golden, 2)
    # README: course-os golden line r = pixel 8p+r, lane = oc; systolic-is line = oc, lane col = pixel 8p+col
    pixel, channel = (8 + 2, otile * 8) if profile == "course-os" else (8 + 0, otile * 8 + 2)
    failed = _run(out, simulator)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    n = tile  # one spatial tile an image in these layers: tile s is image s
    want = (
        f"MISMATCH tile {tile} pass 1 otile {otile} pixel (n={n}, y={pixel // 4}, x={pixel % 4}) "
        f"channel {channel} expected {after} got {before}"
    )
    assert want in failed.stdout, failed.stdout
    assert len(re.findall("^MISMATCH", failed.stdout, re.M)) == 1
    assert f"FAIL layer {layer}: 1 of {values} output values differ" in failed.stdout


@pytest.mark.parametrize("profile", list(_CORE))
def test_streamed_testbench_has_no_cocotb_files_and_reads_the_files_the_manifest_lists(
    tmp_path: Path, profile: str
) -> None:
    import json

    out = tmp_path / "tb"
    api.testbench(SourceOptions(), 33, out, profile, "hex")
    assert not (out / "cocotb_tb.py").exists() and not (out / "run_cocotb.sh").exists()
    tb = (out / "tb.sv").read_text()
    read = set(re.findall(r'"(vectors/layer33/[^"]+)"', tb))
    (layer,) = json.loads((out / "manifest.json").read_text())["layers"]
    assert read == {f["path"] for f in layer["files"]}  # every file, each activation / weight / golden
    assert f"{_CORE[profile].removesuffix('.v')} #(" in tb


def test_streamed_vcd_dumps_the_cores_signals(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), 33, out, "course-os", "hex", vcd=True)
    result = subprocess.run(
        ["bash", str(out / "run_iverilog.sh")], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    vcd = (tmp_path / "tb.vcd").read_text()
    assert re.findall(r"\$scope module (\S+) \$end", vcd)[:2] == ["tb", "dut"]
    signals = set(re.findall(r"\$var \w+ \d+ \S+ (\w+)", vcd))
    assert {
        "clk",
        "clear",
        "start",
        "done",
        "act_data",
        "w_line",
        "w_data",
        "out_addr",
        "out_data",
    } <= signals
    assert "--trace" in (out / "run_verilator.sh").read_text()


def test_a_renamed_streamed_profile_is_driven_and_another_layout_is_refused(tmp_path: Path) -> None:
    text = load_profile("course-os").source.replace('name = "course-os"', 'name = "mine"')
    renamed = parse_profile(text.replace('"out_tile{s}_pass{p}_otile{o}"', '"gold_s{s}_p{p}_o{o}"'), "mine")
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), 33, out, renamed, "hex")
    assert "layer33/gold_s0_p1_o0.hex" in (out / "tb.sv").read_text()
    assert _run(out, "iverilog").returncode == 0

    swapped = parse_profile(text.replace('lines = ["ic", "kij"]', 'lines = ["kij", "ic"]'), "mine")
    with pytest.raises(
        InputError, match=r"profile mine: its \[files.activation\] is not the course-os layout"
    ):
        api.testbench(SourceOptions(), 33, tmp_path / "other", swapped, "hex")


@pytest.mark.parametrize("profile", ["course-os", "systolic-is"])
def test_the_sfu_stage_on_a_streamed_profile_is_refused(tmp_path: Path, profile: str) -> None:
    out = tmp_path / "tb"
    with pytest.raises(
        InputError, match=r"testbench --sfu: profile .* the SFU stage is rendered for weight-stationary"
    ):
        api.testbench(SourceOptions(), 33, out, profile=profile, sfu=True)
    assert not out.exists()
