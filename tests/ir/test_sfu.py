from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexport.errors import InputError
from qexport.ir.sfu import BatchNorm, Thresholds, float32_band, max_pool, scale, thresholds


def _brute(psum: np.ndarray, s: Fraction, bn: BatchNorm, alpha: float, bit: int) -> np.ndarray:
    """The float model's formula in float64, one value per psum (C, P): relu, clip, round half even."""
    levels = 2**bit - 1
    y = psum.astype(np.float64) * float(s)
    out = (y - bn.mean[:, None]) / np.sqrt(bn.var[:, None] + bn.eps) * bn.gamma[:, None] + bn.beta[:, None]
    clipped = np.minimum(np.maximum(out, 0.0) * (levels / alpha), levels)
    return np.round(clipped).astype(np.int64)


def _random_bn(channels: int, seed: int) -> BatchNorm:
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, dtype=np.float32).astype(np.float64)  # noqa: E731
    gamma = rng.uniform(-2.0, 2.0, channels)
    gamma[::7] = 0.0  # constant channels
    return BatchNorm(
        gamma=f32(gamma),
        beta=f32(rng.normal(0.0, 1.0, channels)),
        mean=f32(rng.normal(0.0, 20.0, channels)),
        var=f32(rng.uniform(0.5, 400.0, channels)),
        eps=1e-5,
    )


@pytest.mark.parametrize("bit", [1, 2, 4], ids=["1bit", "2bit", "4bit"])
@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_thresholds_equal_a_sweep_of_every_psum(bit: int, seed: int) -> None:
    bn = _random_bn(29, seed)
    s = scale(2.5, 4, 2.7, 4)
    alpha = float(np.float32(1.7 + seed))
    t = thresholds(s, bn, alpha, bit)
    psum = np.broadcast_to(np.arange(-2500, 2501), (29, 5001))
    ours = t.apply(psum[None, :, :, None].copy())[0, :, :, 0]
    want = _brute(psum, s, bn, alpha, bit)
    assert np.array_equal(ours, want)
    # the sweep reaches several levels, and both directions and constants occur
    assert {int(d) for d in t.direction} == {-1, 0, 1}
    assert (want.max(axis=1) - want.min(axis=1)).max() == 2**bit - 1


@pytest.mark.parametrize("gamma", [0.5, -0.5], ids=["positive-gamma", "negative-gamma"])
def test_ties_round_half_to_even(gamma: float) -> None:
    # r = sqrt(3.75 + 0.25) = 2, s = 1/16, L / alpha = 1: bn(p) = p/64 + 0.125 or -p/64 + 0.375,
    # all dyadic, so float64 is exact and each boundary k - 0.5 is hit by an integer psum
    bn = BatchNorm(np.array([gamma]), np.array([0.25]), np.array([0.5]), np.array([3.75]), 0.25)
    t = thresholds(Fraction(1, 16), bn, 15.0, 4)
    psum = np.arange(-2000, 2001)[None, :]
    ours = t.apply(psum[None, :, :, None].copy())[0, :, :, 0]
    assert np.array_equal(ours, _brute(psum, Fraction(1, 16), bn, 15.0, 4))
    tie = 24 if gamma > 0 else -8  # bn == 0.5 there: rounds to 0, level 1 not reached
    assert ours[0, tie + 2000] == 0
    tie2 = 88 if gamma > 0 else -72  # bn == 1.5: rounds to 2
    assert ours[0, tie2 + 2000] == 2


def test_zero_gamma_channel_is_its_beta_level() -> None:
    bn = BatchNorm(np.array([0.0, 0.0]), np.array([0.75, -1.0]), np.zeros(2), np.ones(2), 1e-5)
    t = thresholds(Fraction(1, 8), bn, 1.0, 2)  # L = 3: 0.75 * 3 = 2.25 -> 2
    psum = np.array([[-(10**9), 0, 10**9]] * 2)
    assert t.apply(psum[None, :, :, None].copy())[0, :, :, 0].tolist() == [[2, 2, 2], [0, 0, 0]]
    assert t.direction.tolist() == [0, 0]
    # the stored thresholds give the constant under count(psum >= T) too
    assert ((psum[0][:, None] >= t.thresholds[0][None, :]).sum(axis=1) == 2).all()


def test_max_pool_after_thresholds_equals_before_for_positive_gamma() -> None:
    rng = np.random.default_rng(5)
    bn = BatchNorm(
        np.array([0.9, 1.3]), np.array([0.1, -0.2]), np.array([1.0, 3.0]), np.array([2.0, 5.0]), 1e-5
    )
    t = thresholds(scale(2.0, 4, 2.5, 4), bn, 1.5, 4)
    psum = rng.integers(-300, 300, (3, 2, 8, 8))
    assert np.array_equal(max_pool(t.apply(psum), 2), t.apply(max_pool(psum, 2)))


def test_float32_band_holds_the_exact_level_and_is_narrow() -> None:
    bn = _random_bn(8, 3)
    s = scale(2.5, 4, 2.7, 4)
    t = thresholds(s, bn, 2.0, 4)
    psum = np.random.default_rng(0).integers(-2000, 2000, (2, 8, 4, 4))
    y = (psum * float(s)).astype(np.float32)
    low, high = float32_band(psum, y, s, bn, 2.0, 4)
    ours = t.apply(psum)
    assert ((low <= ours) & (ours <= high)).all()
    assert (high - low).max() <= 1
    assert (high - low).mean() < 0.01


def test_thresholds_refuse_a_non_positive_alpha() -> None:
    with pytest.raises(InputError, match="act_alpha"):
        thresholds(Fraction(1, 8), BatchNorm.identity(1), 0.0, 4)


@settings(derandomize=True, max_examples=200, deadline=None, database=None)
@given(
    channels=st.integers(1, 6),
    levels=st.sampled_from([1, 3, 15, 40]),
    reach=st.sampled_from([0, 5, 2**20, 2**40]),
    seed=st.integers(0, 2**16),
)
def test_apply_counts_each_channel_as_its_own_rule(channels: int, levels: int, reach: int, seed: int) -> None:
    # apply's one searchsorted over shifted channels against the rule spelt per value: huge and
    # out-of-range thresholds, ties with psums, both directions and constant channels
    rng = np.random.default_rng(seed)
    psum = rng.integers(-reach, reach, size=(2, channels, 3, 3), endpoint=True)
    picks = np.concatenate([psum.reshape(-1), [-(2**62), 2**62, reach + 1, -reach - 1]])
    t = np.sort(rng.choice(picks, size=(channels, levels)), axis=1)
    direction = rng.integers(-1, 1, size=channels, endpoint=True).astype(np.int8)
    t[direction < 0] = t[direction < 0, ::-1]  # descending for count(psum <= T)
    constant = rng.integers(0, levels, size=channels, endpoint=True)
    rule = Thresholds(t, direction, constant, 4)
    expected = np.empty_like(psum)
    for c in range(channels):
        for index in np.ndindex(psum[:, c].shape):
            v = int(psum[:, c][index])
            if direction[c] > 0:
                expected[:, c][index] = sum(v >= int(k) for k in t[c])
            elif direction[c] < 0:
                expected[:, c][index] = sum(v <= int(k) for k in t[c])
            else:
                expected[:, c][index] = constant[c]
    np.testing.assert_array_equal(rule.apply(psum), expected)
