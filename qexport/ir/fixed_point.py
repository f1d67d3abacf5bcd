"""The special-function unit in fixed point: a residual block's psums to the next conv's ``x_int``.

Where a residual add sits between two quantized convs (a ResNet block's end,
``relu(bn2(conv2(out)) + shortcut)``), thresholds cannot express the SFU: the result depends on
two tensors. The SFU then works on an **accumulator** of integers ``acc`` whose value is
``acc * u`` with the block's unit ``u = x_delta' / 2^F`` (``x_delta'`` the next block's
``conv1`` input step, ``F = frac_bits``), so ``acc`` is the next ``x_int`` with ``F`` more
fractional bits. Every step, to the bit:

    term    = rshift_up(psum * M[c], S[c]) + B[c]            BatchNorm fold of a conv (conv2, downsample)
    skip'   = rshift_up(skip * Mk, Sk)                       identity shortcut rescaled to this unit
    acc     = term + (skip' or the downsample's term)        the residual add, exact (int64)
    out     = max(acc, 0)                                    ReLU
    skip_o  = out, refused when > 2^skip_bits - 1            the next block's shortcut, unsigned
    x_next  = min(rshift_even(out * Mq, Sq + F), 2^act_bit' - 1)   requantisation, per consumer

    rshift_up(v, S)   = (v + 2^(S-1)) >> S   (S >= 1; v for S = 0): round half up (toward +inf);
                        ``>>`` is the arithmetic shift (floor), so -2.5 -> -2, 2.5 -> 3.
    rshift_even(v, S) = round(v / 2^S), a tie to the even integer (as ``torch.round``): with
                        q = v >> S and r = v - q * 2^S, q + 1 when r > 2^(S-1) or (r == 2^(S-1)
                        and q odd).

**The fold.** A conv's float output is ``psum * s`` (``s = x_delta * w_delta``); eval-mode
BatchNorm makes it ``psum * s * a + b`` with ``a = gamma / sqrt(var + eps)`` and
``b = beta - mean * a`` (no BatchNorm: ``a = 1, b = 0``). In units ``u``: ``f = s * a / u`` and
``B = round_half_even(b / u)`` (float64). ``M[c] = round_half_even(f[c] * 2^S[c])`` with the
largest ``S[c]`` in ``[0, MAX_SHIFT]`` that keeps ``|M[c]| <= 2^(mult_bits-1) - 1`` (a signed
``mult_bits`` multiplier; ``f == 0`` gives ``M = 0, S = 0``). ``B`` is a signed ``bias_bits``
integer. The identity shortcut's rescale ``Mk, Sk`` and a consumer's requantisation ``Mq, Sq``
are the same construction per tensor with ``f = u_in / u`` and ``f = x_delta' / x_delta_q``
(``Mq = 1, Sq = 0`` for the next ``conv1``, whose grid the unit is: there the requantisation is
the course quantiser's rounding and clip exactly).

**Saturation.** Nothing saturates silently: a multiplier that does not fit even at ``S = 0``, a
bias outside ``bias_bits`` and a shortcut above ``2^skip_bits - 1`` raise
:class:`~qexport.errors.BitWidthError` naming the layer and the width needed. ``x_next`` clips at
``2^act_bit' - 1`` (the course quantiser clips at alpha) and ReLU at 0; that is the model's clip.

**Where it differs from the float model.** ``M`` and ``B`` round ``f`` and ``b / u`` (relative
error ``2^-(mult_bits-1)`` and ``2^-F`` of a step), each term rounds to ``2^-F`` of a step, and the
shortcut is carried to ``2^-F`` of a step where the float model adds it unrounded; a value within
that of a rounding boundary of the next quantiser can land on the other level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qexport.errors import BitWidthError, InputError
from qexport.ir.sfu import BatchNorm

MAX_SHIFT = 48
"""Largest shift of a multiplier (keeps psum * M inside int64 for |psum| < 2^(62 - mult_bits))."""


@dataclass(frozen=True, slots=True)
class FixedPointWidths:
    """The declared widths of the fixed-point SFU.

    ``mult_bits``: signed multipliers (fold, rescale, requantisation); ``frac_bits``: the
    accumulator's fractional bits below the next ``x_int``'s step; ``skip_bits``: the unsigned
    shortcut carried between blocks; ``bias_bits``: the signed folded bias.
    """

    mult_bits: int = 28
    frac_bits: int = 20
    skip_bits: int = 32
    bias_bits: int = 40

    def __post_init__(self) -> None:
        for name, value, low, high in (
            ("mult_bits", self.mult_bits, 2, 32),
            ("frac_bits", self.frac_bits, 0, 24),
            ("skip_bits", self.skip_bits, 1, 48),
            ("bias_bits", self.bias_bits, 2, 48),
        ):
            if not low <= value <= high:
                raise InputError(f"fixed point {name} is {value}; choose {low}..{high}")
        if self.mult_bits + self.skip_bits > 62:
            raise InputError(
                f"fixed point mult_bits {self.mult_bits} + skip_bits {self.skip_bits} exceed 62: a "
                "shortcut times its multiplier would overflow int64; narrow one of them"
            )

    def as_dict(self) -> dict[str, int]:
        return {
            "mult_bits": self.mult_bits,
            "frac_bits": self.frac_bits,
            "skip_bits": self.skip_bits,
            "bias_bits": self.bias_bits,
        }


@dataclass(frozen=True, slots=True)
class Affine:
    """Per channel ``rshift_up(v * multiplier, shift) + bias``, int64 arrays (C,) (or (1,): one
    value for the tensor). Channel 0 with M = 181, S = 8, B = -3: v = 100 -> (18100 + 128) >> 8
    - 3 = 68."""

    multiplier: np.ndarray
    shift: np.ndarray
    bias: np.ndarray

    def apply(self, values: np.ndarray) -> np.ndarray:
        """``values`` (N, C, H, W) int64 -> (N, C, H, W) int64."""
        per = (None, slice(None), None, None)
        m, s, b = self.multiplier[per], self.shift[per], self.bias[per]
        return np.asarray(rshift_up(values.astype(np.int64) * m, s) + b)


def rshift_up(v: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """``round(v / 2^shift)``, a tie toward +inf: ``(v + 2^(shift-1)) >> shift`` (``v`` at 0)."""
    s = np.asarray(shift, dtype=np.int64)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return np.asarray(np.right_shift(v + half, s))


def rshift_even(v: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """``round(v / 2^shift)``, a tie to the even integer (``torch.round``'s rule)."""
    s = np.asarray(shift, dtype=np.int64)
    q = np.right_shift(v, s)
    r = v - np.left_shift(q, s)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 1)  # s = 0: r == 0
    up = (r > half) | ((r == half) & (s > 0) & (q % 2 == 1))
    return np.asarray(q + up.astype(np.int64))


