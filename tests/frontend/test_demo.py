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
from qexport.frontend.models.resolve import builtin_model
from qexport.frontend.models.vgg import builtin_arch


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    demo._demo_state.cache_clear()
    yield
    demo._demo_state.cache_clear()


@pytest.mark.parametrize(("name", "act_clip"), demo.CALIBRATED_DEMOS)
def test_shipped_calibration_equals_a_fresh_one(name: str, act_clip: str) -> None:
    fresh = demo.calibration_arrays(builtin_model(name), act_clip)  # type: ignore[arg-type]
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


# --- the ResNet demo ---------------------------------------------------------------------------

_STATE_DIGEST = (
    "import hashlib, sys; from qexport.frontend import demo; "
    "from qexport.frontend.models.resnet import RESNET_BUILTIN; "
    "demo.CALIBRATION_FILE = demo.CALIBRATION_FILE.with_name('absent.npz') if sys.argv[1] == 'fresh' else "
    "demo.CALIBRATION_FILE; state = demo._demo_state(RESNET_BUILTIN['resnet20_quant'], 'course'); "
    "digest = hashlib.sha256(); "
    "[digest.update(k.encode() + state[k].numpy().tobytes()) for k in sorted(state)]; "
    "print(digest.hexdigest())"
)


def test_resnet_demo_is_the_same_bits_in_another_process_calibrated_afresh() -> None:
    """Shipped or recomputed, here or in a fresh process on portable kernels: one state, bit for bit."""
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}
    digests = {
        how: subprocess.run(
            [sys.executable, "-c", _STATE_DIGEST, how], check=True, env=env, capture_output=True, text=True
        ).stdout.strip()
        for how in ("shipped", "fresh")
    }
    assert digests["shipped"] == digests["fresh"]
    assert len(digests["fresh"]) == 64


@pytest.mark.usefixtures("fresh_cache")
def test_resnet_demo_is_seeded_calibrated_and_untrained() -> None:
    from qexport.frontend.models.resnet import RESNET_BUILTIN, ResNetQuant

    arch = RESNET_BUILTIN["resnet20_quant"]
    model = demo.demo_model(arch)
    assert isinstance(model, ResNetQuant)
    again = demo.demo_model(arch)
    _assert_same_state(model.state_dict(), again.state_dict())
    state = model.state_dict()
    # the float stem's BatchNorm and every block's are calibrated, not left at (0, 1)
    for key in ("bn1", "layer1.0.bn1", "layer2.0.downsample.1", "layer3.2.bn2"):
        assert not torch.equal(state[f"{key}.running_mean"], torch.zeros_like(state[f"{key}.running_mean"]))
        assert not torch.equal(state[f"{key}.running_var"], torch.ones_like(state[f"{key}.running_var"]))
    alphas = {k: float(v) for k, v in state.items() if k.endswith("act_alpha")}
    assert len(alphas) == 20 and all(1.0 <= a <= 8.0 for a in alphas.values()), alphas
    assert all(a * 16 == int(a * 16) for a in alphas.values())  # on the 2^-4 grid


def test_resnet_demo_activations_spread_and_every_conv_passes_the_seeds_check() -> None:
    from qexport.frontend.capture import capture
    from qexport.frontend.inputs import load_demo
    from qexport.frontend.models.resnet import RESNET_BUILTIN
    from qexport.ir.integerize import integerize
    from qexport.ir.reference import conv_psum

    model = demo.demo_model(RESNET_BUILTIN["resnet20_quant"])
    captured = capture(model, load_demo("0:4").images)
    assert [t.name for t in captured][6:9] == ["layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0"]
    for t in captured:
        layer = integerize(t)
        values = np.bincount(np.asarray(layer.x_int).reshape(-1), minlength=16)
        assert values[15] > 0, t.name  # the alpha is reached: the whole 4-bit range is used
        assert (values[1:15] > 0).all(), t.name
        assert values[0] < 0.8 * values.sum(), t.name  # not mostly zeros
        checks = conv_psum(layer).checks
        assert checks.output_mean_error < 1e-3, t.name


def test_resnet_demo_calibrates_on_the_real_block_structure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The residual sum reaches the next block: calibrating without it moves the next block's alphas."""
    from qexport.frontend.models.resnet import ResNetArch

    arch = ResNetArch("tiny", blocks=(2, 1, 1), widths=(8, 16, 16))
    with_sum = demo.calibration_arrays(arch, "course")
    monkeypatch.setattr(demo, "_residual", lambda out, shortcut: np.maximum(out, 0.0))  # no shortcut
    without = demo.calibration_arrays(arch, "course")
    assert with_sum["tiny/course/layer1.0.conv1.act_alpha"] == without["tiny/course/layer1.0.conv1.act_alpha"]
    assert with_sum["tiny/course/layer1.1.conv1.act_alpha"] != without["tiny/course/layer1.1.conv1.act_alpha"]


def test_the_exact_float_conv_is_the_float_stem() -> None:
    from qexport.frontend.models.resnet import RESNET_BUILTIN

    model = demo._seeded_model(RESNET_BUILTIN["resnet20_quant"], "course")
    x = normalise_uint8(demo.demo_images(2)).double()
    exact = demo._exact_float_conv(model.conv1, x.numpy())
    with torch.no_grad():
        floating = model.conv1.double()(x).numpy()
    np.testing.assert_allclose(exact.value, floating, rtol=0, atol=1e-6)  # the input's 2^-24 grid
    assert exact.value.std() > 0.1
