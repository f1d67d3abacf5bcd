"""The context a rendered testbench needs: tiles, files, widths, from the layout's plan."""

from __future__ import annotations

from typing import Any

from qexport import __version__
from qexport.layout.flat import LayerPlan, TensorPlan
from qexport.layout.profile import Profile
from qexport.writer.render import MemoryContext


def testbench_context(plan: LayerPlan, memory: MemoryContext, prof: Profile) -> dict[str, Any]:
    """``plan``'s tiles as the testbench template walks them; ``memory`` names the model and format."""
    by_kind: dict[str, list[TensorPlan]] = {}
    for tp in plan.tensors:
        by_kind.setdefault(tp.tensor, []).append(tp)

    def path(tp: TensorPlan) -> str:
        return f"{tp.stem}.{memory.fmt}"  # as render_memory names the file

    activation = {(tp.meta["tile"], tp.meta["itile"]): path(tp) for tp in by_kind["input"]}
    weights = {(tp.meta["itile"], tp.meta["otile"], tp.meta["kij"]): path(tp) for tp in by_kind["weight"]}
    itiles = 1 + max(i for _, i in activation)
    tiles = []
    for out in by_kind["output"]:
        s, o = out.meta["tile"], out.meta["otile"]
        tiles.append(
            {
                "tile": s,
                "otile": o,
                "n": out.meta["n"],
                "y0": out.meta["y"][0],
                "x0": out.meta["x"][0],
                "oc0": out.meta["oc"][0],
                "oc1": out.meta["oc"][1],
                "out": path(out),
                "itiles": [
                    {
                        "itile": i,
                        "activation": activation[(s, i)],
                        "weights": [weights[(i, o, k)] for k in range(9)],
                    }
                    for i in range(itiles)
                ],
            }
        )
    address = by_kind["address"][0] if "address" in by_kind else None
    out_spec = by_kind["output"][0].spec
    return {
        "version": __version__,
        "model": memory.model,
        "demo": memory.demo_label,
        "profile": prof.name,
        "layer": plan.layer,
        "radix": "h" if memory.fmt == "hex" else "b",
        "rows": prof.rows,
        "cols": prof.cols,
        "act_bits": prof.act_bits,
        "w_bits": prof.w_bits,
        "psum_bits": prof.psum_bits,
        "out_bits": out_spec.lane_bits,
        "out_signed": out_spec.signed,
        "tile": prof.tile,
        "address_bits": prof.address_bits,
        "weight_stationary": prof.dataflow == "weight_stationary",
        "relu": "relu" in prof.golden,
        "address_file": "" if address is None else path(address),
        "tiles": sorted(tiles, key=lambda t: (t["tile"], t["otile"])),
        "dut": "qexport_ref_core",
        "dut_file": "qexport_ref_core.v",
    }
