"""A conv's weights converted to float32 once, with the half of the exactness bound only they set.

integerize hands them over beside ``w_int``, and integer_conv reads its bound and runs its float32
conv on them instead of converting the int64 weights at every call: at batch 1 that conversion
alone cost about as much as torch's whole conv on VGG16's 512-channel layers (issue 18).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class FloatWeights:
    """``source`` (the int64 ``w_int``, (oc, ic / groups, kh, kw)) as float32 ``w32``, and ``w_sum``:
    max over output channels of sum |w|, summed in float32.

    A ``w_sum`` below 2^24 is the exact sum and proves every weight converted exactly (see
    ``reference._float32_plan``). integer_conv uses them only when handed ``source`` itself
    (``is``): a layer whose ``w_int`` was replaced converts its new weights again. ``w_int`` is
    never edited in place.
    """

    source: np.ndarray
    w32: torch.Tensor
    w_sum: float


def float_weights(w_int: np.ndarray) -> FloatWeights:
    """Convert ``w_int`` once: w_int [[[[-7, 3]]]] -> w32 [[[[-7., 3.]]]], w_sum 10.0."""
    w32 = torch.from_numpy(np.ascontiguousarray(w_int)).to(torch.float32)
    return FloatWeights(w_int, w32, abs_sum(w32))


def abs_sum(w32: torch.Tensor) -> float:
    """max over output channels (axis 0) of sum |w|, summed in float32; 0.0 for no weights."""
    per_output = w32.abs().flatten(1).sum(dim=1)
    return float(per_output.max()) if per_output.numel() else 0.0
