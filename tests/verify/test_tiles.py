"""Tile files put back together by their manifest placement alone."""

from __future__ import annotations

import numpy as np
import pytest

from qexport.errors import InputError
from qexport.layout.placement import Placement
from qexport.verify.tiles import assemble
from qexport.writer.manifest import FileEntry, LayerChecks, LayerEntry


def _entry(
    path: str, tensor: str, axes: tuple[str, ...], shape: tuple[int, ...], where: Placement, **kw: object
) -> FileEntry:
    return FileEntry(
        path,
        tensor,
        "txt",
        shape,
        axes,
        8,
        4,
        True,
        "lsb_first",
        32,
        1,
        3,
        1,
        0,
        "",
        where=where,
        **kw,  # type: ignore[arg-type]
    )


def _layer() -> LayerEntry:
    checks = LayerChecks(0.0, 0.0, None, None, True)
    return LayerEntry(
        "features.4",
        4,
        1,
        3,
        10,
        3,
        1,
        1,
        4,
        4,
        "relu",
        1.0,
        1.0,
        0.1,
        0.1,
        (1, 3, 6, 4),
        (1, 10, 6, 4),
        checks,
        (),
    )


def test_thresholds_in_t_c_tiles_become_c_t() -> None:
    full = np.arange(10 * 15).reshape(10, 15)  # (c, t)
    files = {
        "t0": _entry("t0", "threshold", ("t", "c"), (15, 8), Placement(otile=0, oc=(0, 8))),
        "t1": _entry("t1", "threshold", ("t", "c"), (15, 8), Placement(otile=1, oc=(8, 10))),
    }
    data = {"t0": full[0:8].T, "t1": np.pad(full[8:10].T, ((0, 0), (0, 6)))}  # lanes 2..7 zero fill
    out = assemble(_layer(), "threshold", list(files.values()), lambda e: data[e.path])
    assert np.array_equal(out, full)


def test_input_tiles_lose_their_halo_and_padding_lanes() -> None:
    x = np.arange(6 * 4 * 3).reshape(1, 6, 4, 3) + 1  # (n, h, w, c)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 5)))  # one border pixel, 8 lanes
    entries, data = [], {}
    for tile, y0 in enumerate((0, 4)):  # two 4-row tiles, the second half empty
        rows = min(4, 6 - y0)
        grid = np.zeros((1, 6, 6, 8), np.int64)
        grid[:, : rows + 2, :, :] = padded[:, y0 : y0 + rows + 2, :, :]
        name = f"activation_tile{tile}"
        where = Placement(tile=tile, n=0, y=(y0, y0 + rows), x=(0, 4), itile=0, ic=(0, 3))
        entries.append(_entry(name, "input", ("n", "h", "w", "c"), (1, 6, 6, 8), where, padded=True))
        data[name] = grid
    assert np.array_equal(assemble(_layer(), "input", entries, lambda e: data[e.path]), x)
    with pytest.raises(
        InputError, match=r"no input tile file in the manifest holds value \(n 0, h 4, w 0, c 0\)"
    ):
        assemble(_layer(), "input", entries[:1], lambda e: data[e.path])


def test_weight_taps_land_on_their_kernel_position() -> None:
    w = np.arange(10 * 3 * 3 * 3).reshape(10, 3, 3, 3)  # (oc, kh, kw, ic)
    entries, data = [], {}
    for kij in range(9):
        for otile, (o0, o1) in enumerate(((0, 8), (8, 10))):
            name = f"w{otile}_{kij}"
            tap = np.zeros((8, 1, 1, 8), np.int64)
            tap[: o1 - o0, 0, 0, :3] = w[o0:o1, kij // 3, kij % 3, :]
            where = Placement(itile=0, otile=otile, kij=kij, ic=(0, 3), oc=(o0, o1))
            entries.append(_entry(name, "weight", ("oc", "kh", "kw", "ic"), (8, 1, 1, 8), where))
            data[name] = tap
    assert np.array_equal(assemble(_layer(), "weight", entries, lambda e: data[e.path]), w)
