"""Integers -> memory words -> text, vectorized (no per-value Python loops)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np

from qexport.errors import BitWidthError

LaneOrder = Literal["lsb_first", "msb_first"]
Radix = Literal["hex", "bin"]

_NEWLINE = ord("\n")


@dataclass(frozen=True, slots=True)
class PackSpec:
    """How integers become one memory word.

    lanes=4, lane_bits=4, signed, lane_order="lsb_first": [1, -2, 3, 0] -> 0x03e1
    (the first value in bits [3:0], -2 as two's complement 0xe in bits [7:4]).
    ``word_bits`` defaults to lanes * lane_bits; extra high bits are zero.
    """

    lane_bits: int
    lanes: int
    signed: bool
    lane_order: LaneOrder = "lsb_first"
    word_bits: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.lane_bits <= 62:
            raise BitWidthError(f"lane width {self.lane_bits} is outside 1..62 bits")
        if self.lanes < 1:
            raise BitWidthError(f"{self.lanes} lanes a word; need at least 1")
        if self.word_bits == 0:
            object.__setattr__(self, "word_bits", self.lanes * self.lane_bits)
        if self.word_bits < self.lanes * self.lane_bits:
            raise BitWidthError(
                f"{self.lanes} lanes x {self.lane_bits} bits do not fit a {self.word_bits}-bit word"
            )

    @property
    def value_range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.lane_bits - 1)), (1 << (self.lane_bits - 1)) - 1
        return 0, (1 << self.lane_bits) - 1

    def describe(self) -> str:
        kind = "signed" if self.signed else "unsigned"
        return f"{kind} {self.lane_bits}-bit"


def smallest_signed_bits(low: int, high: int) -> int:
    """Fewest two's-complement bits that hold every value in [low, high]."""
    bits = 1
    while not (-(1 << (bits - 1)) <= low and high <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def check_fits(values: np.ndarray, spec: PackSpec, what: str, fix: str) -> None:
    """Raise BitWidthError naming ``what`` if any value falls outside the spec's lanes."""
    if values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    lo, hi = spec.value_range
    if low < lo or high > hi:
        raise BitWidthError(f"{what} spans [{low}, {high}]; {spec.describe()} holds [{lo}, {hi}]; {fix}")


_FIX = "use a wider lane_bits (or signed lanes), or clip the values first"


def integer_lanes(values: np.ndarray, spec: PackSpec, what: str = "the array") -> np.ndarray:
    """``values`` as integers that ``spec``'s lanes hold exactly, or BitWidthError saying why not.

    Integer dtypes pass as they are, after one min/max pass (none when the dtype itself fits,
    e.g. int8 into signed 8-bit lanes). Float dtypes are accepted only holding whole numbers
    (``2.0``), and come back as int64; ``1.7``, NaN and infinities are refused, never truncated.
    bool, complex and every other dtype are refused: convert them explicitly.

    signed 4-bit: [7, -8] passes; [9, -9] raises (no silent wrap to ``79``); [1.7] raises.
    """
    kind = values.dtype.kind
    lo, hi = spec.value_range
    if kind in "iu":
        info = np.iinfo(values.dtype)
        if not lo <= info.min <= info.max <= hi:  # else every value of the dtype fits
            check_fits(values, spec, what, _FIX)
        return values
    if kind != "f":
        raise BitWidthError(
            f"{what} is of dtype {values.dtype}; {spec.describe()} lanes take integers: pass an integer "
            "array (or floats holding whole numbers), e.g. values.astype(np.int64)"
        )
    if values.size == 0:
        return values.astype(np.int64)
    low, high = values.min(), values.max()  # NaN propagates into both
    if np.isnan(low) or np.isnan(high):
        raise BitWidthError(f"{what} holds NaN; {spec.describe()} lanes take integers in [{lo}, {hi}]")
    if not lo <= low <= high <= hi:
        raise BitWidthError(f"{what} spans [{low}, {high}]; {spec.describe()} holds [{lo}, {hi}]; {_FIX}")
    ints = values.astype(np.int64)
    fraction = ints != values
    if fraction.any():
        index = int(np.argmax(fraction.reshape(-1)))
        value = float(values.reshape(-1)[index])
        raise BitWidthError(
            f"{what} holds {value} (value {index} in C order), not a whole number; "
            f"{spec.describe()} lanes take integers: round the values first (e.g. np.rint), never truncate"
        )
    return ints


def to_words(values: np.ndarray, spec: PackSpec, *, check: bool = True) -> np.ndarray:
    """Flatten in C order and group into (words, lanes); a short last group gets zero lanes.

    lanes=4, signed 4-bit: [1, -2, 3, 0, 5] -> [[1, -2, 3, 0], [5, 0, 0, 0]].
    Values that the lanes cannot hold exactly raise BitWidthError (see integer_lanes: out of
    range, not whole numbers, not numbers). ``check=False`` skips that one min/max pass, for
    values the caller has already checked; floats are then truncated.
    """
    flat = np.ascontiguousarray(values).reshape(-1)
    if check:
        flat = integer_lanes(flat, spec, "to_words: the array")
    if flat.dtype.kind not in "iu":
        flat = flat.astype(np.int64)
    words, short = divmod(flat.size, spec.lanes)
    if short == 0:
        return flat.reshape(words, spec.lanes)  # no copy: the common case on the hot path
    grouped = np.zeros((words + 1) * spec.lanes, dtype=flat.dtype)
    grouped[: flat.size] = flat
    return grouped.reshape(words + 1, spec.lanes)


def _unsigned_lanes(words: np.ndarray, spec: PackSpec) -> np.ndarray:
    """(words, lanes) -> each lane's two's-complement bit pattern in the narrowest unsigned type."""
    dtype = _container(spec.lane_bits)
    # an integer cast keeps the low bits, so negatives become two's complement for free
    raw = words.astype(dtype, copy=False)
    if spec.lane_bits < 8 * dtype.itemsize:
        raw = raw & dtype.type((1 << spec.lane_bits) - 1)
    return np.ascontiguousarray(raw)


def pack_path(spec: PackSpec) -> str:
    """Which routine turns this spec's lanes into bytes (each is round-trip tested separately)."""
    used = spec.lanes * spec.lane_bits
    if spec.lane_bits in (1, 2, 4) and used % 8 == 0:
        return "sub_byte"
    if spec.lane_bits % 8 == 0:
        return "byte_aligned"
    if spec.word_bits <= 64:
        return "uint64_word"
    return "bit_matrix"


# Text is made a block of about this many bytes at a time, in a workspace reused from block to
# block and from file to file: a block stays in cache from its packing to its write, and no fresh
# pages are touched. (Here first-touching a fresh page costs about 1 us: for a 1.6 M-value file,
# fresh buffers and numpy temporaries cost more than the formatting itself.)
_BLOCK_BYTES = 1 << 20


class _Workspace:
    """One byte buffer carved into the arrays a file's blocks work in (each at a 64-byte offset)."""

    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer = buffer
        self.used = 0

    def array(self, shape: tuple[int, int], dtype: np.dtype[Any] | type[np.generic]) -> np.ndarray:
        dtype = np.dtype(dtype)
        start = -(-self.used // 64) * 64
        self.used = start + shape[0] * shape[1] * dtype.itemsize
        if self.used > self.buffer.size:  # the first file this big in this thread
            # room for every array carved so far (they keep the old buffer), so the next file fits
            self.buffer = np.empty(2 * self.used, dtype=np.uint8)
        return self.buffer[start : self.used].view(dtype).reshape(shape)


_IDLE = threading.local()  # each thread's idle workspace buffer: blocks bound it to about 10 MB


@contextmanager
def _workspace() -> Iterator[_Workspace]:
    """This thread's workspace while a file is made; files made interleaved get one each."""
    buffer = getattr(_IDLE, "buffer", None)
    _IDLE.buffer = None
    space = _Workspace(buffer if buffer is not None else np.empty(0, dtype=np.uint8))
    try:
        yield space
    finally:
        idle = getattr(_IDLE, "buffer", None)
        if idle is None or idle.size < space.buffer.size:
            _IDLE.buffer = space.buffer


def _container(lane_bits: int) -> np.dtype[Any]:
    """The narrowest unsigned integer that holds a lane."""
    return next(np.dtype(t) for t in ("u1", "u2", "u4", "u8") if lane_bits <= 8 * np.dtype(t).itemsize)


class _SubBytePacker:
    """Lanes of 1, 2 or 4 bits, a multiple of 8 bits a word -> the word's bytes, MSB first.

    Eight one-byte lanes are read as one little-endian uint64 and folded together three times
    (pairs, fours, eights), leaving lane k in bits [k*lane_bits, (k+1)*lane_bits): a group of
    8*lane_bits bits, no per-lane work. msb_first is lsb_first with the lanes reversed.
    Works in place in its workspace: a block allocates no memory.
    """

    def __init__(self, spec: PackSpec, rows: int, space: _Workspace) -> None:
        count, bits = spec.lanes, spec.lane_bits
        groups = -(-count // 8)
        self.spec = spec
        self.lanes = space.array((rows, groups * 8), np.uint8)
        self.lanes[:, count:] = 0  # lanes past count stay zero
        self.shifted = space.array((rows, groups), np.uint64)
        self.grouped = space.array((rows, groups), np.dtype(f">u{bits}"))
        self.unused = groups * bits - count * bits // 8  # leading bytes of the zero lanes
        self.width = count * bits // 8
        self.folds = []
        for level in range(3):
            chunk = 16 << level  # bits of each chunk after this fold; its used bits are at the bottom
            kept = (1 << (bits << (level + 1))) - 1
            mask = sum(kept << (chunk * k) for k in range(64 // chunk))
            self.folds.append((np.uint64((8 << level) - (bits << level)), np.uint64(mask)))

    def __call__(self, words: np.ndarray) -> np.ndarray:
        rows, count = words.shape
        lanes = self.lanes[:rows]
        into = lanes[:, :count][:, ::-1] if self.spec.lane_order == "msb_first" else lanes[:, :count]
        np.copyto(into, words, casting="unsafe")  # keeps the low bits: two's complement
        np.bitwise_and(lanes, np.uint8((1 << self.spec.lane_bits) - 1), out=lanes)
        folded, shifted = lanes.view("<u8"), self.shifted[:rows]
        for shift, mask in self.folds:
            np.right_shift(folded, shift, out=shifted)
            np.bitwise_or(folded, shifted, out=folded)
            np.bitwise_and(folded, mask, out=folded)
        grouped = self.grouped[:rows]  # most significant group first, each one big-endian
        np.copyto(grouped, folded[:, ::-1], casting="unsafe")
        return grouped.view(np.uint8).reshape(rows, -1)[:, self.unused :]


class _ByteAlignedPacker:
    """Lanes of 8, 16, 24, ... bits -> the word's bytes, MSB first, in place in its workspace.

    Each lane is cast into an integer container and its low bytes kept; the bytes dropped hold
    the sign extension, so no mask is needed. lsb_first casts into little-endian containers and
    reads each row's bytes backwards: that reverses the lanes and makes each big-endian at once.
    """

    def __init__(self, spec: PackSpec, rows: int, space: _Workspace) -> None:
        self.lsb_first = spec.lane_order == "lsb_first"
        self.lanes, container = spec.lanes, _container(spec.lane_bits)
        self.size, self.lane_bytes = container.itemsize, spec.lane_bits // 8
        self.cast = space.array((rows, spec.lanes), container.newbyteorder("<" if self.lsb_first else ">"))
        if self.lane_bytes < self.size:
            self.kept = space.array((rows, spec.lanes * self.lane_bytes), np.uint8)
        self.width = self.lane_bytes * spec.lanes

    def __call__(self, words: np.ndarray) -> np.ndarray:
        rows = words.shape[0]
        cast = self.cast[:rows]
        np.copyto(cast, words, casting="unsafe")  # keeps the low bits: two's complement
        as_bytes = cast.view(np.uint8).reshape(rows * self.lanes, self.size)
        if self.lane_bytes < self.size:
            low = (0, self.lane_bytes) if self.lsb_first else (self.size - self.lane_bytes, self.size)
            kept = self.kept[:rows]
            kept.reshape(-1).view(f"V{self.lane_bytes}")[:] = _records(as_bytes, *low)
            as_bytes = kept
        ordered = as_bytes.reshape(rows, self.width)
        return ordered[:, ::-1] if self.lsb_first else ordered


class _SingleLanePacker:
    """One lane a word, of any width (psums: 13 to 24 bits) -> its container's bytes, MSB first.

    The lane is cast into its container and masked to its width, so the bytes and bits above it
    are zeros; ``width`` is the container's size, and the digits shown are the lane's own.
    """

    def __init__(self, spec: PackSpec, rows: int, space: _Workspace) -> None:
        container = _container(spec.lane_bits)
        self.mask = (
            container.type((1 << spec.lane_bits) - 1) if spec.lane_bits < 8 * container.itemsize else None
        )
        self.cast = space.array((rows, 1), container)
        self.big = space.array((rows, 1), container.newbyteorder(">"))
        self.width = container.itemsize

    def __call__(self, words: np.ndarray) -> np.ndarray:
        rows = words.shape[0]
        cast, big = self.cast[:rows], self.big[:rows]
        np.copyto(cast, words, casting="unsafe")  # keeps the low bits: two's complement
        if self.mask is not None:
            np.bitwise_and(cast, self.mask, out=cast)
        np.copyto(big, cast)  # byte-swapping copy: most significant byte first
        return big.view(np.uint8).reshape(rows, self.width)


# the paths whose lanes are packed in place in a workspace; the odd widths go through _word_bytes
_PACKERS: dict[str, type[_SubBytePacker | _ByteAlignedPacker]] = {
    "sub_byte": _SubBytePacker,
    "byte_aligned": _ByteAlignedPacker,
}


def _word_bytes(words: np.ndarray, spec: PackSpec) -> np.ndarray:
    """(words, lanes) integers -> (words, ceil(word_bits / 8)) bytes, most significant first, for
    lanes the packers do not take (odd widths). Bits above the lanes are zero.
    """
    rows = words.shape[0]
    nbytes = -(-spec.word_bits // 8)
    lanes = _unsigned_lanes(words, spec)
    if pack_path(spec) == "uint64_word":  # odd widths in a word of up to 64 bits: shift them together
        word = np.zeros(rows, dtype=np.uint64)
        for k in range(spec.lanes) if spec.lane_order == "msb_first" else range(spec.lanes - 1, -1, -1):
            word = (word << np.uint64(spec.lane_bits)) | lanes[:, k].astype(np.uint64)
        return word.astype(">u8").view(np.uint8).reshape(rows, 8)[:, 8 - nbytes :]
    return _bit_matrix_bytes(lanes, spec, nbytes)


def _bit_matrix_bytes(lanes: np.ndarray, spec: PackSpec, nbytes: int) -> np.ndarray:
    """Odd lane widths in words over 64 bits: through a bit matrix, a bounded block of rows at a time."""
    rows = lanes.shape[0]
    ordered = lanes if spec.lane_order == "msb_first" else lanes[:, ::-1]
    pad_bits = 8 * nbytes - spec.lanes * spec.lane_bits
    out = np.empty((rows, nbytes), dtype=np.uint8)
    block = max(1, (1 << 22) // (spec.lanes * spec.lane_bits))
    shifts = np.arange(spec.lane_bits - 1, -1, -1, dtype=np.uint64)
    for start in range(0, rows, block):
        part = ordered[start : start + block].astype(np.uint64)
        bits = ((part[:, :, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        matrix = np.zeros((part.shape[0], 8 * nbytes), dtype=np.uint8)
        matrix[:, pad_bits:] = bits.reshape(part.shape[0], -1)
        out[start : start + block] = np.packbits(matrix, axis=1)
    return out


def _records(matrix: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Columns start:stop of a C-contiguous uint8 matrix, one opaque record a row.

    Copying rows as records beats numpy's byte-by-byte strided copy of a column slice by ~20x.
    """
    record = np.dtype(
        {"names": ["d"], "formats": [f"V{stop - start}"], "offsets": [start], "itemsize": matrix.shape[1]}
    )
    return np.asarray(matrix.view(record).reshape(-1)["d"])


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
