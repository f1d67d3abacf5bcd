"""Capture every conv layer's input and output in one forward pass."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from qexport.frontend.models.quant import ActClip, QuantConv2d
from qexport.frontend.models.vgg import VGGQuant
from qexport.precision import exact_math


@dataclass(frozen=True)
class LayerSettings:
    """One conv layer's identity and settings, as every stage's layer record carries them.

    ``name`` is the layer's module path (``features.33``), its identity; ``layer`` the features
    index, the VGG alias the CLI and manifests show; ``conv_number`` its place among the convs.
    """

    name: str
    layer: int
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


def relu_feeds_next_conv(model: VGGQuant, layer: int) -> int | None:
    """The features index of the next conv if exactly one ReLU separates it from ``layer``."""
    features = model.features
    if (
        layer + 2 < len(features)
        and isinstance(features[layer + 1], nn.ReLU)
        and isinstance(features[layer + 2], QuantConv2d)
    ):
        return layer + 2
    return None


@torch.no_grad()
def capture(model: VGGQuant, images: torch.Tensor, device: torch.device | None = None) -> list[LayerTensors]:
    """Run ``images`` (N, 3, 32, 32) through ``model`` once, hooking every QuantConv2d.

    The forward runs in ``exact_math()``: no TF32 (cuDNN's default), so a CUDA capture rounds
    ``x_int`` and passes the 1e-3 check as a CPU one does.
    """
    device = device or next(model.parameters()).device
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    weights: dict[int, torch.Tensor] = {}
    handles = []

    def _pre(index: int) -> Any:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inputs[index] = args[0].detach().to("cpu", copy=True)

        return hook

    def _post(index: int) -> Any:
        def hook(module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            # copy: the ReLU that follows works in place
            outputs[index] = output.detach().to("cpu", copy=True)
            # QuantConv2d.forward has just stored the weights it used
            weights[index] = module.weight_q.detach().to("cpu", copy=True)  # type: ignore[operator]

        return hook

    convs = [(i, m) for i, m in enumerate(model.features) if isinstance(m, QuantConv2d)]
    for index, module in convs:
        handles.append(module.register_forward_pre_hook(_pre(index)))
        handles.append(module.register_forward_hook(_post(index)))
    try:
        model.eval()
        with exact_math():
            model(images.to(device))
    finally:
        for handle in handles:
            handle.remove()
    names = {id(m): name for name, m in model.named_modules()}
    captured = []
    for number, (index, module) in enumerate(convs):
        nxt = relu_feeds_next_conv(model, index)
        after: dict[str, Any] = {}
        if nxt is not None:
            next_conv: QuantConv2d = model.features[nxt]  # type: ignore[assignment]
            after = {
                "next_x": inputs[nxt],
                "next_act_alpha": float(next_conv.act_alpha.detach()),
                "next_act_bit": next_conv.act_bit,
                "next_act_clip": next_conv.act_clip,
            }
        captured.append(
            LayerTensors(
                name=names[id(module)],
                layer=index,
                conv_number=number,
                in_channels=module.in_channels,
                out_channels=module.out_channels,
                kernel=int(module.kernel_size[0]),
                stride=int(module.stride[0]),
                padding=int(module.padding[0]),
                w_bit=module.w_bit,
                act_bit=module.act_bit,
                act_clip=module.act_clip,
                act_alpha=float(module.act_alpha.detach()),
                wgt_alpha=float(module.weight_quant.wgt_alpha.detach()),
                weight_q=weights[index],
                x=inputs[index],
                y=outputs[index],
                **after,
            )
        )
    return captured
