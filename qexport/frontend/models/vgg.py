"""The VGG family: an architecture as data (:class:`Arch`), the course's VGG16 variants, the model.

An architecture is data, so a checkpoint can be matched against every known one
(:mod:`qexport.frontend.checkpoint`) and a student's own variant rebuilt from its state dict alone
(:mod:`qexport.frontend.models.infer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from qexport.errors import InputError
from qexport.frontend.models.quant import DEFAULT_ACT_CLIP, ActClip, QuantConv2d

ModuleKind = Literal["qconv", "conv", "bn", "identity", "relu", "maxpool", "avgpool"]


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    """One entry of ``model.features``."""

    kind: ModuleKind
    in_channels: int = 0
    out_channels: int = 0
    kernel: int = 3
    stride: int = 1
    padding: int = 1

    def describe(self) -> str:
        if self.kind in ("qconv", "conv"):
            return f"{self.kind} {self.in_channels}->{self.out_channels} k{self.kernel}"
        if self.kind == "bn":
            return f"bn {self.out_channels}"
        return self.kind


@dataclass(frozen=True, slots=True)
class Arch:
    """A VGG-style network: ``features`` (a Sequential) then one Linear ``classifier``."""

    name: str
    features: tuple[ModuleSpec, ...]
    num_classes: int = 10
    classifier_in: int = 512
    act_bits: tuple[tuple[int, int], ...] = ()
    """(features index, act_bit) pairs; layers not named use 4."""

    def conv_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.features) if m.kind in ("qconv", "conv")]

    def qconv_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.features) if m.kind == "qconv"]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """State-dict keys with shapes, as the course's model would save them."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, m in enumerate(self.features):
            p = f"features.{i}."
            if m.kind in ("qconv", "conv"):
                w = (m.out_channels, m.in_channels, m.kernel, m.kernel)
                shapes[p + "weight"] = w
                if m.kind == "qconv":
                    shapes[p + "act_alpha"] = ()
                    shapes[p + "weight_q"] = w
                    shapes[p + "weight_quant.wgt_alpha"] = ()
            elif m.kind == "bn":
                c = (m.out_channels,)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    shapes[p + key] = c
                shapes[p + "num_batches_tracked"] = ()
        shapes["classifier.weight"] = (self.num_classes, self.classifier_in)
        shapes["classifier.bias"] = (self.num_classes,)
        return shapes


class VGGQuant(nn.Module):
    """The course's VGG_quant: ``features`` Sequential, flatten, Linear ``classifier``."""

    def __init__(self, arch: Arch, act_clip: ActClip = DEFAULT_ACT_CLIP) -> None:
        super().__init__()
        self.arch = arch
        self.features = nn.Sequential(*[_build(i, m, arch, act_clip) for i, m in enumerate(arch.features)])
        self.classifier = nn.Linear(arch.classifier_in, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        return self.classifier(out.flatten(1))  # type: ignore[no-any-return]


def _build(index: int, m: ModuleSpec, arch: Arch, act_clip: ActClip) -> nn.Module:
    if m.kind == "qconv":
        return QuantConv2d(
            m.in_channels,
            m.out_channels,
            m.kernel,
            stride=m.stride,
            padding=m.padding,
            act_bit=dict(arch.act_bits).get(index, 4),
            act_clip=act_clip,
        )
    if m.kind == "conv":
        return nn.Conv2d(m.in_channels, m.out_channels, m.kernel, m.stride, m.padding, bias=False)
    if m.kind == "bn":
        return nn.BatchNorm2d(m.out_channels)
    if m.kind == "identity":  # a BatchNorm replaced by nn.Identity: no keys, no op
        return nn.Identity()
    if m.kind == "relu":
        return nn.ReLU(inplace=True)
    if m.kind == "maxpool":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.AvgPool2d(kernel_size=1, stride=1)


def _from_cfg(name: str, cfg: Sequence[int | str]) -> Arch:
    """Course ``_make_layers``: int = conv+BN+ReLU, 'M' = max-pool, 'S<n>' = conv+ReLU (no BN)."""
    specs: list[ModuleSpec] = []
    in_channels = 3
    for item in cfg:
        if item == "M":
            specs.append(ModuleSpec("maxpool"))
            continue
        bare = isinstance(item, str) and item.startswith("S")
        out = int(item[1:]) if isinstance(item, str) and bare else int(item)
        specs.append(ModuleSpec("qconv", in_channels, out))
        if not bare:
            specs.append(ModuleSpec("bn", out_channels=out))
        specs.append(ModuleSpec("relu"))
        in_channels = out
    specs.append(ModuleSpec("avgpool"))
    return Arch(name, tuple(specs), classifier_in=in_channels)


_VGG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]

BUILTIN: dict[str, Arch] = {
    a.name: a
    for a in (
        # seed 000: 13 QuantConv2d layers
        _from_cfg("VGG16_quant", [*_VGG, 512, 512, 512, "M", 512, 512, 512, "M"]),
        # seed 003: features[33] is the 8->8 squeeze conv with no BatchNorm
        _from_cfg(
            "VGG16_quant_gradual",
            [
                64,
                "M",
                128,
                128,
                "M",
                256,
                256,
                256,
                "M",
                512,
                128,
                32,
                8,
                "S8",
                32,
                128,
                512,
                "M",
                512,
                512,
                512,
                "M",
            ],
        ),
        # the sudden squeeze 512 -> 8 -> 8 -> 512; features[30] is the 8->8 conv with no BatchNorm
        _from_cfg("VGG16_quant_squeeze", [*_VGG, 512, 8, "S8", 512, "M", 512, 512, 512, "M"]),
    )
}
DEFAULT_MODEL = "VGG16_quant_gradual"


def builtin_arch(name: str) -> Arch:
    try:
        return BUILTIN[name]
    except KeyError:
        raise InputError(
            f"unknown model {name!r}; built-in models are {', '.join(sorted(BUILTIN))}"
        ) from None


def build_model(arch: Arch, act_clip: ActClip = DEFAULT_ACT_CLIP) -> VGGQuant:
    return VGGQuant(arch, act_clip)
