"""Drive a DUT through the handshake ``qexport_ref_core.v`` documents, as ``tb.sv`` does.

Inputs change just after a falling edge and are taken on the next rising edge; ``start`` is
high for one rising edge; ``done`` is looked at every falling edge; ``out_data`` is sampled one
falling edge after ``out_addr`` was set (a registered read or a combinational one both work).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from qexport.cocotb.scoreboard import Scoreboard
from qexport.cocotb.vectors import Memory, OutputTile, VectorSet, load_vectors
from qexport.errors import CheckFailed

TIMEOUT_CYCLES = 100000  # as tb.sv's parameter
CLOCK_NS = 10  # tb.sv's `always #5 clk = ~clk` under `timescale 1ns


def _write(dut: Any, enable: str, ports: dict[str, int]) -> None:
    getattr(dut, enable).value = 1
    for name, value in ports.items():
        getattr(dut, name).value = value


async def _load(dut: Any, enable: str, address: str, data: str, memory: Memory, **fixed: int) -> None:
    for i, word in enumerate(memory.words):
        await FallingEdge(dut.clk)
        _write(dut, enable, {**fixed, address: i, data: word})
    await FallingEdge(dut.clk)
    getattr(dut, enable).value = 0


async def _pulse(dut: Any, port: str) -> None:
    await FallingEdge(dut.clk)
    getattr(dut, port).value = 1
    await FallingEdge(dut.clk)
    getattr(dut, port).value = 0


async def _run_tile(dut: Any, tile: OutputTile, itile: int, timeout_cycles: int) -> None:
    await _pulse(dut, "start")
    cycles = 0
    while not (dut.done.value.is_resolvable and int(dut.done.value) == 1):
        if cycles >= timeout_cycles:
            raise CheckFailed(
                f"TIMEOUT tile {tile.tile} otile {tile.otile} itile {itile}: done not raised within "
                f"{cycles} cycles of start"
            )
        await FallingEdge(dut.clk)
        cycles += 1


async def _read_out(dut: Any, tile: OutputTile, board: Scoreboard) -> None:
    for pixel in range(len(tile.golden.words)):
        await FallingEdge(dut.clk)
        dut.out_addr.value = pixel
        await FallingEdge(dut.clk)
        value = dut.out_data.value
        for mismatch in board.check(tile, pixel, value.to_unsigned() if value.is_resolvable else None):
            dut._log.error(str(mismatch))


async def drive(dut: Any, vectors: VectorSet, timeout_cycles: int = TIMEOUT_CYCLES) -> Scoreboard:
    """Run every tile of ``vectors`` through ``dut`` (started with its clock) and score its outputs."""
    Clock(dut.clk, CLOCK_NS, unit="ns").start(start_high=False)  # tb.sv's clk starts at 0
    for name in ("act_we", "w_we", "addr_we", "clear", "start", "act_addr", "w_col", "w_kij"):
        getattr(dut, name).value = 0
    for name in ("addr_index", "out_addr", "act_data", "w_data", "addr_data"):
        getattr(dut, name).value = 0
    board = Scoreboard(vectors)
    if vectors.address is not None:
        await _load(dut, "addr_we", "addr_index", "addr_data", vectors.address)
    for tile in vectors.tiles:
        await _pulse(dut, "clear")
        for it in tile.itiles:
            await _load(dut, "act_we", "act_addr", "act_data", it.activation)
            for kij, weights in enumerate(it.weights):
                await _load(dut, "w_we", "w_col", "w_data", weights, w_kij=kij)
            await _run_tile(dut, tile, it.itile, timeout_cycles)
        await _read_out(dut, tile, board)
    return board


async def check_layer(
    dut: Any, folder: Path, layer: str | None = None, timeout_cycles: int = TIMEOUT_CYCLES
) -> str:
    """A whole cocotb test: load the set in ``folder``, drive ``dut``, log and return the PASS line.

    Raises CheckFailed (so cocotb fails the test) with the FAIL line and the decoded mismatches.
    """
    board = await drive(dut, load_vectors(folder, layer), timeout_cycles)
    try:
        line = board.result()
    except CheckFailed as err:
        dut._log.error(str(err).splitlines()[0])
        raise
    dut._log.info(line)
    return line
