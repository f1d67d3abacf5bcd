"""Exact integer reference convolution and the seeds' recovery checks.

Why the float convs are exact. Every product ``x * w`` of a conv of integers is an integer, and so
is every partial sum. ConvPlan bounds them all by ``max|x| * sum|w|`` of the worst output channel;
float32 holds every integer up to 2^24 and float64 up to 2^53, so within the bound no addition
rounds, in any order: any algorithm that adds the products themselves gives the exact sum. That
premise is made true, not assumed: ``exact_math()`` pins the CPU conv to such algorithms (oneDNN's
direct conv, or im2col + GEMM) by turning NNPACK off, whose Winograd and FFT convs transform the
inputs into non-integers and round (up to 0.03 off for a 64->64 3x3 4-bit conv at batch 16 with
oneDNN off), and keeps every float32 math mode "ieee" (a TF32 or bf16 mode rounds the factors).

A second line of defence: a float result that is not integral everywhere is redone in int64
(``_integral``). It catches an algorithm that rounds off the integers, as those transforms do
(0.018 off at 16x16); it is not the proof, since a wrong sum that lands on an integer (as any
does near 2^24, where float32's spacing is 1) would pass it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from qexport.ir.checks import LayerChecks
from qexport.ir.integerize import IntLayer
from qexport.precision import exact_math

MEAN_ERROR_LIMIT = 1e-3  # the seeds' check: mean |recovered - float| < 1e-3
_FLOAT64_EXACT = 2**53  # every integer of at most this magnitude is exact in float64
_FLOAT32_EXACT = 2**24  # ... and in float32


@dataclass(frozen=True)
class Psums:
    """Exact conv sums (n, oc, h', w') int64 before ReLU, and the checks against the float model."""

    psum: np.ndarray
    checks: LayerChecks

    @property
    def output(self) -> np.ndarray:
        return np.asarray(np.maximum(self.psum, 0))


def requantize(layer: IntLayer, psum: np.ndarray, *, check: bool = True) -> np.ndarray:
    """ReLU(psum) as the next conv's activation integers, the course's act quantizer in float64.

    x_next = round(min(max(psum, 0) * x_delta * w_delta / next_alpha, 1) * (2^next_bit - 1)).
    Checked against the integers the next layer really sees; a disagreement (a rounding tie decided
    differently in float32) is refused.
    """
    from qexport.errors import CheckFailed, InputError

    if layer.next_act_alpha is None or layer.next_act_bit is None or layer.next_x_int is None:
        raise InputError(
            f"layer {layer.layer}: requantization needs the next conv right after a ReLU (as features[33] "
            "-> features[35]); here a BatchNorm or pooling lies between. Drop 'requantize' from the "
            "profile's golden ops"
        )
    levels = 2**layer.next_act_bit - 1
    scaled = np.maximum(psum, 0).astype(np.float64) * (layer.x_delta * layer.w_delta) / layer.next_act_alpha
    x_next = np.round(np.minimum(scaled, 1.0) * levels).astype(np.int64)
    if check and not np.array_equal(x_next, layer.next_x_int):
        bad = int((x_next != layer.next_x_int).sum())
        raise CheckFailed(
            f"layer {layer.layer}: {bad} requantized value(s) differ from the next layer's "
            "activation integers"
        )
    return np.asarray(x_next)


def psum_bound(layer: IntLayer, x_range: tuple[int, int]) -> int:
    """Largest |psum| any input in ``x_range`` could give with this layer's weight range."""
    terms = layer.in_channels * layer.kernel * layer.kernel
    w_max = 2 ** (layer.w_bit - 1) - 1
    return int(terms * w_max * max(abs(x_range[0]), abs(x_range[1])))


ConvMethod = Literal["float32", "float32_blocks", "float64", "int64"]


@dataclass(frozen=True)
class ConvPlan:
    """How integer_conv computes a conv exactly, and the bound that proves it.

    ``bound`` is max over output channels of max|x| * sum|w|: no product and no partial sum of
    any output value, summed in any order, exceeds it. Integers up to 2^24 are exact in float32
    and up to 2^53 in float64, so a bound within them makes a float conv that sums the products
    directly exact (``exact_math()`` keeps torch on such convs). ``blocks`` are input-channel
    ranges whose own bounds stay within 2^24 (for "float32_blocks").
    """

    method: ConvMethod
    bound: int
    blocks: tuple[tuple[int, int], ...] = ()


