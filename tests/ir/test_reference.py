from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qexport.errors import CheckFailed
from qexport.frontend.capture import capture
from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.vgg import BUILTIN
from qexport.ir import reference
from qexport.ir.integerize import IntLayer, integerize
from qexport.ir.reference import (
    MEAN_ERROR_LIMIT,
    _float32,
    _float32_plan,
    _int64_conv,
    _int64_plan,
    check_tiled,
    conv_plan,
    conv_psum,
    integer_conv,
    partial_psums,
    tiled_psums,
)
from qexport.ir.weights import float_weights


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


@settings(derandomize=True, max_examples=150, deadline=None, database=None)
@given(
    x_max=st.sampled_from([0, 1, 15, 255, 2**12, 2**24 - 1, 2**24, 2**24 + 1, 2**31]),
    w_max=st.sampled_from([0, 1, 7, 127, 2**12, 2**23, 2**24 - 1, 2**24, 2**24 + 1, 2**40]),
    channels=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_the_plan_from_the_float32_values_is_the_int64_plan(
    x_max: int, w_max: int, channels: int, seed: int
) -> None:
    # the bound read from the converted values must be the exact one, or refuse (None) and leave
    # the decision to int64, never a float32 plan from values that rounded on conversion; the
    # weights converted in the conv and those integerize converted beforehand (float_weights:
    # float32 and sum |w| once) give the same plan
    rng = np.random.default_rng(seed)
    x = rng.integers(-x_max, x_max, size=(1, channels, 3, 3), endpoint=True)
    w = rng.integers(-w_max, w_max, size=(3, channels, 3, 3), endpoint=True)
    x.flat[0], w.flat[0] = x_max, -w_max  # the extremes are there
    fast = _float32_plan(_float32(x), _float32(w))
    exact = _int64_plan(x, w)
    if fast is None:
        assert max(x_max, 9 * channels * w_max) >= 2**24  # refused only when float32 may not hold them
    else:
        assert fast == exact
    assert reference.conv_plan(x, w) == exact
    weights = float_weights(w)
    assert _float32_plan(_float32(x), weights.w32, weights.w_sum) == fast
    np.testing.assert_array_equal(integer_conv(x, w, 1, 1, weights=weights), _int64_conv(x, w, 1, 1))


def test_conv_psum_runs_on_the_weights_integerize_converted(
    demo_layers: list,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layer = integerize(next(t for t in demo_layers if t.layer == 33))
    assert layer.w_float is not None and layer.w_float.source is layer.w_int
    np.testing.assert_array_equal(layer.w_float.w32.numpy(), layer.w_int)

    def no_conversion(*_args: object) -> None:
        raise AssertionError("integer_conv converted the layer's weights again")

    monkeypatch.setattr(reference, "float_weights", no_conversion)
    psums = conv_psum(layer)
    np.testing.assert_array_equal(
        psums.psum, _int64_conv(layer.x_int, layer.w_int, layer.stride, layer.padding)
    )


def test_weights_of_another_array_are_not_used() -> None:
    # a layer whose w_int was replaced (dataclasses.replace) still carries the old conversion
    rng = np.random.default_rng(9)
    x = rng.integers(0, 15, size=(1, 8, 4, 4), endpoint=True)
    w = rng.integers(-7, 7, size=(4, 8, 3, 3), endpoint=True)
    stale = float_weights(w)
    changed = w.copy()
    changed[0, 0, 1, 1] += 3
    np.testing.assert_array_equal(
        integer_conv(x, changed, 1, 1, weights=stale), _int64_conv(x, changed, 1, 1)
    )


def test_a_weight_that_rounds_to_two_to_the_24_is_not_trusted() -> None:
    # 2^24 + 1 converts to 2^24 in float32; a bound read from it would say float32 holds x * w
    x = np.ones((1, 1, 1, 1), dtype=np.int64)
    w = np.full((1, 1, 1, 1), 2**24 + 1, dtype=np.int64)
    assert _float32_plan(_float32(x), _float32(w)) is None
    assert int(integer_conv(x, w, 1, 0)[0, 0, 0, 0]) == 2**24 + 1


def test_integer_conv_converts_the_weights_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # the bound comes from the float32 weights the conv runs on: no int64 pass over the weights
    rng = np.random.default_rng(5)
    x = rng.integers(0, 15, size=(1, 64, 4, 4), endpoint=True)
    w = rng.integers(-7, 7, size=(32, 64, 3, 3), endpoint=True)

    def no_int64_plan(*_args: object) -> None:
        raise AssertionError("integer_conv made a second, int64 pass over the weights")

    monkeypatch.setattr(reference, "_int64_plan", no_int64_plan)
    monkeypatch.setattr(reference, "conv_plan", no_int64_plan)
    np.testing.assert_array_equal(integer_conv(x, w, 1, 1), _int64_conv(x, w, 1, 1))


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
    psums = conv_psum(replace(layer, w_int=broken_w))
    assert psums.checks.passed is False


# issue 14 item 3: the reference stage computes what tiled layouts need


def _int_layer(c_in: int, c_out: int, side: int, seed: int) -> IntLayer:
    """A 3x3, stride 1, padding 1 layer of random 4-bit integers (two images)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 15, size=(2, c_in, side, side), endpoint=True)
    w = rng.integers(-7, 7, size=(c_out, c_in, 3, 3), endpoint=True)
    return IntLayer(
        name="features.7",
        layer=7,
        conv_number=2,
        in_channels=c_in,
        out_channels=c_out,
        kernel=3,
        stride=1,
        padding=1,
        w_bit=4,
        act_bit=4,
        act_clip="relu",
        act_alpha=1.0,
        wgt_alpha=1.0,
        w_delta=1 / 7,
        x_delta=1 / 15,
        w_int=w,
        x_int=x,
        y_float=np.zeros((2, c_out, side, side), dtype=np.float32),
        next_x=None,
    )


def _per_tile_float64(layer: IntLayer, rows: int, extent: int) -> list[np.ndarray]:
    """Each input-channel tile's conv on its own, in torch float64, over a zero-extended map."""
    side = layer.x_int.shape[2]
    x = np.pad(layer.x_int, ((0, 0), (0, 0), (0, extent - side), (0, extent - side)))
    return [
        _torch_float64_conv(x[:, lo : lo + rows], layer.w_int[:, lo : lo + rows], 1, 1)[..., :extent, :extent]
        for lo in range(0, layer.in_channels, rows)
    ]


@pytest.mark.parametrize(
    ("c_in", "rows"),
    [(8, 8), (16, 8), (20, 8), (3, 8), (128, 8), (24, 16)],
    ids=["one-tile", "two-tiles", "last-tile-partial", "fewer-than-rows", "16-tiles", "rows16-partial"],
)
def test_partial_psums_equal_a_per_tile_float64_conv(c_in: int, rows: int) -> None:
    layer = _int_layer(c_in, 12, 5, seed=c_in * 10 + rows)
    partial = partial_psums(layer, rows)
    expected = _per_tile_float64(layer, rows, 5)
    assert partial.shape == (-(-c_in // rows), 2, 12, 5, 5) and partial.dtype == np.int64
    for i, tile in enumerate(expected):
        np.testing.assert_array_equal(partial[i], tile.astype(np.int64), err_msg=f"itile {i}")
    np.testing.assert_array_equal(partial.sum(axis=0), conv_psum(layer).psum)


def test_partial_psums_extend_the_map_with_zero_inputs() -> None:
    # a 6x6 map in 4x4 tiles: outputs 6..7 see the zeros beyond the map, as a whole-tile core does
    layer = _int_layer(20, 8, 6, seed=5)
    partial = partial_psums(layer, 8, (8, 8))
    for i, tile in enumerate(_per_tile_float64(layer, 8, 8)):
        np.testing.assert_array_equal(partial[i], tile.astype(np.int64))
    assert np.any(partial[:, :, :, 6:, :] != 0)


@pytest.mark.parametrize("method", ["float32_blocks", "int64"])
def test_grouped_integer_conv_is_exact_on_every_path(method: str) -> None:
    rng = np.random.default_rng(11)
    if method == "int64":  # a bound beyond 2^53 takes the int64 path
        x = rng.integers(-(2**40), 2**40, size=(1, 6, 4, 4))
        w = rng.integers(-(2**14), 2**14, size=(6, 3, 3, 3))
    else:  # each group's sum beyond 2^24, each channel's within
        x = rng.integers(0, 2**14, size=(1, 64, 4, 4))
        w = rng.integers(-127, 127, size=(4, 32, 3, 3))
    assert conv_plan(x, w).method == method
    out = integer_conv(x, w, 1, 1, groups=2)
    lo, hi = np.split(x, 2, axis=1)
    w_lo, w_hi = np.split(w, 2, axis=0)
    expected = np.concatenate([_int64_conv(lo, w_lo, 1, 1), _int64_conv(hi, w_hi, 1, 1)], axis=1)
    np.testing.assert_array_equal(out, expected)


def test_tiled_psums_total_and_golden() -> None:
    layer = _int_layer(20, 8, 6, seed=9)
    tiled = tiled_psums(layer, 8, 4, ("accumulate", "relu"))
    assert tiled.partial.shape == (3, 2, 8, 8, 8)
    np.testing.assert_array_equal(tiled.total, tiled.partial.sum(axis=0))
    np.testing.assert_array_equal(tiled.golden, np.maximum(tiled.total, 0))
    np.testing.assert_array_equal(tiled_psums(layer, 8, 4, ("accumulate",)).golden, tiled.total)
    check_tiled(layer, conv_psum(layer), tiled, ("accumulate", "relu"))  # agrees: no error


def test_check_tiled_refuses_tiles_that_do_not_add_up() -> None:
    layer = _int_layer(20, 8, 6, seed=9)
    tiled = tiled_psums(layer, 8, 4, ("accumulate", "relu"))
    total = tiled.total.copy()
    total[1, 3, 2, 5] += 1
    broken = replace(tiled, total=total)
    with pytest.raises(CheckFailed, match=r"layer 7: .* at n=1 y=2 x=5 do not add up to the reference conv"):
        check_tiled(layer, conv_psum(layer), broken, ("accumulate",))


def test_check_tiled_refuses_a_requantized_golden_off_the_next_layer(demo_layers: list) -> None:  # type: ignore[type-arg]
    layer = integerize(next(t for t in demo_layers if t.layer == 33))
    psums = conv_psum(layer)
    golden = ("accumulate", "relu", "requantize")
    tiled = tiled_psums(layer, 8, 4, golden)
    check_tiled(layer, psums, tiled, golden)
    assert layer.next_x_int is not None
    wrong = replace(layer, next_x_int=layer.next_x_int + 1)
    with pytest.raises(CheckFailed, match="requantized value"):
        check_tiled(wrong, psums, tiled, golden)
