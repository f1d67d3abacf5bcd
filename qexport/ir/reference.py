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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from qexport.ir.checks import LayerChecks
from qexport.ir.integerize import IntLayer
from qexport.ir.weights import FloatWeights, abs_sum, float_weights
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
    from qexport.errors import CheckFailed

    next_alpha, next_bit, next_x_int = check_requantizable(layer)
    levels = 2**next_bit - 1
    scaled = np.maximum(psum, 0).astype(np.float64) * (layer.x_delta * layer.w_delta) / next_alpha
    x_next = np.round(np.minimum(scaled, 1.0) * levels).astype(np.int64)
    if check and not np.array_equal(x_next, next_x_int):
        bad = int((x_next != next_x_int).sum())
        raise CheckFailed(
            f"layer {layer.label}: {bad} requantized value(s) differ from the next layer's "
            "activation integers"
        )
    return np.asarray(x_next)


def check_requantizable(layer: IntLayer) -> tuple[float, int, np.ndarray]:
    """The next conv's act_alpha, act_bit and x_int; refused unless it follows right after a ReLU."""
    from qexport.errors import InputError

    if layer.next_act_alpha is None or layer.next_act_bit is None or layer.next_x_int is None:
        raise InputError(
            f"layer {layer.label}: requantization needs the next conv right after a ReLU (as features[33] "
            "-> features[35]); here a BatchNorm or pooling lies between. Drop 'requantize' from the "
            "profile's golden ops"
        )
    return layer.next_act_alpha, layer.next_act_bit, layer.next_x_int


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
    return _float32_plan(_float32(x_int), _float32(w_int)) or _int64_plan(x_int, w_int)


