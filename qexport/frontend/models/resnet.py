"""The ResNet-CIFAR family: an architecture as data (:class:`ResNetArch`), the course's zoo
(``resnet20_quant`` … ``resnet110_quant``), the model, and inference from a state dict.

State-dict keys are the course's ``models/resnet_quant.py`` ones: ``conv1.*``, ``bn1.*``,
``layer{s}.{b}.conv{1,2}.*``, ``layer{s}.{b}.bn{1,2}.*``, ``layer{s}.0.downsample.{0,1}.*``,
``fc.weight``, ``fc.bias``, so published checkpoints load unchanged.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from qexport.errors import InputError
from qexport.frontend.models.keys import KeyReport, key_report
from qexport.frontend.models.quant import DEFAULT_ACT_CLIP, ActClip, QuantConv2d

if TYPE_CHECKING:  # a value handed over by the checkpoint loader; no import at run time
    from qexport.frontend.checkpoint import Checkpoint

StemKind = Literal["float", "quant"]
"""``float``: ``conv1`` a plain ``nn.Conv2d`` (listed, not exported); ``quant``: a ``QuantConv2d``."""

_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True, slots=True)
class ResNetArch:
    """A ResNet-CIFAR network: stem, three stages of ``BasicBlock``s, 8x8 average pool, ``fc``.

    ``resnet20_quant``: blocks (3, 3, 3), widths (16, 32, 64), a float stem, bn2 in every block.
    A block is named by its module path (``layer2.0``); the first block of stages 2 and 3 has
    stride 2 and a 1x1 ``downsample``.
    """

    name: str
    blocks: tuple[int, int, int] = (3, 3, 3)
    widths: tuple[int, int, int] = (16, 32, 64)
    stem: StemKind = "float"
    without_bn2: tuple[str, ...] = ()
    """Block paths (``layer1.2``) whose ``bn2`` is absent: identity there."""
    num_classes: int = 10
    bits: int = 4
    """The course ``QuantConv2d``'s one ``bit``: weights and activations of every quantized conv."""

    def block_paths(self) -> list[str]:
        """Every block's module path in forward order: ``layer1.0`` … ``layer3.<n-1>``."""
        return [f"layer{s + 1}.{b}" for s, n in enumerate(self.blocks) for b in range(n)]

    def block_geometry(self, path: str) -> tuple[int, int, int]:
        """(in_channels, out_channels, stride) of the block at ``path``."""
        stage, block = (int(p) for p in path.removeprefix("layer").split("."))
        out = self.widths[stage - 1]
        if block > 0:
            return out, out, 1
        in_channels = self.widths[stage - 2] if stage > 1 else self.widths[0]
        return in_channels, out, 1 if stage == 1 else 2

    def has_downsample(self, path: str) -> bool:
        # the course's rule: a projection wherever the shortcut changes shape
        in_channels, out, stride = self.block_geometry(path)
        return stride != 1 or in_channels != out

    def qconv_names(self) -> list[str]:
        """Every quantized conv's module path, in the order a forward pass runs them."""
        names = ["conv1"] if self.stem == "quant" else []
        for path in self.block_paths():
            names += [f"{path}.conv1", f"{path}.conv2"]
            if self.has_downsample(path):
                names.append(f"{path}.downsample.0")
        return names

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """State-dict keys with shapes, as the course's model would save them."""
        shapes: dict[str, tuple[int, ...]] = {}
        _conv(shapes, "conv1", 3, self.widths[0], 3, quant=self.stem == "quant")
        _bn(shapes, "bn1", self.widths[0])
        for path in self.block_paths():
            in_channels, out, _ = self.block_geometry(path)
            _conv(shapes, f"{path}.conv1", in_channels, out, 3)
            _bn(shapes, f"{path}.bn1", out)
            _conv(shapes, f"{path}.conv2", out, out, 3)
            if path not in self.without_bn2:
                _bn(shapes, f"{path}.bn2", out)
            if self.has_downsample(path):
                _conv(shapes, f"{path}.downsample.0", in_channels, out, 1)
                _bn(shapes, f"{path}.downsample.1", out)
        shapes["fc.weight"] = (self.num_classes, self.widths[2])
        shapes["fc.bias"] = (self.num_classes,)
        return shapes

    def describe(self) -> str:
        """``resnet20_quant (3/3/3 blocks, widths 16/32/64, float stem, bn2 in every block)``."""
        blocks = "/".join(str(n) for n in self.blocks)
        widths = "/".join(str(w) for w in self.widths)
        bn2 = "without bn2 in " + ", ".join(self.without_bn2) if self.without_bn2 else "bn2 in every block"
        return f"{self.name} ({blocks} blocks, widths {widths}, {self.stem} stem, {bn2})"


