"""capture hands integerize every value it needs; a layer's identity is its module path."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from torch import nn

from qexport.api import LayerInfo, SourceOptions, layers
from qexport.frontend.capture import LayerTensors, capture
from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.vgg import BUILTIN
from qexport.ir.integerize import integerize


@pytest.fixture(scope="module")
def captured() -> list[LayerTensors]:
    return capture(demo_model(BUILTIN["VGG16_quant_gradual"]), load_demo("0").images)


def test_layer_tensors_hold_values_not_modules(captured: list[LayerTensors]) -> None:
    for t in captured:
        for f in fields(t):
            assert not isinstance(getattr(t, f.name), nn.Module), f"{t.name}.{f.name} is a module"
    t = next(t for t in captured if t.layer == 33)
    assert (t.name, t.conv_number, t.in_channels, t.out_channels) == ("features.33", 10, 8, 8)
    assert (t.kernel, t.stride, t.padding, t.w_bit, t.act_bit, t.act_clip) == (3, 1, 1, 4, 4, "course")
    assert isinstance(t.act_alpha, float) and isinstance(t.wgt_alpha, float)
    assert t.next_x is not None and t.next_act_bit == 4 and isinstance(t.next_act_alpha, float)


def test_integerize_needs_only_the_captured_values(captured: list[LayerTensors]) -> None:
    # the same values in a fresh LayerTensors (no model anywhere) give the same integers
    t = next(t for t in captured if t.layer == 33)
    copy = LayerTensors(**{f.name: getattr(t, f.name) for f in fields(t)})
    a, b = integerize(t), integerize(copy)
    assert a.name == b.name == "features.33" and a.layer == 33
    assert torch.equal(torch.from_numpy(a.x_int), torch.from_numpy(b.x_int))
    assert a.next_x_int is not None and b.next_x_int is not None
    assert (a.next_x_int == b.next_x_int).all() and (a.w_int == b.w_int).all()


def test_layer_info_is_derived_from_the_captured_layer(captured: list[LayerTensors]) -> None:
    _, infos = layers(SourceOptions())
    assert [i.name for i in infos] == [t.name for t in captured]
    info, t = infos[10], captured[10]
    assert info == LayerInfo.of(t)
    assert (info.layer, info.act_alpha, info.input_shape, info.output_shape) == (
        33,
        t.act_alpha,
        (8, 4, 4),
        (8, 4, 4),
    )
