"""Packing, formatting and decoding throughput, and a full `dump --all` of the demo.

Prints figures; asserts nothing about time (speed targets live here, not in the tests).

    python bench/bench_pack.py
    python bench/bench_pack.py --values 20000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from qexport import formats
from qexport.api import SourceOptions, export
from qexport.decode import lanes_from_bits, parse_words
from qexport.pack import PackSpec, format_words, to_words


def _timed(label: str, count: int, unit: str, func) -> None:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    func()
    seconds = time.perf_counter() - start
    print(f"{label:<34} {seconds:8.3f} s   {count / seconds / 1e6:8.1f} M{unit}/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--values", type=int, default=8_000_000, help="4-bit values to pack")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    values = rng.integers(-7, 8, size=args.values)
    spec = PackSpec(4, 8, True)
    words = to_words(values, spec)
    _timed("to_words (8 x 4-bit lanes)", args.values, "values", lambda: to_words(values, spec))
    for radix in ("hex", "bin"):
        _timed(f"format_words {radix}", args.values, "values", lambda r=radix: format_words(words, spec, r))
    for fmt in ("coe", "mif", "h"):
        _timed(f"formats.body {fmt}", args.values, "values", lambda f=fmt: formats.body(words, spec, f))
    text = format_words(words, spec, "hex")

    def decode() -> None:
        bits = parse_words(text, "hex", spec.word_bits, 0, "bench")
        lanes_from_bits(bits, spec.lanes, spec.lane_bits, spec.signed, spec.lane_order)

    _timed("parse_words + lanes_from_bits hex", args.values, "values", decode)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = export(SourceOptions(), None, Path(tmp) / "all", "hex")
        seconds = time.perf_counter() - start
        files = sum(len(layer["files"]) for layer in result.manifest["layers"])
        size = sum(p.stat().st_size for p in (Path(tmp) / "all").rglob("*") if p.is_file())
        label = "dump --all (demo, hex, 1 image)"
        print(f"{label:<34} {seconds:8.3f} s   {files} files, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
