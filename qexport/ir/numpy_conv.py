"""An exact integer conv in numpy alone (no torch), for running a vector set without the model.

im2col, then one matrix product per batch. The product runs in float64 BLAS when
``max|x| * sum|w|`` of the worst output channel is at most 2^53: every product and every partial
sum is then an integer float64 holds exactly, so no addition rounds in any order (the argument of
:mod:`qexport.ir.reference`); beyond that bound it runs in int64 (numpy's integer matmul, slower).
"""

from __future__ import annotations

import numpy as np

_FLOAT64_EXACT = 2**53


def numpy_conv(x_int: np.ndarray, w_int: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Exact conv of integers (N, C, H, W) * (OC, C, KH, KW) -> int64 (N, OC, H', W'), zero padding.

    x [[1, 2], [3, 4]] (one channel), w 1x1 of 2: [[2, 4], [6, 8]].
    """
    n, c, h, w = x_int.shape
    oc, _, kh, kw = w_int.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    worst = int(np.abs(x_int).max(initial=0)) * int(np.abs(w_int).reshape(oc, -1).sum(1).max(initial=0))
    dtype = np.float64 if worst <= _FLOAT64_EXACT else np.int64
    x = np.pad(x_int.astype(dtype), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    # (N, C, H', W', KH, KW) windows, then (N, H', W', C, KH, KW) rows: one row an output pixel
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    windows = windows[:, :, : (ho - 1) * stride + 1 : stride, : (wo - 1) * stride + 1 : stride]
    cols = np.ascontiguousarray(windows.transpose(0, 2, 3, 1, 4, 5)).reshape(n * ho * wo, c * kh * kw)
    out = cols @ w_int.reshape(oc, c * kh * kw).T.astype(dtype)
    return out.reshape(n, ho, wo, oc).transpose(0, 3, 1, 2).astype(np.int64, order="C")
