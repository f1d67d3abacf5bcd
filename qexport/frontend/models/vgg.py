"""Model architectures: the course's VGG16 variants, and VGG-style models inferred from a state dict.

An architecture is data (:class:`Arch`), so a checkpoint can be matched against every known one and
a student's own variant can be rebuilt from its state dict alone.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from qexport.errors import InputError
from qexport.frontend.models.quant import DEFAULT_ACT_CLIP, ActClip, QuantConv2d

ModuleKind = Literal["qconv", "conv", "bn", "relu", "maxpool", "avgpool"]


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    """One entry of ``model.features``."""

    kind: ModuleKind
    in_channels: int = 0
    out_channels: int = 0
    kernel: int = 3
    stride: int = 1
    padding: int = 1

    def describe(self) -> str:
        if self.kind in ("qconv", "conv"):
            return f"{self.kind} {self.in_channels}->{self.out_channels} k{self.kernel}"
        if self.kind == "bn":
            return f"bn {self.out_channels}"
        return self.kind


@dataclass(frozen=True, slots=True)
class Arch:
    """A VGG-style network: ``features`` (a Sequential) then one Linear ``classifier``."""

    name: str
    features: tuple[ModuleSpec, ...]
    num_classes: int = 10
    classifier_in: int = 512
    act_bits: tuple[tuple[int, int], ...] = ()
    """(features index, act_bit) pairs; layers not named use 4."""

    def conv_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.features) if m.kind in ("qconv", "conv")]

    def qconv_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.features) if m.kind == "qconv"]

    def qconv_paths(self) -> dict[str, int]:
        """Each quantized conv's module path (``features.33``, its identity) to its features index."""
        return {f"features.{i}": i for i in self.qconv_indices()}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """State-dict keys with shapes, as the course's model would save them."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, m in enumerate(self.features):
            p = f"features.{i}."
            if m.kind in ("qconv", "conv"):
                w = (m.out_channels, m.in_channels, m.kernel, m.kernel)
                shapes[p + "weight"] = w
                if m.kind == "qconv":
                    shapes[p + "act_alpha"] = ()
                    shapes[p + "weight_q"] = w
                    shapes[p + "weight_quant.wgt_alpha"] = ()
            elif m.kind == "bn":
                c = (m.out_channels,)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    shapes[p + key] = c
                shapes[p + "num_batches_tracked"] = ()
        shapes["classifier.weight"] = (self.num_classes, self.classifier_in)
        shapes["classifier.bias"] = (self.num_classes,)
        return shapes


class VGGQuant(nn.Module):
    """The course's VGG_quant: ``features`` Sequential, flatten, Linear ``classifier``."""

    def __init__(self, arch: Arch, act_clip: ActClip = DEFAULT_ACT_CLIP) -> None:
        super().__init__()
        self.arch = arch
        self.features = nn.Sequential(*[_build(i, m, arch, act_clip) for i, m in enumerate(arch.features)])
        self.classifier = nn.Linear(arch.classifier_in, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        return self.classifier(out.flatten(1))  # type: ignore[no-any-return]


def _build(index: int, m: ModuleSpec, arch: Arch, act_clip: ActClip) -> nn.Module:
    if m.kind == "qconv":
        return QuantConv2d(
            m.in_channels,
            m.out_channels,
            m.kernel,
            stride=m.stride,
            padding=m.padding,
            act_bit=dict(arch.act_bits).get(index, 4),
            act_clip=act_clip,
        )
    if m.kind == "conv":
        return nn.Conv2d(m.in_channels, m.out_channels, m.kernel, m.stride, m.padding, bias=False)
    if m.kind == "bn":
        return nn.BatchNorm2d(m.out_channels)
    if m.kind == "relu":
        return nn.ReLU(inplace=True)
    if m.kind == "maxpool":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.AvgPool2d(kernel_size=1, stride=1)


def _from_cfg(name: str, cfg: Sequence[int | str]) -> Arch:
    """Course ``_make_layers``: int = conv+BN+ReLU, 'M' = max-pool, 'S<n>' = conv+ReLU (no BN)."""
    specs: list[ModuleSpec] = []
    in_channels = 3
    for item in cfg:
        if item == "M":
            specs.append(ModuleSpec("maxpool"))
            continue
        bare = isinstance(item, str) and item.startswith("S")
        out = int(item[1:]) if isinstance(item, str) and bare else int(item)
        specs.append(ModuleSpec("qconv", in_channels, out))
        if not bare:
            specs.append(ModuleSpec("bn", out_channels=out))
        specs.append(ModuleSpec("relu"))
        in_channels = out
    specs.append(ModuleSpec("avgpool"))
    return Arch(name, tuple(specs), classifier_in=in_channels)


_VGG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]

