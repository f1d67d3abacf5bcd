from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from torch import nn

from qexport import api
from qexport.errors import InputError
from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.vgg import BUILTIN
from qexport.infer import InferReport, infer_network, vgg_chains
from qexport.ir.sfu import Thresholds
from tests.helpers import course_checkpoint


def _assert_exact(report: InferReport, images: int) -> None:
    assert report.images == images
    for layer in report.layers[:-1]:
        assert layer.values > 0
        # every difference from the float model's own x_int is within float32 rounding of a threshold
        assert layer.differ == layer.near, layer.label
    assert report.unexplained == 0
    assert report.top1_agree == images


@pytest.mark.parametrize("model", ["VGG16_quant_gradual", "VGG16_quant"], ids=["gradual", "vgg16"])
def test_demo_runs_in_integers_as_the_float_model(model: str) -> None:
    _, report = api.infer(api.SourceOptions(model=model, images="0:32"))
    _assert_exact(report, 32)
    assert report.layers[-1].next is None
    assert report.layers[0].between[:2] == ("batchnorm", "relu")


def test_course_checkpoint_runs_in_integers_as_the_float_model(tmp_path: Path) -> None:
    ckpt = course_checkpoint(tmp_path / "c.pth")
    _, report = api.infer(api.SourceOptions(checkpoint=ckpt, images="0:16"), batch_size=8)
    _assert_exact(report, 16)
    gradual = dict((c.name, c.between) for c in vgg_chains(demo_model(BUILTIN["VGG16_quant_gradual"]))[0])
    assert gradual["features.33"] == ("relu",)  # the squeeze conv without BatchNorm


def test_a_wrong_threshold_shows_as_unexplained_differences(monkeypatch: pytest.MonkeyPatch) -> None:
    # the comparison is not vacuous: thresholds 3 psums too high disagree with the float model
    import qexport.infer.run as run

    exact = run.thresholds

    def shifted(*args: object) -> Thresholds:
        t = exact(*args)  # type: ignore[arg-type]
        return replace(t, thresholds=t.thresholds + 3 * t.direction[:, None])

    monkeypatch.setattr(run, "thresholds", shifted)
    report = infer_network(demo_model(BUILTIN["VGG16_quant_gradual"]), load_demo("0:2").images)
    assert report.unexplained > 0
    assert report.layers[0].differ > report.layers[0].near


def test_an_op_the_sfu_cannot_express_is_named() -> None:
    model = demo_model(BUILTIN["VGG16_quant_gradual"])
    model.features[2] = nn.Sigmoid()
    with pytest.raises(InputError, match=r"features\.2 \(Sigmoid\) lies between quantized convs features\.0"):
        vgg_chains(model)


def test_a_model_that_is_not_vgg_is_refused() -> None:
    with pytest.raises(InputError, match="VGG-style"):
        vgg_chains(nn.Sequential(nn.Conv2d(3, 3, 3)))
