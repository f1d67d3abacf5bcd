"""Compare a simulator's output with a golden vector set and say which values differ, and how.

The difference is found over the whole file at once (numpy): one boolean array, a value a lane,
says which values differ, and everything the report says is read from it with whole-array
operations, so memory is a constant times the file size however many values differ. The first
``detail`` differing values (``DETAIL`` unless asked) are decoded through the golden manifest into
layer / tile / position / channel / expected / got / xor; every differing value counts towards the
summary: the channels affected and how many values differ in each, the pixels affected (their
count, their range and the first ``detail`` of them), the kernel taps and tiles; and whole-file
patterns are named only when they hold for every differing value: a stuck lane, a swapped lane
order, a word shift, one bit. A dump shorter or longer than the golden file is reported as such.

Which golden file a single dump is compared with (``pick_rule``): the one ``--file`` names, else the
one with the dump's word width and word count, else among several such the one with the dump's file
name, else (no file has both) the one with the dump's file name. Anything else is an InputError
asking for ``--file``; a dump is never compared with a file it was not matched to.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qexport.errors import InputError
from qexport.verify.decode import lanes_from_digits, radix_of, stored_shape, syntax_digits, word_digits
from qexport.writer.manifest import MANIFEST_NAME, FileEntry, Manifest, loads

DETAIL = 20  # differing values listed one by one; all of them are counted and summarised
_CHUNK_VALUES = 1 << 20  # values a step where a pass must not allocate a value's worth per value

_MISMATCH = re.compile(
    r"MISMATCH tile (\d+) otile (\d+) pixel \(n=(\d+), y=(\d+), x=(\d+)\) "
    r"channel (\d+) expected (-?\d+) got (-?\d+)"  # signed decimals where the file is signed
)
_PASS = re.compile(r"^PASS layer ([^\s:]+)(?:: (\d+) output values match)?", re.MULTILINE)
_FAIL = re.compile(r"^FAIL layer ([^\s:]+)(?:: (\d+) of (\d+) output values differ)?", re.MULTILINE)

Entry = tuple[int | str, FileEntry]


@dataclass(frozen=True)
class ValueDiff:
    """One differing value, located in the layer. ``xor`` is the lanes' bit pattern, unsigned:
    signed 4-bit expected -3 (0b1101), got 3 (0b0011) -> xor 0xe."""

    file: str
    word: int
    lane: int
    where: dict[str, int | str]
    expected: int
    got: int
    lane_bits: int

    @property
    def xor(self) -> int:
        return (self.expected ^ self.got) & ((1 << self.lane_bits) - 1)

    def describe(self) -> str:
        place = ", ".join(f"{k}={v}" for k, v in self.where.items())
        return (
            f"{self.file} word {self.word} lane {self.lane}: {place}: expected {self.expected} "
            f"got {self.got} (xor {self.xor:#x})"
        )


_LABELS = {
    "channels": "channels",
    "pixels": "pixels (n, y, x)",
    "out_channels": "output channels",
    "in_channels": "input channels",
    "taps": "kernel taps",
    "tiles": "tiles",
    "otiles": "output tiles",
    "itiles": "input tiles",
}


@dataclass
class FileReport:
    """One golden file against the simulator's words.

    ``compared`` counts the values compared (the words both hold, times lanes); ``diffs`` holds the
    first ``detail`` of the ``differences``; ``affected`` the channels, taps and tiles of all of
    them and the first ``detail`` pixels; ``counts`` how many items each ``affected`` list has in
    all; ``summary`` the pixel range and the differences a channel; ``problem`` a truncated or
    over-long dump or an unfinished log, which fails the file.
    """

    path: str
    layer: int | str
    expected_words: int
    got_words: int
    compared: int = 0
    differences: int = 0
    diffs: list[ValueDiff] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    affected: dict[str, list[Any]] = field(default_factory=dict)
    problem: str | None = None
    matched_by: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    detail: int = DETAIL

    @property
    def identical(self) -> bool:
        return self.compared > 0 and self.differences == 0 and self.problem is None

    @property
    def status(self) -> str:
        if self.identical:
            return f"identical ({self.compared} values)"
        parts = [self.problem] if self.problem else []
        if self.compared or self.differences:
            parts.append(f"{self.differences} value(s) differ of {self.compared} compared")
        elif not parts:
            parts.append("no value compared")
        return "; ".join(parts)

    def affected_lines(self) -> list[str]:
        """The ``affected`` lists as printed: at most ``detail`` items each, the rest counted."""
        lines = []
        for key, items in self.affected.items():
            total = self.counts.get(key, len(items))
            shown = ", ".join(str(tuple(i)) if isinstance(i, list) else str(i) for i in items[: self.detail])
            more = f", ... and {total - min(len(items), self.detail)} more" if total > self.detail else ""
            lines.append(f"{_LABELS.get(key, key)} affected ({total}): {shown}{more}")
        span = self.summary.get("pixel_range")
        if span:
            lines.append("pixel range: " + ", ".join(f"{k} {lo}-{hi}" for k, (lo, hi) in span.items()))
        by_channel = self.summary.get("differences_by_channel")
        if by_channel:
            shown = ", ".join(f"{c}: {n}" for c, n in by_channel[: self.detail])
            more = f", ... and {len(by_channel) - self.detail} more" if len(by_channel) > self.detail else ""
            lines.append(f"differing values a channel: {shown}{more}")
        return lines


@dataclass
class CompareReport:
    files: list[FileReport]

    @property
    def identical(self) -> bool:
        """True only when at least one value was compared and every file matched."""
        return bool(self.files) and all(f.identical for f in self.files)

    @property
    def differences(self) -> int:
        return sum(f.differences for f in self.files)

    @property
    def compared(self) -> int:
        return sum(f.compared for f in self.files)

    def summary(self) -> str:
        """One line for the exit-1 message: what failed in which file."""
        failed = [f"{f.path}: {f.status}" for f in self.files if not f.identical]
        return "; ".join(failed) if failed else f"{self.differences} value(s) differ"

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "differences": self.differences,
            "compared": self.compared,
            "files": [
                {
                    "path": f.path,
                    "layer": f.layer,
                    "matched_by": f.matched_by,
                    "expected_words": f.expected_words,
                    "got_words": f.got_words,
                    "compared": f.compared,
                    "differences": f.differences,
                    "identical": f.identical,
                    "problem": f.problem,
                    "status": f.status,
                    "patterns": f.patterns,
                    "first": [asdict(d) | {"xor": d.xor} for d in f.diffs],
                    "affected_counts": f.counts,
                    "summary": f.summary,
                }
                | f.affected
                for f in self.files
            ],
        }


def _read_manifest(golden_dir: Path) -> Manifest:
    path = golden_dir / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{golden_dir} has no {MANIFEST_NAME}; give the folder `qexport dump` wrote")
    return loads(path.read_text(encoding="utf-8"), str(path))


def _entries(manifest: Manifest) -> list[Entry]:
    return manifest.files()


def _token_header_lines(text: str | bytes) -> int:
    # the course files open with `#…#` tokens; `//` comments ($writememh's addresses) word_digits skips
    data = text.encode("ascii") if isinstance(text, str) else text
    count, start = 0, 0
    while start <= len(data):  # only the leading lines: no Python string a line of a large dump
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        if not data[start:end].lstrip().startswith(b"#"):
            break
        count, start = count + 1, end + 1
    return count


_MARKERS = {"coe": "memory_initialization_vector=", "mif": "CONTENT BEGIN", "h": "_words["}


def _bits(text: str | bytes, entry: FileEntry, where: str) -> np.ndarray:
    """A file's words as (words, digits) digit values; coe / mif / C-header files written by us are
    read past their syntax, any other text (e.g. a simulator's $writememh dump of such a memory) as
    bare words."""
    fmt = entry.format
    marker = _MARKERS.get(fmt)
    marked = marker is not None and (
        marker.encode("ascii") in text if isinstance(text, bytes) else marker in text
    )
    if marked:
        return syntax_digits(text, entry, where)
    return word_digits(text, radix_of(entry), entry.word_bits, _token_header_lines(text), where)


def _lanes(digits: np.ndarray, entry: FileEntry) -> np.ndarray:
    return lanes_from_digits(
        digits, radix_of(entry), entry.lanes, entry.lane_bits, entry.signed, entry.lane_order
    )


def _coordinates(entry: FileEntry, words: np.ndarray, lanes: np.ndarray) -> dict[str, np.ndarray]:
    """Where each (word, lane) lies in the layer, as one array per coordinate (all the same length).

    ``valid`` is False for padding lanes and fill words, whose other coordinates are meaningless.
    """
    shape = list(stored_shape(entry))  # with the zero lanes padding each pixel's channels
    count = int(np.prod(shape))
    flat = words.astype(np.int64) * entry.lanes + lanes
    raw = dict(zip(entry.axes, np.unravel_index(np.minimum(flat, count - 1), shape), strict=True))
    real = raw[entry.axes[-1]] < entry.shape[-1]  # False on a channel-padding lane
    valid = (flat < count) & (words < entry.words) & real
    coords: dict[str, np.ndarray] = {"valid": valid, "flat": flat}
    at = entry.where
    ic0 = at.ic[0] if at.ic is not None else 0
    oc0 = at.oc[0] if at.oc is not None else 0
    if entry.tensor in ("input", "psum", "output") and {"n", "h", "w", "c"} <= raw.keys():
        halo = 1 if entry.padded and at.tile is not None else 0
        offset = oc0 if entry.tensor != "input" and at.oc is not None else ic0
        coords |= {
            "n": raw["n"] + (at.n or 0),
            "y": raw["h"] + (at.y[0] if at.y is not None else 0) - halo,
            "x": raw["w"] + (at.x[0] if at.x is not None else 0) - halo,
            "channel": raw["c"] + offset,
        }
    elif entry.tensor == "weight" and {"oc", "ic", "kh", "kw"} <= raw.keys():
        coords["oc"] = raw["oc"] + oc0
        if at.kij is not None:  # one kernel tap a file: its kh, kw axes are 1 long
            coords["kij"] = np.full_like(flat, at.kij)
        else:
            coords |= {"kh": raw["kh"], "kw": raw["kw"]}
        coords["ic"] = raw["ic"] + ic0
    else:
        coords |= raw
    return coords


def _tiles(entry: FileEntry) -> dict[str, int]:
    """The file's tile, output- and input-channel tile, those it names."""
    at = entry.where
    found = {"tile": at.tile, "otile": at.otile, "itile": at.itile}
    return {key: value for key, value in found.items() if value is not None}


def _where(entry: FileEntry, layer: int | str, coords: dict[str, np.ndarray], i: int) -> dict[str, int | str]:
    where = {"layer": layer}
    if not coords["valid"][i]:
        if int(coords["flat"][i]) >= entry.words * entry.lanes:
            return where | {"fill_word": int(coords["flat"][i]) // entry.lanes}
        return where | {"padding_lane": int(coords["flat"][i])}
    where |= _tiles(entry)
    return where | {k: int(v[i]) for k, v in coords.items() if k not in ("valid", "flat")}


def _unique_rows(*columns: np.ndarray) -> list[list[int]]:
    """The distinct rows of integer columns, sorted (a testbench log's few MISMATCH lines)."""
    if not columns[0].size:
        return []
    found: list[list[int]] = np.unique(np.stack(columns, axis=1), axis=0).tolist()
    return found


def _unique(values: np.ndarray) -> list[int]:
    return [row[0] for row in _unique_rows(values)]


def _first_true(mask: np.ndarray, limit: int) -> np.ndarray:
    """Flat indices of the first ``limit`` True values of ``mask``, found a chunk at a time so that
    no index array as long as all of them is made."""
    flat = mask.reshape(-1)
    found: list[np.ndarray] = []
    left = limit
    for start in range(0, flat.size, _CHUNK_VALUES):  # one step a chunk, not a value
        if left <= 0:
            break
        hits = np.flatnonzero(flat[start : start + _CHUNK_VALUES])[:left] + start
        found.append(hits)
        left -= hits.size
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _stored(entry: FileEntry, differ: np.ndarray) -> np.ndarray | None:
    """Which values of the layer differ, in ``stored_shape`` without the channel-padding lanes;
    None when the file's lanes do not tile its shape (nothing to place them in)."""
    shape = stored_shape(entry)
    if not shape:
        return None
    count = int(np.prod(shape))
    words = min(len(differ), entry.words)  # fill words past ``words`` hold no value of the layer
    marks = differ[:words].reshape(-1)[:count]
    if marks.size < count:
        marks = np.concatenate([marks, np.zeros(count - marks.size, dtype=bool)])
    return marks.reshape(shape)[..., : entry.shape[-1]]


def _hit(stored: np.ndarray, axes: tuple[str, ...], keep: tuple[str, ...]) -> np.ndarray:
    """``stored`` reduced by any() over every axis but ``keep``, those in ``keep``'s order."""
    drop = tuple(i for i, name in enumerate(axes) if name not in keep)
    reduced = stored.any(axis=drop)
    left = [name for name in axes if name in keep]
    return np.transpose(reduced, [left.index(name) for name in keep])


def _affected(
    entry: FileEntry, differ: np.ndarray, detail: int
) -> tuple[dict[str, list[Any]], dict[str, int], dict[str, Any]]:
    """The channels, pixels, taps and tiles of every differing value, their counts and the
    summary (pixel range, differences a channel), all from the ``differ`` mask (words, lanes)."""
    stored = _stored(entry, differ)
    if stored is None or not stored.any():
        return {}, {}, {}
    axes = entry.axes
    at = entry.where
    ic0 = at.ic[0] if at.ic is not None else 0
    oc0 = at.oc[0] if at.oc is not None else 0
    found: dict[str, list[Any]] = {}
    counts: dict[str, int] = {}
    summary: dict[str, Any] = {}
    if entry.tensor in ("input", "psum", "output") and {"n", "h", "w", "c"} <= set(axes):
        halo = 1 if entry.padded and at.tile is not None else 0
        offset = oc0 if entry.tensor != "input" and at.oc is not None else ic0
        origin = np.array(
            [
                at.n or 0,
                (at.y[0] if at.y is not None else 0) - halo,
                (at.x[0] if at.x is not None else 0) - halo,
            ]
        )
        c_axis = axes.index("c")
        per_channel = np.count_nonzero(stored, axis=tuple(i for i in range(len(axes)) if i != c_axis))
        channels = np.flatnonzero(per_channel)
        found["channels"] = (channels + offset).tolist()
        summary["differences_by_channel"] = [[int(c) + offset, int(per_channel[c])] for c in channels]
        pixels = _hit(stored, axes, ("n", "h", "w"))
        first = np.stack(np.unravel_index(_first_true(pixels, detail), pixels.shape), axis=1)
        found["pixels"] = (first + origin).tolist()
        counts["pixels"] = int(np.count_nonzero(pixels))
        summary["pixel_range"] = {}
        for k, key in enumerate("nyx"):  # from the pixels, a channel axis smaller than the values
            hit = np.flatnonzero(pixels.any(axis=tuple(a for a in range(3) if a != k)))
            summary["pixel_range"][key] = [int(hit[0] + origin[k]), int(hit[-1] + origin[k])]
    elif entry.tensor == "weight" and {"oc", "ic", "kh", "kw"} <= set(axes):
        found["out_channels"] = (np.flatnonzero(_hit(stored, axes, ("oc",))) + oc0).tolist()
        found["in_channels"] = (np.flatnonzero(_hit(stored, axes, ("ic",))) + ic0).tolist()
        if at.kij is not None:  # one kernel tap a file: its kh, kw axes are 1 long
            found["taps"] = [at.kij]
        else:
            found["taps"] = np.argwhere(_hit(stored, axes, ("kh", "kw"))).tolist()
    for key, value in _tiles(entry).items():
        found[f"{key}s"] = [value]
    return found, counts, summary


def _span(first: int, last: int) -> str:
    return f"word {first}" if first == last else f"words {first}-{last}"


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal``, refusing at once when the first words already differ (the usual case)."""
    head = min(len(a), len(b), 64)
    return bool(np.array_equal(a[:head], b[:head])) and bool(np.array_equal(a, b))


def _shift_pattern(expected: np.ndarray, got: np.ndarray, differ: np.ndarray) -> str | None:
    """A word shift by 1 or 2 words, named only when it explains differing values: every word
    of the overlap equals the golden word ``shift`` places away, and the only differences it leaves
    are in the words that shift brings in. ``differ``: which values differ (words, lanes)."""
    e_len, g_len = len(expected), len(got)
    rows = min(e_len, g_len)
    total = int(np.count_nonzero(differ))
    for shift in (1, -1, 2, -2):
        s = abs(shift)
        if shift > 0:  # got[i + s] == expected[i]: the output lags
            overlap = min(e_len, g_len - s)
            if overlap < 1 or not _same(got[s : s + overlap], expected[:overlap]):
                continue
            rest = int(np.count_nonzero(differ[:s]))
            explained = total - rest
            lead_in = _span(0, s - 1)
            text = f"from word {s} on, every word equals the golden word {s} before it (the output lags)"
        else:  # got[i] == expected[i + s]: the output leads
            overlap = min(g_len, e_len - s)
            if overlap < 1 or not _same(got[:overlap], expected[s : s + overlap]):
                continue
            explained = int(np.count_nonzero(differ[:overlap]))
            rest = total - explained
            lead_in = _span(overlap, rows - 1)
            text = (
                f"up to word {overlap - 1}, every word equals the golden word {s} after it (the output leads)"
            )
        if explained:
            tail = f"; the other {rest} differing value(s) are in {lead_in}" if rest else ""
            return f"word shift by {shift:+d}: {text}{tail}"
    return None


def _xor_bits(e: np.ndarray, g: np.ndarray, lane_bits: int) -> int:
    """Every bit that differs in some value, OR-ed a chunk of words at a time (equal values add 0)."""
    mask = (1 << lane_bits) - 1 if lane_bits < 63 else -1
    step = max(1, _CHUNK_VALUES // max(1, e.shape[1]))
    bits = 0
    for start in range(0, len(e), step):  # one step a chunk, not a value
        xors = np.bitwise_xor(e[start : start + step], g[start : start + step]) & mask
        bits |= int(np.bitwise_or.reduce(xors, axis=None)) if xors.size else 0
    return bits


def _patterns(expected: np.ndarray, got: np.ndarray, lane_bits: int, differ: np.ndarray) -> list[str]:
    """Whole-file patterns, each true of every differing value (``expected``/``got``: (words, lanes);
    ``differ``: which of the values both hold differ)."""
    found: list[str] = []
    count = int(np.count_nonzero(differ))
    if not count:
        return found
    rows = min(len(expected), len(got))
    e, g = expected[:rows], got[:rows]
    lanes = e.shape[1]
    if lanes > 1 and rows == len(expected) == len(got) and _same(g, e[:, ::-1]):
        found.append("swapped lane order: every word has its lanes reversed (lsb_first vs msb_first)")
    shift = _shift_pattern(expected, got, differ)
    if shift:
        found.append(shift)
    lanes_hit = np.flatnonzero(differ.any(axis=0))
    if count > 1 and _same(g, np.broadcast_to(g[0, 0], g.shape)):
        found.append(f"every value reads {int(g[0, 0])}: a stuck bus or a memory never written")
    elif lanes > 1 and count > 1 and len(lanes_hit) == 1:
        lane = int(lanes_hit[0])
        stuck = bool(np.all(g[:, lane] == g[0, lane]))
        kind = f"stuck at {int(g[0, lane])} in every word" if stuck else "wrong"
        found.append(
            f"lane {lane} {kind}: all {count} differing values are in lane {lane}; the other lanes match"
        )
    if count > 1:
        bits = _xor_bits(e, g, lane_bits)
        if bits > 0 and bits & (bits - 1) == 0:
            found.append(
                f"only bit {bits.bit_length() - 1} differs, in all {count} differing values: "
                "a stuck or crossed wire"
            )
    return found


def _length_problem(expected_words: int, depth: int, got_words: int) -> str | None:
    if got_words in (expected_words, depth):
        return None
    kind = "truncated" if got_words < expected_words else "over-long"
    deeper = f" (or {depth}, the memory's depth)" if depth > expected_words else ""
    return f"{kind}: {got_words} word(s) read, {expected_words} expected{deeper}"


def compare_file(
    golden_dir: Path,
    entry: FileEntry,
    layer: int | str,
    text: str | bytes,
    where: str,
    detail: int = DETAIL,
) -> FileReport:
    """Compare one file's text with the golden file described by ``entry``; the first ``detail``
    differing values in full, all of them in the summary."""
    golden_path = golden_dir / entry.path
    golden_all = _lanes(_bits(golden_path.read_bytes(), entry, str(golden_path)), entry)
    got = _lanes(_bits(text, entry, where), entry)
    words = entry.words
    # a dump of the whole memory (depth words) is compared with the golden fill words too
    expected = golden_all if len(got) == len(golden_all) > words else golden_all[:words]
    rows = min(len(expected), len(got))
    report = FileReport(entry.path, layer, words, len(got), detail=detail)
    report.problem = _length_problem(words, len(golden_all), len(got))
    report.compared = rows * entry.lanes
    differ = expected[:rows] != got[:rows]  # (words, lanes): the one array the report reads
    report.differences = int(np.count_nonzero(differ))
    first = _first_true(differ, detail)
    diff_words, diff_lanes = first // entry.lanes, first % entry.lanes
    coords = _coordinates(entry, diff_words, diff_lanes)
    lane_bits = entry.lane_bits
    report.diffs = [
        ValueDiff(
            entry.path,
            int(diff_words[i]),
            int(diff_lanes[i]),
            _where(entry, layer, coords, i),
            int(expected[diff_words[i], diff_lanes[i]]),
            int(got[diff_words[i], diff_lanes[i]]),
            lane_bits,
        )
        for i in range(len(first))
    ]
    report.affected, report.counts, report.summary = _affected(entry, differ, detail)
    report.patterns = _patterns(expected, got, lane_bits, differ)
    return report


def _listing(entries: list[Entry]) -> str:
    return ", ".join(e.path for _, e in entries)


def _named(golden_dir: Path, entries: list[Entry], file: str) -> Entry:
    """The golden file ``--file`` names: its path in the manifest, its bare name (when only one file
    has it) or its path on disk. Raises InputError listing the set's files otherwise."""
    exact = [(layer, e) for layer, e in entries if e.path == file]
    if exact:
        return exact[0]
    by_name = [(layer, e) for layer, e in entries if Path(e.path).name == file]
    if len(by_name) > 1:
        raise InputError(
            f"--file {file} names {len(by_name)} files of the golden set in {golden_dir}: "
            f"{_listing(by_name)}; give the path as the manifest lists it"
        )
    if by_name:
        return by_name[0]
    target = Path(file).resolve()
    on_disk = [(layer, e) for layer, e in entries if (golden_dir / e.path).resolve() == target]
    if on_disk:
        return on_disk[0]
    raise InputError(
        f"--file {file} is not a file of the golden set in {golden_dir}; its files are: {_listing(entries)}"
    )


def _shape_of(data: str | bytes) -> str:
    text = data.decode("ascii") if isinstance(data, bytes) else data
    lengths = {len(line.strip()) for line in text.split("\n")[_token_header_lines(text) :]}
    lengths.discard(0)
    digits = "/".join(str(n) for n in sorted(lengths)[:4]) or "no"
    return f"{digits}-digit words"


def _pick(golden_dir: Path, entries: list[Entry], text: str | bytes, sim_output: Path) -> tuple[Entry, str]:
    """The golden file a single dump is, by ``pick_rule``; InputError asking for --file otherwise."""
    counts: dict[tuple[Any, ...], int | None] = {}
    fits: list[Entry] = []
    for layer, e in entries:
        if e.format == "npy":
            continue
        syntax = e.format if e.format in _MARKERS else e.format in ("bin", "txt")
        key = (syntax, e.word_bits, e.header_lines, e.depth)
        if key not in counts:
            try:
                counts[key] = len(_bits(text, e, str(sim_output)))
            except InputError:
                counts[key] = None
        n = counts[key]
        if n and n in (e.words, e.depth):
            fits.append((layer, e))
    named = [(layer, e) for layer, e in entries if Path(e.path).name == sim_output.name]
    ask = "name the golden file with --file"
    if len(fits) == 1:
        if named and fits[0] not in named:
            raise InputError(
                f"{sim_output} has the word width and count of {fits[0][1].path} but the name of "
                f"{_listing(named)}; {ask}"
            )
        return fits[0], "word width and count"
    if len(fits) > 1:
        among = [f for f in fits if f in named]
        if len(among) == 1:
            return among[0], "word width and count, then file name"
        widths = sorted({e.word_bits for _, e in fits})
        raise InputError(
            f"{sim_output} could be any of {len(fits)} golden files with its word width and count "
            f"({'/'.join(map(str, widths))}-bit words): {_listing(fits)}; {ask}"
        )
    if len(named) == 1:
        return named[0], "file name"
    if named:
        raise InputError(f"{sim_output} has the name of {len(named)} golden files: {_listing(named)}; {ask}")
    raise InputError(
        f"{sim_output} ({_shape_of(text)}) matches no file of the golden set in {golden_dir} by word "
        f"width and count, nor by name; {ask}, one of: {_listing(entries)}"
    )


def _read_text(path: Path) -> bytes:
    """The file's bytes, refused unless they are ASCII text (kept as bytes: the decoder reads them)."""
    data = path.read_bytes()
    if not data.isascii():
        try:
            data.decode("ascii")
        except UnicodeDecodeError as err:
            raise InputError(f"{path} is not a text file ({err})") from err
    return data


def compare(
    golden_dir: Path, sim_output: Path, file: str | None = None, detail: int = DETAIL
) -> CompareReport:
    """Compare ``sim_output`` (a memory file, a folder of them, or a testbench log) with the golden
    set; each file's first ``detail`` differing values in full, every one in its summary."""
    if detail < 0:
        raise InputError(f"--detail {detail}: give 0 or more differing values to list in full")
    manifest = _read_manifest(golden_dir)
    entries = _entries(manifest)
    named = _named(golden_dir, entries, file) if file is not None else None
    if not sim_output.exists():
        raise InputError(f"{sim_output} does not exist; give the simulator's memory dump or log")
    if sim_output.is_dir():
        chosen = [named] if named else [(la, e) for la, e in entries if (sim_output / e.path).is_file()]
        if named and not (sim_output / named[1].path).is_file():
            raise InputError(f"{sim_output} has no {named[1].path}; give the folder laid out like the set")
        if not chosen:
            raise InputError(f"{sim_output} holds none of the files named in {golden_dir / MANIFEST_NAME}")
        reports = []
        for layer, e in chosen:
            path = sim_output / e.path
            reports.append(compare_file(golden_dir, e, layer, _read_text(path), str(path), detail))
            reports[-1].matched_by = "--file" if named else "path in the folder"
        return CompareReport(reports)
    text = _read_text(sim_output)
    if _is_log(text):
        return _from_log(text.decode("ascii"), manifest, detail)
    (layer, entry), matched_by = (named, "--file") if named else _pick(golden_dir, entries, text, sim_output)
    report = compare_file(golden_dir, entry, layer, text, str(sim_output), detail)
    report.matched_by = matched_by
    return CompareReport([report])


def _is_log(data: bytes) -> bool:
    """A testbench log: plain substring scans first (fast on a large dump), the patterns after.
    Every log line the patterns read holds a "y" ("layer", "y="); a bare memory dump holds none."""
    if b"y" not in data or not any(word in data for word in (b"MISMATCH", b"PASS layer", b"FAIL layer")):
        return False
    text = data.decode("ascii")
    return bool(_MISMATCH.search(text) or _PASS.search(text) or _FAIL.search(text))


def _from_log(text: str, manifest: Manifest, detail: int = DETAIL) -> CompareReport:
    """A `qexport testbench` log: its MISMATCH lines are already decoded, its PASS / FAIL line counts."""
    passed, failed = _PASS.search(text), _FAIL.search(text)
    line = passed or failed
    named = line.group(1) if line else None
    layer: int | str = manifest.layers[0].key
    if named is not None:
        layer = int(named) if named.isdigit() else named
    outputs = [e for la, e in _entries(manifest) if la == layer and e.tensor == "output"]
    lane_bits = outputs[0].lane_bits if outputs else 64
    found = [tuple(int(v) for v in m.groups()) for m in _MISMATCH.finditer(text)]
    report = FileReport("testbench log", layer, 0, 0, matched_by="testbench log", detail=detail)
    report.differences = len(found)
    report.diffs = [
        ValueDiff(
            "testbench log",
            -1,
            -1,
            {"layer": layer, "tile": t, "otile": o, "n": n, "y": y, "x": x, "channel": c},
            expected,
            got,
            lane_bits,
        )
        for t, o, n, y, x, c, expected, got in found[:detail]
    ]
    if found:
        table = np.array(found, dtype=np.int64)
        report.affected = {
            "channels": _unique(table[:, 5]),
            "pixels": _unique_rows(table[:, 2], table[:, 3], table[:, 4]),
            "tiles": _unique(table[:, 0]),
            "otiles": _unique(table[:, 1]),
        }
    if passed and passed.group(2):
        report.compared = int(passed.group(2))
    if failed and failed.group(3):
        report.compared = int(failed.group(3))
        if int(failed.group(2)) != len(found):
            report.differences = max(report.differences, int(failed.group(2)))
            report.problem = (
                f"the FAIL line counts {failed.group(2)} differing values, the log lists {len(found)}"
            )
    if failed and not failed.group(3):
        report.problem = "the log's FAIL line gives no counts"
    elif not line:
        report.problem = "the log has no PASS or FAIL line: the simulation did not finish"
    elif passed and not failed and found:
        report.problem = f"the log says PASS but lists {len(found)} MISMATCH line(s)"
    elif passed and not passed.group(2):
        report.problem = "the log's PASS line gives no count of the values compared"
    return CompareReport([report])
