"""Per-layer bits: the bits-config JSON (read_bits_config) and applying it to a model (apply_bits)."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from qexport.errors import InputError
from qexport.frontend.capture import ConvBits, module_bits
from qexport.frontend.models.network import ConvTable, quantized_convs
from qexport.frontend.models.quant import QuantConv2d


@dataclass(frozen=True)
class BitsConfig:
    """A bits config, resolved against a model: module path -> width, for activations and weights."""

    act: dict[str, int] = field(default_factory=dict)
    w: dict[str, int] = field(default_factory=dict)


def apply_bits(model: nn.Module, config: BitsConfig, bits: dict[str, ConvBits]) -> None:
    """Give each named layer its configured widths (the rest keep theirs), recording the source.

    Our ``QuantConv2d`` computes with the new widths (a new ``w_bit`` requantizes ``weight``);
    the user's own module quantizes as its code says, so a width it does not have is refused.
    """
    modules = dict(quantized_convs(model))
    for name in {*config.act, *config.w}:
        module = modules[name]
        own = bits.get(name) or module_bits(module)
        act_bit = config.act.get(name, own.act_bit)
        w_bit = config.w.get(name, own.w_bit)
        if not isinstance(module, QuantConv2d):
            if (act_bit, w_bit) != (own.act_bit, own.w_bit):
                raise InputError(
                    f"bits config gives layer {name} {act_bit}-bit activations and {w_bit}-bit "
                    f"weights, but your model code's {type(module).__name__} quantizes with "
                    f"{own.act_bit} and {own.w_bit}; change the widths in your model code"
                )
            continue
        module.act_bit = act_bit
        if w_bit != module.w_bit:
            module.w_bit = w_bit
            module.stored_weight_q = False  # the stored weight_q is for the old width
        bits[name] = ConvBits(
            w_bit,
            act_bit,
            "bits config" if name in config.w else own.w_source,
            "bits config" if name in config.act else own.act_source,
        )


ACT_BITS_KEY = "act_bits"
W_BITS_KEY = "w_bits"
CONFIG_KEYS = (ACT_BITS_KEY, W_BITS_KEY)
CONFIG_ACT_BITS = range(1, 9)  # a bits config gives each named layer 1..8 activation bits
CONFIG_W_BITS = range(2, 9)  # and 2..8 weight bits (1 bit has no symmetric grid)
ALL_LAYERS = "*"


def read_bits_config(path: Path, table: ConvTable) -> BitsConfig:
    """A bits-config JSON: ``{"act_bits": {"<layer>": bits}, "w_bits": {...}}`` or a flat
    ``{"<layer>": bits}`` (activation bits).

    Layers are module paths (``layer1.0.conv2``), features indices (``"30"``, ``"features[30]"``),
    conv numbers (``"conv 9"``) or ``"*"`` (every layer; named layers override it). Widths are JSON
    integers: 1..8 activation bits, 2..8 weight bits.
    """
    raw = _read_json(path)
    tables = _bits_tables(path, raw)
    return BitsConfig(
        act=_widths(path, table, tables.get(ACT_BITS_KEY, {}), ACT_BITS_KEY, CONFIG_ACT_BITS),
        w=_widths(path, table, tables.get(W_BITS_KEY, {}), W_BITS_KEY, CONFIG_W_BITS),
    )


def _widths(
    path: Path, table: ConvTable, entries: dict[str, object], what: str, allowed: range
) -> dict[str, int]:
    widths: dict[str, int] = {}
    named: dict[str, str] = {}
    low, high = allowed[0], allowed[-1]
    every: int | None = None
    for key, value in entries.items():
        if key.strip() == ALL_LAYERS:
            name, shown = ALL_LAYERS, "every layer"
        else:
            try:
                ref = table.resolve(key, what="layer")
            except InputError as err:
                raise InputError(f"--bits-config {path}: {err}") from err
            name = ref.name
            shown = f"features[{ref.index}]" if ref.index is not None else ref.name
        if isinstance(value, bool) or not isinstance(value, int):
            raise _width_error(
                path, key, shown, f"{what} {_json_value(value)} is not an integer", what, allowed
            )
        if value not in allowed:
            raise _width_error(path, key, shown, f"{what} {value} is outside {low}..{high}", what, allowed)
        if name in named:
            raise InputError(
                f"--bits-config {path}: {named[name]!r} and {key!r} both name {shown}; give each layer once"
            )
        named[name] = key
        if name == ALL_LAYERS:
            every = value
        else:
            widths[name] = value
    if every is not None:
        widths = {name: widths.get(name, every) for name in table.names()}
    return widths


def _width_error(path: Path, key: str, shown: str, wrong: str, what: str, allowed: range) -> InputError:
    low, high = allowed[0], allowed[-1]
    return InputError(
        f"--bits-config {path}: layer {key!r} ({shown}): {wrong}; give a JSON integer "
        f'{low}..{high}, e.g. {{"{what}": {{"{key}": 2}}}}'
    )


def _read_json(path: Path) -> object:
    if not path.exists():
        raise InputError(
            f"--bits-config {path} does not exist; check the path (`qexport search` writes "
            "qexport-out/search/bits_config.json)"
        )
    if path.is_dir():
        raise InputError(
            f"--bits-config {path} is a folder; give the JSON file, e.g. {path}/bits_config.json"
        )

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise InputError(f"--bits-config {path}: key {twice[0]!r} is given twice; give each key once")
        return dict(pairs)

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"--bits-config {path} is not UTF-8 text; give a JSON file") from err
    except OSError as err:
        raise InputError(f"--bits-config {path} cannot be read ({err.strerror or err})") from err
    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as err:
        raise InputError(
            f"--bits-config {path} is not valid JSON (line {err.lineno} column {err.colno}: {err.msg}); "
            f'write it as {{"{ACT_BITS_KEY}": {{"33": 2}}}}'
        ) from err


def _bits_tables(path: Path, raw: object) -> dict[str, dict[str, object]]:
    """``{"act_bits": {layer: bits}, "w_bits": {...}}``; a flat object whose every key names a layer
    is the ``act_bits`` table."""
    example = f'{{"{ACT_BITS_KEY}": {{"30": 2, "conv 10": 3}}, "{W_BITS_KEY}": {{"*": 4}}}}'
    if not isinstance(raw, dict):
        raise InputError(f"--bits-config {path}: expected a JSON object, {example}")
    if any(key in raw for key in CONFIG_KEYS):
        unknown = [k for k in raw if k not in CONFIG_KEYS]
        if unknown:
            raise InputError(
                f"--bits-config {path}: unknown top-level key {unknown[0]!r}; the only ones are "
                f"{ACT_BITS_KEY!r} and {W_BITS_KEY!r}, e.g. {example}"
            )
        tables: dict[str, dict[str, object]] = {}
        for key in CONFIG_KEYS:
            if key not in raw:
                continue
            table = raw[key]
            if not isinstance(table, dict):
                raise InputError(
                    f"--bits-config {path}: {key!r} holds {_json_value(table)}; expected an object "
                    f"of layer -> bits, e.g. {example}"
                )
            tables[key] = table
        return tables
    for key in raw:  # the flat form: every key must name a layer
        if not _LAYER_NAME.fullmatch(key.strip().lower().replace(" ", "")):
            close = difflib.get_close_matches(key.lower(), list(CONFIG_KEYS), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(
                f"--bits-config {path}: unknown top-level key {key!r}; {hint}The file is "
                f"{example}, or a flat object whose keys are layers (a module path like "
                '"layer1.0.conv2", a features index like "33" or a conv number like "conv 9")'
            )
    return {ACT_BITS_KEY: raw}


_LAYER_NAME = re.compile(r"conv[+-]?\d+|(features\[)?[+-]?\d+\]?|\*|[a-z_][\w]*(\.[\w]+)+")


def _json_value(value: object) -> str:
    """A JSON value as the user wrote it, and its kind: ``"2" (a string)``, ``2.0 (a float)``."""
    kinds = {bool: "true/false", str: "a string", float: "a float", list: "a list", dict: "an object"}
    shown = json.dumps(value)
    shown = shown if len(shown) <= 30 else shown[:30] + "…"
    kind = kinds.get(type(value))
    return f"{shown} ({kind})" if kind else shown
