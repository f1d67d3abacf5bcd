"""Compare a simulator's output with a golden vector set and say which values differ, and how.

Every differing word is decoded through the golden manifest into layer / tile / position /
channel / expected / got / xor, and whole-file patterns are named: a stuck lane, a swapped lane
order, a word shift, a truncated file.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qexport.decode import lanes_from_bits, parse_words, plain_words, stored_shape
from qexport.errors import InputError
from qexport.manifest import MANIFEST_NAME, loads

_MISMATCH = re.compile(
    r"MISMATCH tile (\d+) otile (\d+) pixel \(n=(\d+), y=(\d+), x=(\d+)\) "
    r"channel (\d+) expected (\d+) got (\d+)"
)
_PASS = re.compile(r"^PASS layer (\d+)", re.MULTILINE)
_FAIL = re.compile(r"^FAIL layer (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class ValueDiff:
    """One differing value, located in the layer."""

    file: str
    word: int
    lane: int
    where: dict[str, int]
    expected: int
    got: int

    @property
    def xor(self) -> int:
        return self.expected ^ self.got

    def describe(self) -> str:
        place = ", ".join(f"{k}={v}" for k, v in self.where.items())
        return (
            f"{self.file} word {self.word} lane {self.lane}: {place}: expected {self.expected} "
            f"got {self.got} (xor {self.xor:#x})"
        )


@dataclass
class FileReport:
    path: str
    layer: int
    expected_words: int
    got_words: int
    diffs: list[ValueDiff] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)


@dataclass
class CompareReport:
    files: list[FileReport]

    @property
    def identical(self) -> bool:
        return all(not f.diffs and not f.patterns for f in self.files)

    @property
    def differences(self) -> int:
        return sum(len(f.diffs) for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "differences": self.differences,
            "files": [
                {
                    "path": f.path,
                    "layer": f.layer,
                    "expected_words": f.expected_words,
                    "got_words": f.got_words,
                    "patterns": f.patterns,
                    "differences": len(f.diffs),
                    "first": [asdict(d) | {"xor": d.xor} for d in f.diffs[:20]],
                    "channels": sorted({d.where["channel"] for d in f.diffs if "channel" in d.where}),
                    "tiles": sorted({d.where["tile"] for d in f.diffs if "tile" in d.where}),
                }
                for f in self.files
            ],
        }


def _read_manifest(golden_dir: Path) -> dict[str, Any]:
    path = golden_dir / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{golden_dir} has no {MANIFEST_NAME}; give the folder `qexport dump` wrote")
    return loads(path.read_text(encoding="utf-8"), str(path))


def _entries(manifest: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    return [(layer["index"], f) for layer in manifest["layers"] for f in layer["files"]]


def _token_header_lines(text: str) -> int:
    # the course files open with `#…#` tokens; `//` comments ($writememh's addresses) parse_words skips
    count = 0
    for line in text.split("\n"):
        if not line.lstrip().startswith("#"):
            break
        count += 1
    return count


_MARKERS = {"coe": "memory_initialization_vector=", "mif": "CONTENT BEGIN", "h": "_words["}


def _values(text: str, entry: dict[str, Any], where: str) -> np.ndarray:
    """A file's lanes; coe / mif / C-header files written by us are read past their syntax, any
    other text (e.g. a simulator's $writememh dump of such a memory) as bare words."""
    fmt = entry["format"]
    radix = "bin" if fmt in ("bin", "txt") else "hex"
    if fmt in _MARKERS and _MARKERS[fmt] in text:
        bits = parse_words(plain_words(text, entry), radix, int(entry["word_bits"]), 0, where)
    else:
        bits = parse_words(text, radix, int(entry["word_bits"]), _token_header_lines(text), where)
    return lanes_from_bits(
        bits, int(entry["lanes"]), int(entry["lane_bits"]), bool(entry["signed"]), entry["lane_order"]
    )


def _locate(entry: dict[str, Any], layer: int, word: int, lane: int) -> dict[str, int]:
    flat = word * int(entry["lanes"]) + lane
    shape = stored_shape(entry)  # with the zero lanes that pad each pixel's channels, if any
    where: dict[str, int] = {"layer": layer}
    if flat >= int(np.prod(shape)):
        return where | {"padding_lane": flat}
    coords = dict(zip(entry["axes"], (int(c) for c in np.unravel_index(flat, shape)), strict=True))
    if coords[entry["axes"][-1]] >= int(entry["shape"][-1]):
        return where | {"padding_lane": flat}
    if "tile" in entry:
        where["tile"] = int(entry["tile"])
    if "otile" in entry:
        where["otile"] = int(entry["otile"])
    if entry["tensor"] in ("input", "psum", "output") and {"h", "w", "c"} <= coords.keys():
        y0 = entry["y"][0] if "y" in entry else 0
        x0 = entry["x"][0] if "x" in entry else 0
        halo = 1 if entry.get("padded") and "tile" in entry else 0
        where |= {
            "n": coords["n"] + int(entry.get("n", 0)),
            "y": coords["h"] + y0 - halo,
            "x": coords["w"] + x0 - halo,
        }
        offset = entry["oc"][0] if entry["tensor"] != "input" and "oc" in entry else entry.get("ic", [0])[0]
        where["channel"] = coords["c"] + int(offset)
    else:
        where |= coords
    return where


def _patterns(expected: np.ndarray, got: np.ndarray, diffs: list[ValueDiff]) -> list[str]:
    found = []
    rows = min(len(expected), len(got))
    if len(got) < len(expected):
        found.append(f"truncated: {len(got)} of {len(expected)} words")
    elif len(got) > len(expected):
        found.append(f"extra words: {len(got)}, expected {len(expected)}")
    e, g = expected[:rows], got[:rows]
    if rows and diffs:
        if e.shape[1] > 1 and np.array_equal(g, e[:, ::-1]):
            found.append("swapped lane order: every word has its lanes reversed (lsb_first vs msb_first)")
        for shift in (1, -1, 2, -2):
            a, b = (g[shift:], e[:-shift]) if shift > 0 else (g[:shift], e[-shift:])
            if len(a) and np.array_equal(a, b):
                found.append(f"word shift: the output is the golden set shifted by {shift:+d} word(s)")
                break
        lanes = {d.lane for d in diffs}
        if len(lanes) == 1 and len(diffs) > 1:
            lane = lanes.pop()
            values = {d.got for d in diffs}
            kind = f"stuck at {values.pop()}" if len(values) == 1 else "wrong"
            found.append(f"lane {lane} {kind} in {len(diffs)} words; the other lanes match")
        bits = np.bitwise_or.reduce(np.array([d.xor for d in diffs], dtype=np.int64))
        if bin(int(bits)).count("1") == 1 and len(diffs) > 1:
            found.append(f"only bit {int(bits).bit_length() - 1} differs: a stuck or crossed wire")
    return found


def compare_file(golden_dir: Path, entry: dict[str, Any], layer: int, text: str, where: str) -> FileReport:
    """Compare one file's text with the golden file described by ``entry``."""
    golden_text = (golden_dir / entry["path"]).read_text(encoding="ascii")
    expected = _values(golden_text, entry, str(golden_dir / entry["path"]))[: int(entry["words"])]
    got = _values(text, entry, where)[: max(int(entry["words"]), 0) + 2]
    report = FileReport(entry["path"], layer, len(expected), len(got))
    rows = min(len(expected), len(got))
    word_idx, lane_idx = np.nonzero(expected[:rows] != got[:rows])
    report.diffs = [
        ValueDiff(
            entry["path"],
            int(w),
            int(ln),
            _locate(entry, layer, int(w), int(ln)),
            int(expected[w, ln]),
            int(got[w, ln]),
        )
        for w, ln in zip(word_idx, lane_idx, strict=True)
    ]
    report.patterns = _patterns(expected, got, report.diffs)
    return report


def compare(golden_dir: Path, sim_output: Path, file: str | None = None) -> CompareReport:
    """Compare ``sim_output`` (a memory file, a folder of them, or a testbench log) with the golden set."""
    manifest = _read_manifest(golden_dir)
    entries = _entries(manifest)
    if not sim_output.exists():
        raise InputError(f"{sim_output} does not exist; give the simulator's memory dump or log")
    if sim_output.is_dir():
        reports = [
            compare_file(
                golden_dir,
                e,
                layer,
                (sim_output / e["path"]).read_text(encoding="ascii"),
                str(sim_output / e["path"]),
            )
            for layer, e in entries
            if (sim_output / e["path"]).is_file()
        ]
        if not reports:
            raise InputError(f"{sim_output} holds none of the files named in {golden_dir / MANIFEST_NAME}")
        return CompareReport(reports)
    try:
        text = sim_output.read_text(encoding="ascii")
    except UnicodeDecodeError as err:
        raise InputError(f"{sim_output} is not a text file ({err})") from err
    if _MISMATCH.search(text) or _PASS.search(text) or _FAIL.search(text):
        return _from_log(text, manifest)
    matches = [
        (layer, e) for layer, e in entries if (file or sim_output.name) in (e["path"], Path(e["path"]).name)
    ]
    if not matches:
        outputs = [(layer, e) for layer, e in entries if e["tensor"] == "output"]
        if len(outputs) != 1:
            raise InputError(
                f"{sim_output.name} matches no file of the golden set; name it with --file, one of "
                + ", ".join(e["path"] for _, e in entries[:8])
            )
        matches = outputs
    layer, entry = matches[0]
    return CompareReport([compare_file(golden_dir, entry, layer, text, str(sim_output))])


def _from_log(text: str, manifest: dict[str, Any]) -> CompareReport:
    """A `qexport testbench` log: its MISMATCH lines are already decoded."""
    layer = manifest["layers"][0]["index"]
    report = FileReport("testbench log", layer, 0, 0)
    for match in _MISMATCH.finditer(text):
        tile, otile, n, y, x, channel, expected, got = (int(v) for v in match.groups())
        where = {"layer": layer, "tile": tile, "otile": otile, "n": n, "y": y, "x": x, "channel": channel}
        report.diffs.append(ValueDiff("testbench log", -1, -1, where, expected, got))
    if not report.diffs and not _PASS.search(text):
        report.patterns.append("the log has no PASS line: the simulation did not finish")
    return CompareReport([report])
