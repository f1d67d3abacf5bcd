"""Issue 13, items 18 and 19: exactness pinned, not assumed; the same float math on CPU and CUDA.

``exact_math()`` turns NNPACK off (its Winograd/FFT convs round integer sums) and every TF32/bf16
math mode to IEEE float32 for capture, the reference conv and the study's forwards; these tests
record the settings inside those passes and check the user's are back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qexport import study
from qexport.api import Loaded
from qexport.frontend.capture import capture
from qexport.frontend.inputs import Inputs
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.vgg import VGGQuant, _from_cfg, build_model
from qexport.ir import reference
from qexport.ir.reference import conv_plan, integer_conv
from qexport.precision import exact_math


def _read(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except RuntimeError:  # torch refuses a legacy read once legacy and new settings disagree
        return "refused"


def _settings() -> dict[str, Any]:
    """Every setting exact_math touches, as torch reports it."""
    b = torch.backends
    matmul = b.cuda.matmul
    return {
        "nnpack": torch._C._get_nnpack_enabled(),
        "cudnn.allow_tf32": _read(lambda: b.cudnn.allow_tf32),
        "cuda.matmul.allow_tf32": _read(lambda: matmul.allow_tf32),
        "float32_matmul_precision": _read(torch.get_float32_matmul_precision),
        "mkldnn.conv": b.mkldnn.conv.fp32_precision,
        "mkldnn.matmul": b.mkldnn.matmul.fp32_precision,
        "mkldnn.rnn": b.mkldnn.rnn.fp32_precision,
        "cudnn.conv": b.cudnn.conv.fp32_precision,
        "cudnn.rnn": b.cudnn.rnn.fp32_precision,
        "cuda.matmul": matmul.fp32_precision,
        "fp16_reduction": torch._C._get_cublas_allow_fp16_reduced_precision_reduction(),
        "bf16_reduction": torch._C._get_cublas_allow_bf16_reduced_precision_reduction(),
        "fp16_accumulation": matmul.allow_fp16_accumulation,
    }


EXACT = {
    "nnpack": False,
    "cudnn.allow_tf32": False,
    "cuda.matmul.allow_tf32": False,
    "float32_matmul_precision": "highest",
    "mkldnn.conv": "ieee",
    "mkldnn.matmul": "ieee",
    "mkldnn.rnn": "ieee",
    "cudnn.conv": "ieee",
    "cudnn.rnn": "ieee",
    "cuda.matmul": "ieee",
    "fp16_reduction": (False, True),
    "bf16_reduction": (False, True),
    "fp16_accumulation": False,
}


@pytest.fixture
def user_settings() -> Iterator[dict[str, Any]]:
    """A user's inexact choices (torch's own CUDA defaults are TF32 convs), undone afterwards."""
    saved = _settings()
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = (True, True)
    try:
        chosen = _settings()
        assert chosen["cudnn.allow_tf32"] is True and chosen["cudnn.conv"] == "tf32"
        yield chosen
    finally:
        torch.set_float32_matmul_precision(saved["float32_matmul_precision"])
        # the legacy setter also sets both matmul precisions; put back what they were
        torch.backends.mkldnn.matmul.fp32_precision = saved["mkldnn.matmul"]
        torch.backends.cuda.matmul.fp32_precision = saved["cuda.matmul"]
        torch.backends.mkldnn.conv.fp32_precision = saved["mkldnn.conv"]
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = saved["bf16_reduction"]
        assert _settings() == saved


@pytest.fixture
def onednn_off() -> Iterator[None]:
    """oneDNN disabled, as a user may; torch then convolves float32 with NNPACK at batch >= 16."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _no_fallback(*_args: Any) -> np.ndarray:
    raise AssertionError("integer_conv fell back to int64: its float conv was not exact")


