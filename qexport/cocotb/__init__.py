"""Check a DUT from cocotb against a qexport testbench set (on Icarus or Verilator).

``load_vectors`` reads a set by its manifest (torch-free), ``drive`` takes the DUT through the
handshake ``qexport_ref_core.v`` documents, and the ``Scoreboard`` names each mismatch by tile,
pixel and channel. ``qexport testbench`` renders ``cocotb_tb.py`` (a test calling ``check_layer``)
and ``run_cocotb.sh`` (``SIM=icarus`` or ``SIM=verilator``).

The names that need cocotb (``drive``, ``check_layer``) and its runner (``run_cocotb``) load on
first use, so the vectors and the scoreboard import without it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from qexport.cocotb.scoreboard import Mismatch, Scoreboard
from qexport.cocotb.vectors import InputTile, Memory, OutputTile, VectorSet, load_vectors, pack_words

_LAZY = {
    "check_layer": "qexport.cocotb.driver",
    "drive": "qexport.cocotb.driver",
    "run_cocotb": "qexport.cocotb.runner",
}

__all__ = [
    "InputTile",
    "Memory",
    "Mismatch",
    "OutputTile",
    "Scoreboard",
    "VectorSet",
    "check_layer",
    "drive",
    "load_vectors",
    "pack_words",
    "run_cocotb",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qexport.cocotb' has no attribute {name!r}")