def _conv(
    shapes: dict[str, tuple[int, ...]], prefix: str, in_c: int, out_c: int, k: int, quant: bool = True
) -> None:
    shapes[f"{prefix}.weight"] = (out_c, in_c, k, k)
    if quant:
        shapes[f"{prefix}.act_alpha"] = ()
        shapes[f"{prefix}.weight_q"] = (out_c, in_c, k, k)
        shapes[f"{prefix}.weight_quant.wgt_alpha"] = ()


def _bn(shapes: dict[str, tuple[int, ...]], prefix: str, channels: int) -> None:
    for key in _BN_KEYS:
        shapes[f"{prefix}.{key}"] = (channels,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


# --- the model ---------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """The course's ``BasicBlock``.

    ``out = relu(bn1(conv1(x)))``; ``out = bn2(conv2(out))``; ``out + downsample(x)`` (or ``+ x``);
    ``relu``. Nothing is in place, so a hook's view of a conv's output is never overwritten.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, bn2: bool, bits: int, act_clip: ActClip
    ) -> None:
        super().__init__()
        self.conv1 = _qconv(in_channels, out_channels, 3, stride, 1, bits, act_clip)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _qconv(out_channels, out_channels, 3, 1, 1, bits, act_clip)
        self.bn2: nn.Module = nn.BatchNorm2d(out_channels) if bn2 else nn.Identity()
        self.relu = nn.ReLU()
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                _qconv(in_channels, out_channels, 1, stride, 0, bits, act_clip),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)  # type: ignore[no-any-return]


def _qconv(
    in_c: int, out_c: int, k: int, stride: int, padding: int, bits: int, act_clip: ActClip
) -> QuantConv2d:
    return QuantConv2d(
        in_c, out_c, k, stride=stride, padding=padding, w_bit=bits, act_bit=bits, act_clip=act_clip
    )


class ResNetQuant(nn.Module):
    """The course's ``ResNet_Cifar``: ``relu(bn1(conv1(image)))``, layer1..3, ``AvgPool2d(8)``, ``fc``."""

    def __init__(self, arch: ResNetArch, act_clip: ActClip = DEFAULT_ACT_CLIP) -> None:
        super().__init__()
        self.arch = arch
        w0 = arch.widths[0]
        self.conv1: nn.Conv2d = (
            _qconv(3, w0, 3, 1, 1, arch.bits, act_clip)
            if arch.stem == "quant"
            else nn.Conv2d(3, w0, 3, stride=1, padding=1, bias=False)
        )
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU()
        stages = []
        for s, count in enumerate(arch.blocks):
            blocks = []
            for b in range(count):
                path = f"layer{s + 1}.{b}"
                in_c, out_c, stride = arch.block_geometry(path)
                bn2 = path not in arch.without_bn2
                blocks.append(BasicBlock(in_c, out_c, stride, bn2, arch.bits, act_clip))
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(arch.widths[2], arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.avgpool(out).flatten(1))  # type: ignore[no-any-return]


def build_resnet(arch: ResNetArch, act_clip: ActClip = DEFAULT_ACT_CLIP) -> ResNetQuant:
    return ResNetQuant(arch, act_clip)


# The course zoo's depths (6n + 2). The built-ins' stem is a float nn.Conv2d, as in the
# ResNet-CIFAR code the zoo follows; checkpoints with a quantized stem load through inference.
RESNET_BUILTIN: dict[str, ResNetArch] = {
    a.name: a
    for a in (
        ResNetArch("resnet20_quant", blocks=(3, 3, 3)),
        ResNetArch("resnet32_quant", blocks=(5, 5, 5)),
        ResNetArch("resnet44_quant", blocks=(7, 7, 7)),
        ResNetArch("resnet56_quant", blocks=(9, 9, 9)),
        ResNetArch("resnet110_quant", blocks=(18, 18, 18)),
    )
}


def builtin_resnet(name: str) -> ResNetArch:
    try:
        return RESNET_BUILTIN[name]
    except KeyError:
        raise InputError(
            f"unknown ResNet model {name!r}; built-in ResNets are {', '.join(RESNET_BUILTIN)}"
        ) from None


# --- inference from a state dict ---------------------------------------------------------------

_BLOCK_KEY = re.compile(r"^layer([1-9]\d*)\.(\d+)\.(.+)$")
_BLOCK_CONV_WEIGHT = re.compile(r"^(conv[12])\.weight$")


