from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from qexport.errors import BitWidthError, InputError
from qexport.ir.fixed_point import (
    MAX_SHIFT,
    Affine,
    FixedPointWidths,
    check_skip,
    float32_error,
    fold,
    near_boundary,
    pre_rounding,
    requant,
    rescale,
    rshift_even,
    rshift_up,
    to_skip,
)
from qexport.ir.sfu import BatchNorm


def _up(v: int, s: int) -> int:
    """round(v / 2^s), a tie toward +inf, exactly."""
    return math.floor(Fraction(v, 2**s) + Fraction(1, 2))


def _even(v: int, s: int) -> int:
    """round(v / 2^s), a tie to even, exactly (Fraction.__round__ rounds half to even)."""
    return round(Fraction(v, 2**s))


def _values(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    edges = [0, 1, -1, 2, -2, 3, -3, 127, 128, 129, -127, -128, -129, 2**40 + 2**7, -(2**40) - 2**7]
    return np.concatenate([np.array(edges), rng.integers(-(2**40), 2**40, 2000)]).astype(np.int64)


@pytest.mark.parametrize("shift", [0, 1, 2, 8, 17], ids=lambda s: f"shift{s}")
def test_shifts_round_as_the_exact_rationals(shift: int) -> None:
    v = _values(shift)
    # ties: odd and even quotients, positive and negative, land exactly on x.5
    if shift:
        ties = np.array([(2 * k + 1) * 2 ** (shift - 1) for k in range(-6, 6)], dtype=np.int64)
        v = np.concatenate([v, ties])
    up, even = rshift_up(v, shift), rshift_even(v, shift)
    assert [int(x) for x in up] == [_up(int(x), shift) for x in v]
    assert [int(x) for x in even] == [_even(int(x), shift) for x in v]
    if shift:
        # the two rules differ exactly on ties with an even floor
        assert int(rshift_up(np.array([2 ** (shift - 1)]), shift)[0]) == 1  # 0.5 -> 1
        assert int(rshift_even(np.array([2 ** (shift - 1)]), shift)[0]) == 0  # 0.5 -> 0
        assert int(rshift_up(np.array([-(2 ** (shift - 1))]), shift)[0]) == 0  # -0.5 -> 0
        assert int(rshift_even(np.array([3 * 2 ** (shift - 1)]), shift)[0]) == 2  # 1.5 -> 2


def _bn(channels: int, seed: int) -> BatchNorm:
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, dtype=np.float32).astype(np.float64)  # noqa: E731
    gamma = rng.uniform(-2.0, 2.0, channels)
    gamma[::5] = 0.0
    return BatchNorm(
        f32(gamma),
        f32(rng.normal(0, 1, channels)),
        f32(rng.normal(0, 3, channels)),
        f32(rng.uniform(0.1, 4, channels)),
        1e-5,
    )


@pytest.mark.parametrize("mult_bits", [4, 8, 16, 24], ids=lambda b: f"mult{b}")
def test_fold_applies_as_the_exact_rationals_and_tracks_float64(mult_bits: int) -> None:
    widths = FixedPointWidths(mult_bits=mult_bits, frac_bits=8, bias_bits=32)
    bn = _bn(11, mult_bits)
    s, unit = 0.0123, 0.05
    affine = fold(s, bn, unit, widths, "test")
    limit = 2 ** (mult_bits - 1) - 1
    assert np.abs(affine.multiplier).max() <= limit
    assert ((affine.shift >= 0) & (affine.shift <= MAX_SHIFT)).all()
    gamma_zero = bn.gamma == 0
    assert (affine.multiplier[gamma_zero] == 0).all() and (affine.shift[gamma_zero] == 0).all()
    # the shift is the largest that fits: one more would overflow the multiplier
    live = ~gamma_zero
    bigger = np.abs(np.round(s * bn.gamma / np.sqrt(bn.var + bn.eps) / unit * 2.0 ** (affine.shift + 1)))
    assert (bigger[live] > limit).all()
    rng = np.random.default_rng(1)
    psum = rng.integers(-3000, 3000, (2, 11, 3, 3)).astype(np.int64)
    got = affine.apply(psum)
    for n, c, h, w in np.ndindex(*psum.shape):
        p, m, sh, b = (
            int(psum[n, c, h, w]),
            int(affine.multiplier[c]),
            int(affine.shift[c]),
            int(affine.bias[c]),
        )
        assert int(got[n, c, h, w]) == _up(p * m, sh) + b
    # against bn(psum * s) / unit in float64: the multiplier's relative error plus the two roundings
    a = bn.gamma / np.sqrt(bn.var + bn.eps)
    exact = (
        (psum * s - bn.mean[None, :, None, None]) * a[None, :, None, None] + bn.beta[None, :, None, None]
    ) / unit
    f = np.abs(s * a / unit)[None, :, None, None]
    bound = 1.0 + np.abs(psum) * f * 2.0 ** -(mult_bits - 1) + 1e-6 * np.abs(exact)
    assert (np.abs(got - exact) <= bound).all()


