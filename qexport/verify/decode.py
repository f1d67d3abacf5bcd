"""Read our memory files back into integers, from the manifest's description alone."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qexport.errors import InputError
from qexport.writer.manifest import FileEntry

_VALUE_OF = np.full(256, 255, dtype=np.uint8)
for _digit, _char in enumerate("0123456789abcdef"):
    _VALUE_OF[ord(_char)] = _digit
    _VALUE_OF[ord(_char.upper())] = _digit


def _data_lines(text: str, header_lines: int) -> tuple[list[int], list[str]]:
    """The data words' 1-based line numbers and stripped text: after the header, without blank
    lines and ``//`` comment lines (indented or not, as $readmemh skips them)."""
    stripped = [line.strip() for line in text.split("\n")[header_lines:]]
    kept = [
        (number, line)
        for number, line in enumerate(stripped, start=header_lines + 1)
        if line and not line.startswith("//")
    ]
    return [number for number, _ in kept], [line for _, line in kept]


def parse_words(text: str, radix: str, word_bits: int, header_lines: int, where: str) -> np.ndarray:
    """Text words -> (words, word_bits) 0/1 array, MSB first. Raises InputError naming the line."""
    numbers, lines = _data_lines(text, header_lines)
    per_char = 1 if radix == "bin" else 4
    width = -(-word_bits // per_char)
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    wrong = np.flatnonzero(lengths != width)
    if wrong.size:
        row = int(wrong[0])
        raise InputError(
            f"{where} line {numbers[row]}: data word {row} is {lengths[row]} digits, expected {width} "
            f"({word_bits}-bit {radix} words)"
        )
    if not lines:
        return np.zeros((0, word_bits), dtype=np.uint8)
    chars = np.frombuffer("".join(lines).encode("ascii", "replace"), dtype=np.uint8)
    values = _VALUE_OF[chars].reshape(len(lines), width)
    limit = 2 if radix == "bin" else 16
    bad = np.argwhere(values >= limit)
    if bad.size:
        row, col = (int(v) for v in bad[0])
        raise InputError(
            f"{where} line {numbers[row]}: data word {row} has a bad {radix} digit {lines[row][col]!r}"
        )
    bits: np.ndarray
    if radix == "bin":
        bits = values
    else:
        bits = ((values[..., None] >> np.array([3, 2, 1, 0], dtype=np.uint8)) & 1).reshape(len(lines), -1)
    extra = bits.shape[1] - word_bits
    over = np.flatnonzero(bits[:, :extra].any(axis=1)) if extra else np.zeros(0, dtype=np.int64)
    if over.size:
        row = int(over[0])
        raise InputError(
            f"{where} line {numbers[row]}: data word {row} ({lines[row]!r}) has bits set above "
            f"bit {word_bits - 1} of a {word_bits}-bit word"
        )
    return bits[:, extra:]


def lanes_from_bits(
    bits: np.ndarray, lanes: int, lane_bits: int, signed: bool, lane_order: str
) -> np.ndarray:
    """(words, word_bits) MSB-first bits -> (words, lanes) integers in file order."""
    lsb_first = bits[:, ::-1][:, : lanes * lane_bits].astype(np.int64)
    per_lane = lsb_first.reshape(bits.shape[0], lanes, lane_bits)
    values = (per_lane << np.arange(lane_bits, dtype=np.int64)).sum(axis=2)
    if signed:
        values = np.where(values >= 1 << (lane_bits - 1), values - (1 << lane_bits), values)
    if lane_order == "msb_first":
        values = values[:, ::-1]
    return np.asarray(values)


def as_entry(entry: FileEntry | Mapping[str, Any], where: str) -> FileEntry:
    """A manifest's file entry; a JSON object (e.g. read by another program) is checked first."""
    return entry if isinstance(entry, FileEntry) else FileEntry.from_json(entry, where)


def plain_words(text: str, entry: FileEntry) -> str:
    """The data words of a coe / mif / C-header file, one bare hex word a line."""
    lines = text.split("\n")[entry.header_lines :][: entry.depth]
    fmt = entry.format
    if fmt == "coe":  # `0a1b,` ... `ffff;`
        words = [line.strip().rstrip(",;") for line in lines]
    elif fmt == "mif":  # `    0a : 0a1b;`
        words = [line.split(":", 1)[-1].strip().rstrip(";") for line in lines]
    else:  # `    0x0a1b,` or `    {0x…, 0x…},` with 32-bit limbs, least significant first
        words = []
        for line in lines:
            limbs = [part.strip().removeprefix("0x") for part in line.strip(" {},").split(",")]
            words.append("".join(reversed(limbs)))
        digits = -(-entry.word_bits // 4)
        words = [w[-digits:] if len(w) > digits and set(w[:-digits]) <= {"0"} else w for w in words]
    return "\n".join(words) + "\n"


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
    if entry.format == "npy":
        array = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
        return np.asarray(array.astype(np.int64).reshape(shape))
    text = path.read_text(encoding="ascii")
    radix, header = ("bin" if entry.format in ("bin", "txt") else "hex"), entry.header_lines
    if entry.format in ("coe", "mif", "h"):
        text, header = plain_words(text, entry), 0
    bits = parse_words(text, radix, entry.word_bits, header, str(path))
    if bits.shape[0] < entry.words:
        raise InputError(f"{path}: {bits.shape[0]} data words, the manifest says {entry.words}")
    values = lanes_from_bits(
        bits[: entry.words], entry.lanes, entry.lane_bits, entry.signed, entry.lane_order
    )
    stored = stored_shape(entry)
    count = int(np.prod(stored))
    if values.size < count:
        raise InputError(
            f"{path}: {entry.words} words of {entry.lanes} lanes hold {values.size} values; "
            f"shape {list(stored)} needs {count}"
        )
    held = values.reshape(-1)[:count].reshape(stored)
    return np.ascontiguousarray(held[..., : shape[-1]]) if stored != shape else held
