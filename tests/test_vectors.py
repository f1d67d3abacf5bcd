"""The committed vector sets regenerate byte for byte from their recipes (`qexport check`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from qexport.check import check_set
from qexport.cli import main

ROOT = Path(__file__).resolve().parent.parent
SETS = sorted(p for p in (ROOT / "vectors").iterdir() if (p / "manifest.json").is_file())


def test_there_are_sets() -> None:
    assert len(SETS) >= 14


@pytest.mark.slow
@pytest.mark.parametrize("folder", SETS, ids=[p.name for p in SETS])
def test_committed_set_is_reproduced(folder: Path) -> None:
    result = check_set(folder, base=ROOT)
    assert result.identical, "\n".join(result.problems)


def test_check_names_the_first_differing_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    copy = tmp_path / "set"
    shutil.copytree(ROOT / "vectors" / "gradual33_flat_hex", copy)
    path = copy / "layer33" / "psum.hex"
    lines = path.read_text().splitlines()
    # one psum a word over (n, h, w, c): word 9 = pixel (y=0, x=1), channel 1
    lines[3 + 9] = f"{int(lines[3 + 9], 16) ^ 0b100:04x}"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["check", str(copy)])
    assert result.exit_code == 1
    assert (
        "layer33/psum.hex: 1 value(s) differ; first: word 9 lane 0 at layer=33, n=0, y=0, x=1, channel=1"
        in (result.output)
    )
