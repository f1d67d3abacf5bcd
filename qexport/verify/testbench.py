"""The context a rendered testbench needs: tiles, files, widths, from an export's manifest."""

from __future__ import annotations

from typing import Any

from qexport import __version__
from qexport.layout.profile import Profile


def testbench_context(
    manifest: dict[str, Any], entry: dict[str, Any], prof: Profile, fmt: str
) -> dict[str, Any]:
    files = entry["files"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for f in files:
        by_kind.setdefault(f["tensor"], []).append(f)
    activation = {(f["tile"], f["itile"]): f["path"] for f in by_kind["input"]}
    weights = {(f["itile"], f["otile"], f["kij"]): f["path"] for f in by_kind["weight"]}
    itiles = 1 + max(i for _, i in activation)
    tiles = []
    for out in by_kind["output"]:
        s, o = out["tile"], out["otile"]
        tiles.append(
            {
                "tile": s,
                "otile": o,
                "n": out["n"],
                "y0": out["y"][0],
                "x0": out["x"][0],
                "oc0": out["oc"][0],
                "oc1": out["oc"][1],
                "out": out["path"],
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
    address = by_kind.get("address", [{"path": ""}])[0]["path"]
    return {
        "version": __version__,
        "model": manifest["model"],
        "demo": manifest.get("label"),
        "profile": prof.name,
        "layer": entry["index"],
        "radix": "h" if fmt == "hex" else "b",
        "rows": prof.rows,
        "cols": prof.cols,
        "act_bits": prof.act_bits,
        "w_bits": prof.w_bits,
        "psum_bits": prof.psum_bits,
        "out_bits": by_kind["output"][0]["lane_bits"],
        "out_signed": by_kind["output"][0]["signed"],
        "tile": prof.tile,
        "address_bits": prof.address_bits,
        "weight_stationary": prof.dataflow == "weight_stationary",
        "relu": "relu" in prof.golden,
        "address_file": address,
        "tiles": sorted(tiles, key=lambda t: (t["tile"], t["otile"])),
        "dut": "qexport_ref_core",
        "dut_file": "qexport_ref_core.v",
    }
