"""`qexport compare` on deliberately broken simulator outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qexport.api import SourceOptions, export
from qexport.cli.main import main
from qexport.errors import InputError
from qexport.layout.flat import LayoutOptions
from qexport.verify.compare import compare

LANE_BITS = 14  # layer 33's worst-case psum width (72 * 7 * 15 = 7560)


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden") / "g33"
    export(SourceOptions(), [33], out, "hex", LayoutOptions(psum_lanes=8))
    return out


def _data(golden: Path) -> tuple[list[str], list[str]]:
    lines = (golden / "layer33" / "output.hex").read_text().splitlines()
    return lines[:3], lines[3:]


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "sim.hex"
    path.write_text("\n".join(lines) + "\n")
    return path


def _lanes(word: str) -> list[int]:
    value = int(word, 16)
    return [(value >> (LANE_BITS * i)) & ((1 << LANE_BITS) - 1) for i in range(8)]


def _word(lanes: list[int]) -> str:
    return f"{sum(v << (LANE_BITS * i) for i, v in enumerate(lanes)):028x}"


def test_identical_output_exits_0(golden: Path, tmp_path: Path) -> None:
    header, data = _data(golden)
    result = CliRunner().invoke(
        main, ["compare", str(golden), str(_write(tmp_path, data)), "--file", "output.hex"]
    )
    assert result.exit_code == 0, result.output
    assert "identical" in result.output


def test_one_flipped_bit_is_located(golden: Path, tmp_path: Path) -> None:
    _, data = _data(golden)
    data[5] = f"{int(data[5], 16) ^ (1 << (LANE_BITS * 3 + 2)):028x}"  # word 5, lane 3, bit 2
    result = CliRunner().invoke(
        main, ["compare", str(golden), str(_write(tmp_path, data)), "--file", "output.hex"]
    )
    assert result.exit_code == 1
    assert "1 value(s) differ" in result.output
    assert "word 5 lane 3: layer=33, n=0, y=1, x=1, channel=3" in result.output
    assert "(xor 0x4)" in result.output


def test_swapped_lane_order_is_named(golden: Path, tmp_path: Path) -> None:
    _, data = _data(golden)
    swapped = [_word(_lanes(w)[::-1]) for w in data]
    report = compare(golden, _write(tmp_path, swapped), "output.hex")
    assert not report.identical
    assert any(p.startswith("swapped lane order") for p in report.files[0].patterns)


def test_word_shift_is_named(golden: Path, tmp_path: Path) -> None:
    _, data = _data(golden)
    shifted = ["0" * 28, *data[:-1]]
    report = compare(golden, _write(tmp_path, shifted), "output.hex")
    assert report.files[0].patterns == [
        "word shift by +1: from word 1 on, every word equals the golden word 1 before it (the output lags); "
        "the other 3 differing value(s) are in word 0"
    ]


def test_truncated_file_is_named_and_fails(golden: Path, tmp_path: Path) -> None:
    _, data = _data(golden)
    result = CliRunner().invoke(
        main, ["compare", str(golden), str(_write(tmp_path, data[:-4])), "--file", "output.hex", "--json"]
    )
    assert result.exit_code == 1
    report = json.loads(result.output.split("\nerror:")[0])
    assert report["files"][0]["problem"] == "truncated: 12 word(s) read, 16 expected"
    assert "error: layer33/output.hex: truncated: 12 word(s) read, 16 expected" in result.output


def test_stuck_lane_is_named(golden: Path, tmp_path: Path) -> None:
    _, data = _data(golden)
    stuck = []
    for w in data:
        lanes = _lanes(w)
        lanes[6] = 0x3FFF
        stuck.append(_word(lanes))
    report = compare(golden, _write(tmp_path, stuck), "output.hex")
    assert any(p.startswith("lane 6 stuck at 16383") for p in report.files[0].patterns)
    assert {d.where["channel"] for d in report.files[0].diffs} == {6}


def test_bad_digit_exits_2_naming_the_line(golden: Path, tmp_path: Path) -> None:
    _, data = _data(golden)
    data[2] = "g" + data[2][1:]
    result = CliRunner().invoke(
        main, ["compare", str(golden), str(_write(tmp_path, data)), "--file", "output.hex"]
    )
    assert result.exit_code == 2
    assert "data word 2 has a bad hex digit 'g'" in result.output


def test_testbench_log_is_read(golden: Path, tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    log.write_text(
        "MISMATCH tile 0 otile 0 pixel (n=0, y=0, x=2) channel 0 expected 106 got 107\n"
        "FAIL layer 33: 1 of 128 output values differ\n"
    )
    report = compare(golden, log)
    (diff,) = report.files[0].diffs
    assert (diff.where["x"], diff.expected, diff.got, diff.xor) == (2, 106, 107, 1)
    log.write_text("PASS layer 33: 128 output values match\n")
    assert compare(golden, log).identical


@settings(max_examples=60, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.text(alphabet="0123456789abcdefxz \t", max_size=40),
            st.sampled_from(["", "//", "0" * 28, "f" * 28, "1" * 29]),
        ),
        max_size=24,
    )
)
def test_malformed_outputs_never_crash(golden: Path, tmp_path: Path, lines: list[str]) -> None:
    path = _write(tmp_path, lines)
    try:
        report = compare(golden, path, "output.hex")
    except InputError as err:
        assert str(path) in str(err)
    else:
        assert isinstance(report.identical, bool)


@pytest.mark.parametrize("fmt", ["coe", "mif", "h"])
def test_golden_sets_in_other_formats_compare_against_a_writememh_dump(tmp_path: Path, fmt: str) -> None:
    golden = tmp_path / "g"
    export(SourceOptions(), [33], golden, fmt, LayoutOptions(psum_lanes=8), depth="pow2")
    hex_set = tmp_path / "h"
    export(SourceOptions(), [33], hex_set, "hex", LayoutOptions(psum_lanes=8))
    dump = tmp_path / "dump.hex"
    words = (hex_set / "layer33" / "output.hex").read_text().splitlines()[3:]
    dump.write_text("".join(f"// 0x{i:08x}\n{w}\n" for i, w in enumerate(words)))  # $writememh style
    assert compare(golden, dump, f"output.{fmt}").identical
    words[4] = words[4][:-1] + ("1" if words[4][-1] == "0" else "0")
    dump.write_text("\n".join(words) + "\n")
    (diff,) = compare(golden, dump, f"output.{fmt}").files[0].diffs
    assert (diff.word, diff.lane, diff.where["x"]) == (4, 0, 0) and diff.where["y"] == 1


# ---- issue 18, item 2: the summary is made with whole-array operations; it must say what a naive
# per-value diff says


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The course testbench of layer 33: a tiled output file (8 lanes of 16 bits, tile 0)."""
    from qexport import api

    out = tmp_path_factory.mktemp("tiled") / "tb"
    api.testbench(SourceOptions(), 33, out)
    return out


