"""Course-compatible quantized conv layer.

State-dict keys match the course's ``models/quant_layer.py`` exactly (``weight``, ``act_alpha``,
``weight_q``, ``weight_quant.wgt_alpha``), so its checkpoints load unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

ActClip = Literal["course", "relu"]
"""``course``: clip at alpha only (the course code); ``relu``: also clip at 0."""

DEFAULT_ACT_CLIP: ActClip = "course"


def _uniform_quant(x: torch.Tensor, levels: int) -> torch.Tensor:
    # torch.round is round-half-to-even, as in the course code
    return torch.round(x * levels) / levels


class _WeightQuant(torch.autograd.Function):
    """Weights already normalised: /alpha, clip [-1, 1], round to 2^(w_bit-1)-1 levels a sign."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, alpha: torch.Tensor, levels: int) -> torch.Tensor:
        scaled = weight / alpha
        clipped = scaled.clamp(-1.0, 1.0)
        quantized = _uniform_quant(clipped.abs(), levels) * clipped.sign()
        ctx.save_for_backward(scaled, quantized)
        return quantized * alpha

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> Any:
        (grad_output,) = grad_outputs
        scaled, quantized = ctx.saved_tensors
        outside = (scaled.abs() > 1.0).to(grad_output.dtype)
        grad_alpha = (grad_output * (scaled.sign() * outside + (quantized - scaled) * (1 - outside))).sum()
        return grad_output.clone(), grad_alpha, None


class _ActQuant(torch.autograd.Function):
    """Activations: /alpha, clip at 1 (and at 0 for ``relu``), round to 2^act_bit-1 levels."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, levels: int, clip_low: bool) -> torch.Tensor:
        scaled = x / alpha
        clipped = scaled.clamp(min=0.0, max=1.0) if clip_low else scaled.clamp(max=1.0)
        quantized = _uniform_quant(clipped, levels)
        ctx.save_for_backward(scaled)
        ctx.clip_low = clip_low
        return quantized * alpha

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> Any:
        (grad_output,) = grad_outputs
        (scaled,) = ctx.saved_tensors
        above = (scaled > 1.0).to(grad_output.dtype)
        passed = 1 - above
        if ctx.clip_low:
            passed = passed * (scaled >= 0.0).to(grad_output.dtype)
        grad_alpha = (grad_output * above).sum()
        return grad_output * passed, grad_alpha, None, None


def quantize_weight(weight: torch.Tensor, wgt_alpha: torch.Tensor, w_bit: int) -> torch.Tensor:
    """The course's weight_q: normalise by the tensor's mean and (unbiased) std, then quantize."""
    mean = weight.detach().mean()
    std = weight.detach().std()
    normalised = (weight - mean) / std
    return _WeightQuant.apply(normalised, wgt_alpha, 2 ** (w_bit - 1) - 1)  # type: ignore[no-any-return]


def quantize_act(x: torch.Tensor, act_alpha: torch.Tensor, act_bit: int, act_clip: ActClip) -> torch.Tensor:
    """The course's act_alq: x_q = round(clip(x / alpha) * (2^b - 1)) / (2^b - 1) * alpha."""
    return _ActQuant.apply(  # type: ignore[no-any-return]
        x, act_alpha, 2**act_bit - 1, act_clip == "relu"
    )


class WeightQuantizeFn(nn.Module):
    """Holds ``wgt_alpha`` under the course's key ``weight_quant.wgt_alpha``."""

    def __init__(self, w_bit: int) -> None:
        super().__init__()
        self.w_bit = w_bit
        self.wgt_alpha = nn.Parameter(torch.tensor(3.0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return quantize_weight(weight, self.wgt_alpha, self.w_bit)


class QuantConv2d(nn.Conv2d):
    """Conv2d with 4-bit (by default) quantized weights and input activations.

    ``weight_q`` is refreshed on every forward, as the course layer does, so a saved model
    carries the weights it last computed with.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        w_bit: int = 4,
        act_bit: int = 4,
        act_clip: ActClip = DEFAULT_ACT_CLIP,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.w_bit = w_bit
        self.act_bit = act_bit
        self.act_clip: ActClip = act_clip
        self.weight_quant = WeightQuantizeFn(w_bit)
        self.act_alpha = nn.Parameter(torch.tensor(8.0))
        self.weight_q = nn.Parameter(
            torch.zeros(out_channels, in_channels, kernel_size, kernel_size), requires_grad=False
        )
        self.stored_weight_q = False
        """True: forward uses ``weight_q`` as loaded (a checkpoint's rounding ties), not recomputed."""

    def quantized_weight(self) -> torch.Tensor:
        self.weight_quant.w_bit = self.w_bit
        return self.weight_quant(self.weight)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight_q: torch.Tensor
        if self.stored_weight_q:
            weight_q = self.weight_q
        else:
            weight_q = self.quantized_weight()
            with torch.no_grad():
                self.weight_q.copy_(weight_q.detach())
        x_q = quantize_act(x, self.act_alpha, self.act_bit, self.act_clip)
        return F.conv2d(x_q, weight_q, self.bias, self.stride, self.padding)
