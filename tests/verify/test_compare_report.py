"""Issue 13, items 1 and 2: `qexport compare` never compares with a file it was not told or matched
to, and every line of its report is true of every differing value."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qexport import api
from qexport.api import SourceOptions, export
from qexport.cli.main import main
from qexport.verify.compare import compare

DETAIL = 20  # values the report details one by one (qexport.verify.compare.DETAIL)


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default flat set of layer 33: psum and output are both 128 one-lane 14-bit words."""
    out = tmp_path_factory.mktemp("flat") / "g"
    export(SourceOptions(), [33], out, "hex")
    return out


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two") / "g"
    export(SourceOptions(), [30, 33], out, "hex")
    return out


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The course testbench of layer 33: nine 8-word weight files (one per kernel tap), tiled."""
    out = tmp_path_factory.mktemp("course") / "tb"
    api.testbench(SourceOptions(), 33, out)
    return out


def _entries(golden: Path) -> list[dict[str, Any]]:
    manifest = json.loads((golden / "manifest.json").read_text())
    return [f for layer in manifest["layers"] for f in layer["files"]]


def _entry(golden: Path, tensor: str, name: str | None = None) -> dict[str, Any]:
    return next(
        e for e in _entries(golden) if e["tensor"] == tensor and (name is None or e["path"].endswith(name))
    )


def _words(golden: Path, entry: dict[str, Any]) -> list[str]:
    return (golden / entry["path"]).read_text().splitlines()[int(entry["header_lines"]) :]


def _dump(tmp_path: Path, lines: list[str], name: str = "sim.hex") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _run(*args: str | Path) -> Any:
    return CliRunner().invoke(main, ["compare", *map(str, args)])


def _lanes(words: list[str], lanes: int, bits: int, signed: bool) -> np.ndarray:
    """Hex words -> (words, lanes) integers, lane 0 in the low bits; shares no code with qexport."""
    out = np.zeros((len(words), lanes), dtype=np.int64)
    for w, word in enumerate(words):
        value = int(word, 16)
        for lane in range(lanes):
            v = (value >> (bits * lane)) & ((1 << bits) - 1)
            out[w, lane] = v - (1 << bits) if signed and v >> (bits - 1) else v
    return out


def _hex(values: np.ndarray, bits: int, digits: int) -> list[str]:
    mask = (1 << bits) - 1
    return [f"{sum((int(v) & mask) << (bits * i) for i, v in enumerate(row)):0{digits}x}" for row in values]


# ---- item 1: which golden file ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["bogus.hex", "vectors/nope.hex", "layer33/nope.hex"])
def test_file_not_in_the_set_exits_2_listing_the_files(flat: Path, tmp_path: Path, name: str) -> None:
    sim = _dump(tmp_path, _words(flat, _entry(flat, "output")))
    result = _run(flat, sim, "--file", name)
    assert result.exit_code == 2, result.output
    assert f"--file {name} is not a file of the golden set" in result.output
    for entry in _entries(flat):
        assert entry["path"] in result.output
    assert "identical" not in result.output


def test_file_not_in_the_set_exits_2_for_a_folder_too(flat: Path, tmp_path: Path) -> None:
    result = _run(flat, flat, "--file", "bogus.hex")
    assert result.exit_code == 2
    assert "is not a file of the golden set" in result.output


def test_file_names_a_file_by_its_path_on_disk(flat: Path, tmp_path: Path) -> None:
    entry = _entry(flat, "output")
    sim = _dump(tmp_path, _words(flat, entry))
    result = _run(flat, sim, "--file", flat / entry["path"])
    assert result.exit_code == 0, result.output
    assert f"{entry['path']} (layer 33, matched by --file): identical (128 values)" in result.output


def test_a_bare_name_two_layers_share_exits_2_asking_for_the_path(two_layers: Path, tmp_path: Path) -> None:
    sim = _dump(tmp_path, _words(two_layers, _entry(two_layers, "weight")))
    result = _run(two_layers, sim, "--file", "weight.hex")
    assert result.exit_code == 2
    assert "names 2 files of the golden set" in result.output
    assert "give the path as the manifest lists it" in result.output


@pytest.mark.parametrize("tensor", ["psum", "output"])
def test_a_dump_two_golden_files_fit_is_refused_without_file(flat: Path, tmp_path: Path, tensor: str) -> None:
    psum, output = _entry(flat, "psum"), _entry(flat, "output")
    assert (psum["word_bits"], psum["words"]) == (output["word_bits"], output["words"])  # the premise
    sim = _dump(tmp_path, _words(flat, _entry(flat, tensor)))
    result = _run(flat, sim)
    assert result.exit_code == 2, result.output
    assert "could be any of 2 golden files with its word width and count" in result.output
    assert psum["path"] in result.output and output["path"] in result.output
    assert "--file" in result.output


def test_the_file_name_breaks_a_tie_between_files_of_one_shape(flat: Path, tmp_path: Path) -> None:
    psum = _entry(flat, "psum")
    sim = _dump(tmp_path, _words(flat, psum), name="psum.hex")
    result = _run(flat, sim)
    assert result.exit_code == 0, result.output
    assert f"{psum['path']} (layer 33, matched by word width and count, then file name)" in result.output


def test_a_unique_shape_is_matched_whatever_the_dump_is_called(flat: Path, tmp_path: Path) -> None:
    weight = _entry(flat, "weight")
    result = _run(flat, _dump(tmp_path, _words(flat, weight)))
    assert result.exit_code == 0, result.output
    assert f"{weight['path']} (layer 33, matched by word width and count): identical" in result.output


def test_a_name_and_a_shape_pointing_at_different_files_are_refused(flat: Path, tmp_path: Path) -> None:
    weight = _entry(flat, "weight")
    sim = _dump(tmp_path, _words(flat, weight), name="output.hex")
    result = _run(flat, sim)
    assert result.exit_code == 2
    assert f"has the word width and count of {weight['path']} but the name of" in result.output
    assert "--file" in result.output


def test_a_truncated_dump_is_matched_by_name_and_reported(flat: Path, tmp_path: Path) -> None:
    output = _entry(flat, "output")
    sim = _dump(tmp_path, _words(flat, output)[:100], name="output.hex")
    result = _run(flat, sim)
    assert result.exit_code == 1
    assert (
        f"{output['path']} (layer 33, matched by file name): truncated: 100 word(s) read, 128 expected"
        in (result.output)
    )


def test_a_dump_matching_nothing_exits_2_listing_the_files(flat: Path, tmp_path: Path) -> None:
    result = _run(flat, _dump(tmp_path, ["0123456789"] * 5))
    assert result.exit_code == 2
    assert "matches no file of the golden set" in result.output
    assert "10-digit words" in result.output
    assert all(e["path"] in result.output for e in _entries(flat))


def test_nine_taps_of_one_shape_need_file_or_their_name(course: Path, tmp_path: Path) -> None:
    tap = _entry(course, "weight", "kij3.hex")
    result = _run(course, _dump(tmp_path, _words(course, tap)))
    assert result.exit_code == 2
    assert "could be any of 9 golden files" in result.output
    named = _dump(tmp_path, _words(course, tap), name=Path(tap["path"]).name)
    result = _run(course, named)
    assert result.exit_code == 0, result.output
    assert tap["path"] in result.output


def test_help_states_the_rule() -> None:
    text = " ".join(CliRunner().invoke(main, ["compare", "--help"]).output.split())
    assert "without --file, the one with the dump's word width and word count" in text
    assert "exit 2 asking for --file" in text


# ---- item 2: every line of the report is true ------------------------------------------------


def test_lane_swapped_weights_name_no_false_bit_pattern(flat: Path, tmp_path: Path) -> None:
    weight = _entry(flat, "weight")
    sim = _dump(tmp_path, [w[::-1] for w in _words(flat, weight)])  # 4-bit lanes: one digit each
    result = _run(flat, sim, "--file", weight["path"])
    assert result.exit_code == 1
    assert "pattern: swapped lane order" in result.output
    assert "only bit" not in result.output
    assert "-0x" not in result.output
    xors = [int(x, 16) for x in re.findall(r"\(xor (0x[0-9a-f]+)\)", result.output)]
    assert len(xors) == DETAIL and all(0 < x < 16 for x in xors)
    assert "expected -3 got 3 (xor 0xe)" in result.output  # 0b1101 ^ 0b0011


def test_xor_is_the_lane_pattern_of_a_signed_psum(flat: Path, tmp_path: Path) -> None:
    psum = _entry(flat, "psum")
    words = _words(flat, psum)
    values = _lanes(words, 1, 14, True)
    word = int(np.flatnonzero(values[:, 0] > 0)[0])
    words[word] = f"{(-int(values[word, 0])) & 0x3FFF:04x}"
    report = compare(flat, _dump(tmp_path, words), psum["path"])
    (diff,) = report.files[0].diffs
    assert diff.got == -diff.expected
    assert diff.xor == (diff.expected ^ diff.got) & 0x3FFF and diff.xor > 0
    assert f"(xor {diff.xor:#x})" in diff.describe()


def test_json_lists_the_channels_pixels_and_tiles_printed(course: Path, tmp_path: Path) -> None:
    out = _entry(course, "output")
    words = _words(course, out)
    values = _lanes(words, 8, 16, True)
    hit = [(1, 2), (5, 7), (9, 0), (15, 7)]  # (word = pixel, lane = channel)
    for w, lane in hit:
        values[w, lane] += 1
    sim = _dump(tmp_path, _hex(values, 16, 32))
    text = _run(course, sim, "--file", out["path"]).output
    data = json.loads(_run(course, sim, "--file", out["path"], "--json").output.split("\nerror:")[0])
    (f,) = data["files"]
    assert f["channels"] == [0, 2, 7]
    assert f["pixels"] == [[0, 0, 1], [0, 1, 1], [0, 2, 1], [0, 3, 3]]
    assert f["tiles"] == [0] and f["otiles"] == [0]
    assert "channels affected (3): 0, 2, 7" in text
    assert "pixels (n, y, x) affected (4): (0, 0, 1), (0, 1, 1), (0, 2, 1), (0, 3, 3)" in text
    assert "tiles affected (1): 0" in text
    assert [d["xor"] for d in f["first"]] == [
        (v ^ (v + 1)) & 0xFFFF for v in (values[w, ln] - 1 for w, ln in hit)
    ]


def test_json_lists_the_weight_channels_and_taps_printed(flat: Path, tmp_path: Path) -> None:
    weight = _entry(flat, "weight")
    sim = _dump(tmp_path, [w[::-1] for w in _words(flat, weight)])
    text = _run(flat, sim, "--file", weight["path"]).output
    f = json.loads(_run(flat, sim, "--file", weight["path"], "--json").output.split("\nerror:")[0])["files"][
        0
    ]
    assert f["out_channels"] == list(range(8)) and f["in_channels"] == list(range(8))
    assert f["taps"] == [[kh, kw] for kh in range(3) for kw in range(3)]
    assert "output channels affected (8): 0, 1, 2, 3, 4, 5, 6, 7" in text
    assert "kernel taps affected (9): (0, 0), (0, 1)" in text


def test_every_difference_counts_but_only_the_first_are_detailed(flat: Path, tmp_path: Path) -> None:
    weight = _entry(flat, "weight")
    sim = _dump(tmp_path, [f"{int(w, 16) ^ 0xFFFFFFFF:08x}" for w in _words(flat, weight)])
    report = compare(flat, sim, weight["path"])
    (f,) = report.files
    assert (f.differences, f.compared, len(f.diffs)) == (576, 576, DETAIL)
    assert f.affected["out_channels"] == list(range(8))
    assert f.patterns == []  # every bit of every lane flipped: no one bit, lane or shift


@pytest.mark.parametrize(
    ("keep", "extra", "message"),
    [
        (100, 0, "truncated: 100 word(s) read, 128 expected; 0 value(s) differ of 100 compared"),
        (128, 7, "over-long: 135 word(s) read, 128 expected; 0 value(s) differ of 128 compared"),
        (0, 0, "truncated: 0 word(s) read, 128 expected"),
    ],
    ids=["truncated", "over-long", "empty"],
)
def test_a_wrong_length_is_reported_with_both_counts(
    flat: Path, tmp_path: Path, keep: int, extra: int, message: str
) -> None:
    output = _entry(flat, "output")
    words = _words(flat, output)
    sim = _dump(tmp_path, words[:keep] + words[:extra])
    result = _run(flat, sim, "--file", output["path"])
    assert result.exit_code == 1
    assert f"{output['path']} (layer 33, matched by --file): {message}" in result.output
    assert f"error: {output['path']}: {message}" in result.output
    assert "error: 0 value(s) differ" not in result.output
    data = json.loads(_run(flat, sim, "--file", output["path"], "--json").output.split("\nerror:")[0])
    assert (data["identical"], data["files"][0]["got_words"]) == (False, keep + extra)


def test_a_log_that_compared_nothing_does_not_pass(flat: Path, tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    log.write_text("PASS layer 33: 0 output values match\n")
    assert _run(flat, log).exit_code == 1
    log.write_text("FAIL layer 33: 3 of 128 output values differ\n")
    result = _run(flat, log)
    assert result.exit_code == 1
    assert "the FAIL line counts 3 differing values, the log lists 0" in result.output
    assert "error: 0 value(s) differ" not in result.output


def test_a_log_with_signed_values_is_read(flat: Path, tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    log.write_text(
        "MISMATCH tile 0 otile 0 pixel (n=0, y=1, x=2) channel 5 expected -3 got 5\n"
        "FAIL layer 33: 1 of 128 output values differ\n"
    )
    (f,) = compare(flat, log).files
    (diff,) = f.diffs
    assert (diff.expected, diff.got, diff.xor) == (-3, 5, (-3 ^ 5) & 0x3FFF)
    assert (f.compared, f.differences, f.affected["channels"], f.affected["pixels"]) == (
        128,
        1,
        [5],
        [[0, 1, 2]],
    )


def test_a_lane_stuck_in_some_words_only_is_not_called_stuck(flat: Path, tmp_path: Path) -> None:
    weight = _entry(flat, "weight")
    values = _lanes(_words(flat, weight), 8, 4, True)
    wrong = np.flatnonzero(values[:, 6] != 7)[:10]
    values[wrong, 6] = 7
    report = compare(flat, _dump(tmp_path, _hex(values, 4, 8)), weight["path"])
    (pattern,) = [p for p in report.files[0].patterns if p.startswith("lane 6")]
    assert pattern.startswith("lane 6 wrong: all 10 differing values are in lane 6")
    values[:, 6] = 7
    report = compare(flat, _dump(tmp_path, _hex(values, 4, 8)), weight["path"])
    assert any(p.startswith("lane 6 stuck at 7 in every word") for p in report.files[0].patterns)


# One corruption step on the (words, lanes) weights: (kind, a, b, c).
_STEP = st.tuples(
    st.sampled_from(["flip", "flip_bit", "set", "swap_word", "swap_all", "stuck_lane", "shift", "constant"]),
    st.integers(0, 71),
    st.integers(0, 7),
    st.integers(-8, 7),
)


def _corrupt(values: np.ndarray, steps: list[tuple[str, int, int, int]]) -> np.ndarray:
    got = values.copy()
    for kind, a, b, c in steps:
        if kind == "flip":  # one bit of one value
            raw = (int(got[a, b]) & 0xF) ^ (1 << (c % 4))
            got[a, b] = raw - 16 if raw >= 8 else raw
        elif kind == "flip_bit":  # one bit of every lane of words a .. a + b
            raw = (got[a : a + b + 1] & 0xF) ^ (1 << (c % 4))
            got[a : a + b + 1] = np.where(raw >= 8, raw - 16, raw)
        elif kind == "swap_all":
            got = got[:, ::-1].copy()
        elif kind == "set":
            got[a, b] = c
        elif kind == "swap_word":
            got[a] = got[a, ::-1].copy()
        elif kind == "stuck_lane":
            got[:, b] = c
        elif kind == "shift":
            s = 1 + a % 2
            got = (
                np.concatenate([np.full((s, 8), c), got[:-s]])
                if b % 2
                else np.concatenate([got[s:], got[-s:]])
            )
        else:
            got[:] = c
    return got


def _holds(pattern: str, e: np.ndarray, g: np.ndarray) -> bool:
    """An independent check that ``pattern`` is true of every differing value."""
    words, lanes = np.nonzero(e != g)
    xors = (e[words, lanes] ^ g[words, lanes]) & 0xF
    if pattern.startswith("swapped lane order"):
        return bool(np.array_equal(g, e[:, ::-1]))
    if m := re.match(r"word shift by ([+-]\d)", pattern):
        s = int(m.group(1))
        if s > 0:
            return bool(np.array_equal(g[s:], e[:-s])) and bool((words >= s).any())
        return bool(np.array_equal(g[:s], e[-s:])) and bool((words < len(e) + s).any())
    if m := re.match(r"every value reads (-?\d+)", pattern):
        return bool(np.all(g == int(m.group(1))))
    if m := re.match(r"lane (\d) stuck at (-?\d+) in every word", pattern):
        lane = int(m.group(1))
        return bool(np.all(lanes == lane)) and bool(np.all(g[:, lane] == int(m.group(2))))
    if m := re.match(r"lane (\d) wrong", pattern):
        return bool(np.all(lanes == int(m.group(1))))
    if m := re.match(r"only bit (\d) differs", pattern):
        return bool(np.all(xors == 1 << int(m.group(1))))
    return False  # a pattern this test does not know cannot be vouched for


@settings(max_examples=80, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_STEP, min_size=1, max_size=4))
def test_every_named_pattern_holds_for_every_differing_value(
    flat: Path, tmp_path: Path, steps: list[tuple[str, int, int, int]]
) -> None:
    weight = _entry(flat, "weight")
    expected = _lanes(_words(flat, weight), 8, 4, True)
    got = _corrupt(expected, steps)
    report = compare(flat, _dump(tmp_path, _hex(got, 4, 8)), weight["path"])
    (f,) = report.files
    assert f.differences == int((expected != got).sum())
    assert report.identical == (f.differences == 0)
    for pattern in f.patterns:
        assert _holds(pattern, expected, got), (pattern, steps)
    for d in f.diffs:
        assert d.xor == (int(expected[d.word, d.lane]) ^ int(got[d.word, d.lane])) & 0xF
    if f.differences:
        oc = sorted({int(w) // 9 for w in np.nonzero(expected != got)[0]})  # 9 words (kh, kw) per oc
        assert f.affected["out_channels"] == oc
