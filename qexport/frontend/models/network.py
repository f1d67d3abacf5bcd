"""A loaded model's quantized convs, whatever its family: found by what they carry, named by module
path, numbered in forward order, and resolved from what a user types (``features.33``, ``33``,
``conv 9``, ``layer2.0.downsample.0``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from qexport.errors import InputError


def is_quantized_conv(module: nn.Module) -> bool:
    """A conv carrying ``act_alpha`` and ``weight_quant.wgt_alpha``: the course's ``QuantConv2d`` and
    its renamed copies (duck-typed, so a user's own class counts)."""
    weight_quant = getattr(module, "weight_quant", None)
    return (
        isinstance(module, nn.Conv2d)
        and isinstance(getattr(module, "act_alpha", None), torch.Tensor)
        and isinstance(getattr(weight_quant, "wgt_alpha", None), torch.Tensor)
    )


def quantized_convs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module path, module) of every quantized conv, in ``named_modules()`` order."""
    return [(name, m) for name, m in model.named_modules() if name and is_quantized_conv(m)]


def float_convs(model: nn.Module) -> list[str]:
    """Module paths of the plain ``nn.Conv2d``s (a float stem): listed, never exported."""
    return [
        name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and not is_quantized_conv(m)
    ]


_FEATURES = re.compile(r"(?:features\[)?\s*(\d+)\s*\]?|features\.(\d+)")
_CONV_NUMBER = re.compile(r"conv\s*(\d+)")


@dataclass(frozen=True)
class ConvRef:
    """One quantized conv: ``name`` its module path (its identity), ``index`` the VGG features index
    (``features.33`` -> 33, else None), ``conv_number`` its place in forward order."""

    name: str
    index: int | None
    conv_number: int

    @property
    def label(self) -> str:
        return layer_label(self.name, self.index)


def layer_label(name: str, index: int | None) -> str:
    """How messages name a layer: the features index for VGG (``33``), else the module path."""
    return name if index is None else str(index)


def layer_folder(name: str, index: int | None) -> str:
    """A layer's folder in a vector set: ``layer33`` for VGG (as ever), else the module path."""
    return name if index is None else f"layer{index}"


def features_index(name: str) -> int | None:
    """33 for ``features.33``; None for any other module path."""
    match = re.fullmatch(r"features\.(\d+)", name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ConvTable:
    """The model's quantized convs in forward order, and how a typed layer name resolves."""

    model: str
    convs: tuple[ConvRef, ...]
    features: tuple[str, ...] = ()
    """VGG only: the kind of each ``features`` entry (``relu``, ``bn``), to say what an index is."""

    @classmethod
    def of(cls, model_name: str, names: list[str], features: tuple[str, ...] = ()) -> ConvTable:
        refs = tuple(ConvRef(name, features_index(name), n) for n, name in enumerate(names))
        return cls(model_name, refs, features)

    def names(self) -> list[str]:
        return [c.name for c in self.convs]

    def by_name(self, name: str) -> ConvRef:
        for ref in self.convs:
            if ref.name == name:
                return ref
        raise self.unknown(name, "layer")

    def resolve(self, layer: int | str, what: str = "--layer") -> ConvRef:
        """A layer by module path, features index (``33``, ``features[33]``) or conv number (``conv 9``)."""
        text = str(layer).strip()
        for ref in self.convs:
            if ref.name == text:
                return ref
        lowered = text.lower().replace(" ", "")
        number = _CONV_NUMBER.fullmatch(lowered)
        if number:
            n = int(number.group(1))
            if n < len(self.convs):
                return self.convs[n]
            raise InputError(
                f"{what} {text}: {self.model} has convs 0..{len(self.convs) - 1} (see `qexport layers`)"
            )
        index = _FEATURES.fullmatch(lowered)
        if index:
            wanted = int(index.group(1) or index.group(2))
            for ref in self.convs:
                if ref.index == wanted:
                    return ref
            if self.features:
                raise self.unknown(text, what, self._features_entry(wanted))
        raise self.unknown(text, what)

    def _features_entry(self, index: int) -> str:
        if 0 <= index < len(self.features):
            return f"features[{index}] is a {self.features[index]}"
        return f"features has {len(self.features)} entries, so {index} is out of range"

    def unknown(self, text: str, what: str, why: str = "") -> InputError:
        names = self.names()
        if why and "." not in text:  # typed as an index: list the indices
            indices = [str(c.index) for c in self.convs if c.index is not None]
            return InputError(
                f"{what} {text} is not a quantized conv layer of {self.model} ({why}); valid layers "
                f"are {', '.join(indices)} (see `qexport layers`)"
            )
        shown = ", ".join(names) if len(names) <= 24 else ", ".join(names[:24]) + f", … ({len(names)} in all)"
        alias = " (or their features indices)" if any(c.index is not None for c in self.convs) else ""
        because = f" ({why})" if why else ""
        return InputError(
            f"{what} {text} is not a quantized conv layer of {self.model}{because}; valid layers are "
            f"{shown}{alias}, or a conv number like 'conv 3' (see `qexport layers`)"
        )


def conv_table(model: nn.Module, name: str) -> ConvTable:
    """The model's quantized convs; a VGG's ``features`` kinds let messages say what an index is."""
    features = getattr(model, "features", None)
    kinds: tuple[str, ...] = ()
    if isinstance(features, nn.Sequential):
        kinds = tuple(_kind(m) for m in features)
    return ConvTable.of(name, [n for n, _ in quantized_convs(model)], kinds)


_KINDS: dict[type[nn.Module], str] = {
    nn.Conv2d: "conv",
    nn.BatchNorm2d: "bn",
    nn.Identity: "identity",
    nn.ReLU: "relu",
    nn.MaxPool2d: "maxpool",
}


def _kind(module: nn.Module) -> str:
    if is_quantized_conv(module):
        return "qconv"
    return _KINDS.get(type(module), type(module).__name__)
