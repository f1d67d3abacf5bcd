"""Exact integer reference convolution and the seeds' recovery checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qexport.integerize import IntLayer

MEAN_ERROR_LIMIT = 1e-3  # the seeds' check: mean |recovered - float| < 1e-3
_FLOAT64_EXACT = 2**53  # every integer below this, and every partial sum, is exact in float64


@dataclass(frozen=True)
class Psums:
    """Exact conv sums (n, oc, h', w') int64 before ReLU, and the checks against the float model."""

    psum: np.ndarray
    checks: dict[str, float | bool | None]

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


def integer_conv(x_int: np.ndarray, w_int: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Exact conv of integer arrays (n, c, h, w) * (oc, c, kh, kw) -> int64 (n, oc, h', w').

    Uses float64 convolution when the worst-case partial sum is below 2^53 — then every product
    and every partial sum is an exactly representable integer, whatever the summation order —
    and int64 im2col arithmetic otherwise.
    """
    terms = w_int.shape[1] * w_int.shape[2] * w_int.shape[3]
    worst = terms * int(np.abs(x_int).max(initial=0)) * int(np.abs(w_int).max(initial=0))
    if worst < _FLOAT64_EXACT:
        out = F.conv2d(
            torch.from_numpy(x_int.astype(np.float64)),
            torch.from_numpy(w_int.astype(np.float64)),
            stride=stride,
            padding=padding,
        )
        return out.numpy().astype(np.int64)
    return _int64_conv(x_int, w_int, stride, padding)


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
    checks: dict[str, float | bool | None] = {
        "output_mean_error": float(error.mean()),
        "output_max_error": float(error.max()),
        "next_input_mean_error": None,
        "next_input_max_error": None,
    }
    passed = checks["output_mean_error"] < MEAN_ERROR_LIMIT  # type: ignore[operator]
    if layer.next_x is not None:
        next_error = np.abs(np.maximum(recovered, 0.0) - layer.next_x.astype(np.float64))
        checks["next_input_mean_error"] = float(next_error.mean())
        checks["next_input_max_error"] = float(next_error.max())
        passed = passed and float(next_error.mean()) < MEAN_ERROR_LIMIT
    checks["passed"] = bool(passed)
    return Psums(psum, checks)
