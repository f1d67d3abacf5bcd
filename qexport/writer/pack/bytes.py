"""(words, lanes) integers -> each word's bytes, most significant first, in a reused workspace.

One packer a lane layout (sub-byte, byte-aligned, single lane; odd widths through a uint64 word or
a bit matrix), each round-trip tested on its own; :func:`qexport.writer.pack.spec.pack_path` says
which one a spec takes. The underscore names are the package's internals, shared with ``text``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from qexport.writer.pack.spec import PackSpec, pack_path


def _unsigned_lanes(words: np.ndarray, spec: PackSpec) -> np.ndarray:
    """(words, lanes) -> each lane's two's-complement bit pattern in the narrowest unsigned type."""
    dtype = _container(spec.lane_bits)
    # an integer cast keeps the low bits, so negatives become two's complement for free
    raw = words.astype(dtype, copy=False)
    if spec.lane_bits < 8 * dtype.itemsize:
        raw = raw & dtype.type((1 << spec.lane_bits) - 1)
    return np.ascontiguousarray(raw)


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
