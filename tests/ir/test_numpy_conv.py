"""The torch-free exact conv (``infer --from``) against the reference conv and exact int64 sums."""

from __future__ import annotations

import numpy as np
import pytest

from qexport.ir.numpy_conv import numpy_conv
from qexport.ir.reference import integer_conv


@pytest.mark.parametrize(
    ("channels", "out", "size", "kernel", "stride", "padding"),
    [(3, 8, 9, 3, 1, 1), (5, 4, 8, 3, 2, 1), (4, 6, 7, 1, 1, 0), (2, 3, 6, 3, 2, 0)],
    ids=["3x3-pad1", "3x3-stride2", "1x1", "3x3-stride2-nopad"],
)
def test_numpy_conv_equals_the_reference_conv(
    channels: int, out: int, size: int, kernel: int, stride: int, padding: int
) -> None:
    rng = np.random.default_rng(channels * 100 + out)
    x = rng.integers(-8, 16, (3, channels, size, size))
    w = rng.integers(-7, 8, (out, channels, kernel, kernel))
    ours = numpy_conv(x, w, stride, padding)
    assert ours.dtype == np.int64
    assert np.array_equal(ours, integer_conv(x, w, stride, padding))


def test_numpy_conv_beyond_float64_runs_in_int64_exactly() -> None:
    # sums near 2^60: float64 would round them; the int64 path must not
    rng = np.random.default_rng(1)
    x = rng.integers(2**28, 2**29, (1, 4, 4, 4))
    w = rng.integers(2**28, 2**29, (2, 4, 3, 3))
    ours = numpy_conv(x, w, 1, 1)
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))).astype(object)
    exact = sum(
        int(v) for v in (pad[0, :, 1:4, 1:4] * w[1].astype(object)).reshape(-1)
    )  # output (1, 1, 1, 1)
    assert int(ours[0, 1, 1, 1]) == exact
    assert np.array_equal(ours, integer_conv(x, w, 1, 1))