def conv_plan(x_int: np.ndarray, w_int: np.ndarray) -> ConvPlan:
    """The cheapest exact way to convolve these integers (see ConvPlan)."""
    x = torch.from_numpy(np.ascontiguousarray(x_int, dtype=np.int64))
    x_max = max(-int(x.min()), int(x.max())) if x.numel() else 0
    # |w| summed over each (output channel, input channel)'s kernel, in exact integers
    w = torch.from_numpy(np.ascontiguousarray(w_int, dtype=np.int64))
    per_channel = w.abs().sum(dim=(2, 3)).numpy()
    bound = x_max * int(per_channel.sum(axis=1).max(initial=0))
    if bound <= _FLOAT32_EXACT:
        return ConvPlan("float32", bound)
    if x_max * int(per_channel.max(initial=0)) <= _FLOAT32_EXACT:
        return ConvPlan(
            "float32_blocks", bound, _channel_blocks(per_channel, _FLOAT32_EXACT // max(x_max, 1))
        )
    if bound <= _FLOAT64_EXACT:
        return ConvPlan("float64", bound)
    return ConvPlan("int64", bound)


def _channel_blocks(per_channel: np.ndarray, limit: int) -> tuple[tuple[int, int], ...]:
    """Split input channels into runs whose per-output-channel |w| sums stay within ``limit``."""
    blocks = []
    start = 0
    running = np.zeros(per_channel.shape[0], dtype=np.int64)
    for c in range(per_channel.shape[1]):  # one step an input channel, not a value
        if (running + per_channel[:, c]).max() > limit:
            blocks.append((start, c))
            start, running = c, np.zeros_like(running)
        running += per_channel[:, c]
    blocks.append((start, per_channel.shape[1]))
    return tuple(blocks)


def _float_conv(x: np.ndarray, w: np.ndarray, dtype: torch.dtype, stride: int, padding: int) -> np.ndarray:
    out = F.conv2d(
        torch.from_numpy(x).to(dtype), torch.from_numpy(w).to(dtype), stride=stride, padding=padding
    )
    return out.numpy()


def integer_conv(x_int: np.ndarray, w_int: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Exact conv of integer arrays (n, c, h, w) * (oc, c, kh, kw) -> int64 (n, oc, h', w').

    Float convs run when the plan's bound makes them exact (see ConvPlan and the module
    docstring), inside ``exact_math()``, which keeps torch on algorithms that add the products
    directly. A result that still is not integral is redone in int64 (``_integral``).
    """
    plan = conv_plan(x_int, w_int)
    if plan.method == "int64":
        return _int64_conv(x_int, w_int, stride, padding)
    with exact_math():
        if plan.method == "float64":
            parts = [_float_conv(x_int, w_int, torch.float64, stride, padding)]
        else:
            blocks = plan.blocks or ((0, w_int.shape[1]),)
            parts = [
                _float_conv(x_int[:, lo:hi], w_int[:, lo:hi], torch.float32, stride, padding)
                for lo, hi in blocks
            ]
    psums = [psum for psum in map(_integral, parts) if psum is not None]
    if len(psums) < len(parts):  # each block checked before the int64 sum hides a fraction
        return _int64_conv(x_int, w_int, stride, padding)
    return psums[0] if len(psums) == 1 else np.asarray(np.sum(psums, axis=0))


def _integral(out: np.ndarray) -> np.ndarray | None:
    """``out`` as int64 if every value is an integer, else None (the second line of defence).

    Under ``exact_math()`` a float conv within its plan's bound is integral; a conv that
    transformed its inputs (Winograd, FFT) is not, and its result must not be used.
    """
    psum = out.astype(np.int64)
    return psum if np.array_equal(psum, out) else None


def _int64_conv(x_int: np.ndarray, w_int: np.ndarray, stride: int, padding: int) -> np.ndarray:
    kh, kw = w_int.shape[2:]
    padded = np.pad(x_int.astype(np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (n, c, h', w', kh, kw)
    return np.asarray(np.einsum("nchwij,ocij->nohw", windows, w_int.astype(np.int64), optimize=True))


def conv_psum(layer: IntLayer) -> Psums:
    """The layer's exact psums, with recovered = psum * x_delta * w_delta checked as in seed 003."""
    psum = integer_conv(layer.x_int, layer.w_int, layer.stride, layer.padding)
    recovered = psum.astype(np.float64) * (layer.x_delta * layer.w_delta)
    error = np.abs(recovered - layer.y_float.astype(np.float64))
    mean, next_mean, next_max = float(error.mean()), None, None
    if layer.next_x is not None:
        next_error = np.abs(np.maximum(recovered, 0.0) - layer.next_x.astype(np.float64))
        next_mean, next_max = float(next_error.mean()), float(next_error.max())
    passed = mean < MEAN_ERROR_LIMIT and (next_mean is None or next_mean < MEAN_ERROR_LIMIT)
    return Psums(psum, LayerChecks(mean, float(error.max()), next_mean, next_max, passed))
