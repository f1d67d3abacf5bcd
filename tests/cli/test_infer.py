from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qexport.cli.main import main


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_infer_json_parses_and_agrees(runner: CliRunner) -> None:
    result = runner.invoke(main, ["infer", "--images", "0:2", "--json", "--min-agreement", "1.0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["model"] == "VGG16_quant_gradual"
    assert report["images"] == 2
    assert report["top1_agreement"] == 1.0
    assert report["unexplained_differences"] == 0
    assert [layer["label"] for layer in report["layers"]][:3] == ["0", "4", "7"]


def test_infer_table_and_min_agreement_exit_code(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(main, ["infer", "--images", "0:2"])
    assert result.exit_code == 0, result.output
    assert "top-1 agreement with the float model: 2/2 (100.00%)" in result.output
    assert "float tail" in result.output
    # an agreement below the bar exits 1 after printing the report
    import qexport.infer.run as run

    real = run.InferReport.agreement
    monkeypatch.setattr(run.InferReport, "agreement", property(lambda self: 0.5 * real.fget(self)))  # type: ignore[attr-defined]
    result = runner.invoke(main, ["infer", "--images", "0:2", "--min-agreement", "0.9"])
    assert result.exit_code == 1
    assert "below --min-agreement 0.9" in result.output
    assert "top-1 agreement with the float model" in result.output
