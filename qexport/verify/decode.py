"""Read our memory files back into integers, from the manifest's description alone.

Whole-buffer numpy, no per-line or per-value Python loop: the text is one array of character
codes; its lines are found as the positions of its newlines, a file of equal lines is read as a
(words, digits) matrix in place, and lanes are cut from the digits with shifts over whole columns.
Every error (a line of the wrong width, a bad digit, bits above the word) is worked out only once
the fast checks have failed, and names the file's line.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from qexport.errors import InputError
from qexport.writer.manifest import FileEntry

_VALUE_OF = np.full(256, 255, dtype=np.uint8)
for _digit, _char in enumerate("0123456789abcdef"):
    _VALUE_OF[ord(_char)] = _digit
    _VALUE_OF[ord(_char.upper())] = _digit

_VALUE_TABLE = _VALUE_OF.tobytes()  # for bytes.translate: one C pass, ~4x numpy's gather
_NEWLINE, _SLASH = ord("\n"), ord("/")
# eight '0'/'1' characters (bit 0 of each byte of a little-endian uint64, the first most significant)
# times this: the eight bits land in the top byte, first bit highest, without carries
_GATHER_BITS = np.uint64(0x8040201008040201)
_SYNTAX = ("coe", "mif", "h")  # formats whose word lines carry syntax around the digits


@cache
def _table(chars: str | None, size: int) -> np.ndarray:
    """A bool table over character codes below ``size``: True for ``chars`` (None: what
    ``str.strip()`` strips, i.e. ``str.isspace``)."""
    if chars is None:
        return np.array([chr(code).isspace() for code in range(size)], dtype=bool)
    table = np.zeros(size, dtype=bool)
    table[[ord(c) for c in chars]] = True
    return table


_WIDE = 0x3001  # every code point at or above this is neither white space nor a digit


def _is(codes: np.ndarray, chars: str | None) -> np.ndarray:
    """Whether each character code is one of ``chars`` (None: white space)."""
    if codes.dtype == np.uint8:
        return np.asarray(_table(chars, 256)[codes])
    return np.asarray(_table(chars, _WIDE)[np.minimum(codes, _WIDE - 1)])


def _codes(data: str | bytes) -> tuple[np.ndarray, bytes]:
    """Text as one array of character codes: bytes when it is ASCII (no copy), else code points;
    and the ASCII bytes (empty if the text is not ASCII)."""
    if isinstance(data, bytes):
        if data.isascii():
            return np.frombuffer(data, dtype=np.uint8), data
        data = data.decode("utf-8", errors="replace")
    if data.isascii():
        raw = data.encode("ascii")
        return np.frombuffer(raw, dtype=np.uint8), raw
    return np.frombuffer(data.encode("utf-32-le"), dtype="<u4"), b""


def _digit_values(codes: np.ndarray) -> np.ndarray:
    """Character codes -> hex digit values, 255 where the character is no hex digit."""
    if codes.dtype == np.uint8:
        return np.take(_VALUE_OF, codes)
    return np.where(codes < 256, _VALUE_OF[np.minimum(codes, 255)], np.uint8(255)).astype(np.uint8)


def _header_end(codes: np.ndarray, header_lines: int) -> int | None:
    """Where the line after the first ``header_lines`` lines starts; None if the text is shorter."""
    if header_lines == 0:
        return 0
    newlines = np.flatnonzero(codes[:4096] == _NEWLINE)
    if newlines.size < header_lines:
        newlines = np.flatnonzero(codes == _NEWLINE)
    return int(newlines[header_lines - 1]) + 1 if newlines.size >= header_lines else None


def _lines(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every line's [start, end) in ``codes``, as ``str.split("\\n")`` cuts them."""
    newlines = np.flatnonzero(codes == _NEWLINE)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [codes.size]])
    return starts, ends