def _manifest_entry(folder: Path, name: str) -> dict[str, object]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return next(f for layer in manifest["layers"] for f in layer["files"] if f["path"].endswith(name))


def _naive_lanes(text: str, header: int, lanes: int, bits: int, signed: bool) -> list[list[int]]:
    rows = []
    for line in text.splitlines()[header:]:
        value = int(line, 16)
        row = [(value >> (bits * k)) & ((1 << bits) - 1) for k in range(lanes)]
        rows.append([v - (1 << bits) if signed and v >> (bits - 1) else v for v in row])
    return rows


def _naive_summary(
    entry: dict[str, object], expected: list[list[int]], got: list[list[int]], detail: int
) -> dict[str, object]:
    """One value at a time, in plain Python: where each differing value lies and what it adds up to."""
    shape = [int(s) for s in entry["shape"]]  # type: ignore[attr-defined]
    axes = list(entry["axes"])  # type: ignore[call-overload]
    lanes = int(entry["lanes"])  # type: ignore[call-overload]
    halo = 1 if entry.get("padded") and "tile" in entry else 0
    first, places = [], []
    for word, (e_row, g_row) in enumerate(zip(expected, got, strict=True)):
        for lane, (e, g) in enumerate(zip(e_row, g_row, strict=True)):
            if e == g:
                continue
            if len(first) < detail:
                first.append((word, lane, e, g))
            index = word * lanes + lane
            if index >= int(np.prod(shape)):
                continue
            place = {}
            for name, size in reversed(list(zip(axes, shape, strict=True))):
                index, place[name] = divmod(index, size)
            places.append(place)
    summary: dict[str, object] = {"first": first}
    if "c" in axes:
        oc0 = entry["oc"][0] if "oc" in entry else 0  # type: ignore[index]
        y0 = entry["y"][0] if "y" in entry else 0  # type: ignore[index]
        x0 = entry["x"][0] if "x" in entry else 0  # type: ignore[index]
        n0 = int(entry.get("n", 0))  # type: ignore[call-overload]
        pixels = sorted({(p["n"] + n0, p["h"] + y0 - halo, p["w"] + x0 - halo) for p in places})
        by_channel: dict[int, int] = {}
        for p in places:
            by_channel[p["c"] + oc0] = by_channel.get(p["c"] + oc0, 0) + 1
        summary |= {
            "channels": sorted(by_channel),
            "by_channel": sorted(by_channel.items()),
            "pixels": pixels,
        }
    else:
        summary |= {
            "out_channels": sorted({p["oc"] for p in places}),
            "in_channels": sorted({p["ic"] for p in places}),
            "taps": sorted({(p["kh"], p["kw"]) for p in places}),
        }
    return summary


