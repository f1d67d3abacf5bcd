# ruff: noqa: E501  -- the course's code is copied as it is, long lines included

"""The course's own model code, as a student's ``models/`` package holds it, written by tests into
``tmp_path`` for ``--model module.path:factory``.

``QUANT_LAYER`` is a faithful copy of the course's ``models/quant_layer.py`` (the closure-built
autograd functions, the in-place ``div_``, ``self.bit = 4``, ``self.act_alq =
act_quantization(self.bit)``, ``weight_q`` reassigned as a new Parameter in ``forward``);
``RESNET_QUANT`` its ``models/resnet_quant.py`` (ResNet-CIFAR, float stem). ``VGG_QUANT`` is a
student's small VGG-style variant with a float first conv and a copy of the layer with 4-bit
weights and 2-bit activations. The course code instantiates ``_pq()``/``_uq()``, which torch
warns about (DeprecationWarning); tests that run it ignore that one warning.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

COURSE_WARNING = "ignore:.*should not be instantiated:DeprecationWarning"
"""The warning torch gives for the course code's ``_pq().apply``: theirs, not ours."""

QUANT_LAYER = '''
import torch
import torch.nn as nn
import math
import torch.nn.functional as F
from torch.nn.parameter import Parameter


def weight_quantization(b):

    def uniform_quant(x, b):
        xdiv = x.mul((2 ** b - 1))
        xhard = xdiv.round().div(2 ** b - 1)
        return xhard

    class _pq(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, alpha):
            input.div_(alpha)                          # weights are first divided by alpha
            input_c = input.clamp(min=-1, max=1)       # then clipped to [-1,1]
            sign = input_c.sign()
            input_abs = input_c.abs()
            input_q = uniform_quant(input_abs, b).mul(sign)
            ctx.save_for_backward(input, input_q)
            input_q = input_q.mul(alpha)               # rescale to the original range
            return input_q

        @staticmethod
        def backward(ctx, grad_output):
            grad_input = grad_output.clone()             # grad for weights will not be clipped
            input, input_q = ctx.saved_tensors
            i = (input.abs()>1.).float()
            sign = input.sign()
            grad_alpha = (grad_output*(sign*i + (input_q-input)*(1-i))).sum()
            return grad_input, grad_alpha

    return _pq().apply


class weight_quantize_fn(nn.Module):
    def __init__(self, w_bit):
        super(weight_quantize_fn, self).__init__()
        self.w_bit = w_bit-1
        self.weight_q = weight_quantization(b=self.w_bit)
        self.register_parameter('wgt_alpha', Parameter(torch.tensor(3.0)))

    def forward(self, weight):
        mean = weight.data.mean()
        std = weight.data.std()
        weight = weight.add(-mean).div(std)      # weights normalization
        weight_q = self.weight_q(weight, self.wgt_alpha)

        return weight_q


def act_quantization(b):

    def uniform_quant(x, b=3):
        xdiv = x.mul(2 ** b - 1)
        xhard = xdiv.round().div(2 ** b - 1)
        return xhard

    class _uq(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, alpha):
            input=input.div(alpha)
            input_c = input.clamp(max=1)
            input_q = uniform_quant(input_c, b)
            ctx.save_for_backward(input, input_q)
            input_q = input_q.mul(alpha)
            return input_q

        @staticmethod
        def backward(ctx, grad_output):
            grad_input = grad_output.clone()
            input, input_q = ctx.saved_tensors
            i = (input > 1.).float()
            grad_alpha = (grad_output * (i + (input_q - input) * (1 - i))).sum()
            grad_input = grad_input*(1-i)
            return grad_input, grad_alpha

    return _uq().apply


class QuantConv2d(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=False):
        super(QuantConv2d, self).__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.layer_type = 'QuantConv2d'
        self.bit = 4
        self.weight_quant = weight_quantize_fn(w_bit=self.bit)
        self.act_alq = act_quantization(self.bit)
        self.act_alpha = torch.nn.Parameter(torch.tensor(8.0))
        self.weight_q  = torch.nn.Parameter(torch.zeros([out_channels, in_channels, kernel_size, kernel_size]))

    def forward(self, x):
        weight_q = self.weight_quant(self.weight)
        #self.register_parameter('weight_q', Parameter(weight_q))  # Mingu added
        self.weight_q = torch.nn.Parameter(weight_q)  # Store weight_q during the forward pass
        return F.conv2d(self.act_alq(x, self.act_alpha), weight_q, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def show_params(self):
        wgt_alpha = round(self.weight_quant.wgt_alpha.data.item(), 3)
        act_alpha = round(self.act_alpha.data.item(), 3)
        print('clipping threshold weight alpha: {:2f}, activation alpha: {:2f}'.format(wgt_alpha, act_alpha))


class QuantConv2dA2(nn.Conv2d):
    """A student's copy: 4-bit weights, 2-bit activations."""
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=False):
        super(QuantConv2dA2, self).__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.layer_type = 'QuantConv2d'
        self.bit = 4
        self.weight_quant = weight_quantize_fn(w_bit=self.bit)
        self.act_alq = act_quantization(2)
        self.act_alpha = torch.nn.Parameter(torch.tensor(8.0))
        self.weight_q  = torch.nn.Parameter(torch.zeros([out_channels, in_channels, kernel_size, kernel_size]))

    def forward(self, x):
        weight_q = self.weight_quant(self.weight)
        self.weight_q = torch.nn.Parameter(weight_q)
        return F.conv2d(self.act_alq(x, self.act_alpha), weight_q, self.bias, self.stride, self.padding, self.dilation, self.groups)
'''