def _strip(
    codes: np.ndarray, starts: np.ndarray, ends: np.ndarray, chars: str | None, left: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Each [start, end) without the leading (if ``left``) and trailing ``chars`` (None: white
    space), as ``str.strip(chars)`` / ``str.rstrip(chars)`` does to every line at once."""
    kept = np.flatnonzero(~_is(codes, chars))
    if kept.size == 0:
        return starts, starts.copy()
    if left:
        at = np.searchsorted(kept, starts)
        first = kept[np.minimum(at, kept.size - 1)]
        starts = np.where((at < kept.size) & (first < ends), first, ends)
    before = np.searchsorted(kept, ends) - 1
    last = kept[np.maximum(before, 0)]
    ends = np.where((before >= 0) & (last >= starts), last + 1, starts)
    return starts, np.maximum(ends, starts)


def _gather(codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ranges [starts, starts + lengths), concatenated: (characters, each range's offset)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total = int(offsets[-1])
    index = np.arange(total, dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
    return codes[index], offsets[:-1]


def _shown(chars: np.ndarray) -> str:
    return "".join(map(chr, chars.tolist()))


class _Words:
    """The data words of a text as a (words, digits) matrix of character codes, and each word's line."""

    def __init__(self, chars: np.ndarray, line_of: Callable[[int], int]) -> None:
        self.chars = chars
        self.line_of = line_of


def _uniform_words(data: bytes, codes: np.ndarray, start: int, width: int, radix: str) -> np.ndarray | None:
    """The digit values of a text that is nothing but ``width``-digit lines, each with its newline,
    as a (words, width) view; None when it is anything else (a bad digit, blank or comment lines,
    other widths, ``\\r``...): the general path then reads it, or names what is wrong."""
    region = codes[start:]
    if region.size % (width + 1) or not data:
        return None
    rows = region.size // (width + 1)
    if not (region.reshape(rows, width + 1)[:, width] == _NEWLINE).all():
        return None
    if radix == "bin":
        values = region ^ np.uint8(ord("0"))
    else:
        values = np.frombuffer(data.translate(_VALUE_TABLE), dtype=np.uint8)[start:].copy()
    matrix = values.reshape(rows, width + 1)
    matrix[:, width] = 0  # the newlines: then one contiguous max checks every digit
    if values.size and int(values.max()) >= (2 if radix == "bin" else 16):
        return None
    return matrix[:, :width]


def _word_lines(
    codes: np.ndarray, start: int, width: int, first_line: int, radix: str, word_bits: int, where: str
) -> _Words:
    """The words of the lines from ``start`` on, as $readmemh reads them: each line stripped of
    white space, blank lines and ``//`` comment lines skipped. Raises InputError at a word of the
    wrong width."""
    region = codes[start:]
    starts, ends = _lines(region)
    numbers = np.arange(first_line, first_line + starts.size)
    starts, ends = _strip(region, starts, ends, None)
    return _kept_words(region, starts, ends - starts, numbers, width, radix, word_bits, where)


def _kept_words(
    codes: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    numbers: np.ndarray,
    width: int,
    radix: str,
    word_bits: int,
    where: str,
) -> _Words:
    """Words at [starts, starts + lengths) of ``codes`` (stripped), without the blank and ``//`` ones."""
    last = max(codes.size - 1, 0)
    if codes.size:
        first_two = (codes[np.minimum(starts, last)] == _SLASH) & (
            codes[np.minimum(starts + 1, last)] == _SLASH
        )
    else:
        first_two = np.zeros(starts.size, dtype=bool)
    kept = (lengths > 0) & ~((lengths >= 2) & first_two)
    starts, lengths, numbers = starts[kept], lengths[kept], numbers[kept]
    wrong = np.flatnonzero(lengths != width)
    if wrong.size:
        row = int(wrong[0])
        raise InputError(
            f"{where} line {numbers[row]}: data word {row} is {lengths[row]} digits, expected {width} "
            f"({word_bits}-bit {radix} words)"
        )
    chars = codes[starts[:, None] + np.arange(width)] if starts.size else np.zeros((0, width), codes.dtype)
    return _Words(chars, lambda row: int(numbers[row]))


def _digits(words: _Words, radix: str) -> np.ndarray | None:
    """The words' digit values, (words, digits) uint8; None if a digit is bad (see _digit_error)."""
    values = _digit_values(words.chars)
    if values.size and int(values.max()) >= (2 if radix == "bin" else 16):
        return None
    return values


def _digit_error(words: _Words, radix: str, where: str) -> InputError:
    values = _digit_values(words.chars)
    row, col = (int(v) for v in np.argwhere(values >= (2 if radix == "bin" else 16))[0])
    return InputError(
        f"{where} line {words.line_of(row)}: data word {row} has a bad {radix} digit "
        f"{chr(int(words.chars[row, col]))!r}"
    )


def _check_top(words: _Words, digits: np.ndarray, radix: str, word_bits: int, where: str) -> None:
    """Raise InputError at the first word with bits set above its ``word_bits`` (hex: the top digit)."""
    extra = digits.shape[1] * (1 if radix == "bin" else 4) - word_bits
    if extra <= 0 or digits.shape[0] == 0:
        return
    over = np.flatnonzero(digits[:, 0] >> np.uint8(4 - extra))
    if over.size:
        row = int(over[0])
        raise InputError(
            f"{where} line {words.line_of(row)}: data word {row} ({_shown(words.chars[row])!r}) has bits "
            f"set above bit {word_bits - 1} of a {word_bits}-bit word"
        )


def _width(radix: str, word_bits: int) -> int:
    return word_bits if radix == "bin" else -(-word_bits // 4)


def word_digits(data: str | bytes, radix: str, word_bits: int, header_lines: int, where: str) -> np.ndarray:
    """Text words -> (words, digits) digit values (bin: bits; hex: nibbles), most significant first.

    After ``header_lines`` lines, each line is stripped of white space and blank lines and ``//``
    comment lines are skipped, as $readmemh does. Raises InputError naming the line.
    """
    codes, raw = _codes(data)
    width = _width(radix, word_bits)
    start = _header_end(codes, header_lines)
    if start is None:
        return np.zeros((0, width), dtype=np.uint8)
    first_line = header_lines + 1
    fast = _uniform_words(raw, codes, start, width, radix)
    if fast is not None:
        rows = fast.shape[0]
        chars = codes[start:].reshape(rows, width + 1)[:, :width]
        _check_top(_Words(chars, lambda row: first_line + row), fast, radix, word_bits, where)
        return fast
    words = _word_lines(codes, start, width, first_line, radix, word_bits, where)
    digits = _digits(words, radix)
    if digits is None:
        raise _digit_error(words, radix, where)
    _check_top(words, digits, radix, word_bits, where)
    return digits


def syntax_digits(data: str | bytes, entry: FileEntry, where: str) -> np.ndarray:
    """The words of a coe / mif / C-header file (its ``depth`` lines after the header) as
    (words, digits) hex digit values.

    coe ``0a1b,`` / ``ffff;``; mif ``    0a : 0a1b;``; C ``    0x0a1b,`` or ``    {0x…, 0x…},``
    (32-bit limbs, least significant first, the zeros above the word dropped).
    """
    codes, _ = _codes(data)
    width = _width("hex", entry.word_bits)
    start = _header_end(codes, entry.header_lines)
    if start is None:
        return np.zeros((0, width), dtype=np.uint8)
    starts, ends = _lines(codes[start:])
    starts, ends = starts[: entry.depth] + start, ends[: entry.depth] + start
    numbers = np.arange(entry.header_lines + 1, entry.header_lines + 1 + starts.size)
    fmt = entry.format
    if fmt == "h":
        codes, starts, lengths = _c_words(codes, starts, ends, width, numbers, where)
    else:
        if fmt == "mif" and starts.size:  # the word follows the line's first `:`
            colons = np.append(np.flatnonzero(codes == ord(":")), codes.size)
            colon = colons[np.searchsorted(colons, starts)]
            starts = np.where(colon < ends, colon + 1, starts)
        starts, ends = _strip(codes, starts, ends, None)
        starts, ends = _strip(codes, starts, ends, ",;" if fmt == "coe" else ";", left=False)
        starts, ends = _strip(codes, starts, ends, None)
        lengths = ends - starts
    words = _kept_words(codes, starts, lengths, numbers, width, "hex", entry.word_bits, where)
    digits = _digits(words, "hex")
    if digits is None:
        raise _digit_error(words, "hex", where)
    _check_top(words, digits, "hex", entry.word_bits, where)
    return digits


def _c_words(
    codes: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int, numbers: np.ndarray, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each C array element's word: its limbs' digits joined most significant first, the zeros
    above the word dropped. Returns (characters, each word's start in them, its length)."""
    starts, ends = _strip(codes, starts, ends, " {},")
    if starts.size == 0:
        return codes, starts, ends - starts
    commas = np.flatnonzero(codes == ord(","))
    inside = np.searchsorted(commas, ends) - np.searchsorted(commas, starts)
    limbs = int(inside[0]) + 1
    odd = np.flatnonzero(inside != limbs - 1)
    if odd.size:
        row = int(odd[0])
        raise InputError(
            f"{where} line {numbers[row]}: data word {row} has {int(inside[row]) + 1} limbs, the first "
            f"word {limbs}; every word of a C array has as many"
        )
    cuts = commas[np.searchsorted(commas, starts)[:, None] + np.arange(limbs - 1)]  # (words, limbs - 1)
    part_starts = np.concatenate([starts[:, None], cuts + 1], axis=1).reshape(-1)
    part_ends = np.concatenate([cuts, ends[:, None]], axis=1).reshape(-1)
    part_starts, part_ends = _strip(codes, part_starts, part_ends, None)
    last = codes.size - 1
    prefixed = (
        (part_ends - part_starts >= 2)
        & (codes[np.minimum(part_starts, last)] == ord("0"))
        & (codes[np.minimum(part_starts + 1, last)] == ord("x"))
    )
    part_starts = part_starts + 2 * prefixed
    # least significant limb first in the file: the word reads them backwards
    backwards = (part_starts.reshape(-1, limbs)[:, ::-1], part_ends.reshape(-1, limbs)[:, ::-1])
    lengths = backwards[1] - backwards[0]
    chars, offsets = _gather(codes, backwards[0].reshape(-1), lengths.reshape(-1))
    begins, total = offsets.reshape(-1, limbs)[:, 0], lengths.sum(axis=1)
    # 32-bit limbs are wider than the word: the zeros above it are dropped (anything else stays)
    nonzero = np.append(np.flatnonzero(chars != ord("0")), chars.size)
    leading = nonzero[np.searchsorted(nonzero, begins)] - begins
    drop = np.where((total > width) & (leading >= total - width), total - width, 0)
    return chars, begins + drop, total - drop


def _little_bytes(digits: np.ndarray, radix: str) -> np.ndarray:
    """(words, digits) most significant first -> (words, bytes) of each word, least significant first."""
    backwards = digits[:, ::-1]
    if radix == "bin":
        return np.packbits(backwards, axis=1, bitorder="little")
    low, high = backwards[:, 0::2], backwards[:, 1::2]
    out = np.array(low, dtype=np.uint8)
    out[:, : high.shape[1]] |= high << np.uint8(4)
    return out


def _word_ints(digits: np.ndarray, radix: str) -> np.ndarray:
    """(words, digits) of words up to 64 bits -> (words,) unsigned integers of the narrowest size.

    Hex: a pass a digit column. Bin: one multiply a byte of the word (see _eight_bits), each
    product's top byte stored straight into its byte of the word, a block of rows at a time, so no
    shift or or passes over the words: bits ``01 01101011`` -> the last eight, 0x6b, the word's
    low byte; the two above them, 0x01, its next -> 0x016b.
    """
    rows, width = digits.shape
    per = 1 if radix == "bin" else 4
    kind = np.dtype(f"u{next(size for size in (1, 2, 4, 8) if width * per <= 8 * size)}")
    if radix == "hex" or width < 8:
        word = np.zeros(rows, dtype=kind)
        for column in range(width):
            if column:
                np.left_shift(word, kind.type(per), out=word)
            np.bitwise_or(word, digits[:, column], out=word)
        return word
    if digits.strides[1] != 1:
        digits = np.ascontiguousarray(digits)
    word_bytes = np.zeros((rows, kind.itemsize), dtype=np.uint8)  # the words' bytes in memory order
    # a block of rows at a time: the scratch stays in cache, never a fresh buffer the size of the file
    scratch = np.empty(min(rows, _BLOCK), dtype=np.uint64)
    for first in range(0, rows, _BLOCK):
        _bin_block(digits[first : first + _BLOCK], word_bytes[first : first + _BLOCK], scratch)
    return word_bytes.view(kind)[:, 0]


_BLOCK = 1 << 15  # rows a block: 256 KiB of uint64 scratch


def _bin_block(digits: np.ndarray, word_bytes: np.ndarray, scratch: np.ndarray) -> None:
    """(rows, width) bits, the first most significant -> each word's bytes (rows, size) in memory order."""
    rows, width = digits.shape
    scratch = scratch[:rows]
    top_byte = scratch.view(np.uint8).reshape(rows, 8)[:, _TOP]
    groups, top = divmod(width, 8)  # whole bytes from the end; ``top`` leading bits above them
    size = word_bytes.shape[1]
    for k in range(groups):  # k: the word's k-th byte from the least significant
        _eight_bits(digits, width - 8 * (k + 1), scratch)
        word_bytes[:, _byte_column(k, size)] = top_byte
    if top:  # the first eight columns' leading ``top`` bits
        _eight_bits(digits, 0, scratch)
        np.right_shift(top_byte, np.uint8(8 - top), out=word_bytes[:, _byte_column(groups, size)])


def _uniform_bin_words(data: str | bytes, word_bits: int, header_lines: int) -> np.ndarray | None:
    """The words of a bin text that is nothing but ``word_bits``-digit lines (8 to 64 bits), each
    with its newline, as (words,) unsigned integers; None for anything else (the general path then
    reads it, or names what is wrong).

    A block of lines at a time, from the text's bytes to the words: each block's bits are checked
    and gathered while in cache, so no (words, digits) matrix the size of the file is ever made.
    """
    if not isinstance(data, bytes) or not 8 <= word_bits <= 64:
        return None
    codes = np.frombuffer(data, dtype=np.uint8)
    start = _header_end(codes, header_lines)
    line = word_bits + 1
    if start is None or codes.size == start or (codes.size - start) % line:
        return None
    rows = (codes.size - start) // line
    lines = codes[start:].reshape(rows, line)
    kind = np.dtype(f"u{next(size for size in (1, 2, 4, 8) if word_bits <= 8 * size)}")
    word_bytes = np.zeros((rows, kind.itemsize), dtype=np.uint8)
    block = min(rows, _BLOCK)
    bits, scratch = np.empty((block, line), dtype=np.uint8), np.empty(block, dtype=np.uint64)
    newline = np.uint8(_NEWLINE ^ ord("0"))
    for first in range(0, rows, block):
        chunk = bits[: min(block, rows - first)]
        np.bitwise_xor(lines[first : first + block], np.uint8(ord("0")), out=chunk)  # '0' -> 0, '1' -> 1
        if not (chunk[:, word_bits] == newline).all():
            return None
        chunk[:, word_bits] = 0  # then one contiguous max checks every digit
        if int(chunk.max()) > 1:
            return None
        _bin_block(chunk[:, :word_bits], word_bytes[first : first + block], scratch)
    return word_bytes.view(kind)[:, 0]


def text_lanes(
    data: str | bytes,
    radix: str,
    word_bits: int,
    header_lines: int,
    lanes: int,
    lane_bits: int,
    signed: bool,
    lane_order: str,
    where: str,
    words: int | None = None,
) -> np.ndarray:
    """Text words -> (words, lanes) int64 in file order: word_digits then lanes_from_digits, with a
    plain bin file read block by block (see _uniform_bin_words). ``words``: the file must hold at
    least that many, and only they are read (InputError otherwise, naming ``where``)."""
    word = _uniform_bin_words(data, word_bits, header_lines) if radix == "bin" else None
    if word is None:
        digits = word_digits(data, radix, word_bits, header_lines, where)
        _enough(digits.shape[0], words, where)
        return lanes_from_digits(digits[:words], radix, lanes, lane_bits, signed, lane_order)
    _enough(word.shape[0], words, where)
    return word_lanes(word[:words], lanes, lane_bits, signed, lane_order)


def _enough(found: int, words: int | None, where: str) -> None:
    if words is not None and found < words:
        raise InputError(f"{where}: {found} data words, the manifest says {words}")


_TOP = 7 if sys.byteorder == "little" else 0  # where a uint64's most significant byte sits in memory


def _byte_column(k: int, size: int) -> int:
    """Where a ``size``-byte unsigned integer keeps its ``k``-th least significant byte in memory."""
    return k if sys.byteorder == "little" else size - 1 - k


def _eight_bits(digits: np.ndarray, start: int, out: np.ndarray) -> None:
    """Bit columns start..start+7 (each 0 or 1, the first most significant) -> in ``out``'s top
    byte, one byte a word (the product's lower bytes hold carries: read only the top one)."""
    group = digits[:, start : start + 8].view("<u8")[:, 0]  # eight bytes a word, in place
    np.multiply(group, _GATHER_BITS, out=out)


def _uint64(columns: np.ndarray) -> np.ndarray:
    """(words, up to 8) little-endian bytes -> (words,) uint64."""
    word = np.zeros((columns.shape[0], 8), dtype=np.uint8)
    word[:, : columns.shape[1]] = columns
    return word.view("<u8")[:, 0]


def lanes_from_digits(
    digits: np.ndarray, radix: str, lanes: int, lane_bits: int, signed: bool, lane_order: str
) -> np.ndarray:
    """(words, digits) most significant first (see word_digits) -> (words, lanes) int64 in file order.

    lsb_first: lane 0 is the word's low bits. 4-bit lanes in hex: a digit is a lane.
    """
    rows, width = digits.shape
    if radix == "hex" and lane_bits == 4:
        shown = digits[:, width - lanes :]
        values = np.array(shown if lane_order == "msb_first" else shown[:, ::-1], dtype=np.int64)
    elif width * (1 if radix == "bin" else 4) <= 64:
        return word_lanes(_word_ints(digits, radix), lanes, lane_bits, signed, lane_order)
    else:
        values = _lanes_of(digits, radix, None, lanes, lane_bits, lane_order)
    return _signed(values, lane_bits) if signed else values


def word_lanes(word: np.ndarray, lanes: int, lane_bits: int, signed: bool, lane_order: str) -> np.ndarray:
    """(words,) unsigned words up to 64 bits -> (words, lanes) int64 in file order (lsb_first: lane 0
    in the low bits). ``word`` may be overwritten."""
    if lanes == 1:
        return _one_lane(word, lane_bits, signed)
    values = _lanes_of(word[:, None], "bin", word, lanes, lane_bits, lane_order)
    return _signed(values, lane_bits) if signed else values


def _signed(values: np.ndarray, lane_bits: int) -> np.ndarray:
    """Unsigned ``lane_bits``-bit lanes as two's complement, in place."""
    sign = np.int64(1 << (lane_bits - 1))
    np.bitwise_xor(values, sign, out=values)
    np.subtract(values, sign, out=values)
    return values


def _one_lane(word: np.ndarray, lane_bits: int, signed: bool) -> np.ndarray:
    """One lane a word: the word's low ``lane_bits``, two's complement if signed -> (words, 1) int64."""
    kind = word.dtype.type
    if lane_bits < 8 * word.dtype.itemsize:
        np.bitwise_and(word, kind((1 << lane_bits) - 1), out=word)
    if signed:  # in the word's own size, before widening
        sign = kind(1 << (lane_bits - 1))
        np.bitwise_xor(word, sign, out=word)
        np.subtract(word, sign, out=word)  # wraps below zero: the two's complement of the value
        return word.view(f"i{word.dtype.itemsize}").astype(np.int64)[:, None]
    return word.astype(np.int64)[:, None]


def _lanes_of(
    digits: np.ndarray, radix: str, word: np.ndarray | None, lanes: int, lane_bits: int, lane_order: str
) -> np.ndarray:
    """(words, lanes) unsigned lane values, a pass a lane: from ``word`` (words up to 64 bits), else
    from each lane's own bytes (at most 9: 62 bits, 7 bits in)."""
    rows = digits.shape[0]
    mask = (1 << lane_bits) - 1
    values = np.empty((rows, lanes), dtype=np.int64)
    little = _little_bytes(digits, radix) if word is None else digits
    for lane in range(lanes):
        column = lanes - 1 - lane if lane_order == "msb_first" else lane
        low = lane * lane_bits
        if word is not None:
            kind = word.dtype.type
            values[:, column] = (word >> kind(low) if low else word) & kind(mask)
            continue
        first, skip = divmod(low, 8)
        span = (skip + lane_bits + 7) // 8
        part = _uint64(little[:, first : first + min(span, 8)]) >> np.uint64(skip)
        if span > 8:
            part |= little[:, first + 8].astype(np.uint64) << np.uint64(64 - skip)
        values[:, column] = part & np.uint64(mask)
    return values


def parse_words(text: str | bytes, radix: str, word_bits: int, header_lines: int, where: str) -> np.ndarray:
    """Text words -> (words, word_bits) 0/1 array, MSB first. Raises InputError naming the line."""
    digits = word_digits(text, radix, word_bits, header_lines, where)
    if radix == "bin":
        return digits
    bits = np.unpackbits(digits[:, :, None], axis=2)[:, :, 4:].reshape(digits.shape[0], 4 * digits.shape[1])
    return np.ascontiguousarray(bits[:, bits.shape[1] - word_bits :])


def lanes_from_bits(
    bits: np.ndarray, lanes: int, lane_bits: int, signed: bool, lane_order: str
) -> np.ndarray:
    """(words, word_bits) MSB-first bits -> (words, lanes) integers in file order."""
    return lanes_from_digits(bits.astype(np.uint8, copy=False), "bin", lanes, lane_bits, signed, lane_order)


def as_entry(entry: FileEntry | Mapping[str, Any], where: str) -> FileEntry:
    """A manifest's file entry; a JSON object (e.g. read by another program) is checked first."""
    return entry if isinstance(entry, FileEntry) else FileEntry.from_json(entry, where)


def file_digits(data: str | bytes, entry: FileEntry, where: str) -> np.ndarray:
    """A file of ``entry``'s format as (words, digits) digit values (see word_digits, syntax_digits)."""
    if entry.format in _SYNTAX:
        return syntax_digits(data, entry, where)
    return word_digits(data, radix_of(entry), entry.word_bits, entry.header_lines, where)


def file_values(data: str | bytes, entry: FileEntry, where: str) -> np.ndarray:
    """A file of ``entry``'s format as its first ``entry.words`` words' (words, lanes) int64, in file
    order; InputError if it holds fewer."""
    if entry.format in _SYNTAX:
        digits = syntax_digits(data, entry, where)
        _enough(digits.shape[0], entry.words, where)
        return lanes_from_digits(
            digits[: entry.words], "hex", entry.lanes, entry.lane_bits, entry.signed, entry.lane_order
        )
    return text_lanes(
        data,
        radix_of(entry),
        entry.word_bits,
        entry.header_lines,
        entry.lanes,
        entry.lane_bits,
        entry.signed,
        entry.lane_order,
        where,
        entry.words,
    )


def radix_of(entry: FileEntry) -> str:
    return "bin" if entry.format in ("bin", "txt") else "hex"


def stored_shape(entry: FileEntry) -> tuple[int, ...]:
    """The shape of the values a file's words hold, in ``axes`` order: ``shape``, with the last
    axis (channels) widened by the ``padded_channels`` zero lanes the layout added, if any.

    shape [1, 32, 32, 3], channels 3, padded_channels 5 -> (1, 32, 32, 8).
    """
    shape = list(entry.shape)
    extra = entry.padded_channels or 0
    if extra:
        real = entry.channels
        if not shape or real is None or real != shape[-1] or extra < 0:
            raise InputError(
                f"{entry.path}: manifest says channels {real}, padded_channels {extra}, "
                f"but its shape {shape} ends in {shape[-1] if shape else 'nothing'}; the manifest is damaged"
            )
        shape[-1] += extra
    return tuple(shape)


def decode_file(path: Path, entry: FileEntry | Mapping[str, Any]) -> np.ndarray:
    """Decode one file of a manifest into its integer tensor (shape and axes as the manifest says).

    Zero lanes that pad the channels (``padded_channels``) are dropped: the tensor is the real one.
    """
    entry = as_entry(entry, f"the manifest entry of {path}")
    shape = entry.shape
    data = path.read_bytes()
    if entry.format == "npy":
        array = np.load(io.BytesIO(data), allow_pickle=False)
        return np.asarray(array.astype(np.int64).reshape(shape))
    values = file_values(data, entry, str(path))
    stored = stored_shape(entry)
    count = int(np.prod(stored))
    if values.size < count:
        raise InputError(
            f"{path}: {entry.words} words of {entry.lanes} lanes hold {values.size} values; "
            f"shape {list(stored)} needs {count}"
        )
    held = values.reshape(-1)[:count].reshape(stored)
    return np.ascontiguousarray(held[..., : shape[-1]]) if stored != shape else held
