"""Issue 16 item 6: `qexport testbench --sfu` checks each tile's `requant` in the simulator.

The reference core's pre-ReLU sums (psum_data) go through qexport_ref_sfu.v, tb.sv max-pools the
thresholded x_int and compares them with the requant files: PASS on the demo's layer 33 and on a
test-built layer whose BatchNorm makes thresholds negative (and directions -1 and 0), a flipped
requant bit FAILs naming tile, pixel and channel.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from qexport import api
from qexport.api import SourceOptions
from qexport.cli.main import main
from qexport.frontend.models.vgg import Arch, _from_cfg
from qexport.verify.check import check_set
from qexport.verify.compare import compare
from qexport.verify.decode import decode_file
from qexport.writer.manifest import loads

pytestmark = pytest.mark.sim
needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not installed")

# conv 3 -> 8, conv 8 -> 8 (features.3), BN, ReLU, max-pool 2, conv 8 -> 8: features.3 on the
# course core is 64 tiles of 4x4 pixels, each pooled to 2x2 requant pixels
SMALL: Arch = _from_cfg("tb_sfu", [8, 8, "M", 8, "M", "M", "M", "M"])


def _run(folder: Path, script: str = "run_iverilog.sh") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(folder / script)], capture_output=True, text=True)


def _flip(path: Path, word: int) -> None:
    lines = path.read_text().splitlines()
    data = [i for i, line in enumerate(lines) if not line.startswith("//")]
    lines[data[word]] = f"{int(lines[data[word]], 16) ^ 1:0{len(lines[data[word]])}x}"
    path.write_text("\n".join(lines) + "\n")


def _negative_bn(sd: dict[str, object]) -> None:
    """features.4 (the BatchNorm after features.3): a large beta (thresholds below 0), negative
    gamma (direction -1) and a zero gamma (a constant channel)."""
    import torch

    gamma, beta = sd["features.4.weight"], sd["features.4.bias"]
    assert isinstance(gamma, torch.Tensor) and isinstance(beta, torch.Tensor)
    beta[0:3] = 1.5
    gamma[3:5] = -gamma[3:5]
    gamma[5], beta[5] = 0.0, 1.0


@needs_icarus
def test_layer_33_sfu_stage_passes_and_a_flipped_requant_bit_fails(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    result = CliRunner().invoke(main, ["testbench", "--layer", "33", "--sfu", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "qexport_ref_sfu.v" in result.output
    assert (out / "qexport_ref_sfu.v").is_file()
    tb = (out / "tb.sv").read_text()
    assert "localparam POOL = 1;" in tb  # features.33 -> ReLU -> features.35: no pool
    assert ".psum_data(psum_data)" in tb
    run = _run(out)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS layer 33: 128 output values match, 128 requant values match" in run.stdout
    # the log still reads as a testbench log, and `check` makes the set again byte for byte
    log = tmp_path / "pass.log"
    log.write_text(run.stdout)
    assert compare(out, log).identical
    checked = check_set(out, tmp_path)
    assert checked.identical, checked.problems

    # requant word 6 = pixel (y=1, x=2) of the tile; bit 0 = lane (channel) 0
    requant = out / "vectors" / "layer33" / "requant_tile0_otile0.hex"
    words = [line for line in requant.read_text().splitlines() if not line.startswith("//")]
    want = int(words[6], 16) & 0xF
    _flip(requant, 6)
    failed = _run(out)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert (
        f"MISMATCH requant tile 0 otile 0 pixel (n=0, y=1, x=2) channel 0 expected {want ^ 1} got {want}"
        in failed.stdout
    )
    assert "FAIL layer 33: 1 of 128 requant values differ (0 of 128 output values differ)" in failed.stdout
    assert "MISMATCH tile" not in failed.stdout  # the conv stage still passes


@needs_icarus
def test_negative_thresholds_pass_from_the_pre_relu_sums_and_fail_from_relu(tmp_path: Path) -> None:
    from helpers import course_checkpoint

    checkpoint = course_checkpoint(tmp_path / "bn.pth", SMALL, mutate=_negative_bn)
    out = tmp_path / "tb"
    api.testbench(SourceOptions(checkpoint=checkpoint), 3, out, "course", "hex", sfu=True)
    (entry,) = loads((out / "manifest.json").read_text()).layers
    assert entry.between == ("batchnorm", "relu", "maxpool2")
    by_tensor = {f.tensor: f for f in entry.files}
    thresholds = decode_file(out / by_tensor["threshold"].path, by_tensor["threshold"])  # (t, c)
    direction = decode_file(out / by_tensor["direction"].path, by_tensor["direction"])
    assert (thresholds < 0).any()
    assert set(direction.tolist()) == {-1, 0, 1}
    assert "localparam POOL = 2;" in (out / "tb.sv").read_text()
    run = _run(out)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS layer 3: 8192 output values match, 2048 requant values match" in run.stdout

    # the same SFU fed ReLU(psum), as out_data carries it, gets some requant values wrong: this
    # layer is one where the pre-ReLU port matters
    core = out / "qexport_ref_core.v"
    text = core.read_text()
    raw = "assign psum_next[lane*PSUM_BITS +: PSUM_BITS] = raw[PSUM_BITS-1:0];"
    assert raw in text
    relu_raw = "(raw < 0) ? {PSUM_BITS{1'b0}} : raw[PSUM_BITS-1:0]"
    core.write_text(text.replace(raw, raw.replace("raw[PSUM_BITS-1:0]", relu_raw)))
    relu = _run(out)
    assert relu.returncode == 1, relu.stdout + relu.stderr
    assert "MISMATCH requant tile" in relu.stdout and "requant values differ (0 of 8192" in relu.stdout


def test_sfu_needs_a_next_conv(tmp_path: Path) -> None:
    from helpers import course_checkpoint

    # features.7 is SMALL's last conv: nothing reads its output through thresholds
    checkpoint = course_checkpoint(tmp_path / "small.pth", SMALL)
    args = ["testbench", "--checkpoint", str(checkpoint), "--layer", "7", "--sfu", "-o", str(tmp_path / "tb")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "testbench --sfu: layer 7 (features.7) has no SFU files to check" in result.output
    assert "choose a VGG layer with a next conv" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "tb").exists()


def test_without_sfu_no_sfu_file_or_port(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), 33, out)
    assert not (out / "qexport_ref_sfu.v").exists()
    assert "psum_data" not in (out / "qexport_ref_core.v").read_text()
    assert "requant" not in (out / "tb.sv").read_text()
    committed = Path(__file__).parents[2] / "vectors" / "gradual33_testbench"
    for name in ("tb.sv", "qexport_ref_core.v", "run_iverilog.sh", "run_verilator.sh"):
        assert (out / name).read_bytes() == (committed / name).read_bytes(), name
    names = {f.tensor for layer in loads((out / "manifest.json").read_text()).layers for f in layer.files}
    assert not names & {"threshold", "direction", "requant"}


def test_sfu_under_verilator(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    api.testbench(SourceOptions(), 33, out, "course", "hex", sfu=True)
    run = _run(out, "run_verilator.sh")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS layer 33: 128 output values match, 128 requant values match" in run.stdout
    _flip(out / "vectors" / "layer33" / "requant_tile0_otile0.hex", 0)
    failed = _run(out, "run_verilator.sh")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "MISMATCH requant tile 0 otile 0 pixel (n=0, y=0, x=0) channel 0" in failed.stdout
