"""Layout profiles: how one accelerator wants its vectors, as TOML data.

Built-in profiles ship in the package (``templates/profiles/*.toml``); users pass their own file
with ``--profile path/to/mine.toml``. Every key is checked: an unknown key or a wrong value is
an error naming it.
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from qexport.errors import InputError
from qexport.layout.declare import REQUIRED, FileSpec, default_files, parse_file_spec

_NAME_KEYS = ("activation", "weight", "address", "output", "output_tiled", "psum")
_SFU_NAMES = {
    "threshold": "threshold_otile{o}",
    "direction": "direction_otile{o}",
    "requant": "requant_tile{s}_otile{o}",
    "multiplier": "multiplier_otile{o}",
    "shift": "shift_otile{o}",
    "bias": "bias_otile{o}",
    "skip": "skip_tile{s}_otile{o}",
    "requant_shortcut": "requant_shortcut_tile{s}_otile{o}",
}
"""The SFU files' [names] (written with ``dump --sfu``); a profile may leave them out for these."""
# the placeholders each [names] pattern is formatted with (systolic.py); every pattern may also
# use {layer}, the layer's folder tag (layer33, layer1.0.conv2); address and output name one file each
_PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "activation": ("a",),
    "weight": ("i", "o", "k"),
    "address": (),
    "output": (),
    "output_tiled": ("s", "o"),
    "psum": ("s", "i", "o"),
    "threshold": ("o",),
    "direction": ("o",),
    "requant": ("s", "o"),
    "multiplier": ("o",),
    "shift": ("o",),
    "bias": ("o",),
    "skip": ("s", "o"),
    "requant_shortcut": ("s", "o"),
}
LAYER_PLACEHOLDER = "layer"
_MEANING = {
    "a": "activation tile, s*itiles + i",
    "i": "input-channel tile",
    "o": "output-channel tile",
    "k": "kernel position, ki*kernel + kj",
    "s": "spatial tile",
    LAYER_PLACEHOLDER: "the layer, layer33 or layer1.0.conv2",
}
_GOLDEN_OPS = ("accumulate", "relu", "requantize")


@dataclass(frozen=True)
class Profile:
    """One accelerator's layout. ``kind = "flat"`` uses lanes/psum_lanes/pad_channels; ``"systolic"``
    the rest. ``pad_channels = false`` lets a flat word straddle pixels and kernel taps.
    """

    name: str
    description: str
    kind: Literal["flat", "systolic"]
    format: str
    lane_order: Literal["lsb_first", "msb_first"] = "lsb_first"
    lanes: int = 8
    psum_lanes: int = 1
    pad_channels: bool = True
    dataflow: Literal["weight_stationary", "output_stationary", "input_stationary"] = "weight_stationary"
    geometry: Literal["padded_grid", "valid"] = "padded_grid"
    """What the core computes: ``padded_grid`` the layer's conv, each tile's G×G grid read from
    the zero-padded map; ``valid`` a valid conv over the bare map, grids of real pixels only and
    golden = the interior outputs (README "Layout profiles": geometry)."""
    rows: int = 8
    cols: int = 8
    act_bits: int = 4
    w_bits: int = 4
    psum_bits: int = 16
    tile: int = 4
    address_bits: int = 11
    word_order: Literal["row_major"] = "row_major"
    header: Literal["tokens", "comment"] = "comment"
    golden: tuple[str, ...] = ("accumulate", "relu")
    kernels: tuple[int, ...] = ()
    """Kernel sizes the core takes (empty: any); the course core fixes 3."""
    strides: tuple[int, ...] = ()
    """Strides the core takes (empty: any); the course core fixes 1."""
    names: dict[str, str] = field(default_factory=dict)
    files: dict[str, FileSpec] = field(default_factory=dict)
    """The systolic file kinds as data (``[files.<kind>]``, see ``layout/declare.py``); a kind a
    profile leaves out takes the weight-stationary default from its ``[names]`` pattern."""
    source: str = ""
    """The TOML text the profile was read from, recorded in manifests."""


