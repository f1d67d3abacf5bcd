"""Every format's decoder against the encoder and against a per-line decoder written here (issue 18
item 7). The per-line decoder reads the manifest contract the obvious way (``int(word, 16)`` a line,
shifts a lane) and shares no code with qexport.verify.decode."""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qexport.errors import InputError
from qexport.layout.flat import TensorPlan
from qexport.verify.decode import decode_file, lanes_from_digits, text_lanes, word_digits
from qexport.writer.manifest import FileEntry, file_entry
from qexport.writer.pack import PackSpec, format_words, to_words
from qexport.writer.render import MemoryContext, render_memory
from qexport.writer.write import ExportPlan, write_hashed

with warnings.catch_warnings(), contextlib.suppress(ImportError):  # see tests/writer/test_pack.py
    warnings.simplefilter("ignore", DeprecationWarning)
    import hypothesis.extra._patching  # noqa: F401

PROPERTY = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
TEXT_FORMATS = ("hex", "bin", "txt", "coe", "mif", "h")


def _rendered(fmt: str, values: np.ndarray, spec: PackSpec, depth: str = "exact") -> tuple[bytes, FileEntry]:
    tp = TensorPlan("weight", "layer33/weight", values.reshape(1, -1), ("n", "c"), spec)
    ctx = MemoryContext("VGG16_quant_gradual", None, "flat", "33", "layer33", 10, fmt, depth, None)  # type: ignore[arg-type]
    sink = ExportPlan()
    rendered = render_memory(tp, ctx)
    entry = file_entry(tp, rendered.facts, write_hashed(sink, rendered.facts.path, rendered.content))
    return sink.files[entry.path], entry


def _naive_words(text: str, entry: FileEntry) -> list[int]:
    """Each data word as a Python int, one line at a time."""
    lines = text.split("\n")[entry.header_lines :]
    if entry.format in ("hex", "bin", "txt"):
        kept = [line.strip() for line in lines if line.strip() and not line.strip().startswith("//")]
        return [int(line, 2 if entry.format != "hex" else 16) for line in kept]
    words = []
    for line in lines[: entry.depth]:
        if entry.format == "coe":  # `0a1b,` / `ffff;`
            words.append(int(line.strip().rstrip(",;"), 16))
        elif entry.format == "mif":  # `    0a : 0a1b;`
            address, word = line.split(":")
            assert int(address, 16) == len(words)
            words.append(int(word.strip().rstrip(";"), 16))
        else:  # `    0x0a1b,` or `    {0x..., 0x...},`, least significant limb first
            limbs = [int(part, 16) for part in line.strip(" {},").split(",")]
            words.append(sum(limb << (32 * k) for k, limb in enumerate(limbs)))
    return words


def _naive_lanes(words: list[int], entry: FileEntry) -> list[int]:
    values = []
    mask = (1 << entry.lane_bits) - 1
    for word in words[: entry.words]:
        assert word >> entry.word_bits == 0
        lanes = [(word >> (k * entry.lane_bits)) & mask for k in range(entry.lanes)]
        if entry.lane_order == "msb_first":
            lanes.reverse()
        if entry.signed:
            lanes = [v - (1 << entry.lane_bits) if v >> (entry.lane_bits - 1) else v for v in lanes]
        values.extend(lanes)
    return values


@st.composite
def _cases(draw: Any) -> tuple[str, PackSpec, np.ndarray, str]:
    fmt = draw(st.sampled_from(TEXT_FORMATS))
    lane_bits = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 13, 16, 18, 24, 31, 32, 33, 48, 62]))
    lanes = draw(st.integers(1, 8 if lane_bits <= 8 else 3))
    spec = PackSpec(
        lane_bits,
        lanes,
        draw(st.booleans()),
        draw(st.sampled_from(["lsb_first", "msb_first"])),
        lanes * lane_bits + draw(st.sampled_from([0, 0, 1, 3, 7, 40])),
    )
    low, high = spec.value_range
    count = lanes * draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = rng.integers(low, high, count, endpoint=True)
    values[rng.random(count) < 0.2] = low  # the extremes, often
    values[rng.random(count) < 0.2] = high
    return fmt, spec, values, draw(st.sampled_from(["exact", "pow2"]))