RESNET_QUANT = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from models.quant_layer import *

__all__ = ['resnet20_quant']


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, float=False):
        super(BasicBlock, self).__init__()
        self.conv1 = QuantConv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = QuantConv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        out = self.relu(out)
        return out


class ResNet_Cifar(nn.Module):

    def __init__(self, block, layers, num_classes=10, float=False):
        super(ResNet_Cifar, self).__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 16, layers[0], float=float)
        self.layer2 = self._make_layer(block, 32, layers[1], stride=2, float=float)
        self.layer3 = self._make_layer(block, 64, layers[2], stride=2, float=float)
        self.avgpool = nn.AvgPool2d(8, stride=1)
        self.fc = nn.Linear(64 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, float=False):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                QuantConv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion)
            )
        layers = []
        layers.append(block(self.inplanes, planes, stride, downsample, float=float))
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, float=float))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return x


def resnet20_quant(**kwargs):
    model = ResNet_Cifar(BasicBlock, [3, 3, 3], **kwargs)
    return model
"""

VGG_QUANT = """
import torch.nn as nn
from models.quant_layer import *


class VGG_small(nn.Module):
    def __init__(self, num_classes=10):
        super(VGG_small, self).__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            QuantConv2dA2(16, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            QuantConv2dA2(16, 8, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            QuantConv2dA2(8, 8, kernel_size=3, padding=1),
            nn.Identity(),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(kernel_size=16),
        )
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        out = self.features(x)
        out = out.view(out.size(0), -1)
        return self.classifier(out)


def vgg_a2():
    return VGG_small()
"""


def write_models(root: Path, class_name: str = "QuantConv2d") -> Path:
    """The course's ``models/`` package under ``root``; ``class_name`` renames the quantized conv."""
    package = root / "models"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("from .resnet_quant import *\n")
    (package / "quant_layer.py").write_text(re.sub(r"\bQuantConv2d\b", class_name, QUANT_LAYER))
    (package / "resnet_quant.py").write_text(re.sub(r"\bQuantConv2d\b", class_name, RESNET_QUANT))
    (package / "vgg_quant.py").write_text(VGG_QUANT)
    return package


@contextmanager
def imported(root: Path) -> Iterator[None]:
    """``root`` on ``sys.path`` for the test's own imports; its modules forgotten on leaving, so the
    next test's package of the same name is imported afresh."""
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        forget(root)


def forget(root: Path) -> None:
    """Drop every imported module whose file lies under ``root`` (the test's ``models`` package)."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file is not None and Path(file).is_relative_to(root):
            del sys.modules[name]


def randomise(model: nn.Module, seed: int = 0) -> None:
    """Weights N(0, 0.1²), BatchNorms near identity, act_alpha in [2, 3), wgt_alpha in [2.5, 3)."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.weight.copy_(0.1 * torch.randn(module.weight.shape, generator=gen))
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            if hasattr(module, "act_alpha"):
                module.act_alpha.fill_(float(uniform((), 2.0, 3.0)))
                module.weight_quant.wgt_alpha.fill_(float(uniform((), 2.5, 3.0)))
            elif isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(uniform((c,), 0.8, 1.2))
                module.bias.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_var.copy_(uniform((c,), 0.5, 1.5))


def save_checkpoint(model: nn.Module, path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Randomise, run one eval forward (it stores every ``weight_q``), save as the course does."""
    randomise(model, seed)
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1)))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state, "best_prec": 12.5, "optimizer": {}}, path)
    return state
