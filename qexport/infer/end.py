"""The model's end (its float classifier) in int8: ``qexport infer --end int8``.

By default the end (a VGG's ``classifier``: Linear, ReLU, Dropout ...; a ResNet's ``fc``) runs in
float on the dequantised integers. With ``--end int8`` every Linear runs as an integer matmul:

    w_int[o, i] = round_half_even(w[o, i] / w_scale[o])     w_scale[o] = max_i |w[o, i]| / 127
    x_int[n, i] = clip(round_half_even(x[n, i] / x_scale), -127, 127)
    acc[n, o]   = sum_i x_int[n, i] * w_int[o, i]           exact, int32 (|acc| <= 127^2 * K)
    y[n, o]     = acc[n, o] * (x_scale * w_scale[o]) + bias[o]   float64, then float32

per output row symmetric int8 weights (a zero row: ``w_scale`` 1, ``w_int`` 0) and one symmetric
int8 scale for the Linear's input, calibrated on the images run: ``x_scale = max |x| / 127`` over
every image (1 when all are 0). The max, not a percentile: on the images run no input is clipped,
so every input's error is at most half a step, and the calibration is deterministic; a percentile
would clip the largest activations, the ones that decide the top-1. Layers are calibrated in
order, each on its input as the int8 layers before it make it. ReLU between Linears runs on the
float ``y``; what precedes the first Linear (average or max pool, flatten) stays in float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qexport.errors import BitWidthError

INT8_MAX = 127
"""Symmetric int8: [-127, 127] (-128 unused, so a scale maps max |v| to 127 either sign)."""
_ACC_LIMIT = 2**31 - 1


@dataclass(frozen=True, slots=True)
class EndLinear:
    """One float Linear of the end: ``weight`` (out, in) and ``bias`` (out,) float32, its path."""

    path: str
    weight: np.ndarray
    bias: np.ndarray | None


EndOp = EndLinear | str
"""A Linear, or ``"relu"``."""


@dataclass(frozen=True, slots=True)
class Int8Linear:
    """A Linear in int8: ``w_int`` (out, in) int8, ``w_scale`` (out,) float64, ``x_scale``.

    w = [[0.5, -0.25]] -> w_scale [0.5/127], w_int [[127, -64]]; x_scale 0.1, x = [1.0, 0.3] ->
    x_int [10, 3], acc 127*10 - 64*3 = 1078, y = 1078 * 0.1 * 0.5/127 = 0.4244...
    """

    path: str
    w_int: np.ndarray
    w_scale: np.ndarray
    x_scale: float
    bias: np.ndarray | None

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x`` (N, in) float -> (N, out) float32, through the int8 matmul."""
        x_int = quantise_input(x, self.x_scale)
        acc = x_int.astype(np.int32) @ self.w_int.T.astype(np.int32)  # exact: bounded in int8_linear
        y = acc.astype(np.float64) * (self.x_scale * self.w_scale)[None, :]
        if self.bias is not None:
            y = y + self.bias.astype(np.float64)[None, :]
        return y.astype(np.float32)


def quantise_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` (out, in) -> int8 (out, in) and per-row scales (out,): symmetric, from max |w|."""
    w = weight.astype(np.float64)
    top = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0])
    scale = np.where(top > 0, top / INT8_MAX, 1.0)
    w_int = np.clip(np.round(w / scale[:, None]), -INT8_MAX, INT8_MAX)  # numpy: half to even
    return w_int.astype(np.int8), scale


def calibrate(x: np.ndarray) -> float:
    """The input scale: ``max |x| / 127`` over every value (1.0 when all are 0)."""
    top = float(np.abs(x.astype(np.float64)).max(initial=0.0))
    return top / INT8_MAX if top > 0 else 1.0


def quantise_input(x: np.ndarray, x_scale: float) -> np.ndarray:
    """``x`` float -> int8: ``clip(round_half_even(x / x_scale), -127, 127)``."""
    return np.clip(np.round(x.astype(np.float64) / x_scale), -INT8_MAX, INT8_MAX).astype(np.int8)


def int8_linear(linear: EndLinear, x: np.ndarray) -> Int8Linear:
    """``linear`` in int8, its input scale calibrated on ``x`` (N, in)."""
    fan_in = int(linear.weight.shape[1])
    if INT8_MAX * INT8_MAX * fan_in > _ACC_LIMIT:
        raise BitWidthError(
            f"{linear.path}: {fan_in} inputs of int8 x int8 can reach {INT8_MAX**2 * fan_in}; a "
            "32-bit accumulator holds 2^31 - 1; run the end in float (--end float)"
        )
    w_int, w_scale = quantise_rows(linear.weight)
    return Int8Linear(linear.path, w_int, w_scale, calibrate(x), linear.bias)


def run_int8_end(ops: list[EndOp], x: np.ndarray) -> tuple[np.ndarray, list[Int8Linear]]:
    """The end on ``x`` (N, features) float32, every Linear in int8 calibrated on ``x`` itself;
    returns the logits (N, classes) float32 and the int8 layers made."""
    made: list[Int8Linear] = []
    y = x.astype(np.float32)
    for op in ops:
        if isinstance(op, EndLinear):
            layer = int8_linear(op, y)
            made.append(layer)
            y = layer.apply(y)
        else:  # relu
            y = np.maximum(y, np.float32(0.0))
    return y, made
