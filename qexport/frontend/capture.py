"""Capture every conv layer's input and output in one forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.vgg import VGGQuant
from qexport.precision import exact_math


@dataclass(frozen=True)
class LayerTensors:
    """What one QuantConv2d saw and produced, on the CPU, float32.

    ``x`` is the float input (N, C, H, W) before activation quantization; ``y`` the conv's float
    output (N, OC, H', W'); ``next_x`` the input of the next conv when only a ReLU lies between.
    """

    layer: int
    conv_number: int
    module: QuantConv2d
    x: torch.Tensor
    y: torch.Tensor
    next_x: torch.Tensor | None
    next_module: QuantConv2d | None = None
    weight_q: torch.Tensor | None = None
    """The quantized weights this forward pass used (float32, CPU)."""


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
    captured = []
    for number, (index, module) in enumerate(convs):
        nxt = relu_feeds_next_conv(model, index)
        captured.append(
            LayerTensors(
                index,
                number,
                module,
                inputs[index],
                outputs[index],
                inputs[nxt] if nxt else None,
                model.features[nxt] if nxt else None,  # type: ignore[arg-type]
                weights[index],
            )
        )
    return captured
