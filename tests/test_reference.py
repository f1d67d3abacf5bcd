from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qexport.capture import capture
from qexport.demo import demo_model
from qexport.inputs import load_demo
from qexport.integerize import integerize
from qexport.model import BUILTIN
from qexport.reference import MEAN_ERROR_LIMIT, _int64_conv, conv_psum, integer_conv


def _torch_float64_conv(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    out = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), stride=stride, padding=padding)
    return out.numpy()


@pytest.mark.parametrize(
    ("channels", "out", "side", "stride", "padding"),
    [(8, 8, 4, 1, 1), (3, 16, 9, 1, 1), (32, 4, 6, 2, 1), (5, 7, 5, 1, 0)],
    ids=["8to8-4x4", "3to16-9x9", "stride2", "no-pad"],
)
def test_integer_conv_matches_torch_float64(
    channels: int, out: int, side: int, stride: int, padding: int
) -> None:
    rng = np.random.default_rng(channels * 100 + out)
    x = rng.integers(-16, 16, size=(2, channels, side, side))
    w = rng.integers(-7, 8, size=(out, channels, 3, 3))
    psum = integer_conv(x, w, stride, padding)
    assert psum.dtype == np.int64
    np.testing.assert_array_equal(psum, _torch_float64_conv(x, w, stride, padding))
    np.testing.assert_array_equal(_int64_conv(x, w, stride, padding), psum)


def test_large_values_take_the_int64_path_and_stay_exact() -> None:
    # products near 2^50 over 9 taps: float64 would round, int64 must not
    x = np.full((1, 1, 3, 3), 2**25 + 1, dtype=np.int64)
    w = np.full((1, 1, 3, 3), 2**25 + 3, dtype=np.int64)
    psum = integer_conv(x, w, 1, 0)
    assert int(psum[0, 0, 0, 0]) == 9 * (2**25 + 1) * (2**25 + 3)


@pytest.fixture(scope="module")
def demo_layers() -> list:  # type: ignore[type-arg]
    model = demo_model(BUILTIN["VGG16_quant_gradual"])
    return capture(model, load_demo("0:4").images)


def test_every_demo_layer_passes_the_seed_check(demo_layers: list) -> None:  # type: ignore[type-arg]
    assert len(demo_layers) == 17
    for t in demo_layers:
        layer = integerize(t)
        psums = conv_psum(layer)
        assert psums.checks["output_mean_error"] < MEAN_ERROR_LIMIT, t.layer
        assert psums.checks["passed"] is True


def test_layer33_relu_recovery_matches_next_input(demo_layers: list) -> None:  # type: ignore[type-arg]
    t = next(t for t in demo_layers if t.layer == 33)
    layer = integerize(t)
    assert layer.x_int.shape == (4, 8, 4, 4)
    assert layer.w_int.shape == (8, 8, 3, 3)
    assert layer.x_int.min() >= 0 and layer.x_int.max() <= 15
    assert layer.w_int.min() >= -7 and layer.w_int.max() <= 7
    psums = conv_psum(layer)
    recovered_relu = np.maximum(psums.psum * layer.x_delta * layer.w_delta, 0)
    assert layer.next_x is not None
    assert np.abs(recovered_relu - layer.next_x).mean() < 1e-3
    assert psums.checks["next_input_mean_error"] is not None


def test_check_fails_when_integers_are_wrong(demo_layers: list) -> None:  # type: ignore[type-arg]
    t = next(t for t in demo_layers if t.layer == 33)
    layer = integerize(t)
    broken_w = layer.w_int.copy()
    broken_w[0, 0, 1, 1] += 3
    from dataclasses import replace

    psums = conv_psum(replace(layer, w_int=broken_w))
    assert psums.checks["passed"] is False