_CHOICES: dict[str, tuple[str, ...]] = {
    "kind": ("flat", "systolic"),
    "lane_order": ("lsb_first", "msb_first"),
    "dataflow": ("weight_stationary", "output_stationary", "input_stationary"),
    "geometry": ("padded_grid", "valid"),
    "word_order": ("row_major",),
    "header": ("tokens", "comment"),
    "format": ("hex", "bin", "txt", "coe", "mif", "h", "npy"),
}
_BOOLS = ("pad_channels",)
_RANGES: dict[str, tuple[int, int]] = {
    "lanes": (1, 64),
    "psum_lanes": (1, 64),
    "rows": (1, 256),
    "cols": (1, 256),
    "act_bits": (1, 16),
    "w_bits": (2, 16),
    "psum_bits": (2, 62),
    "tile": (1, 64),
    "address_bits": (1, 32),
}


def builtin_names() -> list[str]:
    folder = resources.files("qexport.templates").joinpath("profiles")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a user's TOML file by path."""
    if name_or_path in builtin_names():
        where = f"built-in profile {name_or_path}"
        text = resources.files("qexport.templates").joinpath("profiles", f"{name_or_path}.toml").read_text()
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise InputError(
                f"--profile {name_or_path}: no built-in profile of that name and no such file; "
                f"built-in profiles are {', '.join(builtin_names())} (see `qexport profiles`)"
            )
        where = f"profile {path}"
        text = path.read_text(encoding="utf-8")
    return parse_profile(text, where)


def parse_profile(text: str, where: str) -> Profile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{where} is not valid TOML: {err}") from err
    known = {f.name for f in fields(Profile)} - {"source"}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "files":
            continue  # read below, once the dataflow is known
        if key not in known:
            raise InputError(f"{where}: unknown key {key!r}; known keys are {', '.join(sorted(known))}")
        values[key] = _checked(where, key, value)
    for key in ("name", "description", "kind", "format"):
        if key not in values:
            raise InputError(f"{where}: missing key {key!r}")
    if values["kind"] == "systolic":
        values["files"] = _files(where, raw.get("files", {}), values)
        if values["format"] == "txt" and values.get("header") == "comment":
            raise InputError(f"{where}: key 'header' must be 'tokens' for format 'txt'")
    elif "files" in raw:
        raise InputError(f'{where}: [files] tables are for kind = "systolic" profiles')
    return Profile(**values, source=text)


