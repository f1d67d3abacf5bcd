"""bench/run.py --quick runs to the end: every section prints and every correctness cross-check holds.

Speed is not asserted: the script's PASS/FAIL target lines are informative and never change its exit
code; it exits non-zero only when a cross-check fails (e.g. our packed text differs from bitstring's).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench" / "run.py"
SECTION_HEADERS = (
    "== 1. Packing throughput ==",
    "== 2. Whole-model export ==",
    "== 3. CLI start-up ==",
    "== 4. Reference conv ==",
    "== 5. Decoding throughput ==",
    "== 6. Compare at scale ==",
    "== 7. Integer inference ==",
    "== 8. Thousands of small files ==",
    "== Summary ==",
)


@pytest.mark.slow
def test_bench_quick_runs_every_section(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,  # --quick takes ~40 s on 2 cores; this only stops a hang
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    missing = [header for header in SECTION_HEADERS if header not in result.stdout]
    assert not missing, result.stdout