@PROPERTY
@given(case=_cases())
def test_every_format_decodes_to_the_encoded_values_and_the_naive_decoders(
    case: tuple[str, PackSpec, np.ndarray, str], tmp_path: Path
) -> None:
    fmt, spec, values, depth = case
    data, entry = _rendered(fmt, values, spec, depth)
    path = tmp_path / f"weight.{fmt}"
    path.write_bytes(data)
    decoded = decode_file(path, entry)
    assert decoded.dtype == np.int64
    assert decoded.reshape(-1).tolist() == values.tolist()
    assert _naive_lanes(_naive_words(data.decode("ascii"), entry), entry) == values.tolist()


@PROPERTY
@given(
    case=_cases(),
    noise=st.lists(st.sampled_from(["blank", "comment", "crlf", "indent", "tabs", "nel"]), max_size=4),
)
def test_blank_comment_and_white_space_lines_decode_as_the_plain_file(
    case: tuple[str, PackSpec, np.ndarray, str], noise: list[str]
) -> None:
    """The file of equal lines takes the fast path; the same words with $readmemh's extras take
    the general one: both give the same values."""
    _, spec, values, _ = case
    radix = "bin" if spec.lane_bits % 4 else "hex"
    lines = format_words(to_words(values, spec), spec, radix).split("\n")
    for k, kind in enumerate(noise):
        at = (7 * k + 3) % len(lines)
        if kind == "blank":
            lines.insert(at, "")
        elif kind == "comment":
            lines.insert(at, "  // @0010 a comment")
        elif kind == "crlf":
            lines[at] += "\r"
        elif kind == "indent":
            lines[at] = "   " + lines[at]
        elif kind == "tabs":
            lines[at] = "\t" + lines[at] + " \t"
        else:
            lines[at] = "\u0085" + lines[at]  # white space to str.strip, not ASCII
    text = "\n".join(lines)
    digits = word_digits(text, radix, spec.word_bits, 0, "f.mem")
    got = lanes_from_digits(digits, radix, spec.lanes, spec.lane_bits, spec.signed, spec.lane_order)
    assert got.reshape(-1).tolist() == values.tolist()
    assert word_digits(text.encode("utf-8"), radix, spec.word_bits, 0, "f.mem").tolist() == digits.tolist()


def _with_line(data: bytes, entry: FileEntry, word: int, edit: Any) -> bytes:
    lines = data.decode("ascii").split("\n")
    lines[entry.header_lines + word] = edit(lines[entry.header_lines + word])
    return "\n".join(lines).encode("utf-8")


@pytest.mark.parametrize("fmt", ["coe", "mif", "h"])
def test_a_bad_digit_in_a_syntax_format_names_the_file_line(tmp_path: Path, fmt: str) -> None:
    spec = PackSpec(8, 2, True)
    data, entry = _rendered(fmt, np.arange(-10, 10), spec)
    last_digit = re.compile(r"[0-9a-f](?=[,;]?$)")  # the word's last digit, before `,` or `;`
    bad = _with_line(data, entry, 4, lambda line: last_digit.sub("g", line.rstrip(), count=1))
    path = tmp_path / f"w.{fmt}"
    path.write_bytes(bad)
    # the line is the file's own (old releases counted from the first word's line)
    line = entry.header_lines + 5
    with pytest.raises(InputError, match=rf"w\.{fmt} line {line}: data word 4 has a bad hex digit 'g'"):
        decode_file(path, entry)


@pytest.mark.parametrize("fmt", ["coe", "mif", "h"])
def test_a_wrong_width_in_a_syntax_format_names_the_file_line(tmp_path: Path, fmt: str) -> None:
    spec = PackSpec(8, 2, True)
    data, entry = _rendered(fmt, np.arange(-10, 10), spec)
    path = tmp_path / f"w.{fmt}"
    widened = re.compile(r"([0-9a-f]{4})(?=[,;]?$)")
    path.write_bytes(_with_line(data, entry, 2, lambda line: widened.sub(r"1\1", line.rstrip())))
    line = entry.header_lines + 3
    with pytest.raises(InputError, match=rf"line {line}: data word 2 is 5 digits, expected 4 \(16-bit hex"):
        decode_file(path, entry)


