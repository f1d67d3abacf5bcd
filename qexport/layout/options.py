"""The user's layout choices, apart from the layout itself so a manifest's recipe can hold them
without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from qexport.writer.pack import LaneOrder

InputSign = Literal["auto", "unsigned", "signed"]


@dataclass(frozen=True, slots=True)
class LayoutOptions:
    """User choices for the flat layout (CLI flags of the same names).

    ``lanes``, ``psum_lanes`` and ``lane_order`` left None take the profile's values.
    """

    lanes: int | None = None
    psum_lanes: int | None = None
    lane_order: LaneOrder | None = None
    psum_bits: int | None = None
    input_sign: InputSign = "auto"
    pad_input: bool = False
