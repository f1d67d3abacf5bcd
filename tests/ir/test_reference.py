from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qexport.frontend.capture import capture
from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.vgg import BUILTIN
from qexport.ir.integerize import integerize
from qexport.ir.reference import MEAN_ERROR_LIMIT, _int64_conv, conv_plan, conv_psum, integer_conv


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


# (x range, w range, channels, method): each exact method of integer_conv, on data that needs it
METHOD_CASES = [
    ((0, 15), (-8, 7), 512, "float32"),  # the course's 4-bit layers: one float32 conv
    ((0, 255), (-128, 127), 512, "float32_blocks"),  # 8-bit: 2^24 per block of input channels
    ((-(2**15), 2**15 - 1), (-(2**15), 2**15 - 1), 4, "float64"),
    ((-(2**30), 2**30), (-(2**30), 2**30), 2, "int64"),
]


@pytest.mark.parametrize(
    ("x_range", "w_range", "channels", "method"), METHOD_CASES, ids=[c[3] for c in METHOD_CASES]
)
def test_every_conv_method_is_exact(
    x_range: tuple[int, int], w_range: tuple[int, int], channels: int, method: str
) -> None:
    rng = np.random.default_rng(channels)
    x = rng.integers(*x_range, size=(2, channels, 5, 5), endpoint=True)
    w = rng.integers(*w_range, size=(6, channels, 3, 3), endpoint=True)
    x[0, :, 2, 2], w[0] = x_range[1], w_range[0]  # one output at its worst case
    plan = conv_plan(x, w)
    assert plan.method == method
    if method == "float32_blocks":
        assert len(plan.blocks) > 1 and plan.blocks[0][0] == 0 and plan.blocks[-1][1] == channels
    np.testing.assert_array_equal(integer_conv(x, w, 1, 1), _int64_conv(x, w, 1, 1))


@pytest.mark.parametrize("excess", [0, 1])
def test_float32_bound_is_tight_at_two_to_the_24(excess: int) -> None:
    # every product and partial sum 2^24 (+1): exact in float32 at 2^24, not at 2^24 + 1
    x = np.full((1, 1, 1, 2), 2**12, dtype=np.int64)
    w = np.array([[[[2**12, excess]]]], dtype=np.int64)
    plan = conv_plan(x, w)
    assert plan.bound == 2**24 + excess * 2**12
    assert plan.method == ("float32" if excess == 0 else "float64")  # one input channel: no blocks
    x[0, 0, 0, 1] = 1
    assert int(integer_conv(x, w, 1, 0)[0, 0, 0, 0]) == 2**24 + excess


def test_odd_sum_above_two_to_the_24_stays_exact() -> None:
    # a float32 conv would give 2^24 + 2 (round half to even); the plan must not choose float32
    x = np.array([[[[2**24, 1, 1]]]], dtype=np.int64)
    w = np.ones((1, 1, 1, 3), dtype=np.int64)
    assert int(integer_conv(x, w, 1, 0)[0, 0, 0, 0]) == 2**24 + 2
    x[0, 0, 0, 2] = 0
    assert conv_plan(x, w).method != "float32"
    assert int(integer_conv(x, w, 1, 0)[0, 0, 0, 0]) == 2**24 + 1


def test_float32_ignores_a_reduced_precision_setting() -> None:
    # bites only on CPUs with bf16 units (this machine has none, so here it checks the restore)
    conv = torch.backends.mkldnn.conv
    before = conv.fp32_precision
    conv.fp32_precision = "bf16"
    try:
        rng = np.random.default_rng(3)
        x = rng.integers(0, 15, size=(1, 256, 6, 6), endpoint=True)
        w = rng.integers(-8, 7, size=(4, 256, 3, 3), endpoint=True)
        np.testing.assert_array_equal(integer_conv(x, w, 1, 1), _int64_conv(x, w, 1, 1))
        assert conv.fp32_precision == "bf16"  # restored
    finally:
        conv.fp32_precision = before


@pytest.fixture(scope="module")
def demo_layers() -> list:  # type: ignore[type-arg]
    model = demo_model(BUILTIN["VGG16_quant_gradual"])
    return capture(model, load_demo("0:4").images)


def test_every_demo_layer_passes_the_seed_check(demo_layers: list) -> None:  # type: ignore[type-arg]
    assert len(demo_layers) == 17
    for t in demo_layers:
        layer = integerize(t)
        psums = conv_psum(layer)
        assert psums.checks.output_mean_error < MEAN_ERROR_LIMIT, t.layer
        assert psums.checks.passed is True


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
    assert psums.checks.next_input_mean_error is not None


def test_check_fails_when_integers_are_wrong(demo_layers: list) -> None:  # type: ignore[type-arg]
    t = next(t for t in demo_layers if t.layer == 33)
    layer = integerize(t)
    broken_w = layer.w_int.copy()
    broken_w[0, 0, 1, 1] += 3
    from dataclasses import replace

    psums = conv_psum(replace(layer, w_int=broken_w))
    assert psums.checks.passed is False
