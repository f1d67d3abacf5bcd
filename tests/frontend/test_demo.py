"""The shipped demo calibration is exactly what calibrating afresh gives, and is only used then."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from qexport.frontend import demo
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