def _float32(a: np.ndarray) -> torch.Tensor:
    """``a`` as a float32 tensor: the one conversion the float conv and its bound both read."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32)


def _float32_plan(x32: torch.Tensor, w32: torch.Tensor, w_sum: float | None = None) -> ConvPlan | None:
    """The plan from the converted values, or None when some value may not have converted exactly.

    |w| is summed in float32 over each output channel's weights (its in-channels and kernel);
    ``w_sum``, that sum's max, when the weights came with it (``FloatWeights``, as
    ``float_weights`` sums it the same way).
    Every term and partial sum is a non-negative integer, so a sum that stays below 2^24 is
    exact; and a true sum of 2^24 or more never comes out below 2^24, since float32 holds 2^24
    and rounding is monotone. A computed sum below 2^24 therefore is the exact sum, and every
    |w| under it converted exactly (the conversion is monotone too). Likewise max|x| below 2^24
    proves ``x32`` exact. Otherwise (values of 2^24 or more) ``_int64_plan`` decides in int64.
    """
    lo, hi = torch.aminmax(x32) if x32.numel() else (torch.zeros(()), torch.zeros(()))
    x_max = max(-float(lo), float(hi))
    if w_sum is None:
        w_sum = abs_sum(w32)
    if x_max >= _FLOAT32_EXACT or w_sum >= _FLOAT32_EXACT:
        return None
    bound = int(x_max) * int(w_sum)
    if bound <= _FLOAT32_EXACT:
        return ConvPlan("float32", bound)
    # |w| over each (output channel, input channel)'s kernel, exact: each is at most w_sum
    per_channel = w32.abs().reshape(*w32.shape[:2], -1).sum(dim=2).to(torch.int64).numpy()
    return _wider_plan(int(x_max), bound, per_channel)


def _int64_plan(x_int: np.ndarray, w_int: np.ndarray) -> ConvPlan:
    """The plan in exact int64 arithmetic, for values float32 may not hold."""
    x = torch.from_numpy(np.ascontiguousarray(x_int, dtype=np.int64))
    x_max = max(-int(x.min()), int(x.max())) if x.numel() else 0
    # |w| summed over each (output channel, input channel)'s kernel, in exact integers
    w = torch.from_numpy(np.ascontiguousarray(w_int, dtype=np.int64))
    per_channel = w.abs().sum(dim=(2, 3)).numpy()
    bound = x_max * int(per_channel.sum(axis=1).max(initial=0))
    if bound <= _FLOAT32_EXACT:
        return ConvPlan("float32", bound)
    return _wider_plan(x_max, bound, per_channel)


def _wider_plan(x_max: int, bound: int, per_channel: np.ndarray) -> ConvPlan:
    """A bound above 2^24: float32 by blocks of input channels, float64, or int64."""
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


def _float_conv(
    x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype, stride: int, padding: int, groups: int
) -> np.ndarray:
    out = F.conv2d(x.to(dtype), w.to(dtype), stride=stride, padding=padding, groups=groups)
    return out.numpy()


def _group_channels(x: torch.Tensor, groups: int, lo: int, hi: int) -> torch.Tensor:
    """Input channels ``lo:hi`` of every group of ``x`` (n, groups * c, h, w)."""
    if groups == 1:
        return x[:, lo:hi]
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w)[:, :, lo:hi].reshape(n, groups * (hi - lo), h, w)


def integer_conv(
    x_int: np.ndarray,
    w_int: np.ndarray,
    stride: int,
    padding: int,
    groups: int = 1,
    weights: FloatWeights | None = None,
) -> np.ndarray:
    """Exact conv of integer arrays (n, c, h, w) * (oc, c / groups, kh, kw) -> int64 (n, oc, h', w').

    Float convs run when the plan's bound makes them exact (see ConvPlan and the module
    docstring), inside ``exact_math()``, which keeps torch on algorithms that add the products
    directly. A result that still is not integral is redone in int64 (``_integral``). With
    ``groups`` (as torch's), the plan's bound is each group's own: ``w_int`` holds only a
    group's input channels per output channel. The values are converted to float32 once; the
    bound is read from those converted values and the conv runs on them. ``weights``: ``w_int``
    already converted (``IntLayer.w_float``), used only if made from this very ``w_int``.
    """
    if weights is None or weights.source is not w_int:
        weights = float_weights(w_int)
    x32, w32 = _float32(x_int), weights.w32
    plan = _float32_plan(x32, w32, weights.w_sum) or _int64_plan(x_int, w_int)
    if plan.method == "int64":
        return _int64_conv(x_int, w_int, stride, padding, groups)
    with exact_math():
        if plan.method == "float64":
            x64 = torch.from_numpy(np.ascontiguousarray(x_int, dtype=np.int64))
            w64 = torch.from_numpy(np.ascontiguousarray(w_int, dtype=np.int64))
            parts = [_float_conv(x64, w64, torch.float64, stride, padding, groups)]
        else:
            blocks = plan.blocks or ((0, w_int.shape[1]),)
            parts = [
                _float_conv(
                    _group_channels(x32, groups, lo, hi),
                    w32[:, lo:hi],
                    torch.float32,
                    stride,
                    padding,
                    groups,
                )
                for lo, hi in blocks
            ]
    psums = [psum for psum in map(_integral, parts) if psum is not None]
    if len(psums) < len(parts):  # each block checked before the int64 sum hides a fraction
        return _int64_conv(x_int, w_int, stride, padding, groups)
    return psums[0] if len(psums) == 1 else np.asarray(np.sum(psums, axis=0))


def _integral(out: np.ndarray) -> np.ndarray | None:
    """``out`` as int64 if every value is an integer, else None (the second line of defence).

    Under ``exact_math()`` a float conv within its plan's bound is integral; a conv that
    transformed its inputs (Winograd, FFT) is not, and its result must not be used.
    """
    psum = out.astype(np.int64)
    return psum if bool((psum == out).all()) else None


def _int64_conv(
    x_int: np.ndarray, w_int: np.ndarray, stride: int, padding: int, groups: int = 1
) -> np.ndarray:
    kh, kw = w_int.shape[2:]
    padded = np.pad(x_int.astype(np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (n, c, h', w', kh, kw)
    if groups == 1:
        return np.asarray(np.einsum("nchwij,ocij->nohw", windows, w_int.astype(np.int64), optimize=True))
    n, c, h, w = windows.shape[:4]
    oc = w_int.shape[0]
    by_group = windows.reshape(n, groups, c // groups, h, w, kh, kw)
    w_groups = w_int.astype(np.int64).reshape(groups, oc // groups, c // groups, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", by_group, w_groups, optimize=True)
    return np.asarray(out.reshape(n, oc, h, w))


def conv_psum(layer: IntLayer) -> Psums:
    """The layer's exact psums, with recovered = psum * x_delta * w_delta checked as in seed 003."""
    psum = integer_conv(layer.x_int, layer.w_int, layer.stride, layer.padding, weights=layer.w_float)
    recovered = psum.astype(np.float64) * (layer.x_delta * layer.w_delta)
    error = np.abs(recovered - layer.y_float.astype(np.float64))
    mean, next_mean, next_max = float(error.mean()), None, None
    if layer.next_x is not None:
        next_error = np.abs(np.maximum(recovered, 0.0) - layer.next_x.astype(np.float64))
        next_mean, next_max = float(next_error.mean()), float(next_error.max())
    passed = mean < MEAN_ERROR_LIMIT and (next_mean is None or next_mean < MEAN_ERROR_LIMIT)
    return Psums(psum, LayerChecks(mean, float(error.max()), next_mean, next_max, passed))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def partial_psums(
    layer: IntLayer, rows: int, out_hw: tuple[int, int] | None = None, padding: int | None = None
) -> np.ndarray:
    """Psums split by input-channel tile: (itiles, n, oc, h', w') int64, before ReLU.

    Tile ``i`` sums input channels ``[i*rows, (i+1)*rows)`` (the last tile may hold fewer); the
    tiles add up to the layer's psums. ``out_hw`` (at least the conv's h', w') extends the map
    right and bottom as the input extended with zeros gives it, as a core computing whole
    output tiles sees it. One grouped ``integer_conv``, exact by the same proof as ``conv_psum``
    (each group's bound is its own tile's channels). ``padding`` (default: the layer's) is the zero
    border the core's conv sees: 0 for a valid conv over the bare map.
    """
    n, c_in, h, w = layer.x_int.shape
    k, s = layer.kernel, layer.stride
    pad = layer.padding if padding is None else padding
    h_out, w_out = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    out_h, out_w = out_hw or (h_out, w_out)
    itiles, oc = _ceil_div(c_in, rows), layer.out_channels
    # the conv's zero border, zeros for the extension, zero channels up to whole tiles
    shape = (n, itiles * rows, h + 2 * pad + (out_h - h_out) * s, w + 2 * pad + (out_w - w_out) * s)
    x = np.zeros(shape, dtype=np.int64)
    x[:, :c_in, pad : pad + h, pad : pad + w] = layer.x_int
    weights = np.zeros((oc, itiles * rows, k, k), dtype=np.int64)
    weights[:, :c_in] = layer.w_int
    # group i: output channels i*oc..(i+1)*oc see input channels i*rows..(i+1)*rows
    grouped = weights.reshape(oc, itiles, rows, k, k).transpose(1, 0, 2, 3, 4)
    grouped = grouped.reshape(itiles * oc, rows, k, k)
    out = integer_conv(x, grouped, s, 0, groups=itiles)
    return np.asarray(out.reshape(n, itiles, oc, out_h, out_w).transpose(1, 0, 2, 3, 4))


@dataclass(frozen=True)
class TiledPsums:
    """A layer's psums as a core with ``rows`` input-channel lanes and ``tile``×``tile`` output
    windows accumulates them, over the map rounded up to whole tiles (see ``partial_psums``).

    ``partial`` (itiles, n, oc, H, W) one input-channel tile's sums, no ReLU; ``total``
    (n, oc, H, W) their sum; ``golden`` (n, oc, H, W) ``total`` after the golden ops (ReLU,
    or requantization to the next layer's integers). All int64. ``origin``: the layer's output
    pixel (row and column) at [0, 0] of these maps — 0 for the padded grid, ``padding / stride``
    for a valid conv over the bare map (its outputs are the layer's interior outputs); ``size``:
    the real (h', w') of these maps before the rounding up to whole tiles.
    """

    rows: int
    tile: int
    partial: np.ndarray
    total: np.ndarray
    golden: np.ndarray
    origin: int = 0
    size: tuple[int, int] = (0, 0)


def tiled_psums(
    layer: IntLayer, rows: int, tile: int, golden: Sequence[str], geometry: str = "padded_grid"
) -> TiledPsums:
    """What a tiled layout writes: partial sums, their total and the golden output (``golden``
    holds the ops, as a profile's: ``accumulate``, ``relu``, ``requantize``). ``geometry`` is what
    the core computes: ``padded_grid`` the layer's conv (its zero border), ``valid`` a valid conv
    over the bare map (``padding`` a multiple of ``stride``, the map at least the kernel: the
    layout stage's ``check_systolic`` refuses the rest), (h - k) // s + 1 outputs a side."""
    n, _, h, w = layer.x_int.shape
    valid = geometry == "valid"
    pad = 0 if valid else layer.padding
    h_out = (h + 2 * pad - layer.kernel) // layer.stride + 1
    w_out = (w + 2 * pad - layer.kernel) // layer.stride + 1
    rounded = (_ceil_div(h_out, tile) * tile, _ceil_div(w_out, tile) * tile)
    partial = partial_psums(layer, rows, rounded, padding=pad)
    total = partial.sum(axis=0)
    if "requantize" in golden:
        out = requantize(layer, total, check=False)
    elif "relu" in golden:
        out = np.maximum(total, 0)
    else:
        out = total
    origin = layer.padding // layer.stride if valid else 0
    return TiledPsums(rows, tile, partial, total, np.asarray(out), origin, (h_out, w_out))


def check_tiled(layer: IntLayer, psums: Psums, tiled: TiledPsums, golden: Sequence[str]) -> None:
    """The tiles must add up to the layer's psums wherever they cover the map, and a requantized
    golden must be the next layer's integers; ``CheckFailed`` names the first disagreement."""
    from qexport.errors import CheckFailed

    n, _, h, w = psums.psum.shape
    o = tiled.origin  # a valid conv's outputs are the layer's from output pixel (o, o) on
    if tiled.size != (0, 0):
        h, w = tiled.size
    inside = tiled.total[:n, : psums.psum.shape[1], :h, :w]
    expected = psums.psum[:, :, o : o + h, o : o + w]
    if not np.array_equal(inside, expected):
        image, _, y, x = (int(v[0]) for v in np.nonzero(inside != expected))
        raise CheckFailed(
            f"layer {layer.label}: the input-channel tiles ({tiled.rows} channels each) at n={image} "
            f"y={y + o} x={x + o} do not add up to the reference conv"
        )
    if "requantize" in golden:
        requantize(layer, psums.psum)  # proves the formula against the next layer's integers


def step_psums(grids: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """What a weight-stationary core writes to its psum memory in kernel pass (ki, kj): for that
    kernel position alone, ``Σ_ic x[ic][y, x] · W[oc][ic][ki, kj]`` at every input-grid position.

    ``grids`` (n, ty, tx, itile, y, x, ic) the tiles' input grids, ``taps`` (itile, otile, ki, kj,
    oc, ic) the weights as the array holds them -> (n, ty, tx, itile, otile, ki, kj, y, x, oc), int64
    (an exact integer product: no float path).
    """
    steps: np.ndarray = np.einsum("abciyxr,iokjqr->abciokjyxq", grids.astype(np.int64), taps.astype(np.int64))
    return steps