def _multiplier(f: np.ndarray, mult_bits: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``M = round_half_even(f * 2^S)`` with the largest S in [0, MAX_SHIFT] keeping |M| in
    ``mult_bits`` signed bits (``f`` float64, (C,))."""
    limit = 2 ** (mult_bits - 1) - 1
    m = np.zeros(f.shape, dtype=np.int64)
    s = np.zeros(f.shape, dtype=np.int64)
    for c, value in enumerate(f.tolist()):
        if not math.isfinite(value):
            raise InputError(
                f"{what}: channel {c}'s scale is {value}; the checkpoint's BatchNorm is unusable"
            )
        if value == 0.0:
            continue
        shift = MAX_SHIFT
        while shift > 0 and abs(round(value * 2.0**shift)) > limit:
            shift -= 1
        mult = round(value * 2.0**shift)
        if abs(mult) > limit:
            need = int(abs(mult)).bit_length() + 1
            raise BitWidthError(
                f"{what}: channel {c} needs a multiplier of {mult} at shift 0; {mult_bits}-bit signed "
                f"multipliers hold +-{limit}; try --mult-bits {need}"
            )
        m[c], s[c] = mult, shift
    return m, s


def fold(s: float, bn: BatchNorm, unit: float, widths: FixedPointWidths, what: str) -> Affine:
    """A conv's BatchNorm folded into accumulator units ``unit``: ``psum -> bn(psum * s) / unit``."""
    a = bn.gamma / np.sqrt(bn.var + bn.eps)
    b = bn.beta - bn.mean * a
    m, shift = _multiplier(s * a / unit, widths.mult_bits, what)
    bias = np.round(b / unit)  # numpy rounds half to even
    limit = 2 ** (widths.bias_bits - 1)
    if bias.size and not (np.all(np.isfinite(bias)) and np.abs(bias).max() < limit):
        worst = float(np.abs(bias).max())
        need = int(worst).bit_length() + 1 if math.isfinite(worst) else 0
        raise BitWidthError(
            f"{what}: the folded bias reaches {worst:.0f}; {widths.bias_bits}-bit signed biases hold "
            f"[-{limit}, {limit - 1}]; try --bias-bits {need}"
        )
    return Affine(m, shift, bias.astype(np.int64))


def rescale(ratio: float, widths: FixedPointWidths, what: str) -> Affine:
    """One multiplier for a whole tensor: ``v -> rshift_up(v * M, S) ~ v * ratio``."""
    m, s = _multiplier(np.array([ratio]), widths.mult_bits, what)
    return Affine(m, s, np.zeros(1, dtype=np.int64))


@dataclass(frozen=True, slots=True)
class Requant:
    """The accumulator to one consumer's ``x_int``: ``min(rshift_even(out * M, S), levels)``,
    where ``S`` already includes ``frac_bits``; ``M = 1, S = F`` for the next ``conv1``."""

    multiplier: int
    shift: int
    levels: int

    def apply(self, out: np.ndarray) -> np.ndarray:
        """``out`` (N, C, H, W) int64, >= 0 (after ReLU) -> ``x_int`` in [0, levels]."""
        return np.asarray(np.minimum(rshift_even(out * self.multiplier, self.shift), self.levels))


def requant(ratio: float, act_bit: int, widths: FixedPointWidths, what: str) -> Requant:
    """Requantisation to a grid ``ratio`` times finer than the accumulator's step grid
    (``ratio = x_delta' / x_delta_q``); exactly the shift by ``frac_bits`` when ``ratio == 1``."""
    levels = 2**act_bit - 1
    if ratio == 1.0:
        return Requant(1, widths.frac_bits, levels)
    m, s = _multiplier(np.array([ratio]), widths.mult_bits, what)
    return Requant(int(m[0]), int(s[0]) + widths.frac_bits, levels)


def check_skip(out: np.ndarray, widths: FixedPointWidths, what: str) -> np.ndarray:
    """``out`` as the shortcut carried to the next block: unsigned ``skip_bits``, never clipped."""
    top = 2**widths.skip_bits - 1
    if out.size and int(out.max()) > top:
        need = int(out.max()).bit_length()
        raise BitWidthError(
            f"{what}: the shortcut reaches {int(out.max())}; unsigned {widths.skip_bits}-bit holds "
            f"[0, {top}]; try --skip-bits {need} (or fewer --frac-bits)"
        )
    return out


def to_skip(x: np.ndarray, unit: float, widths: FixedPointWidths, what: str) -> np.ndarray:
    """A float tensor (the float stem's output) on the accumulator grid ``unit``: round half to
    even, ReLU, then the ``skip_bits`` check."""
    values = np.maximum(np.round(x.astype(np.float64) / unit), 0.0).astype(np.int64)
    return check_skip(values, widths, what)


_U32 = 2.0**-24  # float32 unit roundoff
_AFTER_SUM = 8
"""Roundings after the conv's sum: BatchNorm (4), the residual add (1), /alpha (1), * L (1), one spare."""


def pre_rounding(x: np.ndarray, act_alpha: float, act_bit: int) -> np.ndarray:
    """The float32 value the course act quantiser rounds: ``clip(x / alpha, 0, 1) * L`` in float32,
    as ``torch`` computes it (``x`` float32, the consumer's input; ``L = 2^act_bit - 1``)."""
    scaled = x.astype(np.float32) / np.float32(act_alpha)
    return np.asarray(np.clip(scaled, np.float32(0.0), np.float32(1.0)) * np.float32(2**act_bit - 1))


def float32_error(v: np.ndarray, fan_in: int) -> np.ndarray:
    """The float32 error bound of a pre-rounding value ``v`` (in steps of the next ``x_int``), from
    its magnitude: ``(fan_in + 8) * 2^-24 * |v|``.

    The float model's ``v`` is a conv's sum of ``fan_in`` products (``in_channels * k^2``), then
    at most 8 more roundings (the BatchNorm, the residual add, ``/ alpha``, ``* L``). A float32 sum
    of K terms errs by at most ``K * u * sum |terms|`` (``u = 2^-24``; Higham's ``gamma_K``), each
    later operation by ``u`` of its result; the bound takes ``sum |terms| ~ |v|`` (no cancellation
    inside the sum), so it is what float32 rounding can do to a value of this size, not a proof for
    every input.
    """
    return np.asarray((fan_in + _AFTER_SUM) * _U32 * np.abs(v.astype(np.float64)))


def near_boundary(v: np.ndarray, own: np.ndarray, ours: np.ndarray, fan_in: int) -> np.ndarray:
    """Where ``ours`` and the float model's ``own`` ``x_int`` differ by one level and ``v`` (the
    float model's pre-rounding value, :func:`pre_rounding`) lies within :func:`float32_error` of
    the half-step between them: a difference the float model's own rounding explains, not the
    fixed-point widths. All (N, C, H, W); a bool array."""
    boundary = np.maximum(own, ours).astype(np.float64) - 0.5
    adjacent = np.abs(own.astype(np.int64) - ours.astype(np.int64)) == 1
    return np.asarray(adjacent & (np.abs(v.astype(np.float64) - boundary) <= float32_error(v, fan_in)))


@dataclass(frozen=True, slots=True)
class RequantTo:
    """One consumer of a block end: the conv ``consumer`` reads ``rule.apply(out)``, the golden
    ``x_int`` (N, C, H, W) of this layer's psums; ``tensor`` names its file (``requant`` for the
    first consumer, ``requant_shortcut`` for the next block's downsample)."""

    consumer: str
    tensor: str
    rule: Requant
    x_int: np.ndarray


@dataclass(frozen=True)
class LayerFixedPoint:
    """One conv's fixed-point SFU as the exported files hold it (ResNets, see the module).

    ``role`` ``"block_end"``: ``out = max(fold(psum) + shortcut, 0)`` then each ``requants``
    (none after the last conv: the float end reads ``out * unit``); ``add`` says what the shortcut
    is: ``"identity"`` (``rshift_up(skip * skip_rescale.M, skip_rescale.S)``, ``skip`` (N, C, H, W)
    the block input on its own accumulator grid), the downsample conv's module path (its fold of its
    own psums) or None (a quantized stem: no add). ``role`` ``"shortcut"`` (a downsample conv):
    ``fold(psum)`` is added into ``add_into``'s accumulator.
    """

    role: str
    fold: Affine
    unit: float
    widths: FixedPointWidths
    between: tuple[str, ...]
    add: str | None = None
    add_into: str | None = None
    skip: np.ndarray | None = None
    skip_rescale: Affine | None = None
    requants: tuple[RequantTo, ...] = ()

    @property
    def next(self) -> str | None:
        return self.requants[0].consumer if self.requants else None


def block_end(psum: np.ndarray, fold: Affine, shortcut: np.ndarray | None) -> np.ndarray:
    """``max(fold(psum) + shortcut, 0)`` (N, C, H, W) int64, the accumulator after the add and ReLU."""
    term = fold.apply(psum)
    return np.asarray(np.maximum(term if shortcut is None else term + shortcut, 0))
