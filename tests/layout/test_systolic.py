"""The systolic layout arranges the psums the reference stage computed; it computes none itself."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qexport.layout
from qexport.frontend.capture import capture
from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.vgg import BUILTIN
from qexport.ir import reference
from qexport.ir.integerize import IntLayer, integerize
from qexport.ir.reference import Psums, TiledPsums, check_tiled, conv_psum, tiled_psums
from qexport.layout.profile import load_profile
from qexport.layout.systolic import check_systolic, systolic_layout


@pytest.fixture(scope="module")
def layer27() -> tuple[IntLayer, Psums]:
    """features.27 of the demo: 128 -> 32 channels on a 4x4 map, 16 input-channel tiles on the 8x8 core."""
    model = demo_model(BUILTIN["VGG16_quant_gradual"])
    t = next(t for t in capture(model, load_demo("0:2").images) if t.layer == 27)
    layer = integerize(t)
    return layer, conv_psum(layer)


def _no_conv(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("the layout ran a conv")


def test_the_tiled_layout_makes_no_conv_call(
    layer27: tuple[IntLayer, Psums], monkeypatch: pytest.MonkeyPatch
) -> None:
    layer, psums = layer27
    prof = load_profile("course")
    check_systolic(layer, prof)
    tiled = tiled_psums(layer, prof.rows, prof.tile, prof.golden)  # the reference stage
    check_tiled(layer, psums, tiled, prof.golden)
    # from here on every conv raises: torch's, the reference's, and any layout module's own import
    monkeypatch.setattr(reference, "integer_conv", _no_conv)
    monkeypatch.setattr(reference, "_int64_conv", _no_conv)
    monkeypatch.setattr(F, "conv2d", _no_conv)
    monkeypatch.setattr(torch, "conv2d", _no_conv)
    for info in pkgutil.iter_modules(qexport.layout.__path__):
        module = importlib.import_module(f"qexport.layout.{info.name}")
        for name in ("integer_conv", "requantize", "conv_psum"):
            monkeypatch.setattr(module, name, _no_conv, raising=False)
    plans = systolic_layout(layer, psums, tiled, prof, "layer27/")
    assert layer.x_int.shape == (2, 128, 4, 4)
    _assert_arranges(plans, tiled)


def _assert_arranges(plans: list[Any], tiled: TiledPsums) -> None:
    """Every psum and output file is a slice of the reference's arrays, (n, oc, y, x) -> (y, x, oc)."""
    kinds = [tp.tensor for tp in plans]
    assert kinds.count("psum") == 2 * 16 * 4  # images x itiles x otiles (one 4x4 spatial tile)
    assert kinds.count("output") == 2 * 4
    for tp in plans:
        if tp.tensor not in ("psum", "output"):
            continue
        at = tp.where
        assert at.y is not None and at.x is not None and at.oc is not None
        y, x, oc = at.y[0], at.x[0], at.oc[0]
        source = tiled.partial[at.itile] if tp.tensor == "psum" else tiled.golden
        expected = source[at.n, oc : oc + 8, y : y + 4, x : x + 4].transpose(1, 2, 0)
        np.testing.assert_array_equal(tp.array[0], expected, err_msg=tp.stem)
