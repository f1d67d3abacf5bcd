from __future__ import annotations

import numpy as np
import pytest

from qexport.ir.weights import float_weights


def test_float_weights_as_the_docstring_shows() -> None:
    weights = float_weights(np.array([[[[-7, 3]]]]))
    assert weights.w32.tolist() == [[[[-7.0, 3.0]]]] and weights.w_sum == 10.0


@pytest.mark.parametrize("w_max", [1, 7, 127, 2**12], ids=lambda m: f"|w|<={m}")
def test_the_sum_is_the_worst_output_channels_exact_sum(w_max: int) -> None:
    rng = np.random.default_rng(w_max)
    w = rng.integers(-w_max, w_max, size=(16, 64, 3, 3), endpoint=True)
    w[5] = -w_max  # one output channel at its worst
    weights = float_weights(w)
    assert weights.source is w
    np.testing.assert_array_equal(weights.w32.numpy(), w)
    assert weights.w_sum == int(np.abs(w).reshape(16, -1).sum(axis=1).max()) == 64 * 9 * w_max


def test_no_weights_sum_to_zero() -> None:
    assert float_weights(np.zeros((0, 4, 3, 3), dtype=np.int64)).w_sum == 0.0
