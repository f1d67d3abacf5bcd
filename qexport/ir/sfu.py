"""The special-function unit as integer thresholds: one conv's psums to the next conv's ``x_int``.

For a chain conv -> [BatchNorm] -> ReLU -> [max-pool] -> next conv's act quantiser, the float model
computes, per output channel,

    x_next = round_half_even(clip(relu(bn(psum * s)) / alpha', 0, 1) * L)
    bn(y)  = (y - mean) / sqrt(var + eps) * gamma + beta        (eval mode, running statistics)

with ``s = x_delta * w_delta`` and ``L = 2^act_bit' - 1``. Level ``k`` (1..L) is reached when
``bn(psum * s) >= b_k = (k - 0.5) * alpha' / L`` (ReLU is subsumed: ``b_k > 0``). Solving for psum:

    gamma > 0:  psum >= t_k     gamma < 0:  psum <= t_k     t_k = mean / s + (b_k - beta) * r / (gamma * s)

(``r = sqrt(var + eps)``), so ``x_next = count(psum >= T)`` with ``T_k = ceil(t_k)``, or
``count(psum <= T)`` with ``T_k = floor(t_k)``; gamma == 0 makes the channel a constant. Max-pool
runs on the thresholded integers (the quantiser is monotone increasing, so it commutes with max).

**Ties.** A psum exactly on a boundary (``bn(psum * s) == b_k``, i.e. ``t_k`` an integer) is decided
as ``torch.round`` does, half to even: level ``k`` is reached there iff ``k`` is even (2.5 -> 2
reaches level 2; 1.5 -> 2 reaches level 2; 0.5 -> 0 does not reach level 1).

**Exactness.** Every parameter is a float32 (or the double ``eps``), so an exact rational; only
``r`` is irrational. ``t_k`` is first computed in float64; where it lies farther than
``_float64_error`` from every integer, its ceiling/floor is certain (the bound exceeds the float64
error of the ~12 operations by 2^13, see ``_float64_error``). Elsewhere (ties, huge values) the
threshold is found with the exact predicate ``sign(P + Q * sqrt(q))`` in :class:`fractions.Fraction`
(squares compared, no square root taken). Thresholds are clamped to ``[-2^62 - 1, 2^62 + 1]``,
exact for every int64 psum; :meth:`Thresholds.clamped` narrows them to a declared psum range.

**Where the float32 model can differ.** The float model computes the conv, the BatchNorm and the
division by alpha' in float32, so its value sits a few float32 ulps (and the conv's own summation
error) from the exact one; a psum within that distance of a threshold can land on the other level.
:func:`float32_band` bounds how far, per value, from the float model's own conv output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from qexport.errors import InputError

PSUM_LIMIT = 2**62
"""Thresholds are exact for every psum in [-PSUM_LIMIT, PSUM_LIMIT]."""
_U32 = 2.0**-24  # float32 unit roundoff
_MARGIN = 2.0**-40  # 2^13 times the float64 error of computing t_k (about 12 roundings of 2^-53)


@dataclass(frozen=True, slots=True)
class BatchNorm:
    """An eval-mode BatchNorm's per-channel parameters, float64 arrays (C,) holding float32 values."""

    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float

    @classmethod
    def identity(cls, channels: int) -> BatchNorm:
        """No BatchNorm in the chain: bn(y) = y (gamma 1, beta 0, mean 0, var + eps = 1)."""
        ones, zeros = np.ones(channels), np.zeros(channels)
        return cls(ones, zeros, zeros, ones, 0.0)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Per output channel, the psum thresholds of the next ``x_int``.

    ``thresholds`` (C, L) int64; ``direction`` (C,) int8: 1 means ``x = count(psum >= T)`` (T
    ascending), -1 ``x = count(psum <= T)`` (T descending), 0 a constant channel
    (``x = constant[c]``, gamma == 0; its thresholds are written so either rule gives it).
    Channel 0 with direction 1 and T = [10, 20, 35]: psum 19 -> 1, psum 35 -> 3.
    """

    thresholds: np.ndarray
    direction: np.ndarray
    constant: np.ndarray
    act_bit: int

    def apply(self, psum: np.ndarray) -> np.ndarray:
        """``psum`` (N, C, H, W) int64 -> the next ``x_int`` (N, C, H, W) int64.

        Up to 32 levels (act_bit <= 5): one whole-array comparison a level, ``x = sum_k (s * psum
        >= s * T_k)`` with ``s`` the channel's direction (-1 turns ``psum <= T`` round), about
        twice as fast as a searchsorted a channel; more levels: a searchsorted a channel.
        """
        channels, levels = self.thresholds.shape
        sign = np.where(self.direction < 0, -1, 1).astype(np.int64)
        if levels <= 32 and psum.size:
            # thresholds past the psums' range clamped to just beyond it (the counts stay), and
            # int32 where that range allows: half the bytes a comparison reads
            limit = int(np.abs(psum).max()) + 1
            kind = np.int32 if limit < 2**31 - 1 else np.int64
            values = np.multiply(psum.astype(kind), sign.astype(kind)[None, :, None, None])
            steps = (np.clip(self.thresholds, -limit, limit) * sign[:, None]).T.astype(kind)  # (L, C)
            count = np.zeros(psum.shape, dtype=np.uint8)
            for k in range(levels):  # a level at a time, every value at once
                count += values >= steps[k][None, :, None, None]
            out = count.astype(np.int64)
        else:
            out = np.zeros(psum.shape, dtype=np.int64)
            for c in range(channels):  # one searchsorted a channel, over every value of it
                t = self.thresholds[c]
                if self.direction[c] > 0:
                    out[:, c] = np.searchsorted(t, psum[:, c], side="right")
                else:
                    out[:, c] = levels - np.searchsorted(t[::-1], psum[:, c], side="left")
        constant = self.direction == 0
        if constant.any():
            out[:, constant] = self.constant[constant][None, :, None, None]
        return out

    def clamped(self, limit: int) -> Thresholds:
        """The same rule for psums in [-limit, limit], every threshold in [-limit - 1, limit + 1]."""
        return Thresholds(
            np.clip(self.thresholds, -limit - 1, limit + 1), self.direction, self.constant, self.act_bit
        )


def scale(act_alpha: float, act_bit: int, wgt_alpha: float, w_bit: int) -> Fraction:
    """``s = x_delta * w_delta`` exactly: psum * s is the conv's float output."""
    x_delta = Fraction(act_alpha) / (2**act_bit - 1)
    w_delta = Fraction(wgt_alpha) / (2 ** (w_bit - 1) - 1)
    return Fraction(x_delta * w_delta)


