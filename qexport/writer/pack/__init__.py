"""Integers -> memory words -> text, vectorized (no per-value Python loops).

Three steps, a module each: ``spec`` (PackSpec: how integers become one word, and the checks
that they fit), ``bytes`` (a block of words -> their bytes) and ``text`` (bytes -> hex or bin
lines). The public names are all importable from here.
"""

from __future__ import annotations

from qexport.writer.pack.spec import (
    LaneOrder,
    PackSpec,
    check_fits,
    integer_lanes,
    pack_path,
    smallest_signed_bits,
    to_words,
)
from qexport.writer.pack.text import Radix, format_words, line_blocks, line_matrix, word_chars

__all__ = [
    "LaneOrder",
    "PackSpec",
    "Radix",
    "check_fits",
    "format_words",
    "integer_lanes",
    "line_blocks",
    "line_matrix",
    "pack_path",
    "smallest_signed_bits",
    "to_words",
    "word_chars",
]
