"""The shipped demo calibration is exactly what calibrating afresh gives, and is only used then."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from qexport.frontend import demo
from qexport.frontend.inputs import normalise_uint8
from qexport.frontend.models.vgg import builtin_arch


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    demo._demo_state.cache_clear()
    yield
    demo._demo_state.cache_clear()


@pytest.mark.parametrize(("name", "act_clip"), demo.CALIBRATED_DEMOS)
def test_shipped_calibration_equals_a_fresh_one(name: str, act_clip: str) -> None:
    fresh = demo.calibration_arrays(builtin_arch(name), act_clip)  # type: ignore[arg-type]
    with np.load(demo.CALIBRATION_FILE, allow_pickle=False) as shipped:
        prefix = f"{name}/{act_clip}/"
        assert sorted(k for k in shipped.files if k.startswith(prefix)) == sorted(fresh)
        for key, value in fresh.items():
            assert shipped[key].dtype == value.dtype, key
            np.testing.assert_array_equal(shipped[key], value, err_msg=key)


def _state(arch_name: str, act_clip: str = "course") -> dict[str, torch.Tensor]:
    demo._demo_state.cache_clear()
    return demo._demo_state(builtin_arch(arch_name), act_clip)  # type: ignore[arg-type]


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.usefixtures("fresh_cache")
def test_demo_model_is_the_same_without_the_shipped_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with_file = _state("VGG16_quant_gradual")
    monkeypatch.setattr(demo, "CALIBRATION_FILE", tmp_path / "missing.npz")
    _assert_same_state(with_file, _state("VGG16_quant_gradual"))


@pytest.mark.usefixtures("fresh_cache")
def test_a_stale_shipped_calibration_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good = _state("VGG16_quant_gradual")
    with np.load(demo.CALIBRATION_FILE, allow_pickle=False) as shipped:
        arrays = {k: shipped[k] for k in shipped.files}
    prefix = "VGG16_quant_gradual/course/"
    arrays[prefix + "features.0.act_alpha"] = arrays[prefix + "features.0.act_alpha"] * 2  # a wrong value
    arrays[prefix + "fingerprint"] = np.array("made from other weights")
    stale = tmp_path / "stale.npz"
    np.savez(stale, **arrays)
    monkeypatch.setattr(demo, "CALIBRATION_FILE", stale)
    _assert_same_state(good, _state("VGG16_quant_gradual"))


@pytest.mark.usefixtures("fresh_cache")
def test_the_shipped_calibration_is_what_the_demo_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(demo, "calibrate_demo", calls.append)
    _state("VGG16_quant_gradual")
    assert calls == []  # shipped: no calibration pass
    _state("VGG16_quant_gradual", "relu")
    assert len(calls) == 1  # not shipped: calibrated on the spot


def _shipped(name: str, act_clip: str = "course") -> dict[str, np.ndarray]:
    prefix = f"{name}/{act_clip}/"
    with np.load(demo.CALIBRATION_FILE, allow_pickle=False) as shipped:
        return {k: shipped[k] for k in shipped.files if k.startswith(prefix)}


def _assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_calibration_ignores_the_last_bit_of_a_float64_conv(
    monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """Another BLAS sums a float64 conv in another order, moving its last bits; calibration must not care.

    The old float64 calibration put a few BatchNorm means exactly on a tie of the 2^-10 grid
    (VGG16_quant_gradual features.46, channels 289, 376, 377), decided by those last bits.
    """
    conv2d = torch.nn.functional.conv2d
    towards = float("inf") if direction == "up" else float("-inf")

    def other_blas(*args: object, **kwargs: object) -> torch.Tensor:
        out = conv2d(*args, **kwargs)  # type: ignore[arg-type]
        if out.dtype != torch.float64:
            return out
        return torch.nextafter(out, torch.full_like(out, towards))

    monkeypatch.setattr(torch.nn.functional, "conv2d", other_blas)
    fresh = demo.calibration_arrays(builtin_arch("VGG16_quant_gradual"), "course")
    _assert_same_arrays(_shipped("VGG16_quant_gradual"), fresh)


def test_calibration_is_the_same_on_other_cpu_kernels(tmp_path: Path) -> None:
    """MKL's and ATen's portable code paths (what an older CPU gets) calibrate to the same bits."""
    out = tmp_path / "fresh.npz"
    script = (
        "import sys, numpy as np; from qexport.frontend import demo; "
        "from qexport.frontend.models.vgg import builtin_arch; "
        "np.savez(sys.argv[1], **demo.calibration_arrays(builtin_arch('VGG16_quant_squeeze'), 'course'))"
    )
    env = {
        **os.environ,
        "MKL_CBWR": "COMPATIBLE",
        "ATEN_CPU_CAPABILITY": "default",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env, capture_output=True)
    with np.load(out, allow_pickle=False) as fresh:
        _assert_same_arrays(_shipped("VGG16_quant_squeeze"), {k: fresh[k] for k in fresh.files})


def _exact(values: list[int], numerator: int, denominator: int) -> demo._ExactConv:
    psum = np.array(values, dtype=np.int64).reshape(1, 1, 1, -1)
    return demo._ExactConv(psum, numerator, denominator, psum * numerator / denominator)


def test_batchnorm_statistics_are_exact_and_ties_go_to_even() -> None:
    # means 2.5 and 3.5 (/1024) lie exactly on ties of the 2^-10 grid: half-even, like np.round
    assert _exact([3, 3, 2, 2], 1, 1024).moments()[0].tolist() == [2 / 1024]
    assert _exact([4, 3, 4, 3], 1, 1024).moments()[0].tolist() == [4 / 1024]
    # [0, 1, 3, 4] / 32: mean 2/32, population variance 2.5 / 1024, a tie, to 2 / 1024
    mean, var = _exact([0, 1, 3, 4], 1, 32).moments()
    assert (mean.tolist(), var.tolist()) == ([64 / 1024], [2 / 1024])
    assert _exact([3, 3, 2, 2], 1, 1024).moments()[1].tolist() == [2**-10]  # the floor
    # squares beyond int64 (2^80) are summed in Python ints, still exact
    mean, var = _exact([2**40, 2**40 - 1], 1, 1).moments()
    assert (mean.tolist(), var.tolist()) == ([2.0**40 - 0.5], [0.25])


def test_act_alpha_is_numpys_98th_percentile_on_the_grid() -> None:
    x = np.linspace(-3.0, 5.0, 1001).reshape(1, 1, 7, 143)
    expected = max(np.round(np.percentile(np.abs(x), 98.0) * 16) / 16, 1 / 16)
    assert float(demo._act_alpha(x)) == expected
    assert float(demo._act_alpha(np.zeros((1, 1, 2, 2)))) == 1 / 16


@pytest.mark.parametrize("act_clip", ["course", "relu"])
def test_the_exact_conv_is_the_float_layer(act_clip: str) -> None:
    """Calibration's integer conv gives what QuantConv2d's float64 forward does, to float64 rounding."""
    from fractions import Fraction

    model = demo._seeded_model(builtin_arch("VGG16_quant_gradual"), act_clip)  # type: ignore[arg-type]
    layer = model.features[0]
    x = normalise_uint8(demo.demo_images(4)).double()
    layer.act_alpha.data.fill_(1.5)
    exact = demo._exact_conv(layer, x.numpy(), Fraction(3, 2))
    with torch.no_grad():
        floating = layer.double()(x).numpy()
    np.testing.assert_allclose(exact.value, floating, rtol=1e-12, atol=1e-12)
    assert exact.value.std() > 0.1  # a real signal, not zeros
