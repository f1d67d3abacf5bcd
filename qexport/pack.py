"""Integers -> memory words -> text, vectorized (no per-value Python loops)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from qexport.errors import BitWidthError

LaneOrder = Literal["lsb_first", "msb_first"]
Radix = Literal["hex", "bin"]

_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
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


def to_words(values: np.ndarray, spec: PackSpec) -> np.ndarray:
    """Flatten in C order and group into (words, lanes); a short last group gets zero lanes."""
    flat = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    words = -(-flat.size // spec.lanes)
    grouped = np.zeros(words * spec.lanes, dtype=np.int64)
    grouped[: flat.size] = flat
    return grouped.reshape(words, spec.lanes)


def word_bits_msb_first(words: np.ndarray, spec: PackSpec) -> np.ndarray:
    """(words, lanes) integers -> (words, word_bits) 0/1 array, most significant bit first."""
    mask = (1 << spec.lane_bits) - 1
    raw = words.astype(np.int64) & mask  # two's complement of lane_bits for negatives
    shifts = np.arange(spec.lane_bits, dtype=np.int64)
    lane_bits = ((raw[..., None] >> shifts) & 1).astype(np.uint8)  # (words, lanes, lsb..msb)
    if spec.lane_order == "msb_first":
        lane_bits = lane_bits[:, ::-1, :]  # first value in the highest used lane
    lsb_first = lane_bits.reshape(words.shape[0], spec.lanes * spec.lane_bits)
    padded = np.zeros((words.shape[0], spec.word_bits), dtype=np.uint8)
    padded[:, : lsb_first.shape[1]] = lsb_first
    return padded[:, ::-1]


def word_chars(words: np.ndarray, spec: PackSpec, radix: Radix) -> np.ndarray:
    """(words, lanes) -> (words, digits) ASCII codes, MSB first, zero-padded to the full width."""
    bits = word_bits_msb_first(words, spec)
    if radix == "bin":
        return bits + ord("0")
    digits = -(-spec.word_bits // 4)
    full = np.zeros((bits.shape[0], digits * 4), dtype=np.uint8)
    full[:, digits * 4 - spec.word_bits :] = bits
    nibbles = full.reshape(bits.shape[0], digits, 4) @ np.array([8, 4, 2, 1], dtype=np.uint8)
    return np.asarray(_HEX_DIGITS[nibbles])


def format_words(words: np.ndarray, spec: PackSpec, radix: Radix) -> str:
    """(words, lanes) -> one word per line, zero-padded to the full width, newline after each.

    Example (lanes=2, lane_bits=4, signed): [[1, -2]] -> hex ``e1``, bin ``11100001``.
    """
    chars = word_chars(words, spec, radix)
    lines = np.empty((chars.shape[0], chars.shape[1] + 1), dtype=np.uint8)
    lines[:, :-1] = chars
    lines[:, -1] = _NEWLINE
    return lines.tobytes().decode("ascii")
