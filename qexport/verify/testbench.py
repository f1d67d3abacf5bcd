"""The context a rendered testbench needs: tiles, files, widths, from an export's manifest."""

from __future__ import annotations

from typing import Any

from qexport import __version__
from qexport.errors import InputError
from qexport.layout.profile import Profile
from qexport.writer.manifest import FileEntry, LayerEntry, Manifest


def _need(value: int | None, entry: FileEntry, key: str) -> int:
    if value is None:
        raise InputError(f"{entry.path}: a systolic tile file names its {key}; the manifest is damaged")
    return value


def testbench_context(manifest: Manifest, entry: LayerEntry, prof: Profile, fmt: str) -> dict[str, Any]:
    by_kind: dict[str, list[FileEntry]] = {}
    for f in entry.files:
        by_kind.setdefault(f.tensor, []).append(f)
    activation = {
        (_need(f.where.tile, f, "tile"), _need(f.where.itile, f, "itile")): f.path for f in by_kind["input"]
    }
    weights = {
        (
            _need(f.where.itile, f, "itile"),
            _need(f.where.otile, f, "otile"),
            _need(f.where.kij, f, "kij"),
        ): f.path
        for f in by_kind["weight"]
    }
    itiles = 1 + max(i for _, i in activation)
    tiles = []
    for out in by_kind["output"]:
        at = out.where
        s, o = _need(at.tile, out, "tile"), _need(at.otile, out, "otile")
        if at.y is None or at.x is None or at.oc is None:
            raise InputError(
                f"{out.path}: a systolic output tile names its y, x and oc; the manifest is damaged"
            )
        tiles.append(
            {
                "tile": s,
                "otile": o,
                "n": _need(at.n, out, "n"),
                "y0": at.y[0],
                "x0": at.x[0],
                "oc0": at.oc[0],
                "oc1": at.oc[1],
                "out": out.path,
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
    address = by_kind["address"][0].path if "address" in by_kind else ""
    return {
        "version": __version__,
        "model": manifest.model,
        "demo": manifest.label,
        "profile": prof.name,
        "layer": entry.index,
        "radix": "h" if fmt == "hex" else "b",
        "rows": prof.rows,
        "cols": prof.cols,
        "act_bits": prof.act_bits,
        "w_bits": prof.w_bits,
        "psum_bits": prof.psum_bits,
        "out_bits": by_kind["output"][0].lane_bits,
        "out_signed": by_kind["output"][0].signed,
        "tile": prof.tile,
        "address_bits": prof.address_bits,
        "weight_stationary": prof.dataflow == "weight_stationary",
        "relu": "relu" in prof.golden,
        "address_file": address,
        "tiles": sorted(tiles, key=lambda t: (t["tile"], t["otile"])),
        "dut": "qexport_ref_core",
        "dut_file": "qexport_ref_core.v",
    }