_FILES = {  # (fixture, file name, lanes, lane bits, signed)
    "flat-psum": ("golden", "psum.hex", 8, LANE_BITS, True),
    "flat-weight": ("golden", "weight.hex", 8, 4, True),
    "tiled-output": ("tiled", "out.hex", 8, 16, True),
}


@pytest.mark.parametrize("case", _FILES, ids=list(_FILES))
@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    changes=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7), st.integers(-8, 7)), max_size=60),
    detail=st.integers(0, 25),
)
def test_the_summary_equals_a_naive_per_value_diff(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    case: str,
    changes: list[tuple[int, int, int]],
    detail: int,
) -> None:
    fixture, name, lanes, bits, signed = _FILES[case]
    folder: Path = request.getfixturevalue(fixture)
    entry = _manifest_entry(folder, name)
    text = (folder / str(entry["path"])).read_text()
    expected = _naive_lanes(text, int(entry["header_lines"]), lanes, bits, signed)  # type: ignore[call-overload]
    got = [row[:] for row in expected]
    for word, lane, delta in changes:
        row = got[word % len(got)]
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        row[lane] = min(max(row[lane] + delta, low), high)
    mask = (1 << bits) - 1
    digits = -(-lanes * bits // 4)
    sim = tmp_path / "sim.hex"
    sim.write_text(
        "".join(f"{sum((v & mask) << (bits * k) for k, v in enumerate(r)):0{digits}x}\n" for r in got)
    )

    (f,) = compare(folder, sim, str(entry["path"]), detail=detail).files
    naive = _naive_summary(entry, expected, got, detail)
    assert f.differences == sum(
        e != g for er, gr in zip(expected, got, strict=True) for e, g in zip(er, gr, strict=True)
    )
    assert [(d.word, d.lane, d.expected, d.got) for d in f.diffs] == naive["first"]
    if not f.differences:
        assert f.affected == {} and f.summary == {}
        return
    if "channels" in naive:
        pixels = naive["pixels"]
        assert f.affected["channels"] == naive["channels"]
        assert [tuple(p) for p in f.affected["pixels"]] == pixels[:detail]  # type: ignore[index]
        assert f.counts["pixels"] == len(pixels)  # type: ignore[arg-type]
        assert [tuple(c) for c in f.summary["differences_by_channel"]] == naive["by_channel"]
        span = f.summary["pixel_range"]
        for k, key in enumerate("nyx"):
            assert span[key] == [min(p[k] for p in pixels), max(p[k] for p in pixels)]  # type: ignore[attr-defined]
    else:
        assert f.affected["out_channels"] == naive["out_channels"]
        assert f.affected["in_channels"] == naive["in_channels"]
        assert [tuple(t) for t in f.affected["taps"]] == naive["taps"]


def test_many_differences_keep_the_report_small(golden: Path, tmp_path: Path) -> None:
    # every psum value wrong: the report holds --detail values and pixels, counts the rest
    entry = _manifest_entry(golden, "psum.hex")
    lines = (golden / str(entry["path"])).read_text().splitlines()[int(entry["header_lines"]) :]  # type: ignore[call-overload]
    width = len(lines[0])
    sim = _write(tmp_path, [f"{int(w, 16) ^ ((1 << (width * 4)) - 1):0{width}x}" for w in lines])
    (f,) = compare(golden, sim, str(entry["path"]), detail=3).files
    assert f.differences == 128 and len(f.diffs) == 3
    assert len(f.affected["pixels"]) == 3 and f.counts["pixels"] == 16
    assert f.affected["channels"] == list(range(8))
    assert f.summary["pixel_range"] == {"n": [0, 0], "y": [0, 3], "x": [0, 3]}
    result = CliRunner().invoke(
        main, ["compare", str(golden), str(sim), "--file", "psum.hex", "--detail", "3"]
    )
    assert result.exit_code == 1
    assert "... and 125 more" in result.output
    assert "pixels (n, y, x) affected (16): (0, 0, 0), (0, 0, 1), (0, 0, 2), ... and 13 more" in result.output
    assert "pixel range: n 0-0, y 0-3, x 0-3" in result.output
    data = json.loads(
        CliRunner()
        .invoke(main, ["compare", str(golden), str(sim), "--file", "psum.hex", "--json", "--detail", "3"])
        .output.split("\nerror:")[0]
    )
    assert len(data["files"][0]["first"]) == 3 and data["files"][0]["affected_counts"] == {"pixels": 16}


def test_a_negative_detail_is_refused(golden: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--detail -1"):
        compare(golden, tmp_path, "psum.hex", detail=-1)
