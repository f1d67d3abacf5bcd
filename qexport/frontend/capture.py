"""Capture every conv layer's input and output in one forward pass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from qexport.errors import InputError
from qexport.frontend.models.network import (
    features_index,
    is_quantized_conv,
    layer_folder,
    layer_label,
    quantized_convs,
)
from qexport.frontend.models.quant import DEFAULT_ACT_CLIP, ActClip
from qexport.precision import exact_math


@dataclass(frozen=True)
class LayerSettings:
    """One conv layer's identity and settings, as every stage's layer record carries them.

    ``name`` is the layer's module path (``features.33``, ``layer2.0.downsample.0``), its identity;
    ``layer`` the features index, the VGG alias the CLI and manifests show (None elsewhere);
    ``conv_number`` its place among the convs in forward order.
    """

    name: str
    layer: int | None
    conv_number: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    w_bit: int
    act_bit: int
    act_clip: ActClip
    act_alpha: float
    wgt_alpha: float

    @property
    def label(self) -> str:
        return layer_label(self.name, self.layer)

    @property
    def folder(self) -> str:
        return layer_folder(self.name, self.layer)

    def settings(self) -> dict[str, Any]:
        """These fields by name, to build another stage's record of the same layer."""
        return {f.name: getattr(self, f.name) for f in fields(LayerSettings)}


@dataclass(frozen=True)
class LayerTensors(LayerSettings):
    """What one QuantConv2d saw and produced, with its settings: all integerize needs, on the CPU.

    ``x`` is the float input (N, C, H, W) before activation quantization; ``y`` the conv's float
    output (N, OC, H', W'); ``weight_q`` the quantized weights (OC, C, kh, kw) this forward pass
    used; all float32. ``next_x`` and the ``next_*`` settings are the next conv's, when only a
    ReLU lies between.
    """

    weight_q: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    next_x: torch.Tensor | None = None
    next_act_alpha: float | None = None
    next_act_bit: int | None = None
    next_act_clip: ActClip | None = None


@dataclass(frozen=True)
class ConvBits:
    """A quantized conv's widths: ``w_bit``, ``act_bit``, and where each came from (the manifest says)."""

    w_bit: int
    act_bit: int
    w_source: str = "model"
    act_source: str = "model"


def module_bits(module: nn.Module) -> ConvBits:
    """The widths a quantized conv's own attributes give: ours (``w_bit``, ``act_bit``) or the course
    ``QuantConv2d``'s one ``bit``, used for weights and activations."""
    w_bit = getattr(module, "w_bit", None)
    act_bit = getattr(module, "act_bit", None)
    if isinstance(w_bit, int) and isinstance(act_bit, int):
        return ConvBits(w_bit, act_bit)
    bit = getattr(module, "bit", None)
    if isinstance(bit, int):
        return ConvBits(bit, bit)
    return ConvBits(4, 4, "assumed", "assumed")


def relu_links(model: nn.Module) -> dict[str, str]:
    """conv path -> next conv path, wherever exactly one ``nn.ReLU`` separates them in a Sequential
    (VGG's ``features.33`` -> ``features.35``). Other topologies (a BatchNorm or a residual add
    between) get no link: a ReLU-only check would not hold there."""
    links: dict[str, str] = {}
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (a, first), (_, mid), (c, third) in zip(children, children[1:], children[2:], strict=False):
            if is_quantized_conv(first) and isinstance(mid, nn.ReLU) and is_quantized_conv(third):
                dot = f"{prefix}." if prefix else ""
                links[dot + a] = dot + c
    return links


@torch.no_grad()
def capture(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device | None = None,
    bits: Mapping[str, ConvBits] | None = None,
) -> list[LayerTensors]:
    """Run ``images`` (N, 3, 32, 32) through ``model`` once, hooking every quantized conv.

    Convs are numbered in the order the forward pass runs them; ``bits`` (module path ->
    :class:`ConvBits`) overrides what a module's attributes say. The forward runs in
    ``exact_math()``: no TF32 (cuDNN's default), so a CUDA capture rounds ``x_int`` and passes
    the 1e-3 check as a CPU one does.
    """
    device = device or next(model.parameters()).device
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    weights: dict[str, torch.Tensor] = {}
    order: list[str] = []
    handles = []

    def _pre(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if name in inputs:
                raise InputError(
                    f"layer {name} runs twice in one forward pass; qexport exports a conv that runs "
                    "once (give each use its own module)"
                )
            order.append(name)
            inputs[name] = args[0].detach().to("cpu", copy=True)

        return hook

    def _post(name: str) -> Any:
        def hook(module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            # copy: a ReLU that follows may work in place
            outputs[name] = output.detach().to("cpu", copy=True)
            # the forward has just stored the weights it used
            weights[name] = torch.as_tensor(module.weight_q).detach().to("cpu", copy=True)

        return hook

    convs = dict(quantized_convs(model))
    for name, module in convs.items():
        handles.append(module.register_forward_pre_hook(_pre(name)))
        handles.append(module.register_forward_hook(_post(name)))
    try:
        model.eval()
        with exact_math():
            model(images.to(device))
    finally:
        for handle in handles:
            handle.remove()
    bits = bits or {}
    links = relu_links(model)

    def bits_of(name: str) -> ConvBits:
        return bits.get(name) or module_bits(convs[name])

    captured = []
    for number, name in enumerate(order):
        module = convs[name]
        after: dict[str, Any] = {}
        nxt = links.get(name)
        if nxt is not None and nxt in inputs:
            after = {
                "next_x": inputs[nxt],
                "next_act_alpha": float(torch.as_tensor(convs[nxt].act_alpha).detach()),
                "next_act_bit": bits_of(nxt).act_bit,
                "next_act_clip": _act_clip(convs[nxt]),
            }
        own = bits_of(name)
        captured.append(
            LayerTensors(
                name=name,
                layer=features_index(name),
                conv_number=number,
                in_channels=int(module.in_channels),  # type: ignore[arg-type]
                out_channels=int(module.out_channels),  # type: ignore[arg-type]
                kernel=int(module.kernel_size[0]),  # type: ignore[index]
                stride=int(module.stride[0]),  # type: ignore[index]
                padding=int(module.padding[0]),  # type: ignore[index]
                w_bit=own.w_bit,
                act_bit=own.act_bit,
                act_clip=_act_clip(module),
                act_alpha=float(torch.as_tensor(module.act_alpha).detach()),
                wgt_alpha=float(torch.as_tensor(module.weight_quant.wgt_alpha).detach()),  # type: ignore[union-attr]
                weight_q=weights[name],
                x=inputs[name],
                y=outputs[name],
                **after,
            )
        )
    return captured


def _act_clip(module: nn.Module) -> ActClip:
    clip = getattr(module, "act_clip", DEFAULT_ACT_CLIP)
    return clip if clip in ("course", "relu") else DEFAULT_ACT_CLIP
