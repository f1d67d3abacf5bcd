"""PackSpec, the widths it implies, and the checks that values fit its lanes (BitWidthError)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from qexport.errors import BitWidthError

__all__ = [
    "LaneOrder",
    "PackSpec",
    "check_fits",
    "integer_lanes",
    "pack_path",
    "smallest_signed_bits",
    "to_words",
]

LaneOrder = Literal["lsb_first", "msb_first"]


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
