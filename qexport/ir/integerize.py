"""Turn captured float tensors into the integers an accelerator sees (the seeds' formulas)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qexport.errors import BitWidthError
from qexport.frontend.capture import LayerSettings, LayerTensors
from qexport.frontend.models.quant import quantize_act
from qexport.ir.weights import FloatWeights, float_weights

INTEGRAL_TOLERANCE = 1e-3
"""Largest distance from an integer tolerated in value/delta (float32 noise is ~1e-6)."""


@dataclass(frozen=True)
class IntLayer(LayerSettings):
    """One conv layer in integers (its identity and settings as captured, see LayerSettings).

    ``w_int`` (oc, ic, kh, kw) in [-(2^(w_bit-1)-1), 2^(w_bit-1)-1]; ``x_int`` (n, c, h, w), the
    unpadded input, in [0, 2^act_bit-1] (negative only for a first layer under the course clip).
    float value = int * delta. The arrays are never edited in place (``w_float`` is ``w_int``
    converted; a ``replace`` of ``w_int`` is safe, see FloatWeights).
    """

    w_delta: float
    x_delta: float
    w_int: np.ndarray
    x_int: np.ndarray
    y_float: np.ndarray
    next_x: np.ndarray | None
    next_x_int: np.ndarray | None = None
    """The next conv's activation integers, where only a ReLU lies between."""
    next_act_alpha: float | None = None
    next_act_bit: int | None = None
    w_float: FloatWeights | None = None
    """``w_int`` converted to float32 once, with its |w| sum (what the reference conv reads)."""


def _to_int(values: torch.Tensor, delta: float, layer: str, tensor: str) -> np.ndarray:
    scaled = values.double() / delta
    rounded = torch.round(scaled)
    off = float((scaled - rounded).abs().max()) if scaled.numel() else 0.0
    if off > INTEGRAL_TOLERANCE:
        raise BitWidthError(
            f"layer {layer} {tensor}: value/delta is {off:.3g} away from an integer (tolerance "
            f"{INTEGRAL_TOLERANCE}); the quantizer's alpha or bit width does not match this tensor"
        )
    return rounded.to(torch.int64).numpy()


def integerize(t: LayerTensors, same_weights: IntLayer | None = None) -> IntLayer:
    """w_int = round(weight_q / w_delta), x_int = round(act_q(x) / x_delta), both proven integral.

    ``same_weights``: this layer integerized from another batch of the same model, unchanged
    since (``qexport infer`` runs batch after batch): its ``w_int`` and ``w_float`` are taken
    instead of converting the weights again.
    """
    w_bit, act_bit = t.w_bit, t.act_bit
    w_delta = t.wgt_alpha / (2 ** (w_bit - 1) - 1)
    x_delta = t.act_alpha / (2**act_bit - 1)
    with torch.no_grad():
        x_q = quantize_act(t.x, _alpha(t.act_alpha, t.x), act_bit, t.act_clip)
    x_int = _to_int(x_q, x_delta, t.label, "x_int")
    if same_weights is not None and same_weights.name == t.name and same_weights.w_delta == w_delta:
        w_int, w_float = same_weights.w_int, same_weights.w_float
    else:
        w_int = _to_int(t.weight_q, w_delta, t.label, "w_int")
        w_float = None
    w_max = 2 ** (w_bit - 1) - 1
    if w_float is None and w_int.size and int(np.abs(w_int).max()) > w_max:
        raise BitWidthError(
            f"layer {t.label} w_int spans [{w_int.min()}, {w_int.max()}]; {w_bit}-bit symmetric "
            f"weights hold [-{w_max}, {w_max}]"
        )
    if x_int.size and int(x_int.max()) > 2**act_bit - 1:
        raise BitWidthError(
            f"layer {t.label} x_int reaches {x_int.max()}; {act_bit}-bit activations stop at {2**act_bit - 1}"
        )
    return IntLayer(
        **t.settings(),
        w_delta=w_delta,
        x_delta=x_delta,
        w_int=w_int,
        x_int=x_int,
        w_float=float_weights(w_int) if w_float is None else w_float,
        y_float=t.y.numpy(),
        next_x=None if t.next_x is None else t.next_x.numpy(),
        **_next_layer(t),
    )


def _alpha(alpha: float, x: torch.Tensor) -> torch.Tensor:
    """``alpha`` as the 0-d tensor the layer's forward divides by (in x's dtype, as torch casts it)."""
    return torch.tensor(alpha, dtype=x.dtype)


def _next_layer(t: LayerTensors) -> dict[str, Any]:
    alpha, bit, clip = t.next_act_alpha, t.next_act_bit, t.next_act_clip
    if t.next_x is None or alpha is None or bit is None or clip is None:
        return {}
    with torch.no_grad():
        x_q = quantize_act(t.next_x, _alpha(alpha, t.next_x), bit, clip)
    delta = alpha / (2**bit - 1)
    return {
        "next_x_int": _to_int(x_q, delta, f"{t.label} (the next conv's input)", "x_int"),
        "next_act_alpha": alpha,
        "next_act_bit": bit,
    }
