"""The course quantized conv: which modules of a model count as one (``quantized_convs``)."""

from __future__ import annotations

import torch
from torch import nn

from qexport.frontend.models.network import quantized_convs
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.resnet import RESNET_BUILTIN, ResNetArch, build_resnet
from qexport.frontend.models.vgg import BUILTIN, build_model


def test_a_vgg_lists_its_quantized_convs_by_features_path() -> None:
    arch = BUILTIN["VGG16_quant_gradual"]
    convs = quantized_convs(build_model(arch))
    assert [path for path, _ in convs] == [f"features.{i}" for i in arch.qconv_indices()]
    assert all(isinstance(m, QuantConv2d) for _, m in convs)


def test_a_resnet_lists_its_quantized_convs_in_forward_order_without_a_float_stem() -> None:
    arch = RESNET_BUILTIN["resnet20_quant"]
    paths = [path for path, _ in quantized_convs(build_resnet(arch))]
    assert paths == arch.qconv_names()
    assert paths[:4] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
    assert "layer2.0.downsample.0" in paths and "conv1" not in paths  # the built-in stem is float
    quant_stem = ResNetArch("resnet20_quant", stem="quant")
    assert [p for p, _ in quantized_convs(build_resnet(quant_stem))][0] == "conv1"


class _OwnQuantConv(nn.Conv2d):
    """A student's renamed copy of the course layer: the same attributes, another class."""

    def __init__(self) -> None:
        super().__init__(3, 4, 3, padding=1, bias=False)
        self.act_alpha = nn.Parameter(torch.tensor(8.0))
        self.weight_quant = nn.Module()
        self.weight_quant.wgt_alpha = nn.Parameter(torch.tensor(3.0))


class _HalfQuant(nn.Conv2d):
    """An act_alpha but no weight quantizer: not a quantized conv."""

    def __init__(self) -> None:
        super().__init__(4, 4, 1, bias=False)
        self.act_alpha = nn.Parameter(torch.tensor(8.0))


def test_a_renamed_copy_counts_by_its_attributes_and_a_plain_conv_does_not() -> None:
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 3, 3))
    model.add_module("body", nn.Sequential(_OwnQuantConv(), _HalfQuant(), QuantConv2d(4, 4, 3)))
    convs = quantized_convs(model)
    assert [path for path, _ in convs] == ["body.0", "body.2"]
    assert convs[0][1] is model.body[0]
