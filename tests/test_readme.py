"""README's description of the course files' header tokens matches the files (issue 13 item 21)."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from qexport.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


def test_readme_names_the_third_token_as_the_file_name_not_always_out() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "`#layer<L>_<file name without .txt>#`" in readme
    assert (
        "(`#qexport_0.1.0_do_not_edit#`, `#VGG16_quant_gradual_demo_untrained#`, `#layer33_out#`)"
        not in readme
    )


def test_every_course_file_opens_with_the_tokens_readme_describes(tmp_path: Path) -> None:
    out = tmp_path / "set"
    result = CliRunner().invoke(main, ["dump", "--layer", "33", "--profile", "course", "-o", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted((out / "layer33").glob("*.txt"))
    assert len(files) == 12  # activation, 9 weights, address table, out
    for path in files:
        head = path.read_text().splitlines()[:3]
        if path.name == "acc_address.txt":  # no header: the course testbench reads it bare
            assert not head[0].startswith("#")
            continue
        assert re.fullmatch(r"#qexport_[0-9.]+_do_not_edit#", head[0]), path.name
        assert head[1] == "#VGG16_quant_gradual_demo_untrained#", path.name
        assert head[2] == f"#layer33_{path.stem}#", path.name