BUILTIN: dict[str, Arch] = {
    a.name: a
    for a in (
        # seed 000: 13 QuantConv2d layers
        _from_cfg("VGG16_quant", [*_VGG, 512, 512, 512, "M", 512, 512, 512, "M"]),
        # seed 003: features[33] is the 8->8 squeeze conv with no BatchNorm
        _from_cfg(
            "VGG16_quant_gradual",
            [
                64,
                "M",
                128,
                128,
                "M",
                256,
                256,
                256,
                "M",
                512,
                128,
                32,
                8,
                "S8",
                32,
                128,
                512,
                "M",
                512,
                512,
                512,
                "M",
            ],
        ),
        # the sudden squeeze 512 -> 8 -> 8 -> 512; features[30] is the 8->8 conv with no BatchNorm
        _from_cfg("VGG16_quant_squeeze", [*_VGG, 512, 8, "S8", 512, "M", 512, 512, 512, "M"]),
    )
}
DEFAULT_MODEL = "VGG16_quant_gradual"


def builtin_arch(name: str) -> Arch:
    try:
        return BUILTIN[name]
    except KeyError:
        raise InputError(
            f"unknown model {name!r}; built-in models are {', '.join(sorted(BUILTIN))}"
        ) from None


def build_model(arch: Arch, act_clip: ActClip = DEFAULT_ACT_CLIP) -> VGGQuant:
    return VGGQuant(arch, act_clip)


_FEATURE_KEY = re.compile(r"^features\.(\d+)\.(.+)$")


