"""A user's quantized conv's activation width, read off its own activation quantiser: never assumed.

The course ``QuantConv2d`` keeps one ``bit`` for weights and activations, but its copies do not
have to (a 4-bit-weight, 2-bit-activation copy builds ``act_quantization(2)``); the width that
counts is the one ``act_alq`` computes with. :func:`probe_act_bit` feeds it a dense ramp over
[0, 1.25·α] and counts the levels it returns: 2^act_bit levels on the grid k·α/(2^act_bit − 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qexport.errors import InputError

PROBE_ACT_BITS = range(1, 9)
"""Activation widths a probe may find (the bits config's 1..8)."""

_PROBE_POINTS = 8193
"""Ramp points over [0, 1.25·α]: about 25 a level at 8 bits, so every level is hit."""

_GRID_TOLERANCE = 1e-4
"""How far (in steps) a returned level may sit from the grid k·α/(2^b − 1): float32 noise is ~1e-6."""


def probe_act_bit(module: nn.Module, label: str) -> int | None:
    """``act_bit`` of a quantized conv with a callable ``act_alq(x, act_alpha)`` (the course's).

    None when there is nothing to probe (no callable ``act_alq``). A quantiser whose levels on
    [0, α] are not 2^b points of the grid k·α/(2^b − 1) for b in 1..8 is refused naming the layer:
    qexport's ``x_int = round(x / α · (2^b − 1))`` would not reproduce it.
    """
    act_alq = getattr(module, "act_alq", None)
    if not callable(act_alq):
        return None
    alpha = torch.as_tensor(module.act_alpha).detach()
    scale = float(alpha)
    ramp = torch.linspace(0.0, 1.25, _PROBE_POINTS, dtype=alpha.dtype, device=alpha.device) * alpha
    where = f"layer {label} ({type(module).__name__})"
    try:
        with torch.no_grad():
            out = act_alq(ramp.clone(), alpha.clone())
    except Exception as err:  # the user's quantiser failed: name it, never a traceback
        raise InputError(
            f"{where}: probing its activation quantiser, act_alq(x, act_alpha) raised "
            f"{type(err).__name__}: {err}; qexport reads act_bit by calling it as the course's "
            "QuantConv2d.forward does"
        ) from None
    if not isinstance(out, torch.Tensor) or out.shape != ramp.shape:
        raise InputError(
            f"{where}: act_alq(x, act_alpha) returned {type(out).__name__}"
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}, not a tensor of x's "
            f"shape {tuple(ramp.shape)}; qexport reads act_bit from what it returns"
        )
    levels = torch.unique(out.detach().to(torch.float64))
    count = int(levels.numel())
    act_bit = round(math.log2(count)) if count > 1 else 0
    if count < 2 or 2**act_bit != count or act_bit not in PROBE_ACT_BITS:
        raise InputError(
            f"{where}: its activation quantiser act_alq gives {count} distinct level(s) over "
            f"[0, {1.25 * scale:g}] (act_alpha {scale:g}); qexport exports 2^act_bit levels for "
            f"act_bit {PROBE_ACT_BITS.start}..{PROBE_ACT_BITS.stop - 1}, so this quantiser's "
            "activations have no such integer form"
        )
    steps = levels / scale * (count - 1)
    off_grid = float((steps - torch.arange(count, dtype=torch.float64)).abs().max())
    if off_grid > _GRID_TOLERANCE:
        raise InputError(
            f"{where}: its activation quantiser act_alq has {count} levels over [0, {scale:g}] but "
            f"they are not the uniform grid k·act_alpha/{count - 1} (off by up to {off_grid:.3g} "
            "steps); qexport's x_int = round(x / act_alpha · (2^act_bit − 1)) would not reproduce them"
        )
    return act_bit
