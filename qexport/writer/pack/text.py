"""Words -> hex or bin lines: word_chars, format_words, line_matrix and line_blocks.

A block of words at a time is packed (``bytes``) or spelt digit by digit (4-bit hex lanes), and
its characters placed into lines; every public function refuses values the lanes cannot hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np

from qexport.errors import BitWidthError
from qexport.writer.pack.bytes import (
    _PACKERS,
    _container,
    _records,
    _SingleLanePacker,
    _word_bytes,
    _Workspace,
    _workspace,
)
from qexport.writer.pack.spec import PackSpec, integer_lanes, pack_path

__all__ = ["Radix", "format_words", "line_blocks", "line_matrix", "word_chars"]

Radix = Literal["hex", "bin"]

_NEWLINE = ord("\n")

# Text is made a block of about this many bytes at a time, in a workspace reused from block to
# block and from file to file: a block stays in cache from its packing to its write, and no fresh
# pages are touched. (Here first-touching a fresh page costs about 1 us: for a 1.6 M-value file,
# fresh buffers and numpy temporaries cost more than the formatting itself.)
_BLOCK_BYTES = 1 << 20


def _byte_chars(digit_chars: list[bytes]) -> np.ndarray:
    """256-entry table: a byte's characters as one unsigned integer, so one gather does a byte."""
    width = len(digit_chars[0])
    return np.frombuffer(b"".join(digit_chars), dtype=f"u{width}")


_HEX_OF_BYTE = _byte_chars([f"{b:02x}".encode() for b in range(256)])
_BIN_OF_BYTE = _byte_chars([f"{b:08b}".encode() for b in range(256)])


