"""Memory-file bodies for every text format, built as character matrices (no per-word loops).

The templates own each file's shape: header, declarations, and the syntax of one word's line,
which a template states once as a ``word`` macro (render.py reads it as a ``WordSyntax``). This
module spells every word in that syntax, a block of lines at a time. Formats:

    hex  $readmemh, one word a line        bin  $readmemb, one word a line
    txt  the course core's text: binary words, header tokens
    coe  Xilinx block-memory init           mif  Intel/Quartus memory init
    h    C header: packed words (and the values, for lanes <= 32 bits)
    npy  the integer tensor itself
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from qexport.writer.pack import PackSpec, Radix, line_blocks, word_chars

TextFormat = Literal["hex", "bin", "txt", "coe", "mif", "h"]
# each format's name is also its files' extension
FORMATS = ("hex", "bin", "txt", "coe", "mif", "h", "npy")
# the digits a format spells its words in (its readers expect that radix)
RADIX: dict[str, Radix] = {"hex": "hex", "bin": "bin", "txt": "bin", "coe": "hex", "mif": "hex", "h": "hex"}

_BLOCK_BYTES = 1 << 20  # lines are made about this many bytes at a time, as pack.line_blocks does


@dataclass(frozen=True, slots=True)
class Field:
    """Characters of a word that a line shows: ``digits`` (the whole word, zero-padded to its
    width), ``address`` (the word's index in hex, as wide as the last index needs) or ``limb``
    number ``limb`` (see ``c_limbs``; 0 is the least significant).
    """

    kind: Literal["digits", "address", "limb"]
    limb: int = 0


Part = str | Field
DIGITS = Field("digits")


@dataclass(frozen=True, slots=True)
class WordSyntax:
    """How one word's line is spelt, as literal text and fields in order; ``last`` for the last word.

    mif ``    0a : 0a1b;``  -> line = ("    ", Field("address"), " : ", DIGITS, ";")
    coe ``0a1b,`` / ``ffff;`` -> line = (DIGITS, ","), last = (DIGITS, ";")
    """

    line: tuple[Part, ...] = (DIGITS,)
    last: tuple[Part, ...] = (DIGITS,)


def padded_to_depth(words: np.ndarray, depth: int, fill: int) -> np.ndarray:
    """Append ``fill`` words (all lanes zero except the fill in lane 0) up to ``depth`` words."""
    if depth <= words.shape[0]:
        return words
    extra = np.zeros((depth - words.shape[0], words.shape[1]), dtype=np.int64)
    extra[:, 0] = fill
    return np.concatenate([words, extra])


def word_lines(words: np.ndarray, spec: PackSpec, radix: Radix, syntax: WordSyntax) -> Iterator[memoryview]:
    """A memory file's data block, without its final newline: every word a line in ``syntax``.

    The blocks are views of one reused buffer: write (or copy) each before asking for the next.
    """
    rows = words.shape[0]
    if rows == 0:
        return
    if syntax.line == syntax.last == (DIGITS,):  # bare words: pack's own line blocks
        yield from line_blocks(words, spec, radix, last_newline=False, check=False)  # to_words checked
        return
    shape = _Shape.of(spec, radix, rows)
    yield from _lines(words[:-1], 0, syntax.line, shape, newline=True)
    yield from _lines(words[-1:], rows - 1, syntax.last, shape, newline=False)


@dataclass(frozen=True, slots=True)
class _Shape:
    """The widths of a file's fields: every line of a file has the same columns."""

    spec: PackSpec
    radix: Radix
    digits: int  # characters a word
    address: PackSpec  # one hex lane as wide as the last address needs
    limbs: int
    per_limb: int  # one limb is the whole word; more are 32 bits each

    @classmethod
    def of(cls, spec: PackSpec, radix: Radix, rows: int) -> _Shape:
        digits = -(-spec.word_bits // 4) if radix == "hex" else spec.word_bits
        limbs = c_limbs(spec.word_bits)
        per_limb = digits if limbs == 1 else (8 if radix == "hex" else 32)
        address = PackSpec(max(1, int(rows - 1).bit_length()), 1, False)
        return cls(spec, radix, digits, address, limbs, per_limb)

    def width(self, part: Part) -> int:
        if isinstance(part, str):
            return len(part)
        if part.kind == "digits":
            return self.digits
        if part.kind == "address":
            return -(-self.address.lane_bits // 4)
        return self.per_limb


def _lines(
    words: np.ndarray, first: int, parts: tuple[Part, ...], shape: _Shape, newline: bool
) -> Iterator[memoryview]:
    """``words`` (the first at address ``first``) as lines of ``parts``, a block of lines at a time."""
    count = words.shape[0]
    if count == 0:
        return
    widths = [shape.width(part) for part in parts]
    line = sum(widths) + newline
    block = max(1, _BLOCK_BYTES // max(line, 1))
    out = np.empty((min(block, count), line), dtype=np.uint8)
    # every column that is the same on every line is written once
    copies: list[tuple[int, Field, int, int]] = []  # (column, field, first char, chars) per block
    column = 0
    limb_pad = shape.limbs * shape.per_limb - shape.digits  # zeros before a word's digits
    for item, width in zip(parts, widths, strict=True):
        if isinstance(item, str):
            out[:, column : column + width] = np.frombuffer(item.encode("ascii"), dtype=np.uint8)
        elif item.kind == "limb":
            start = (shape.limbs - 1 - item.limb) * shape.per_limb - limb_pad  # into the word's digits
            zeros = min(max(-start, 0), width)
            out[:, column : column + zeros] = ord("0")
            if zeros < width:
                copies.append((column + zeros, DIGITS, start + zeros, width - zeros))
        else:
            copies.append((column, item, 0, width))
        column += width
    if newline:
        out[:, -1] = ord("\n")
    addressed = any(f.kind == "address" for _, f, _, _ in copies)
    for start in range(0, count, block):
        part = words[start : start + block]
        rows = part.shape[0]
        chars = {"digits": word_chars(part, shape.spec, shape.radix)}
        if addressed:
            index = np.arange(first + start, first + start + rows, dtype=np.int64).reshape(-1, 1)
            chars["address"] = word_chars(index, shape.address, "hex")
        for at, field, offset, width in copies:
            out[:rows, at : at + width] = chars[field.kind][:, offset : offset + width]
        yield out[:rows].reshape(-1).data


def c_limbs(word_bits: int) -> int:
    return 1 if word_bits <= 64 else -(-word_bits // 32)


def c_word_type(word_bits: int) -> str:
    for size in (8, 16, 32, 64):
        if word_bits <= size:
            return f"uint{size}_t"
    return "uint32_t"


def c_value_type(spec: PackSpec) -> str | None:
    """The C type that holds one lane's value, or None if lanes are wider than 32 bits."""
    for size in (8, 16, 32):
        if spec.lane_bits <= size:
            return f"{'int' if spec.signed else 'uint'}{size}_t"
    return None


def c_values(values: np.ndarray) -> str:
    """Decimal literals, 16 a line, for the C header's values array.

    Each value is written right-aligned into a fixed-width row of characters (NUL where a shorter
    number has no digit), the separators are appended as columns, and the NULs are dropped.
    """
    flat = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    if flat.size == 0:
        return "    "
    magnitude = np.abs(flat)
    width = len(str(int(magnitude.max())))
    digits = np.zeros((flat.size, width + 1), dtype=np.uint8)  # sign + digits, NUL = nothing
    remaining = magnitude.copy()
    for column in range(width, 0, -1):
        present = (remaining > 0) | (column == width)
        digits[:, column] = np.where(present, ord("0") + remaining % 10, 0)
        remaining //= 10
    powers = 10 ** np.arange(1, width, dtype=np.int64)
    lengths = np.searchsorted(powers, magnitude, side="right") + 1
    negative = np.flatnonzero(flat < 0)
    digits[negative, width - lengths[negative]] = ord("-")  # just before the first digit
    separators = np.zeros((flat.size, 6), dtype=np.uint8)
    separators[:, :2] = np.frombuffer(b", ", dtype=np.uint8)
    separators[15::16] = np.frombuffer(b",\n    ", dtype=np.uint8)
    separators[-1] = 0
    text: np.ndarray = np.concatenate([digits, separators], axis=1).reshape(-1)
    kept: bytes = text[text != 0].tobytes()
    return "    " + kept.decode("ascii")
