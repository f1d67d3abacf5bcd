"""Packing integers into memory words and reading them back, checked against a second decoder.

Every round trip goes pack.to_words + pack.format_words -> text -> both qexport.verify.decode
(parse_words + lanes_from_bits) and tests/bitstring_decoder.py (bitstring, no shared code).
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from typing import Any

import numpy as np
import pytest
from bitstring_decoder import decode_memory_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qexport.errors import BitWidthError, InputError
from qexport.verify.decode import lanes_from_bits, parse_words
from qexport.writer.pack import (
    PackSpec,
    check_fits,
    format_words,
    line_blocks,
    line_matrix,
    pack_path,
    to_words,
)
from qexport.writer.pack import bytes as pack_bytes
from qexport.writer.pack import text as pack_text

# On a failure Hypothesis imports libcst (to print an @example patch), and importing libcst warns
# (mypy_extensions.TypedDict is deprecated); with warnings as errors that warning becomes an
# INTERNALERROR that ends the whole session. Import it once here, quietly, so a failure stays a
# failure. (A filterwarnings line in pyproject.toml would do the same for every test module.)
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    import hypothesis.extra._patching  # noqa: F401

RADIXES = ("hex", "bin")
LANE_ORDERS = ("lsb_first", "msb_first")
# the autouse cwd fixture is harmless to share between examples
PROPERTY = settings(
    derandomize=True,
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _text(values: Any, spec: PackSpec, radix: str) -> str:
    return format_words(to_words(np.asarray(values, dtype=np.int64), spec), spec, radix)


def _qexport_decode(text: str, spec: PackSpec, radix: str, header_lines: int = 0) -> list[int]:
    bits = parse_words(text, radix, spec.word_bits, header_lines, "test.mem")
    values = lanes_from_bits(bits, spec.lanes, spec.lane_bits, spec.signed, spec.lane_order)
    return [int(v) for v in values.reshape(-1)]


def _bitstring_decode(text: str, spec: PackSpec, radix: str, header_lines: int = 0) -> list[int]:
    return decode_memory_text(
        text,
        radix=radix,
        header_lines=header_lines,
        word_bits=spec.word_bits,
        lanes=spec.lanes,
        lane_bits=spec.lane_bits,
        signed=spec.signed,
        lane_order=spec.lane_order,
    )


def _both(text: str, spec: PackSpec, radix: str, header_lines: int = 0) -> list[int]:
    """Decode with both decoders, insist they agree, return the values."""
    ours = _qexport_decode(text, spec, radix, header_lines)
    theirs = _bitstring_decode(text, spec, radix, header_lines)
    assert ours == theirs, f"qexport.verify.decode {ours} != bitstring {theirs}"
    return ours


# --- every 4-bit value in every lane -------------------------------------------------------------


@pytest.mark.parametrize("radix", RADIXES)
@pytest.mark.parametrize("lane_order", LANE_ORDERS)
@pytest.mark.parametrize("background", ["zeros", "ones"], ids=["others-0", "others-all-ones"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_every_4bit_value_in_every_lane(signed: bool, background: str, lane_order: str, radix: str) -> None:
    spec = PackSpec(4, 8, signed, lane_order)
    low, high = (-8, 7) if signed else (0, 15)
    fill = 0 if background == "zeros" else (-1 if signed else 15)  # -1 is 0b1111 too
    cases = [(value, lane) for value in range(low, high + 1) for lane in range(8)]
    groups = np.full((len(cases), 8), fill, dtype=np.int64)
    for row, (value, lane) in enumerate(cases):
        groups[row, lane] = value
    text = _text(groups, spec, radix)
    assert _both(text, spec, radix) == groups.reshape(-1).tolist()
    # and each value sits in the right digits, worked out here by hand
    lines = text.splitlines()
    assert len(lines) == len(cases)
    for line, (value, lane) in zip(lines, cases, strict=True):
        position = 7 - lane if lane_order == "lsb_first" else lane  # digit group from the left
        if radix == "hex":
            assert line[position] == format(value & 0xF, "x"), (value, lane, line)
        else:
            assert line[4 * position : 4 * position + 4] == format(value & 0xF, "04b"), (
                value,
                lane,
                line,
            )


# --- hand-computed words -------------------------------------------------------------------------


def test_docstring_example() -> None:
    spec = PackSpec(lane_bits=4, lanes=4, signed=True, lane_order="lsb_first")
    assert _text([1, -2, 3, 0], spec, "hex") == "03e1\n"
    assert _both("03e1\n", spec, "hex") == [1, -2, 3, 0]


def test_format_words_docstring_example() -> None:
    spec = PackSpec(lane_bits=4, lanes=2, signed=True)
    assert _text([[1, -2]], spec, "hex") == "e1\n"
    assert _text([[1, -2]], spec, "bin") == "11100001\n"


HAND = [
    # (id, spec, values, hex text, bin text)
    (
        "u4x3-in-16-lsb",
        PackSpec(4, 3, False, "lsb_first", 16),
        [1, 2, 3],
        "0321\n",
        "0000001100100001\n",
    ),
    (
        "u4x3-in-16-msb",
        PackSpec(4, 3, False, "msb_first", 16),
        [1, 2, 3],
        "0123\n",
        "0000000100100011\n",
    ),
    # -1 = 11111 in bits [4:0], 3 = 00011 in bits [9:5]: 00 0001 1111 1111 -> 0x07f in 12 bits
    ("s5x2-in-12-lsb", PackSpec(5, 2, True, "lsb_first", 12), [-1, 3], "07f\n", "000001111111\n"),
    # -1 now in the highest used lane, bits [9:5]: 11 1110 0011 -> 0x3e3
    ("s5x2-in-12-msb", PackSpec(5, 2, True, "msb_first", 12), [-1, 3], "3e3\n", "001111100011\n"),
    ("s14x1", PackSpec(14, 1, True), [-2], "3ffe\n", "11111111111110\n"),
    ("u1x6-lsb", PackSpec(1, 6, False, "lsb_first"), [1, 0, 1, 1, 0, 0], "0d\n", "001101\n"),
    ("u1x6-msb", PackSpec(1, 6, False, "msb_first"), [1, 0, 1, 1, 0, 0], "2c\n", "101100\n"),
    # two words; the second is a short group padded with a zero lane
    ("s8x2-two-words", PackSpec(8, 2, True), [-128, 127, 5], "7f80\n0005\n", None),
    # -1 -> 0x3fffffff in bits [29:0], 1 -> bit 60; 96-bit word = 24 hex digits
    (
        "s30x3-in-96",
        PackSpec(30, 3, True, "lsb_first", 96),
        [-1, 0, 1],
        "00000000100000003fffffff\n",
        None,
    ),
    (
        "s30x3-in-96-msb",
        PackSpec(30, 3, True, "msb_first", 96),
        [1, 0, -1],
        "00000000100000003fffffff\n",
        None,
    ),
]


@pytest.mark.parametrize(
    ("spec", "values", "hex_text", "bin_text"),
    [case[1:] for case in HAND],
    ids=[case[0] for case in HAND],
)
def test_hand_computed_words(spec: PackSpec, values: list[int], hex_text: str, bin_text: str | None) -> None:
    padded = values + [0] * (-len(values) % spec.lanes)
    assert _text(values, spec, "hex") == hex_text
    assert _both(hex_text, spec, "hex") == padded
    if bin_text is None:  # too long to write out: the hex digits, 4 bits each, cut to word_bits
        bin_text = "".join(
            "".join(format(int(d, 16), "04b") for d in line)[-spec.word_bits :] + "\n"
            for line in hex_text.splitlines()
        )
    assert _text(values, spec, "bin") == bin_text
    assert _both(bin_text, spec, "bin") == padded


@pytest.mark.parametrize("lane_order", LANE_ORDERS)
@pytest.mark.parametrize("radix", RADIXES)
def test_short_last_group_is_padded_with_zero_lanes(radix: str, lane_order: str) -> None:
    spec = PackSpec(6, 4, True, lane_order)
    values = [-32, 31, -1, 7, 9]
    words = to_words(np.array(values), spec)
    assert words.tolist() == [[-32, 31, -1, 7], [9, 0, 0, 0]]
    text = _text(values, spec, radix)
    assert len(text.splitlines()) == 2
    assert _both(text, spec, radix) == [-32, 31, -1, 7, 9, 0, 0, 0]
    # the zero lanes are zero bits: the second word holds only 9 in its first value's lane
    expected = 9 if lane_order == "lsb_first" else 9 << 18
    assert int(text.splitlines()[1], 16 if radix == "hex" else 2) == expected


@pytest.mark.parametrize("radix", RADIXES)
def test_no_values_no_words(radix: str) -> None:
    spec = PackSpec(4, 8, True)
    assert to_words(np.zeros((0, 3), dtype=np.int64), spec).shape == (0, 8)
    assert _text(np.zeros(0), spec, radix) == ""
    assert _both("", spec, radix) == []


def test_values_are_taken_in_c_order() -> None:
    spec = PackSpec(4, 4, False)
    values = np.arange(8).reshape(2, 2, 2)
    assert to_words(values, spec).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert to_words(np.asfortranarray(values), spec).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_header_and_comment_lines_are_skipped() -> None:
    spec = PackSpec(4, 2, True)
    text = "// header 1\n// header 2\n\ne1\n   // an indented comment\n\n7f\n"
    assert _both(text, spec, "hex", header_lines=2) == [1, -2, -1, 7]


# --- check_fits at the edges ---------------------------------------------------------------------

FITS = [
    # (id, lane_bits, signed, low, high)
    ("s4", 4, True, -8, 7),
    ("u4", 4, False, 0, 15),
    ("s1", 1, True, -1, 0),
    ("u1", 1, False, 0, 1),
    ("s14", 14, True, -8192, 8191),
    ("u14", 14, False, 0, 16383),
    ("s32", 32, True, -(2**31), 2**31 - 1),
    ("u62", 62, False, 0, 2**62 - 1),
    ("s62", 62, True, -(2**61), 2**61 - 1),
]


@pytest.mark.parametrize(
    ("lane_bits", "signed", "low", "high"),
    [case[1:] for case in FITS],
    ids=[case[0] for case in FITS],
)
def test_check_fits_edges(lane_bits: int, signed: bool, low: int, high: int) -> None:
    spec = PackSpec(lane_bits, 2, signed)
    assert spec.value_range == (low, high)
    for value in (low, high):  # the edges fit, and round trip
        check_fits(np.array([value, 0]), spec, "layer 9 w_int", "raise the width")
        for radix in RADIXES:
            assert _both(_text([value, 0], spec, radix), spec, radix) == [value, 0]
    check_fits(np.array([low, high]), spec, "layer 9 w_int", "raise the width")
    kind = "signed" if signed else "unsigned"
    for value in (low - 1, high + 1):
        message = (
            rf"layer 9 w_int spans \[{min(value, 0)}, {max(value, 0)}\]; "
            rf"{kind} {lane_bits}-bit holds \[{low}, {high}\]; raise the width"
        )
        with pytest.raises(BitWidthError, match=message):
            check_fits(np.array([value, 0]), spec, "layer 9 w_int", "raise the width")


def test_check_fits_reports_the_whole_span() -> None:
    spec = PackSpec(4, 8, True)
    with pytest.raises(BitWidthError, match=r"spans \[-9, 8\]; signed 4-bit holds \[-8, 7\]"):
        check_fits(np.array([[0, 8], [-9, 3]]), spec, "x", "fix")
    check_fits(np.zeros(0, dtype=np.int64), spec, "x", "fix")  # nothing to check


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lane_bits": 0, "lanes": 1, "signed": True}, r"lane width 0 is outside 1\.\.62"),
        ({"lane_bits": 63, "lanes": 1, "signed": True}, r"lane width 63 is outside 1\.\.62"),
        ({"lane_bits": 4, "lanes": 0, "signed": True}, r"0 lanes a word"),
        (
            {"lane_bits": 4, "lanes": 3, "signed": True, "word_bits": 11},
            r"3 lanes x 4 bits do not fit",
        ),
    ],
    ids=["zero-width", "too-wide", "no-lanes", "word-too-narrow"],
)
def test_bad_pack_spec(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(BitWidthError, match=message):
        PackSpec(**kwargs)


# --- property: any spec, any values --------------------------------------------------------------


@st.composite
def packed_cases(draw: st.DrawFn) -> tuple[PackSpec, list[int], str]:
    lane_bits = draw(st.sampled_from([1, 2, 4, 8, 16, 24, 32]) | st.integers(1, 62))
    lanes = draw(st.sampled_from([8, 16, 32]) | st.integers(1, 12))
    signed = draw(st.booleans())
    lane_order = draw(st.sampled_from(LANE_ORDERS))
    word_bits = lanes * lane_bits + draw(st.integers(0, 9))
    spec = PackSpec(lane_bits, lanes, signed, lane_order, word_bits)
    low, high = spec.value_range
    values = draw(st.lists(st.integers(low, high), max_size=20))
    return spec, values, draw(st.sampled_from(RADIXES))


@PROPERTY
@given(packed_cases())
def test_round_trip_property(case: tuple[PackSpec, list[int], str]) -> None:
    spec, values, radix = case
    check_fits(np.array(values, dtype=np.int64), spec, "values", "none")
    text = _text(values, spec, radix)
    lines = text.splitlines()
    assert len(lines) == -(-len(values) // spec.lanes)
    digits = -(-spec.word_bits // 4) if radix == "hex" else spec.word_bits
    assert all(len(line) == digits for line in lines)
    assert text == "".join(line + "\n" for line in lines)
    padded = values + [0] * (-len(values) % spec.lanes)
    assert _both(text, spec, radix) == padded


# --- every fast path, every signedness, both lane orders, at scale ---------------------------------

# (spec arguments, the path it must take); each path is a separate routine in qexport.writer.pack
PATH_SPECS = [
    ((4, 8), "sub_byte"),
    ((4, 8, 40), "sub_byte"),  # zero bytes above the lanes
    ((2, 16), "sub_byte"),
    ((1, 32), "sub_byte"),
    ((1, 8, 12), "sub_byte"),
    ((8, 4), "byte_aligned"),
    ((16, 4), "byte_aligned"),
    ((24, 4), "byte_aligned"),
    ((24, 1, 26), "byte_aligned"),
    ((24, 1), "byte_aligned"),  # one lane: its container's extra byte leads, never printed
    ((40, 2), "byte_aligned"),  # 5-byte lanes in 8-byte containers
    ((56, 1), "byte_aligned"),
    ((32, 3), "byte_aligned"),
    ((48, 2), "byte_aligned"),
    ((4, 3), "uint64_word"),  # 4-bit lanes that do not fill whole bytes
    ((5, 8), "uint64_word"),
    ((3, 21, 64), "uint64_word"),
    ((62, 1, 64), "uint64_word"),
    ((5, 16), "bit_matrix"),
    ((3, 30, 93), "bit_matrix"),
    ((62, 2), "bit_matrix"),
]


def test_every_pack_path_is_covered() -> None:
    assert {path for _, path in PATH_SPECS} == {"sub_byte", "byte_aligned", "uint64_word", "bit_matrix"}


@pytest.mark.parametrize("radix", RADIXES)
@pytest.mark.parametrize("lane_order", LANE_ORDERS)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize(
    ("args", "path"), PATH_SPECS, ids=[f"{p}-{'x'.join(map(str, a))}" for a, p in PATH_SPECS]
)
def test_fast_paths_round_trip(
    args: tuple[int, ...], path: str, signed: bool, lane_order: str, radix: str
) -> None:
    lane_bits, lanes, *word_bits = args
    spec = PackSpec(lane_bits, lanes, signed, lane_order, *word_bits)  # type: ignore[arg-type]
    assert pack_path(spec) == path
    low, high = spec.value_range
    rng = np.random.default_rng(lane_bits * 1000 + lanes)
    # both extremes of the range, then random values; 300 words and a short last group
    values = np.concatenate(
        [[low, high, low, high, -1 if signed else 1, 0], rng.integers(low, high, 300 * lanes, endpoint=True)]
    )[: 300 * lanes - 1]
    text = _text(values, spec, radix)
    assert line_matrix(to_words(values, spec), spec, radix).tobytes() == text.encode("ascii")
    expected = [int(v) for v in values] + [0] * (-len(values) % lanes)
    assert _both(text, spec, radix) == expected


# --- text made a block at a time ------------------------------------------------------------------


@pytest.mark.parametrize("radix", RADIXES)
@pytest.mark.parametrize("block_bytes", [1, 40, 1000, 1 << 20], ids=lambda b: f"{b}B")
@pytest.mark.parametrize(
    "spec", [PackSpec(4, 8, True), PackSpec(24, 1, True), PackSpec(5, 3, False)], ids=str
)
def test_blocks_join_into_the_whole_text(
    spec: PackSpec, block_bytes: int, radix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of every size (a word each, several words, one block) give text both decoders read back."""
    low, high = spec.value_range
    values = np.random.default_rng(block_bytes).integers(low, high, 333 * spec.lanes, endpoint=True)
    words = to_words(values, spec)
    whole = _text(values, spec, radix)  # before the patch: the default block size
    monkeypatch.setattr(pack_text, "_BLOCK_BYTES", block_bytes)
    blocks = [bytes(block) for block in line_blocks(words, spec, radix)]  # copied: the buffer is reused
    assert b"".join(blocks).decode("ascii") == whole
    assert all(block.endswith(b"\n") for block in blocks)  # whole lines only
    lines_a_block = max(1, block_bytes // (len(whole) // 333))
    assert len(blocks) == -(-333 // lines_a_block)
    assert line_matrix(words, spec, radix).tobytes().decode("ascii") == whole
    assert _both(whole, spec, radix) == [int(v) for v in values]
    unterminated = b"".join(bytes(block) for block in line_blocks(words, spec, radix, last_newline=False))
    assert unterminated.decode("ascii") == whole.removesuffix("\n")


def test_blocks_reuse_one_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why a consumer must copy or write a block at once: the next block overwrites it."""
    monkeypatch.setattr(pack_text, "_BLOCK_BYTES", 3)  # a line a block
    spec = PackSpec(4, 2, False)
    views = list(line_blocks(to_words(np.arange(6), spec), spec, "hex"))
    assert [bytes(view) for view in views] == [b"54\n"] * 3  # every view shows the last block


def test_files_made_interleaved_do_not_share_a_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack_text, "_BLOCK_BYTES", 64)
    spec = PackSpec(4, 8, True)
    first, second = (np.random.default_rng(seed).integers(-8, 8, 800) for seed in (1, 2))
    texts: tuple[list[bytes], list[bytes]] = ([], [])
    blocks = zip(
        line_blocks(to_words(first, spec), spec, "bin"),
        line_blocks(to_words(second, spec), spec, "bin"),
        strict=True,
    )
    for one, two in blocks:
        texts[0].append(bytes(one))
        texts[1].append(bytes(two))
    assert b"".join(texts[0]).decode() == _text(first, spec, "bin")
    assert b"".join(texts[1]).decode() == _text(second, spec, "bin")


def test_threads_pack_with_workspaces_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(pack_text, "_BLOCK_BYTES", 256)  # many blocks each, so the threads interleave
    spec = PackSpec(4, 8, True)
    inputs = [np.random.default_rng(seed).integers(-8, 8, 8 * 2000) for seed in range(8)]
    expected = [_text(values, spec, "bin") for values in inputs]

    def blocks_joined(values: np.ndarray) -> str:
        return b"".join(bytes(block) for block in line_blocks(to_words(values, spec), spec, "bin")).decode()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between almost every two numpy calls
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            assert list(pool.map(blocks_joined, inputs)) == expected
    finally:
        sys.setswitchinterval(switch)


def test_the_workspace_is_kept_for_the_next_file() -> None:
    spec = PackSpec(4, 8, True)
    words = to_words(np.zeros(80_000, dtype=np.int64), spec)
    line_matrix(words, spec, "hex")
    kept = pack_bytes._IDLE.buffer
    assert kept.size > 0
    line_matrix(words, spec, "hex")
    assert pack_bytes._IDLE.buffer is kept  # no new memory for a file of the same size


def test_a_reused_workspace_starts_clean() -> None:
    """Leftovers of a file packed before (all ones) never leak into the zero lanes of the next."""
    ones = PackSpec(1, 64, False)
    line_matrix(to_words(np.ones(64 * 1000, dtype=np.int64), ones), ones, "hex")
    spec = PackSpec(4, 2, False)  # one byte a word: six zero lanes in the group of eight
    assert _text([1, 2, 15, 0], spec, "hex") == "21\n0f\n"


@pytest.mark.parametrize("radix", RADIXES)
def test_no_words_no_blocks(radix: str) -> None:
    spec = PackSpec(4, 8, True)
    assert list(line_blocks(to_words(np.zeros(0, dtype=np.int64), spec), spec, radix)) == []


@pytest.mark.parametrize("lane_order", LANE_ORDERS)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize(
    ("lanes", "word_bits"),
    [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (8, 0), (12, 0), (16, 0), (24, 0), (8, 40), (3, 13)],
    ids=lambda v: str(v),
)
def test_hex_digit_lanes_round_trip(lanes: int, word_bits: int, signed: bool, lane_order: str) -> None:
    """4-bit lanes in hex are spelt a digit a lane (row reversal by byte swap or by a backwards cast)."""
    spec = PackSpec(4, lanes, signed, lane_order, word_bits)  # type: ignore[arg-type]
    low, high = spec.value_range
    values = np.concatenate(
        [np.arange(low, high + 1), np.random.default_rng(lanes).integers(low, high, 97 * lanes)]
    )
    text = _text(values, spec, "hex")
    expected = [int(v) for v in values] + [0] * (-len(values) % lanes)
    assert _both(text, spec, "hex") == expected


@pytest.mark.parametrize("radix", RADIXES)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("pad", [0, 5, 70], ids=lambda p: f"pad{p}")
@pytest.mark.parametrize("lane_bits", [1, 3, 7, 8, 12, 13, 17, 18, 20, 24, 31, 32, 33, 48, 62])
def test_single_lane_words_round_trip(lane_bits: int, pad: int, signed: bool, radix: str) -> None:
    """One lane a word (psums, outputs) of any width, in a word of its own width or wider."""
    spec = PackSpec(lane_bits, 1, signed, word_bits=lane_bits + pad)  # pad 70: words over 64 bits
    low, high = spec.value_range
    values = np.concatenate(
        [[low, high, 0, low + 1, high - 1], np.random.default_rng(lane_bits).integers(low, high, 300)]
    )
    assert _both(_text(values, spec, radix), spec, radix) == [int(v) for v in values]


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int32", "int64", "uint64"])
def test_any_integer_dtype_packs_the_same(dtype: str) -> None:
    spec = PackSpec(4, 8, dtype.startswith("int"))
    low, high = spec.value_range
    values = np.arange(low, high + 1).repeat(3)
    as_dtype = values.astype(dtype)
    assert format_words(to_words(as_dtype, spec), spec, "hex") == _text(values, spec, "hex")


# --- decode errors -------------------------------------------------------------------------------

HEADER = "// one\n// two\n// three\n"
DECODE_ERRORS = [
    # (id, radix, word_bits, text, message)
    (
        "hex-bad-digit",
        "hex",
        16,
        HEADER + "0000\n00g1\n",
        r"f\.mem line 5: data word 1 has a bad hex digit 'g'",
    ),
    (
        "hex-non-ascii",
        "hex",
        8,
        HEADER + "0\u00e9\n",
        r"f\.mem line 4: data word 0 has a bad hex digit '\u00e9'",
    ),
    (
        "bin-bad-digit",
        "bin",
        4,
        HEADER + "0101\n0121\n",
        r"f\.mem line 5: data word 1 has a bad bin digit '2'",
    ),
    (
        "bin-hex-digit",
        "bin",
        4,
        HEADER + "010a\n",
        r"f\.mem line 4: data word 0 has a bad bin digit 'a'",
    ),
    (
        "hex-long-line",
        "hex",
        16,
        HEADER + "0000\n\n0012f\n",
        r"f\.mem line 6: data word 1 is 5 digits, expected 4 \(16-bit hex words\)",
    ),
    (
        "hex-short-line",
        "hex",
        14,
        HEADER + "012\n",
        r"f\.mem line 4: data word 0 is 3 digits, expected 4 \(14-bit hex words\)",
    ),
    (
        "bin-short-line",
        "bin",
        6,
        HEADER + "000000\n00000\n",
        r"f\.mem line 5: data word 1 is 5 digits, expected 6 \(6-bit bin words\)",
    ),
    (
        "hex-bits-above",
        "hex",
        14,
        HEADER + "3fff\n4000\n",
        r"f\.mem line 5: data word 1 \('4000'\) has bits set above bit 13 of a 14-bit word",
    ),
    (
        "hex-bits-above-1-bit",
        "hex",
        1,
        HEADER + "1\n0\n2\n",
        r"f\.mem line 6: data word 2 \('2'\) has bits set above bit 0 of a 1-bit word",
    ),
]


@pytest.mark.parametrize(
    ("radix", "word_bits", "text", "message"),
    [case[1:] for case in DECODE_ERRORS],
    ids=[case[0] for case in DECODE_ERRORS],
)
def test_decode_errors_name_the_line(radix: str, word_bits: int, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_words(text, radix, word_bits, 3, "f.mem")
    # the independent decoder rejects the same text, at the same line
    line = re.search(r"line (\d+)", message)
    assert line is not None
    with pytest.raises(ValueError, match=rf"^line {line.group(1)}: "):
        _bitstring_decode(text, PackSpec(word_bits, 1, False), radix, 3)


# --- fuzz: malformed text never escapes as another exception type --------------------------------

_FUZZ_ALPHABET = st.sampled_from(list("0123456789abcdefABCDEFgxz_/ \t\r\n\x0b\x85\u00e9\u2028\u0663"))


@PROPERTY
@given(
    text=st.text(_FUZZ_ALPHABET, max_size=80),
    radix=st.sampled_from(RADIXES),
    word_bits=st.integers(1, 40),
    header_lines=st.integers(0, 3),
)
def test_parse_words_fuzz(text: str, radix: str, word_bits: int, header_lines: int) -> None:
    one_lane = PackSpec(word_bits, 1, False)  # each word is one unsigned value
    try:
        bits = parse_words(text, radix, word_bits, header_lines, "fuzz.mem")
    except InputError as error:
        assert "fuzz.mem line " in str(error)
        with pytest.raises(ValueError, match=r"^line \d+: "):
            _bitstring_decode(text, one_lane, radix, header_lines)
        return
    assert bits.dtype == np.uint8
    assert bits.ndim == 2 and bits.shape[1] == word_bits
    assert set(np.unique(bits).tolist()) <= {0, 1}
    # what qexport accepts, the bitstring decoder reads as the same words
    words = lanes_from_bits(bits, 1, word_bits, False, "lsb_first").reshape(-1).tolist()
    assert words == _bitstring_decode(text, one_lane, radix, header_lines)
