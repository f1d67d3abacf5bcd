"""Per-layer activation bits: the bits-config JSON (read_bits_config) and applying it to a model."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path

from qexport.errors import InputError
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.vgg import Arch, VGGQuant, resolve_layer


def apply_act_bits(model: VGGQuant, act_bits: Mapping[int, int]) -> None:
    """Set each named layer's activation bits (features index -> bits); the rest keep theirs."""
    for index, bits in act_bits.items():
        module = model.features[index] if 0 <= index < len(model.features) else None
        if not isinstance(module, QuantConv2d):
            raise InputError(
                f"bits config names features[{index}], which is not a quantized conv of "
                f"{model.arch.name}; its convs are {', '.join(map(str, model.arch.qconv_indices()))}"
            )
        if not 1 <= bits <= 16:
            raise InputError(f"bits config gives features[{index}] {bits} activation bits; use 1..16")
        module.act_bit = bits


ACT_BITS_KEY = "act_bits"
CONFIG_ACT_BITS = range(1, 9)  # a bits config gives each named layer 1..8 activation bits


def read_bits_config(path: Path, arch: Arch) -> dict[int, int]:
    """A bits-config JSON: ``{"act_bits": {"<layer>": bits, ...}}`` or a flat ``{"<layer>": bits}``.

    Keys are features indices (``"30"``, ``"features[30]"``) or conv numbers (``"conv 9"``); a
    width is a JSON integer 1..8. Returns ``{features index: bits}``.
    """
    table = _bits_table(path, _read_json(path))
    widths: dict[int, int] = {}
    named: dict[int, str] = {}
    low, high = CONFIG_ACT_BITS[0], CONFIG_ACT_BITS[-1]
    for key, value in table.items():
        try:
            layer = resolve_layer(arch, key)
        except InputError as err:
            raise InputError(f"--bits-config {path}: {err}") from err
        if isinstance(value, bool) or not isinstance(value, int):
            raise _width_error(path, key, layer, f"{ACT_BITS_KEY} {_json_value(value)} is not an integer")
        if value not in CONFIG_ACT_BITS:
            raise _width_error(path, key, layer, f"{ACT_BITS_KEY} {value} is outside {low}..{high}")
        if layer in named:
            raise InputError(
                f"--bits-config {path}: {named[layer]!r} and {key!r} both name features[{layer}]; "
                "give each layer once"
            )
        named[layer] = key
        widths[layer] = value
    return widths


def _width_error(path: Path, key: str, layer: int, wrong: str) -> InputError:
    low, high = CONFIG_ACT_BITS[0], CONFIG_ACT_BITS[-1]
    return InputError(
        f"--bits-config {path}: layer {key!r} (features[{layer}]): {wrong}; give a JSON integer "
        f'{low}..{high}, e.g. {{"{ACT_BITS_KEY}": {{"{key}": 2}}}}'
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


def _bits_table(path: Path, raw: object) -> dict[str, object]:
    """The ``{layer: bits}`` table: ``raw["act_bits"]``, or ``raw`` itself when every key names a layer."""
    example = f'{{"{ACT_BITS_KEY}": {{"30": 2, "conv 10": 3}}}}'
    if not isinstance(raw, dict):
        raise InputError(f"--bits-config {path}: expected a JSON object, {example}")
    if ACT_BITS_KEY in raw:
        unknown = [k for k in raw if k != ACT_BITS_KEY]
        if unknown:
            raise InputError(
                f"--bits-config {path}: unknown top-level key {unknown[0]!r}; the only one is "
                f"{ACT_BITS_KEY!r}, e.g. {example}"
            )
        table = raw[ACT_BITS_KEY]
        if not isinstance(table, dict):
            raise InputError(
                f"--bits-config {path}: {ACT_BITS_KEY!r} holds {_json_value(table)}; expected an object "
                f"of layer -> bits, e.g. {example}"
            )
        return table
    for key in raw:  # the flat form: every key must name a layer
        if not _LAYER_NAME.fullmatch(key.strip().lower().replace(" ", "")):
            close = difflib.get_close_matches(key.lower(), [ACT_BITS_KEY], n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(
                f"--bits-config {path}: unknown top-level key {key!r}; {hint}The file is "
                f'{example}, or a flat object whose keys are layers (a features index like "33" '
                'or a conv number like "conv 9")'
            )
    return raw


_LAYER_NAME = re.compile(r"conv[+-]?\d+|(features\[)?[+-]?\d+\]?")


def _json_value(value: object) -> str:
    """A JSON value as the user wrote it, and its kind: ``"2" (a string)``, ``2.0 (a float)``."""
    kinds = {bool: "true/false", str: "a string", float: "a float", list: "a list", dict: "an object"}
    shown = json.dumps(value)
    shown = shown if len(shown) <= 30 else shown[:30] + "…"
    kind = kinds.get(type(value))
    return f"{shown} ({kind})" if kind else shown
