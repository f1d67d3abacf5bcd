from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from torch import nn

from qexport import api
from qexport.cli.main import main
from qexport.errors import InputError
from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.resnet import RESNET_BUILTIN
from qexport.infer import infer_network
from qexport.infer.resnet import resnet_blocks
from qexport.ir.fixed_point import FixedPointWidths
from tests.variant_checkpoints import ResNetVariant, resnet_state, write_checkpoint


def test_demo_resnet_meets_the_targets_at_the_default_widths() -> None:
    _, report = api.infer(api.SourceOptions(model="resnet20_quant", images="0:32"))
    assert report.fixed_point == FixedPointWidths().as_dict()
    assert report.images == 32
    assert report.x_int_equal_sfu >= 0.995
    assert report.x_int_equal >= 0.995
    assert report.agreement >= 0.99
    rows = {(r.name, r.next): r for r in report.layers}
    # inside a block: thresholds, exact up to float32 rounding
    inner = rows[("layer1.0.conv1", "layer1.0.conv2")]
    assert inner.sfu == "thresholds" and inner.differ == inner.near
    # a block's end feeds the next block's conv1 and its downsample
    assert rows[("layer1.2.conv2", "layer2.0.downsample.0")].sfu == "fixed_point"
    assert rows[("layer2.0.conv2", "layer2.1.conv1")].between == (
        "batchnorm",
        "add layer2.0.downsample.0",
        "relu",
    )
    assert report.layers[-1].next is None


def test_too_few_fractional_bits_show_as_differences() -> None:
    # the comparison is not vacuous: an accumulator without fractional bits disagrees
    model = demo_model(RESNET_BUILTIN["resnet20_quant"])
    coarse = infer_network(model, load_demo("0:4").images, widths=FixedPointWidths(frac_bits=0, mult_bits=6))
    fine = infer_network(model, load_demo("0:4").images)
    assert coarse.x_int_equal_sfu < 0.99 < fine.x_int_equal_sfu


@pytest.mark.parametrize(
    "variant",
    [ResNetVariant(blocks=1), ResNetVariant(blocks=1, stem="quant", without_bn2=("layer2.0",))],
    ids=["float-stem", "quant-stem-without-bn2"],
)
def test_course_resnet_checkpoint_runs_in_integers(tmp_path: Path, variant: ResNetVariant) -> None:
    ckpt = write_checkpoint(tmp_path / "r.pth", resnet_state(variant))
    _, report = api.infer(api.SourceOptions(checkpoint=ckpt, images="0:16"), batch_size=8)
    assert report.images == 16
    assert report.x_int_equal_sfu >= 0.995
    assert report.x_int_equal >= 0.995
    assert report.agreement >= 0.99
    names = [(r.name, r.next) for r in report.layers]
    if variant.stem == "quant":
        assert names[0] == ("conv1", "layer1.0.conv1")
    assert ("layer2.0.conv2", "layer3.0.downsample.0") in names


def test_an_op_the_fixed_point_sfu_cannot_express_is_named() -> None:
    model = demo_model(RESNET_BUILTIN["resnet20_quant"])
    model.layer2[1].bn1 = nn.Sigmoid()
    with pytest.raises(
        InputError,
        match=r"layer2\.1\.bn1 \(Sigmoid\) lies between quantized convs "
        r"layer2\.1\.conv1 and layer2\.1\.conv2",
    ):
        resnet_blocks(model)
    model = demo_model(RESNET_BUILTIN["resnet20_quant"])
    model.layer1[0].conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    with pytest.raises(
        InputError, match=r"layer1\.0\.conv2 \(Conv2d\) lies where a quantized conv is expected"
    ):
        infer_network(model, load_demo("0:1").images)


def test_cli_resnet_min_agreement_exit_codes() -> None:
    runner = CliRunner()
    ok = runner.invoke(
        main, ["infer", "--model", "resnet20_quant", "--images", "0:4", "--min-agreement", "0.99"]
    )
    assert ok.exit_code == 0, ok.output
    assert "fixed point: mult_bits 28" in ok.output
    assert "layer2.0.downsample.0" in ok.output
    bad = runner.invoke(
        main,
        [
            "infer",
            "--model",
            "resnet20_quant",
            "--images",
            "0:4",
            "--frac-bits",
            "0",
            "--mult-bits",
            "3",
            "--min-agreement",
            "1.0",
        ],
    )
    assert bad.exit_code == 1, bad.output
    assert "below --min-agreement 1.0" in bad.output
    narrow = runner.invoke(
        main, ["infer", "--model", "resnet20_quant", "--images", "0:2", "--skip-bits", "4"]
    )
    assert narrow.exit_code == 2
    assert "the shortcut reaches" in narrow.output and "try --skip-bits" in narrow.output


def test_fixed_point_rows_say_which_differences_are_float_rounding() -> None:
    # 8 fractional bits: most differences are the accumulator's width, a few sit within float32
    # rounding of the half-step the float model rounds (both kinds, neither all)
    model = demo_model(RESNET_BUILTIN["resnet20_quant"])
    report = infer_network(model, load_demo("0:4").images, widths=FixedPointWidths(frac_bits=8))
    fixed = [r for r in report.layers if r.sfu == "fixed_point" and r.next is not None]
    differ, near = sum(r.differ for r in fixed), sum(r.near for r in fixed)
    assert 0 < near < differ
    assert report.unexplained == sum(r.differ - r.near for r in report.layers) > 0
