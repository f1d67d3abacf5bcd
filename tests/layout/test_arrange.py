"""layout.arrange: the one entry of the layout stage picks the profile's arrangement."""

from __future__ import annotations

import pytest

from qexport.frontend.capture import capture
from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.vgg import BUILTIN
from qexport.ir.integerize import IntLayer, integerize
from qexport.ir.reference import Psums, conv_psum, tiled_psums
from qexport.layout.arrange import arrange
from qexport.layout.flat import with_defaults
from qexport.layout.options import LayoutOptions
from qexport.layout.profile import load_profile


@pytest.fixture(scope="module")
def layer33() -> tuple[IntLayer, Psums]:
    model = demo_model(BUILTIN["VGG16_quant_gradual"])
    t = next(t for t in capture(model, load_demo("0").images) if t.layer == 33)
    layer = integerize(t)
    return layer, conv_psum(layer)


def test_flat_profile_gives_the_four_tensors_in_the_layer_folder(layer33: tuple[IntLayer, Psums]) -> None:
    layer, psums = layer33
    prof = load_profile("flat")
    opts = with_defaults(LayoutOptions(), prof.lanes, prof.psum_lanes, prof.lane_order)
    plan = arrange(layer, psums, None, prof, opts, "layer33/")
    assert (plan.name, plan.layer) == ("features.33", 33)
    assert [(tp.tensor, tp.stem) for tp in plan.tensors] == [
        ("weight", "layer33/weight"),
        ("input", "layer33/input"),
        ("psum", "layer33/psum"),
        ("output", "layer33/output"),
    ]


def test_a_tiled_profile_arranges_the_reference_tiles(layer33: tuple[IntLayer, Psums]) -> None:
    layer, psums = layer33
    prof = load_profile("course")
    opts = with_defaults(LayoutOptions(), prof.lanes, prof.psum_lanes, prof.lane_order)
    with pytest.raises(ValueError, match="tiled psums"):
        arrange(layer, psums, None, prof, opts, "layer33/")
    plan = arrange(
        layer, psums, tiled_psums(layer, prof.rows, prof.tile, prof.golden), prof, opts, "layer33/"
    )
    stems = {tp.stem for tp in plan.tensors}
    assert {"layer33/activation_tile0", "layer33/acc_address", "layer33/out"} <= stems
    assert sum(tp.tensor == "weight" for tp in plan.tensors) == 9  # one file a kernel tap
