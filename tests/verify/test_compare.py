"""`qexport compare` on deliberately broken simulator outputs."""

from __future__ import annotations

import json
from pathlib import Path

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