def _files(where: str, raw: object, values: dict[str, Any]) -> dict[str, FileSpec]:
    """The ``[files.*]`` tables, each kind left out taken from ``[names]`` (weight-stationary)."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: 'files' must hold [files.<kind>] tables")
    dataflow = values.get("dataflow", "weight_stationary")
    names = values.get("names", {})
    tables = {**default_files(dataflow, names), **raw}
    if not raw:  # a profile of [names] only: every weight-stationary name is needed
        missing = [k for k in _NAME_KEYS if k not in names]
        if missing:
            raise InputError(f"{where}: [names] lacks {', '.join(missing)} (or give [files.<kind>] tables)")
    missing = [k for k in REQUIRED[dataflow] if k not in tables]
    if missing:
        raise InputError(
            f"{where}: the {dataflow} dataflow writes {', '.join(missing)}; add [files.{missing[0]}] "
            f"(or its [names] key)"
        )
    return {kind: parse_file_spec(where, kind, table, dataflow) for kind, table in tables.items()}


def _checked(where: str, key: str, value: Any) -> Any:
    if key in _BOOLS:
        if not isinstance(value, bool):
            raise InputError(f"{where}: key {key!r} = {value!r}; expected true or false")
        return value
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise InputError(f"{where}: key {key!r} = {value!r}; choose one of {', '.join(_CHOICES[key])}")
        return value
    if key in _RANGES:
        low, high = _RANGES[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InputError(f"{where}: key {key!r} = {value!r}; expected an integer in {low}..{high}")
        return value
    if key == "golden":
        if (
            not isinstance(value, list)
            or "accumulate" not in value
            or any(v not in _GOLDEN_OPS for v in value)
        ):
            raise InputError(
                f"{where}: key 'golden' = {value!r}; a list of {', '.join(_GOLDEN_OPS)} that includes "
                "'accumulate'"
            )
        return tuple(value)
    if key in ("kernels", "strides"):
        if (
            not isinstance(value, list)
            or not value
            or any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 15 for v in value)
        ):
            raise InputError(
                f"{where}: key {key!r} = {value!r}; a non-empty list of integers in 1..15 (leave the key "
                "out to take any)"
            )
        return tuple(value)
    if key == "names":
        if not isinstance(value, dict) or any(k not in _PLACEHOLDERS for k in value):
            raise InputError(f"{where}: [names] may hold only {', '.join(_PLACEHOLDERS)}")
        if not all(isinstance(v, str) and v and "/" not in v for v in value.values()):
            raise InputError(f"{where}: [names] values must be file name patterns without '/'")
        for name, pattern in value.items():
            _check_pattern(where, name, pattern)
        return dict(value)
    if not isinstance(value, str):
        raise InputError(f"{where}: key {key!r} must be a string")
    return value


def name_pattern(p: Profile, key: str) -> str:
    """The profile's [names] pattern for ``key``; the SFU files' default when the profile has none."""
    return p.names.get(key) or _SFU_NAMES[key]


def _valid_placeholders(key: str) -> str:
    valid = (*_PLACEHOLDERS[key], LAYER_PLACEHOLDER)
    if not _PLACEHOLDERS[key]:
        only = f"{{{LAYER_PLACEHOLDER}}} ({_MEANING[LAYER_PLACEHOLDER]})"
        return f"{key} names a single file and takes only {only}"
    shown = ", ".join(f"{{{p}}} ({_MEANING[p]})" for p in valid)
    return f"valid placeholders for {key} are {shown}"


def _check_pattern(where: str, key: str, pattern: str) -> None:
    """Refuse a [names] pattern that str.format would reject, or that names an unknown placeholder.

    ``weight = "w_{i}_{o}_k{k:02d}"`` is fine; ``"w_{b}"``, ``"w_{"``, ``"w_{}"``, ``"w_{i!x}"`` are not.
    """
    what = f"{where}: [names] {key} = {pattern!r}"
    valid, fix = (*_PLACEHOLDERS[key], LAYER_PLACEHOLDER), _valid_placeholders(key)
    try:
        fields = [(name, conv) for _, name, _, conv in string.Formatter().parse(pattern) if name is not None]
    except ValueError as err:
        raise InputError(
            f"{what} is not a valid pattern ({err}); write a placeholder as {{name}} and a literal "
            f"brace as {{{{ or }}}}; {fix}"
        ) from err
    for name, conversion in fields:
        if name == "" or name.isdigit():
            raise InputError(f"{what} uses a positional placeholder {{{name}}}; name it: {fix}")
        if name not in valid:
            raise InputError(f"{what} uses unknown placeholder {{{name}}}; {fix}")
        if conversion is not None:
            raise InputError(
                f"{what}: placeholder {{{name}!{conversion}}} has a conversion; write {{{name}}} "
                f"(a format spec such as {{{name}:02d}} is fine)"
            )
    try:
        pattern.format(**dict.fromkeys(_PLACEHOLDERS[key], 0), **{LAYER_PLACEHOLDER: "layer0"})
    except KeyError as err:  # a placeholder nested in a format spec: {a:{b}}
        raise InputError(f"{what} uses unknown placeholder {{{err.args[0]}}}; {fix}") from err
    except (ValueError, IndexError) as err:
        raise InputError(f"{what} cannot be formatted with integer placeholders ({err}); {fix}") from err