def test_a_file_that_is_not_ascii_is_an_input_error_naming_the_character(tmp_path: Path) -> None:
    spec = PackSpec(4, 2, True)
    data, entry = _rendered("hex", np.arange(-8, 8), spec)
    path = tmp_path / "w.hex"
    path.write_bytes(_with_line(data, entry, 1, lambda line: "µ" + line[1:]))  # UTF-8: two bytes
    line = entry.header_lines + 2
    with pytest.raises(InputError, match=rf"w\.hex line {line}: data word 1 has a bad hex digit 'µ'"):
        decode_file(path, entry)


def test_wide_c_words_keep_their_limbs_in_order(tmp_path: Path) -> None:
    spec = PackSpec(30, 3, True)  # 90-bit words: three 32-bit limbs, least significant first
    values = np.array([1, -1, 2, -(1 << 29), (1 << 29) - 1, 0])
    data, entry = _rendered("h", values, spec)
    path = tmp_path / "w.h"
    path.write_bytes(data)
    assert decode_file(path, entry).reshape(-1).tolist() == values.tolist()


_MANY = 70_001  # words: more than two of the bin reader's blocks of lines, the last one short


def _bin_text(words: list[int], word_bits: int, header: str = "") -> bytes:
    return (header + "".join(f"{word:0{word_bits}b}\n" for word in words)).encode("ascii")


@pytest.mark.parametrize("word_bits", [8, 9, 13, 18, 31, 33, 40, 63, 64], ids=lambda b: f"{b}-bit")
def test_a_plain_bin_file_of_many_blocks_decodes_as_python_ints_read_it(word_bits: int) -> None:
    """Widths off a whole byte, and files longer than a block: each lane as ``int(line, 2)`` gives it."""
    rng = np.random.default_rng(word_bits)
    words = [int(w) for w in rng.integers(0, 2**word_bits, _MANY, dtype=np.uint64, endpoint=False)]
    words[:4] = [0, 2**word_bits - 1, 2 ** (word_bits - 1), 2 ** (word_bits - 1) - 1]  # the edges
    data = _bin_text(words, word_bits, header="// two header\n// lines\n")
    lane_bits = word_bits // 2 if word_bits % 2 == 0 else word_bits
    lanes = word_bits // lane_bits
    for signed, order in ((True, "lsb_first"), (False, "msb_first")):
        got = text_lanes(data, "bin", word_bits, 2, lanes, lane_bits, signed, order, "f.mem")
        entry = SimpleNamespace(
            words=_MANY,
            word_bits=word_bits,
            lanes=lanes,
            lane_bits=lane_bits,
            signed=signed,
            lane_order=order,
        )
        assert got.reshape(-1).tolist() == _naive_lanes(words, entry)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda line: line[:-1] + "2", r"f\.mem line 40002: data word 40000 has a bad bin digit '2'"),
        (lambda line: line[1:], r"f\.mem line 40002: data word 40000 is 17 digits, expected 18"),
    ],
    ids=["bad digit", "short word"],
)
def test_a_bad_line_in_a_later_block_of_a_bin_file_names_its_line(edit: Any, message: str) -> None:
    lines = _bin_text(list(range(_MANY)), 18, header="// header\n").decode("ascii").split("\n")
    lines[40_001] = edit(lines[40_001])
    with pytest.raises(InputError, match=message):
        text_lanes("\n".join(lines).encode("ascii"), "bin", 18, 1, 1, 18, True, "lsb_first", "f.mem")


def test_a_bin_file_short_of_the_manifest_words_is_an_input_error() -> None:
    data = _bin_text(list(range(10)), 18)
    with pytest.raises(InputError, match=r"f\.mem: 10 data words, the manifest says 11"):
        text_lanes(data, "bin", 18, 0, 1, 18, True, "lsb_first", "f.mem", words=11)
    assert text_lanes(data, "bin", 18, 0, 1, 18, True, "lsb_first", "f.mem", words=4).tolist() == [
        [0],
        [1],
        [2],
        [3],
    ]