def _course_like_conv(batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A 64->64 3x3 conv of 4-bit integers: x_int in [0, 15], w_int in [-7, 7]."""
    rng = np.random.default_rng(18)
    return rng.integers(0, 16, size=(batch, 64, 16, 16)), rng.integers(-7, 8, size=(64, 64, 3, 3))


def _float64_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    out = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), padding=1)
    return out.numpy()


# ------------------------------------------------------------------------------------------
# item 18: the float32 reference conv is exact because the backend is pinned


def test_nnpack_really_rounds_such_a_conv(onednn_off: None) -> None:
    # the premise the pinning removes: without it this very conv is not integral
    x, w = _course_like_conv()
    out = F.conv2d(torch.from_numpy(x).float(), torch.from_numpy(w).float(), padding=1).numpy()
    assert not np.array_equal(out, np.round(out))


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn-on", "onednn-off-nnpack-eligible"])
def test_float32_conv_is_exact_without_the_int64_fallback(
    onednn: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, w = _course_like_conv()
    assert conv_plan(x, w).method == "float32"
    monkeypatch.setattr(reference, "_int64_conv", _no_fallback)
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = onednn
    try:
        psum = integer_conv(x, w, 1, 1)
    finally:
        torch.backends.mkldnn.enabled = before
    assert psum.dtype == np.int64
    np.testing.assert_array_equal(psum, _float64_conv(x, w))


def test_the_reference_conv_runs_in_exact_math_and_restores(
    user_settings: dict[str, Any], onednn_off: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    float_conv = reference._float_conv

    def recording(*args: Any) -> np.ndarray:
        seen.append(_settings())
        return float_conv(*args)

    monkeypatch.setattr(reference, "_float_conv", recording)
    x, w = _course_like_conv(batch=2)
    integer_conv(x, w, 1, 1)
    assert seen == [EXACT]
    assert _settings() == user_settings


def test_exact_math_restores_after_an_exception(user_settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="inside"), exact_math():
        assert _settings() == EXACT
        raise ValueError("inside")
    assert _settings() == user_settings


def test_exact_math_keeps_settings_torch_refuses_to_read() -> None:
    # only the new API used: torch then refuses to read the legacy cudnn.allow_tf32
    saved = torch.backends.cudnn.conv.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    try:
        before = _settings()
        assert before["cudnn.allow_tf32"] == "refused"
        with exact_math():
            inside = _settings()
        assert _settings() == before
    finally:
        torch.backends.cudnn.conv.fp32_precision = saved
    assert {k: v for k, v in inside.items() if k != "cudnn.allow_tf32"} == {
        k: v for k, v in EXACT.items() if k != "cudnn.allow_tf32"
    }


def test_a_non_integral_float_result_is_redone_in_int64(monkeypatch: pytest.MonkeyPatch) -> None:
    # the second line of defence: a rounded float conv is never used
    x, w = _course_like_conv(batch=2)
    float_conv = reference._float_conv

    def off_by_a_fraction(*args: Any) -> np.ndarray:
        out = float_conv(*args)
        out[0, 0, 0, 0] += 0.25
        return out

    monkeypatch.setattr(reference, "_float_conv", off_by_a_fraction)
    np.testing.assert_array_equal(integer_conv(x, w, 1, 1), _float64_conv(x, w))


def test_a_non_integral_block_is_caught_before_the_blocks_are_summed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one 8-bit value over 64 channels: float32 per block of input channels. The sums stay
    # small, where float32 holds a quarter (near 2^24 it could not: its spacing there is 1)
    x = np.ones((1, 64, 4, 4), dtype=np.int64)
    x[0, 0, 0, 0] = 255
    w = np.full((2, 64, 3, 3), 127, dtype=np.int64)
    plan = conv_plan(x, w)
    assert plan.method == "float32_blocks" and len(plan.blocks) == 2
    float_conv = reference._float_conv
    calls: list[tuple[int, ...]] = []

    def first_block_low(*args: Any) -> np.ndarray:
        out = float_conv(*args)
        if not calls:
            out -= 0.25  # truncated to int64 this would read one less
        calls.append(out.shape)
        return out

    monkeypatch.setattr(reference, "_float_conv", first_block_low)
    np.testing.assert_array_equal(integer_conv(x, w, 1, 1), _float64_conv(x, w))
    assert len(calls) == 2


# ------------------------------------------------------------------------------------------
# item 19: capture and the study's forwards run without TF32, on CUDA as on CPU


def _tiny_model() -> VGGQuant:
    torch.manual_seed(0)
    arch = replace(_from_cfg("tiny", [4, "M", 8, "M", 8, "M", 16, "M", 16, "M"]), num_classes=4)
    return build_model(arch).eval()


def _recording(model: VGGQuant, raise_inside: bool = False) -> list[dict[str, Any]]:
    """The settings at each forward of the model's first conv."""
    seen: list[dict[str, Any]] = []

    def hook(_module: nn.Module, _args: Any, _output: Any) -> None:
        seen.append(_settings())
        if raise_inside:
            raise ValueError("the model failed")

    conv = next(m for m in model.features if isinstance(m, QuantConv2d))
    conv.register_forward_hook(hook)
    return seen


def test_capture_forward_runs_in_exact_math(user_settings: dict[str, Any]) -> None:
    model = _tiny_model()
    seen = _recording(model)
    captured = capture(model, torch.randn(2, 3, 32, 32))
    assert len(captured) == 5
    assert seen == [EXACT]
    assert _settings() == user_settings


def test_capture_restores_settings_after_an_exception(user_settings: dict[str, Any]) -> None:
    model = _tiny_model()
    seen = _recording(model, raise_inside=True)
    with pytest.raises(ValueError, match="the model failed"):
        capture(model, torch.randn(2, 3, 32, 32))
    assert seen == [EXACT]
    assert _settings() == user_settings


def test_study_evaluate_runs_in_exact_math(user_settings: dict[str, Any]) -> None:
    model = _tiny_model()
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    inputs = Inputs(images, labels, {"input": "random"}, tuple(range(6)))
    loaded = Loaded(model, model.arch, inputs, {"checkpoint": "tiny"}, None)
    s = study.Study(loaded, images, labels, "random", None)
    seen = _recording(model)
    result = study.evaluate(s, batch_size=4)
    assert result.count == 6
    assert seen == [EXACT, EXACT]  # two batches
    assert _settings() == user_settings


def test_the_precision_settings_are_found_once_and_still_restored() -> None:
    # the reference conv enters exact_math at every call: finding the settings is done once
    from qexport import precision

    assert precision._slots() is precision._slots()
    conv = torch.backends.mkldnn.conv
    before = conv.fp32_precision
    with precision.exact_math():
        assert conv.fp32_precision == "ieee"
    assert conv.fp32_precision == before
