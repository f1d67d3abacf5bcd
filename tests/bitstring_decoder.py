"""An independent reader of qexport's hex/bin memory files, built on ``bitstring``.

It shares no code with ``qexport.writer.pack`` or ``qexport.verify.decode``: it reads the file the slow,
obvious way (one line, one ``bitstring.Bits``, one slice a lane) straight from the manifest
contract, so a test that gets the same integers from both has checked the packing twice.

The contract, as the manifest describes a file:

* the first ``header_lines`` lines are a header; after it, blank lines and lines starting with
  ``//`` are skipped, and every other line is one word;
* a word is written most significant digit first, zero padded to the full width:
  ``ceil(word_bits / 4)`` hex digits or ``word_bits`` binary digits;
* lanes occupy the low ``lanes * lane_bits`` bits; every bit above them is zero;
* ``lsb_first``: the group's first value sits in bits ``[lane_bits-1:0]``;
  ``msb_first``: it sits in the highest used lane, ``[lanes*lane_bits-1:(lanes-1)*lane_bits]``;
* signed lanes are two's complement.

Anything else is a ``ValueError`` naming the 1-based line of the file.
"""

from __future__ import annotations

from bitstring import Bits

_DIGITS = {"hex": frozenset("0123456789abcdefABCDEF"), "bin": frozenset("01")}
_BITS_A_DIGIT = {"hex": 4, "bin": 1}


def decode_memory_text(
    text: str,
    *,
    radix: str,
    header_lines: int,
    word_bits: int,
    lanes: int,
    lane_bits: int,
    signed: bool,
    lane_order: str,
) -> list[int]:
    """Every lane of every word, in file order (the first value of each group first)."""
    if radix not in _DIGITS:
        raise ValueError(f"radix {radix!r} is not hex or bin")
    if lane_order not in ("lsb_first", "msb_first"):
        raise ValueError(f"lane order {lane_order!r} is not lsb_first or msb_first")
    used = lanes * lane_bits
    if used > word_bits:
        raise ValueError(f"{lanes} lanes x {lane_bits} bits do not fit a {word_bits}-bit word")
    digits = -(-word_bits // _BITS_A_DIGIT[radix])
    values: list[int] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if number <= header_lines or not line or line.startswith("//"):
            continue
        if len(line) != digits:
            raise ValueError(f"line {number}: {len(line)} digits, expected {digits}")
        if not set(line) <= _DIGITS[radix]:
            raise ValueError(f"line {number}: {line!r} is not a {radix} word")
        word = Bits(hex=line) if radix == "hex" else Bits(bin=line)
        above = word[: len(word) - used]  # padding digits' bits and the unused word bits
        if above.count(1):
            raise ValueError(f"line {number}: bits set above the {used} lane bits")
        lane_fields = word[len(word) - used :]
        # slice k (from the left) is the k-th highest lane
        highest_first = [lane_fields[k * lane_bits : (k + 1) * lane_bits] for k in range(lanes)]
        in_order = highest_first if lane_order == "msb_first" else highest_first[::-1]
        values.extend(field.int if signed else field.uint for field in in_order)
    return values
