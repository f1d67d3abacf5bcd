"""Compare what the DUT reads out with the golden words, decoded to tile / pixel / channel."""

from __future__ import annotations

from dataclasses import dataclass, field

from qexport.cocotb.vectors import OutputTile, VectorSet
from qexport.errors import CheckFailed

_SHOWN = 20  # mismatches named in the failure message; every one is counted


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One output value that differs: ``got`` None is a word with X or Z bits."""

    tile: int
    otile: int
    n: int
    y: int
    x: int
    channel: int
    expected: int
    got: int | None

    def __str__(self) -> str:
        got = "x" if self.got is None else str(self.got)
        return (
            f"MISMATCH tile {self.tile} otile {self.otile} pixel (n={self.n}, y={self.y}, x={self.x}) "
            f"channel {self.channel} expected {self.expected} got {got}"
        )


@dataclass(slots=True)
class Scoreboard:
    """Counts every output value compared and keeps each mismatch, as ``tb.sv`` prints them.

    A golden file of signed lanes compares signed values: a 16-bit lane read as 0xfffd is -3.
    """

    vectors: VectorSet
    checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    def check(self, tile: OutputTile, pixel: int, word: int | None) -> list[Mismatch]:
        """Compare the DUT's ``out_data`` word for output pixel ``orow*TILE + ocol`` of ``tile``."""
        entry = tile.golden.entry
        bits, side = entry.lane_bits, self.vectors.tile
        found = []
        for lane, want in enumerate(tile.golden.values[pixel].tolist()):
            self.checked += 1
            got: int | None = None
            if word is not None:
                got = (word >> (lane * bits)) & ((1 << bits) - 1)
                if entry.signed and got >> (bits - 1):
                    got -= 1 << bits
            if got != want:
                found.append(
                    Mismatch(
                        tile.tile,
                        tile.otile,
                        tile.n,
                        tile.y0 + pixel // side,
                        tile.x0 + pixel % side,
                        tile.otile * self.vectors.cols + lane,
                        int(want),
                        got,
                    )
                )
        self.mismatches += found
        return found

    def result(self) -> str:
        """The PASS line; CheckFailed with the FAIL line and the first mismatches otherwise."""
        layer = self.vectors.layer
        if self.checked == 0:
            raise CheckFailed(f"FAIL layer {layer}: no output value was compared")
        if self.mismatches:
            shown = "\n".join(str(m) for m in self.mismatches[:_SHOWN])
            more = len(self.mismatches) - _SHOWN
            tail = f"\n... and {more} more" if more > 0 else ""
            raise CheckFailed(
                f"FAIL layer {layer}: {len(self.mismatches)} of {self.checked} output values differ\n"
                f"{shown}{tail}"
            )
        return f"PASS layer {layer}: {self.checked} output values match"
