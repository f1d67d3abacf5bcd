"""The CLI on the issue-15 checkpoint variants: `layers` in forward order with conv numbers and
the float stem, `--layer` by module path, `--skip-invalid`, and the rendered testbench of a
stride-2 and a 1x1 layer run in Icarus."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import course_checkpoint
from variant_checkpoints import ResNetVariant, resnet_state, write_checkpoint

from qexport.cli.main import main


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "r.pth.tar"
    return write_checkpoint(path, resnet_state(ResNetVariant(widths=(8, 16, 48))))


def test_layers_lists_module_paths_in_forward_order(resnet: Path) -> None:
    result = CliRunner().invoke(main, ["layers", "--checkpoint", str(resnet)])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[2:] if not line.startswith("#")]
    assert rows[0][:2] == ["conv1", "-"] and "float nn.Conv2d (no alphas): not exported" in result.output
    names = [r[0] for r in rows[1:]]
    assert names[:4] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
    assert names[6:9] == ["layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0"]
    assert [int(r[1]) for r in rows[1:]] == list(range(20))
    down = rows[1 + names.index("layer2.0.downsample.0")]
    assert down[2:5] == ["8", "16", "1/2/0"] and down[-1] == "16x16x16"


def test_dump_and_verify_by_module_path(resnet: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "d"
    args = ["dump", "--checkpoint", str(resnet), "--layer", "layer2.0.downsample.0", "-o", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "layer(s) layer2.0.downsample.0 of resnet20" in result.output
    assert (out / "layer2.0.downsample.0" / "weight.hex").is_file()
    verify = runner.invoke(main, ["verify", "--checkpoint", str(resnet), "--layer", "layer2.0.conv1"])
    assert verify.exit_code == 0, verify.output
    assert "layer2.0.conv1" in verify.output and "PASS" in verify.output


def test_skip_invalid_flag_on_dump_and_verify(tmp_path: Path) -> None:
    def negative(sd: dict[str, torch.Tensor]) -> None:
        sd["features.30.act_alpha"] = torch.tensor(-1.0)

    path = course_checkpoint(tmp_path / "neg.pth.tar", "VGG16_quant_squeeze", mutate=negative)
    runner = CliRunner()
    refused = runner.invoke(main, ["dump", "--checkpoint", str(path), "--all", "-o", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "features.30" in refused.output and "--skip-invalid" in refused.output
    args = ["dump", "--checkpoint", str(path), "--all", "--skip-invalid", "-o", str(tmp_path / "b")]
    skipped = runner.invoke(main, args)
    assert skipped.exit_code == 0, skipped.output
    assert "left out 5 layer(s) that cannot be exported: features.30, features.32" in skipped.output
    assert "for layer(s) 0, 3, 7, 10, 14, 17, 20, 24, 27 of" in skipped.output
    assert runner.invoke(main, ["verify", "--checkpoint", str(path)]).exit_code == 2
    verify = runner.invoke(main, ["verify", "--checkpoint", str(path), "--skip-invalid"])
    assert verify.exit_code == 0, verify.output
    assert "all 9 layers pass" in verify.output
    assert "--skip-invalid" in runner.invoke(main, ["verify", "--help"]).output


@pytest.mark.sim
@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not installed")
@pytest.mark.parametrize(
    ("layer", "values"), [("layer2.0.conv1", 16 * 16 * 16), ("layer2.0.downsample.0", 16 * 16 * 16)]
)
def test_testbench_of_a_strided_and_a_1x1_layer_passes_in_icarus(
    resnet: Path, tmp_path: Path, layer: str, values: int
) -> None:
    out = tmp_path / "tb"
    args = ["testbench", "--checkpoint", str(resnet), "--layer", layer, "--profile", "course", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    run = subprocess.run(["bash", str(out / "run_iverilog.sh")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"PASS layer {layer}: {values} output values match" in run.stdout
