"""Memory-file bodies for every text format, built as character matrices (no per-word loops).

The templates own each file's shape (header, declarations); this module hands them the words as
one preformatted block. Formats:

    hex  $readmemh, one word a line        bin  $readmemb, one word a line
    txt  the course core's text: binary words, header tokens
    coe  Xilinx block-memory init           mif  Intel/Quartus memory init
    h    C header: packed words (and the values, for lanes <= 32 bits)
    npy  the integer tensor itself
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from qexport.pack import PackSpec, format_words, word_chars

TextFormat = Literal["hex", "bin", "txt", "coe", "mif", "h"]
# each format's name is also its files' extension
FORMATS = ("hex", "bin", "txt", "coe", "mif", "h", "npy")


def _join(*columns: np.ndarray | bytes, rows: int) -> str:
    """Concatenate per-row character columns (arrays of (rows, k) or constant bytes) into lines."""
    parts = []
    for column in columns:
        if isinstance(column, bytes):
            parts.append(np.broadcast_to(np.frombuffer(column, dtype=np.uint8), (rows, len(column))))
        else:
            parts.append(column)
    return np.concatenate(parts, axis=1).tobytes().decode("ascii") if rows else ""


def padded_to_depth(words: np.ndarray, depth: int, fill: int) -> np.ndarray:
    """Append ``fill`` words (all lanes zero except the fill in lane 0) up to ``depth`` words."""
    if depth <= words.shape[0]:
        return words
    extra = np.zeros((depth - words.shape[0], words.shape[1]), dtype=np.int64)
    extra[:, 0] = fill
    return np.concatenate([words, extra])


def body(words: np.ndarray, spec: PackSpec, fmt: TextFormat) -> str:
    """The data block of a memory file, without its final newline."""
    rows = words.shape[0]
    if fmt in ("hex", "bin", "txt"):
        return format_words(words, spec, "hex" if fmt == "hex" else "bin").removesuffix("\n")
    if fmt == "coe":
        chars = word_chars(words, spec, "hex")
        separators = np.full((rows, 1), ord(","), dtype=np.uint8)
        if rows:
            separators[-1, 0] = ord(";")
        return _join(chars, separators, b"\n", rows=rows).removesuffix("\n")
    if fmt == "mif":
        address_bits = max(1, int(rows - 1).bit_length())
        address_spec = PackSpec(address_bits, 1, False)
        addresses = word_chars(np.arange(rows, dtype=np.int64).reshape(-1, 1), address_spec, "hex")
        return _join(
            b"    ", addresses, b" : ", word_chars(words, spec, "hex"), b";\n", rows=rows
        ).removesuffix("\n")
    # C: words of up to 64 bits as one literal; wider words as 32-bit limbs, least significant first
    limbs = c_limbs(spec.word_bits)
    chars = word_chars(words, spec, "hex")
    if limbs == 1:
        return _join(b"    0x", chars, b",\n", rows=rows).removesuffix(",\n")
    width = chars.shape[1]
    padded = np.full((rows, limbs * 8), ord("0"), dtype=np.uint8)
    padded[:, limbs * 8 - width :] = chars
    columns: list[np.ndarray | bytes] = [b"    {"]
    for limb in range(limbs):
        start = (limbs - 1 - limb) * 8
        columns += [b"0x", padded[:, start : start + 8], b", " if limb < limbs - 1 else b"},\n"]
    return _join(*columns, rows=rows).removesuffix(",\n")


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