@dataclass(frozen=True, slots=True)
class _Digits:
    """How a radix spells a word: a byte -> ``per_byte`` characters, ``count`` kept a word."""

    table: np.ndarray
    per_byte: int
    count: int

    @classmethod
    def of(cls, spec: PackSpec, radix: Radix) -> _Digits:
        if radix == "hex":
            return cls(_HEX_OF_BYTE, 2, -(-spec.word_bits // 4))
        return cls(_BIN_OF_BYTE, 8, spec.word_bits)


def _spelt(part: np.ndarray, digits: _Digits, chars: np.ndarray) -> np.ndarray:
    """Words given as bytes (``part``) -> their characters, (words, bytes * digits.per_byte) uint8.

    ``chars`` is scratch space for the table lookup, at least (words, bytes a word) of the table's dtype.
    """
    count = part.shape[0]
    looked_up = np.take(digits.table, part, out=chars[:count], mode="clip")  # bytes never clip
    return looked_up.view(np.uint8).reshape(count, -1)


class _HexDigitLanes:
    """4-bit lanes in hex: each lane is one digit, spelt by arithmetic on every lane at once
    (no packing, no table), in place in a workspace.
    """

    def __init__(self, spec: PackSpec, rows: int, space: _Workspace) -> None:
        count = spec.lanes
        self.cast = space.array((rows, count), np.uint8)
        self.over_nine = space.array((rows, count), np.uint8)
        # lsb_first prints the lanes backwards; where a row is whole integers, a byte-swapping
        # copy reverses it far faster than a cast into a backwards view
        self.reverse = spec.lane_order == "lsb_first" and count > 1
        self.swap = min(count, 8) if count in (2, 4) or count % 8 == 0 else 0
        if self.reverse and self.swap:
            self.reversed = space.array((rows, count), np.uint8)

    def __call__(self, words: np.ndarray) -> np.ndarray:
        rows = words.shape[0]
        cast, over_nine = self.cast[:rows], self.over_nine[:rows]
        backwards = self.reverse and not self.swap
        np.copyto(cast[:, ::-1] if backwards else cast, words, casting="unsafe")  # low bits kept
        np.bitwise_and(cast, np.uint8(15), out=cast)
        # '0'..'9' are 48..57 and 'a'..'f' 97..102: add 48, and 39 more where the digit is over 9
        np.add(cast, np.uint8(6), out=over_nine)
        np.right_shift(over_nine, np.uint8(4), out=over_nine)
        np.multiply(over_nine, np.uint8(39), out=over_nine)
        np.add(cast, np.uint8(48), out=cast)
        np.add(cast, over_nine, out=cast)
        if not (self.reverse and self.swap):
            return cast
        out = self.reversed[:rows]
        np.copyto(out.view(f"<u{self.swap}"), cast.view(f">u{self.swap}")[:, ::-1])
        return out


def _place(chars: np.ndarray, shown: int, count: int, rows: np.ndarray) -> None:
    """Copy the last ``shown`` characters of each row of ``chars`` to the end of the first
    ``count`` columns of ``rows`` (the columns before them are zeros, written once a file).
    """
    width = chars.shape[1]
    # rows as records (see _records): a word's digits are copied in one go
    record = np.dtype(
        {"names": ["d"], "formats": [f"V{shown}"], "offsets": [count - shown], "itemsize": rows.shape[1]}
    )
    rows.view(record)[:, 0]["d"] = _records(chars, width - shown, width)


def _speller(
    spec: PackSpec, digits: _Digits, rows: int, space: _Workspace
) -> Callable[[np.ndarray], np.ndarray]:
    """How a block of words becomes characters: at least the digits of the lanes' bits, last in
    each row (see _shown_digits)."""
    if digits.per_byte == 2 and spec.lane_bits == 4:  # hex (two digits a byte): a lane is a digit
        return _HexDigitLanes(spec, rows, space)
    path = pack_path(spec)
    if spec.lanes == 1:
        packer: Callable[[np.ndarray], np.ndarray] = _SingleLanePacker(spec, rows, space)
        width = _container(spec.lane_bits).itemsize
    elif path in _PACKERS:
        packer = _PACKERS[path](spec, rows, space)
        width = spec.lanes * spec.lane_bits // 8
    else:  # odd widths: the whole word, bits above the lanes included
        packer, width = partial(_word_bytes, spec=spec), -(-spec.word_bits // 8)
    chars = space.array((rows, width), digits.table.dtype)
    return lambda part: _spelt(packer(part), digits, chars)


def _shown_digits(spec: PackSpec, digits: _Digits) -> int:
    """Digits of a word that come from its lanes' bits; any before them stand for the zero bits
    above the lanes."""
    used = spec.lanes * spec.lane_bits
    return -(-used // 4) if digits.per_byte == 2 else used


def _text_blocks(
    words: np.ndarray, spec: PackSpec, radix: Radix, newline: bool, out: np.ndarray | None
) -> Iterator[np.ndarray]:
    """The digit matrix of ``words`` (with a newline column if asked), a block of rows at a time.

    With ``out`` the blocks are slices of it; without, one buffer is reused for every block.
    """
    digits = _Digits.of(spec, radix)
    line = digits.count + newline
    block = max(1, _BLOCK_BYTES // line)
    first = min(block, words.shape[0])
    with _workspace() as space:
        target = space.array((first, line), np.uint8) if out is None else out
        if newline:
            target[:, -1] = _NEWLINE
        spell, shown = _speller(spec, digits, first, space), _shown_digits(spec, digits)
        target[:, : digits.count - shown] = ord("0")
        for start in range(0, words.shape[0], block):
            part = words[start : start + block]
            rows = (target if out is None else out[start:])[: part.shape[0]]
            _place(spell(part), shown, digits.count, rows)
            yield rows


def _text(
    words: np.ndarray, spec: PackSpec, radix: Radix, newline: bool, check: bool, what: str
) -> np.ndarray:
    words = _checked_words(words, spec, check, what)
    out = np.empty((words.shape[0], _Digits.of(spec, radix).count + newline), dtype=np.uint8)
    for _ in _text_blocks(words, spec, radix, newline, out):
        pass
    return out


def _checked_words(words: np.ndarray, spec: PackSpec, check: bool, what: str) -> np.ndarray:
    """(words, lanes) as integers the lanes hold, refused as to_words refuses values (if ``check``)."""
    words = np.asarray(words)
    if words.ndim != 2 or words.shape[1] != spec.lanes:
        raise BitWidthError(f"{what}: words of shape {words.shape}; expected (words, {spec.lanes} lanes)")
    if check:
        return integer_lanes(words, spec, f"{what}: the words array")
    return words if words.dtype.kind in "iu" else words.astype(np.int64)


def word_chars(words: np.ndarray, spec: PackSpec, radix: Radix, *, check: bool = True) -> np.ndarray:
    """(words, lanes) -> (words, digits) ASCII codes, MSB first, zero-padded to the full width.

    Lanes that do not fit raise BitWidthError, as in to_words (``check=False`` skips the check).
    """
    return _text(words, spec, radix, False, check, "word_chars")


def format_words(words: np.ndarray, spec: PackSpec, radix: Radix, *, check: bool = True) -> str:
    """(words, lanes) -> one word per line, zero-padded to the full width, newline after each.

    Example (lanes=2, lane_bits=4, signed): [[1, -2]] -> hex ``e1``, bin ``11100001``.
    Lanes that do not fit raise BitWidthError, as in to_words: [[9, -9]] is refused, never
    wrapped to ``79`` (``check=False`` skips the check, for words already checked).
    """
    return _text(words, spec, radix, True, check, "format_words").tobytes().decode("ascii")


def line_matrix(words: np.ndarray, spec: PackSpec, radix: Radix, *, check: bool = True) -> np.ndarray:
    """As format_words, as a (words, digits + 1) uint8 matrix of ASCII, newline included."""
    return _text(words, spec, radix, True, check, "line_matrix")


def line_blocks(
    words: np.ndarray, spec: PackSpec, radix: Radix, *, last_newline: bool = True, check: bool = True
) -> Iterator[memoryview]:
    """format_words' bytes as consecutive blocks of whole lines, for writing a large file.

    Every block is a view of one reused buffer: write (or copy) it before asking for the next.
    ``last_newline=False`` leaves out the newline after the last word. Lanes that do not fit
    raise BitWidthError before the first block, as in format_words.
    """
    words = _checked_words(words, spec, check, "line_blocks")
    return _line_blocks(words, spec, radix, last_newline)


def _line_blocks(words: np.ndarray, spec: PackSpec, radix: Radix, last_newline: bool) -> Iterator[memoryview]:
    done = 0
    for block in _text_blocks(words, spec, radix, True, None):
        done += block.shape[0]
        data = block.data.cast("B")
        yield data if last_newline or done < words.shape[0] else data[:-1]