@pytest.mark.parametrize("act_bit", [2, 4], ids=["2bit", "4bit"])
@pytest.mark.parametrize("ratio", [1.0, 0.8173, 1.37], ids=["same-grid", "coarser", "finer"])
def test_requant_rounds_half_even_and_clips_at_alpha(act_bit: int, ratio: float) -> None:
    widths = FixedPointWidths(frac_bits=4)
    rq = requant(ratio, act_bit, widths, "test")
    levels = 2**act_bit - 1
    out = np.arange(0, 64 * 40, dtype=np.int64)  # every accumulator value up to well past the clip
    got = rq.apply(out[None, :, None, None])[0, :, 0, 0]
    want = [min(_even(int(v) * rq.multiplier, rq.shift), levels) for v in out]
    assert [int(x) for x in got] == want
    assert int(got.max()) == levels  # saturation at the top level reached
    if ratio == 1.0:
        # the next conv1's grid: exactly round_half_even(acc / 2^F), the course quantiser's rule
        assert (rq.multiplier, rq.shift) == (1, 4)
        assert [int(x) for x in got[[8, 24, 40]]] == [0, 2, 2]  # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2


def test_rescale_is_one_multiplier_for_the_tensor() -> None:
    affine = rescale(0.75, FixedPointWidths(mult_bits=8), "test")
    assert affine.multiplier.shape == (1,)
    assert float(affine.multiplier[0]) / 2 ** int(affine.shift[0]) == 0.75
    v = np.arange(-50, 50, dtype=np.int64).reshape(1, 1, 10, 10)
    got = affine.apply(v).flatten()
    assert [int(x) for x in got] == [
        _up(int(x) * int(affine.multiplier[0]), int(affine.shift[0])) for x in v.flatten()
    ]


def test_widths_too_small_are_refused_naming_the_width_needed() -> None:
    bn = BatchNorm(np.array([1.0]), np.array([100.0]), np.array([0.0]), np.array([1.0]), 0.0)
    with pytest.raises(
        BitWidthError, match=r"layer1\.0\.conv2: the folded bias reaches 25600; 8-bit .* try --bias-bits 16"
    ):
        fold(0.01, bn, 1 / 256, FixedPointWidths(bias_bits=8), "layer1.0.conv2")
    with pytest.raises(
        BitWidthError, match=r"needs a multiplier of 300 at shift 0; 4-bit .* try --mult-bits 10"
    ):
        rescale(300.0, FixedPointWidths(mult_bits=4), "layer2.0 shortcut rescale")
    out = np.array([[[[0, 255, 256]]]], dtype=np.int64)
    with pytest.raises(
        BitWidthError, match=r"layer3\.1 output: the shortcut reaches 256; unsigned 8-bit .* --skip-bits 9"
    ):
        check_skip(out, FixedPointWidths(skip_bits=8), "layer3.1 output")
    assert check_skip(out[..., :2], FixedPointWidths(skip_bits=8), "x") is not None
    with pytest.raises(InputError, match="frac_bits is -1"):
        FixedPointWidths(frac_bits=-1)


def test_to_skip_rounds_half_even_and_applies_relu() -> None:
    x = np.array([-1.0, 0.5, 1.5, 2.5, 3.25], dtype=np.float32)
    got = to_skip(x, 1.0, FixedPointWidths(skip_bits=4), "stem")
    assert list(got) == [0, 0, 2, 2, 3]


def test_affine_docstring_example() -> None:
    a = Affine(np.array([181]), np.array([8]), np.array([-3]))
    assert int(a.apply(np.full((1, 1, 1, 1), 100))[0, 0, 0, 0]) == 68


def test_pre_rounding_is_the_value_the_course_quantiser_rounds() -> None:
    import torch

    from qexport.frontend.models.quant import quantize_act

    x = np.random.default_rng(3).uniform(-1, 20, size=(2, 3, 5, 5)).astype(np.float32)
    v = pre_rounding(x, 12.5, 4)
    assert v.dtype == np.float32
    x_q = quantize_act(torch.from_numpy(x), torch.tensor(12.5), 4, "relu").numpy()
    assert np.array_equal(np.round(v), np.round(x_q / np.float32(12.5 / 15)))
    # 0.75 / 1.5 * 15 is exactly 7.5: a half-step, which the quantiser rounds to 8 (even)
    assert pre_rounding(np.array([0.75], np.float32), 1.5, 4).tolist() == [7.5]


def test_a_difference_at_a_half_step_is_float_rounding_one_away_from_it_is_not() -> None:
    fan_in = 9  # bound: (9 + 8) * 2^-24 * |v|, about 7.6e-6 at v = 7.5
    assert float32_error(np.array([7.5]), fan_in)[0] == pytest.approx(17 * 2.0**-24 * 7.5)
    v = np.array([7.5, 7.5 + 5e-6, 7.5 - 5e-6, 7.5 + 1e-4, 7.5, 3.0], np.float64)
    own = np.array([8, 8, 7, 8, 8, 3])  # the float model's levels
    ours = np.array([7, 7, 8, 7, 6, 4])
    near = near_boundary(v, own, ours, fan_in)
    # at the boundary, within the bound either side, beyond it, two levels apart, far from any
    assert near.tolist() == [True, True, True, False, False, False]
