"""Build a set's DUT with cocotb's runner and run its cocotb test (on Icarus)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from qexport.errors import InputError

# Verilator is not here yet: built by cocotb's runner, qexport_ref_core never leaves time 0
SIMULATORS = ("icarus",)
TOPLEVEL = "qexport_ref_core"


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
    with tempfile.TemporaryDirectory(prefix="qexport-cocotb-") as build:
        runner.build(
            sources=[folder / name for name in sources],
            hdl_toplevel=TOPLEVEL,
            parameters=dict(parameters),
            build_dir=build,
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
