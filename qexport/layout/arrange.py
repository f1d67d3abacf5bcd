"""The layout stage's one entry: a layer's integers arranged into the files its profile asks for."""

from __future__ import annotations

from qexport.ir.fixed_point import LayerFixedPoint
from qexport.ir.integerize import IntLayer
from qexport.ir.reference import Psums, TiledPsums
from qexport.ir.sfu import LayerSfu
from qexport.layout.flat import LayerPlan, flat_layout
from qexport.layout.options import LayoutOptions
from qexport.layout.profile import Profile
from qexport.layout.systolic import systolic_layout


def arrange(
    layer: IntLayer,
    psums: Psums,
    tiled: TiledPsums | None,
    prof: Profile,
    opts: LayoutOptions,
    folder: str,
    sfu: LayerSfu | LayerFixedPoint | None = None,
) -> LayerPlan:
    """``layer``'s files in ``folder`` (``layer<index>/``, one rule for every profile and layer count).

    A tiled profile needs ``tiled`` (the reference stage's ``tiled_psums``); the flat one does not.
    ``sfu`` (the layer's SFU, if its files are wanted) adds the threshold, direction and requant files
    (a ResNet block end's: multiplier, shift, bias, skip and requant).
    """
    if prof.kind == "flat":
        tensors = flat_layout(layer, psums, opts, folder, pad_channels=prof.pad_channels, sfu=sfu)
    elif tiled is None:
        raise ValueError(f"profile {prof.name} tiles the layer: pass the reference's tiled psums")
    else:
        tensors = systolic_layout(layer, psums, tiled, prof, folder, sfu)
    return LayerPlan(layer.name, layer.layer, layer.conv_number, tuple(tensors))