def _sign_sum(p: Fraction, q: Fraction, square: Fraction) -> int:
    """sign(p + q * sqrt(square)), exactly (square >= 0)."""
    if p >= 0 and q >= 0:
        return 0 if p == 0 and (q == 0 or square == 0) else 1
    if p <= 0 and q <= 0:
        return 0 if p == 0 and (q == 0 or square == 0) else -1
    diff = p * p - q * q * square
    sign = (diff > 0) - (diff < 0)
    return sign if p > 0 else -sign


def _first_true(pred: Callable[[int], bool], lo: int, end: int, guess: int) -> int:
    """The least p in [lo, end) with pred(p) (pred increasing), or ``end``; ``guess`` tried first."""
    guess = min(max(guess, lo), end)
    if (guess == lo or not pred(guess - 1)) and (guess == end or pred(guess)):
        return guess
    if guess < end and pred(guess):
        end = guess
    else:
        lo = guess + 1
    while lo < end:
        mid = (lo + end) // 2
        if pred(mid):
            end = mid
        else:
            lo = mid + 1
    return lo


def thresholds(s: Fraction, bn: BatchNorm, next_alpha: float, next_bit: int) -> Thresholds:
    """The ``2^next_bit - 1`` psum thresholds of every output channel (see the module docstring)."""
    if s <= 0 or not next_alpha > 0:
        raise InputError(
            f"thresholds need a positive scale and next act_alpha (got s={float(s)}, "
            f"act_alpha={next_alpha}); the checkpoint's alphas are not usable"
        )
    levels = 2**next_bit - 1
    channels = bn.gamma.shape[0]
    out = np.zeros((channels, levels), dtype=np.int64)
    direction = np.sign(bn.gamma).astype(np.int8)
    constant = np.zeros(channels, dtype=np.int64)
    alpha = Fraction(next_alpha)
    bounds = [Fraction(2 * k - 1, 2) * alpha / levels for k in range(1, levels + 1)]
    eps = Fraction(bn.eps)
    # float64 estimates of every t_k, (C, L), and their error bounds
    s64 = float(s)
    b64 = (np.arange(1, levels + 1) - 0.5) * next_alpha / levels
    r = np.sqrt(bn.var + bn.eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = bn.mean[:, None] / s64 + (b64[None, :] - bn.beta[:, None]) * r[:, None] / (
            bn.gamma[:, None] * s64
        )
        err = _float64_error(t, bn, b64, r, s64)
    frac_ok = np.isfinite(t) & (np.abs(t) < 2.0**52)
    nearest = np.where(frac_ok, np.round(np.where(frac_ok, t, 0.0)), 0.0)
    certified = frac_ok & (np.abs(t - nearest) > err)
    for c in range(channels):
        gamma, beta = Fraction(float(bn.gamma[c])), Fraction(float(bn.beta[c]))
        if gamma == 0:
            # bn = beta everywhere: the level of beta, ties half to even
            level = sum(1 for k, b in enumerate(bounds, 1) if beta > b or (beta == b and k % 2 == 0))
            constant[c] = level
            out[c, :level] = -PSUM_LIMIT - 1  # count(psum >= T) gives the constant too
            out[c, level:] = PSUM_LIMIT + 1
            continue
        mean, square = Fraction(float(bn.mean[c])), Fraction(float(bn.var[c])) + eps
        for k, b in enumerate(bounds, 1):
            if certified[c, k - 1]:
                tk = t[c, k - 1]
                out[c, k - 1] = math.ceil(tk) if gamma > 0 else math.floor(tk)
                continue
            out[c, k - 1] = _exact_threshold(s, gamma, beta, mean, square, b, k, t[c, k - 1])
    return Thresholds(out, direction, constant, next_bit)


def _exact_threshold(
    s: Fraction,
    gamma: Fraction,
    beta: Fraction,
    mean: Fraction,
    square: Fraction,
    b: Fraction,
    k: int,
    t: float,
) -> int:
    """T_k by the exact predicate: level k reached at psum p iff bn(p s) > b_k, or == b_k and k even."""

    def reached(p: int) -> bool:
        sign = _sign_sum((p * s - mean) * gamma, beta - b, square)
        return sign > 0 or (sign == 0 and k % 2 == 0)

    guess = int(np.clip(np.nan_to_num(t), -PSUM_LIMIT, PSUM_LIMIT))
    if gamma > 0:
        return _first_true(reached, -PSUM_LIMIT, PSUM_LIMIT + 1, guess)
    # reached is decreasing: T is one below the first psum that no longer reaches level k
    return _first_true(lambda p: not reached(p), -PSUM_LIMIT, PSUM_LIMIT + 1, guess + 1) - 1


def _float64_error(t: np.ndarray, bn: BatchNorm, b64: np.ndarray, r: np.ndarray, s64: float) -> np.ndarray:
    """A bound on |float64 t_k - exact t_k|, (C, L).

    Every input is exact in float64 (float32 parameters, the double eps, integers). t_k takes about
    12 operations, each rounding with relative error <= 2^-53 of its result; an addition's error is
    at most 2^-53 times the sum of its operands' magnitudes, and products and quotients carry
    relative errors forward. So |error| <= ~12 * 2^-53 * M with M = |mean| / s + (|b_k| + |beta|) * r
    / (|gamma| s) + |t|, and 2^-40 * (M + 1) bounds it with room to spare.
    """
    magnitude = np.abs(bn.mean)[:, None] / s64 + (np.abs(b64)[None, :] + np.abs(bn.beta)[:, None]) * r[
        :, None
    ] / (np.abs(bn.gamma)[:, None] * s64)
    return np.asarray(_MARGIN * (magnitude + np.abs(t) + 1.0))


def max_pool(x: np.ndarray, kernel: int) -> np.ndarray:
    """Max-pool (N, C, H, W) integers with a ``kernel`` x ``kernel`` window, stride ``kernel`` (as
    ``nn.MaxPool2d(k, k)``: a remainder row or column is dropped)."""
    n, c, h, w = x.shape
    ho, wo = h // kernel, w // kernel
    cropped = x[:, :, : ho * kernel, : wo * kernel]
    return np.asarray(cropped.reshape(n, c, ho, kernel, wo, kernel).max(axis=(3, 5)))


def level_values(
    psum: np.ndarray, s: Fraction, bn: BatchNorm, next_alpha: float, next_bit: int
) -> np.ndarray:
    """bn(psum * s) * L / alpha' in float64 (N, C, H, W): the value the next quantiser rounds."""
    levels = 2**next_bit - 1
    a = bn.gamma / np.sqrt(bn.var + bn.eps)
    y = psum.astype(np.float64) * float(s)
    return np.asarray(
        ((y - bn.mean[None, :, None, None]) * a[None, :, None, None] + bn.beta[None, :, None, None])
        * (levels / next_alpha)
    )


def float32_band(
    psum: np.ndarray, y_float: np.ndarray, s: Fraction, bn: BatchNorm, next_alpha: float, next_bit: int
) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest next ``x_int`` (N, C, H, W) the float32 model can give for ``psum``.

    ``y_float`` is the float model's own conv output; its distance from ``psum * s`` is measured,
    not bounded. The BatchNorm (as ``y * a + b``, a few float32 operations) and the quantiser's
    division and scaling add at most 16 float32 roundings of the magnitudes involved, and
    2^-40 covers this float64 evaluation. Where ours and the float model's ``x_int`` differ and both
    lie in the band, the exact value sits within float32 rounding of a threshold; anything else is
    a real disagreement.
    """
    levels = 2**next_bit - 1
    per = (slice(None), None, None)
    a = np.abs(bn.gamma / np.sqrt(bn.var + bn.eps))[per]
    v = level_values(psum, s, bn, next_alpha, next_bit)
    y = psum.astype(np.float64) * float(s)
    delta = np.abs(y_float.astype(np.float64) - y)
    bn_value = np.abs(v) * next_alpha / levels
    slack = a * delta + 16 * _U32 * (
        a * np.abs(y_float) + a * np.abs(bn.mean)[per] + np.abs(bn.beta)[per] + bn_value
    )
    err = slack * (levels / next_alpha) + 4 * _U32 * np.abs(v) + _MARGIN * (np.abs(v) + 1.0)
    low = np.clip(np.ceil(v - err + 0.5) - 1, 0, levels).astype(np.int64)
    high = np.clip(np.floor(v + err + 0.5), 0, levels).astype(np.int64)
    return low, high


@dataclass(frozen=True)
class LayerSfu:
    """One conv's SFU as the exported files hold it: its consumer, the ops between, the rule and the
    integers the rule gives.

    ``next`` is the module path of the conv that reads the result, ``between`` the ops
    (``("batchnorm", "relu", "maxpool2")``), ``pool`` the max-pool kernel (None: no pool);
    ``requant`` (N, C, H', W') the next conv's ``x_int`` as the SFU makes it from this layer's
    golden psums: ``max_pool(thresholds.apply(psum), pool)``.
    """

    next: str
    between: tuple[str, ...]
    thresholds: Thresholds
    pool: int | None
    requant: np.ndarray

    @property
    def next_act_bit(self) -> int:
        return self.thresholds.act_bit


def sfu_output(rule: Thresholds, psum: np.ndarray, pool: int | None) -> np.ndarray:
    """The next conv's ``x_int`` (N, C, H', W') from ``psum`` (N, C, H, W): thresholds, then max-pool."""
    levels = rule.apply(psum)
    return levels if pool is None else max_pool(levels, pool)