def is_resnet_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict looks like a ResNet-CIFAR one (a ``conv1`` stem and ``layer1`` blocks)."""
    return "conv1.weight" in state and any(k.startswith("layer1.") for k in state)


def infer_resnet(state: Mapping[str, torch.Tensor]) -> ResNetArch:
    """The ResNet-CIFAR architecture a state dict describes, from its keys and shapes alone.

    Blocks a stage: the highest ``layer{s}.{b}`` index + 1. Widths: the out channels most of a
    stage's block convs have (so one mis-shaped key is reported, not believed). Stem: ``quant``
    when ``conv1`` carries either alpha. bn2: absent where a block has no ``bn2.*`` keys. The
    result may still not fit the state dict: :func:`fit_report` says where.
    """
    if not is_resnet_state(state):
        raise InputError(
            "cannot infer a ResNet architecture: the state dict has no 'conv1.weight' and "
            "'layer1.<b>.…' keys, so it is not a ResNet-CIFAR course model"
        )
    blocks = [0, 0, 0]
    widths: list[Counter[int]] = [Counter(), Counter(), Counter()]
    keys_of: dict[str, set[str]] = {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if not match or not 1 <= int(match.group(1)) <= 3:
            continue  # reported as unexpected by fit_report
        stage, block, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        blocks[stage - 1] = max(blocks[stage - 1], block + 1)
        keys_of.setdefault(f"layer{stage}.{block}", set()).add(rest)
        if _BLOCK_CONV_WEIGHT.match(rest) and value.dim() == 4:
            widths[stage - 1][int(value.shape[0])] += 1
    empty = [f"layer{s + 1}" for s in range(3) if not blocks[s] or not widths[s]]
    if empty:
        raise InputError(
            f"cannot infer a ResNet architecture: no block convs in {', '.join(empty)} "
            "(no 'layer<s>.<b>.conv1.weight' keys); a ResNet-CIFAR course model has three stages"
        )
    arch = ResNetArch(
        name="inferred",
        blocks=(blocks[0], blocks[1], blocks[2]),
        widths=(
            widths[0].most_common(1)[0][0],
            widths[1].most_common(1)[0][0],
            widths[2].most_common(1)[0][0],
        ),
        stem="quant" if {"conv1.act_alpha", "conv1.weight_quant.wgt_alpha"} & set(state) else "float",
        num_classes=int(state["fc.weight"].shape[0]) if "fc.weight" in state else 10,
    )
    without = tuple(
        path
        for path in arch.block_paths()
        if not any(k.startswith("bn2.") for k in keys_of.get(path, set()))
        and any(k.startswith("conv2.") for k in keys_of.get(path, set()))
    )
    arch = replace(arch, without_bn2=without)
    return replace(arch, name=_variant_name(arch))


def _variant_name(arch: ResNetArch) -> str:
    """The built-in's name when only the name differs, else ``resnet<depth>`` (6n + 2)."""
    for builtin in RESNET_BUILTIN.values():
        if replace(builtin, name=arch.name) == arch:
            return builtin.name
    return f"resnet{2 + 2 * sum(arch.blocks)}"


def fit_report(arch: ResNetArch, state: Mapping[str, torch.Tensor]) -> KeyReport:
    return key_report(arch.expected_shapes(), state)


def resolve_resnet(ckpt: Checkpoint, model_name: str | None = None) -> ResNetArch:
    """The ResNet architecture for a checkpoint: the named built-in, or the one its keys describe.

    A checkpoint that almost fits is refused naming its missing, unexpected and mis-shaped keys
    and the variant it is closest to.
    """
    state = ckpt.state_dict
    if model_name is not None:
        arch = builtin_resnet(model_name)
        report = fit_report(arch, state)
        if report.ok:
            return arch
        raise InputError(_mismatch_message(ckpt.name, arch, report, state))
    arch = infer_resnet(state)
    report = fit_report(arch, state)
    if not report.ok:
        raise InputError(_mismatch_message(ckpt.name, arch, report, state))
    return arch


def closest_variant(state: Mapping[str, torch.Tensor]) -> ResNetArch:
    """The built-in or inferred ResNet with the fewest missing, unexpected and mis-shaped keys."""
    candidates = list(RESNET_BUILTIN.values())
    with suppress(InputError):  # not ResNet-shaped at all: the built-ins are still candidates
        candidates.append(infer_resnet(state))
    return min(candidates, key=lambda a: fit_report(a, state).problems)


def _mismatch_message(
    name: str, arch: ResNetArch, report: KeyReport, state: Mapping[str, torch.Tensor]
) -> str:
    parts = [f"checkpoint {name} does not fit the ResNet {arch.describe()}:"]
    parts += report.describe()
    closest = closest_variant(state)
    if fit_report(closest, state).ok:
        how = f"pass --model {closest.name}" if closest.name in RESNET_BUILTIN else "leave out --model"
        parts.append(f"it fits the variant {closest.describe()}: {how}")
    else:
        parts.append(
            f"the closest variant is {closest.describe()}; re-save the checkpoint from the "
            "training script, or pass your own model code"
        )
    return " ".join(parts)