def infer_arch(state: Mapping[str, torch.Tensor], name: str = "inferred") -> Arch:
    """Rebuild a VGG-style architecture from a state dict alone.

    Convs and BatchNorms are found by their keys; the gaps between them are module indices with
    no parameters: the first after a conv block is its ReLU, any further ones are 2x2 max-pools.
    After the last block: ReLU, the max-pools that bring 32x32 down to the classifier's input, and
    the course's closing 1x1 AvgPool. Kernels are square with stride 1 and padding k // 2.
    """
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _FEATURE_KEY.match(key)
        if match:
            by_index.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if not by_index or "classifier.weight" not in state:
        raise InputError(
            "cannot infer the architecture: the state dict has no 'features.<i>.…' or "
            "'classifier.weight' keys, so it is not a VGG-style course model"
        )
    specs: dict[int, ModuleSpec] = {}
    channels = 3
    for i in sorted(by_index):
        params = by_index[i]
        weight = params.get("weight")
        if "running_mean" in params:
            specs[i] = ModuleSpec("bn", out_channels=int(params["running_mean"].shape[0]))
        elif weight is not None and weight.dim() == 4:
            out_c, in_c, kh, kw = (int(s) for s in weight.shape)
            if kh != kw:
                raise InputError(f"features[{i}] has a {kh}x{kw} kernel; only square kernels are supported")
            kind: ModuleKind = "qconv" if "act_alpha" in params else "conv"
            specs[i] = ModuleSpec(kind, in_c, out_c, kh, 1, kh // 2)
            channels = out_c
        else:
            raise InputError(f"features[{i}] has keys {sorted(params)}; neither a conv nor a BatchNorm")
    classifier = state["classifier.weight"]
    num_classes, classifier_in = (int(s) for s in classifier.shape)
    last = max(specs)
    pools_needed = _pools_for(classifier_in, channels)
    pools_in_gaps = 0
    features: list[ModuleSpec] = []
    for i in range(last + 1):
        if i in specs:
            features.append(specs[i])
        elif i - 1 in specs:
            features.append(ModuleSpec("relu"))
        else:
            features.append(ModuleSpec("maxpool"))
            pools_in_gaps += 1
    tail_pools = pools_needed - pools_in_gaps
    if tail_pools < 0:
        raise InputError(
            f"cannot infer the architecture: classifier expects {classifier_in} inputs from "
            f"{channels} channels but the layer gaps already hold {pools_in_gaps} max-pools"
        )
    features += [ModuleSpec("relu"), *[ModuleSpec("maxpool")] * tail_pools, ModuleSpec("avgpool")]
    return Arch(name, tuple(features), num_classes=num_classes, classifier_in=classifier_in)


def _pools_for(classifier_in: int, channels: int) -> int:
    """How many 2x2 max-pools turn a 32x32 map of ``channels`` into ``classifier_in`` features."""
    for pools in range(6):
        side = 32 >> pools
        if channels * side * side == classifier_in:
            return pools
    raise InputError(
        f"cannot infer the architecture: classifier takes {classifier_in} inputs, which no "
        f"32x32 / 2^k map of the last conv's {channels} channels gives"
    )


def same_arch(a: Arch, b: Arch) -> bool:
    return a.features == b.features and (a.num_classes, a.classifier_in) == (
        b.num_classes,
        b.classifier_in,
    )


def with_act_bits(arch: Arch, act_bits: Mapping[int, int]) -> Arch:
    return replace(arch, act_bits=tuple(sorted(act_bits.items())))


def _all_finite(value: torch.Tensor) -> bool:
    """No NaN or Inf: one min/max pass (NaN propagates), far faster than ``isfinite(v).all()``."""
    if value.numel() == 0:
        return True
    low, high = torch.aminmax(value.detach())
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def load_weights(
    model: VGGQuant, state: Mapping[str, torch.Tensor], *, trust_recomputed: bool = False
) -> None:
    """Load a matched state dict, refusing non-finite values, alpha <= 0 and a stale ``weight_q``.

    ``weight_q`` is never trusted: it is recomputed from ``weight`` and the alphas, and a stored one
    must agree with it (to within float rounding) unless ``trust_recomputed``.
    """
    for key, value in state.items():
        if value.is_floating_point() and not _all_finite(value):
            bad = int((~torch.isfinite(value)).sum())
            raise InputError(
                f"checkpoint tensor {key} holds {bad} NaN/Inf value(s); the model diverged or the "
                "file is damaged; export from an earlier, finite checkpoint"
            )
        if key.endswith(("act_alpha", "wgt_alpha")) and float(value) <= 0:
            raise InputError(
                f"checkpoint {key} = {float(value):g}; an alpha must be > 0 to define a "
                "quantization step; this checkpoint was not trained with the course's quantizer"
            )
    own = model.state_dict()
    to_load = {k: v for k, v in state.items() if not k.endswith("weight_q")}
    for key in own:
        if key.endswith("weight_q"):
            to_load[key] = own[key]
    model.load_state_dict(to_load, strict=True)
    for i, module in enumerate(model.features):
        if not isinstance(module, QuantConv2d):
            continue
        with torch.no_grad():
            recomputed = module.quantized_weight()
            module.weight_q.copy_(recomputed)
        if not _all_finite(recomputed):
            raise InputError(
                f"layer {i}: the course's weight quantizer gives NaN for these weights (they are all "
                f"equal, {float(module.weight.detach().flatten()[0]):g}, so their std is 0); such a "
                "layer cannot be quantized. Export from a checkpoint where it was trained"
            )
        stored = state.get(f"features.{i}.weight_q")
        if stored is None or trust_recomputed:
            continue
        # one quantization step apart means a different integer; float noise is far below that
        w_delta = float(module.weight_quant.wgt_alpha.detach()) / (2 ** (module.w_bit - 1) - 1)
        diff = float((stored.to(recomputed.dtype) - recomputed).abs().max())
        if diff > w_delta / 4:
            raise InputError(
                f"layer {i}: stored weight_q disagrees with the weights recomputed from 'weight' and "
                f"wgt_alpha (largest difference {diff:.4g}, {diff / w_delta:.2f} quantization steps); "
                "the checkpoint was saved between an optimizer step and a forward pass, or edited. "
                "Pass --trust-recomputed to export the recomputed weights"
            )


def conv_numbering(arch: Arch) -> list[int]:
    """features index of each QuantConv2d, in order: conv number ``n`` is ``features[result[n]]``."""
    return arch.qconv_indices()


def resolve_layer(arch: Arch, name: str | int) -> int:
    """A layer named by features index (``33``, ``features[33]``) or conv number (``conv 10``)."""
    text = str(name).strip().lower().replace(" ", "")
    convs = arch.qconv_indices()
    try:
        if text.startswith("conv"):
            number = int(text[4:])
            if not 0 <= number < len(convs):
                raise InputError(f"{name!r}: {arch.name} has convs 0..{len(convs) - 1}")
            return convs[number]
        index = int(text.removeprefix("features[").removesuffix("]"))
    except ValueError:
        raise InputError(
            f"{name!r} names no layer; use a features index (33) or a conv number (conv 10)"
        ) from None
    return index


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
