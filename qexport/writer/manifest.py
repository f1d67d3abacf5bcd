"""``manifest.json``: the packing contract another program decodes our files with, as one schema.

The manifest is built once from the stages' values (``Manifest``, ``LayerEntry``, ``FileEntry``,
``Recipe``), written by ``dumps`` (sorted JSON) and read back by ``loads``, which checks every key:

    manifest.json: layers[0].files[3]: 'lane_bits' is missing

Everything that reads a manifest (decode, compare, check, testbench, regenerate) reads these
dataclasses. No torch here: ``qexport compare`` reads a manifest without loading a model.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from qexport.errors import InputError
from qexport.ir.checks import LayerChecks
from qexport.layout.options import LayoutOptions
from qexport.layout.placement import Placement, Span

if TYPE_CHECKING:
    from qexport.layout.flat import ChannelPadding, TensorPlan
    from qexport.writer.pack import LaneOrder

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1

Json = dict[str, Any]
T = TypeVar("T")


# --- reading JSON with the key's place in every message ------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


class _Reader:
    """One JSON object being read: each key is taken once, and ``done`` refuses any left over."""

    def __init__(self, value: object, where: str, place: str) -> None:
        self.where, self.place = where, place
        if not isinstance(value, dict):
            raise self.error(f"is {_kind(value)}, expected an object")
        self.data: dict[str, Any] = value
        self.taken: set[str] = set()

    def error(self, what: str) -> InputError:
        at = f"{self.where}: {self.place}" if self.place else self.where
        return InputError(f"{at}: {what}; the manifest is damaged (re-export the set)")

    def _raw(self, key: str, optional: bool) -> object:
        self.taken.add(key)
        if key not in self.data:
            if optional:
                return None
            raise self.error(f"{key!r} is missing")
        return self.data[key]

    def _typed(self, key: str, value: object, ok: bool, expected: str) -> None:
        if not ok:
            raise self.error(f"{key!r} is {_kind(value)} ({json.dumps(value)[:40]}), expected {expected}")

    def integer(self, key: str) -> int:
        value = self._raw(key, False)
        self._typed(key, value, isinstance(value, int) and not isinstance(value, bool), "an integer")
        return cast(int, value)

    def opt_integer(self, key: str, *, absent: bool = False) -> int | None:
        value = self._raw(key, absent)
        if value is None:
            return None
        self._typed(key, value, isinstance(value, int) and not isinstance(value, bool), "an integer")
        return cast(int, value)

    def number(self, key: str) -> float:
        value = self._raw(key, False)
        self._typed(key, value, isinstance(value, int | float) and not isinstance(value, bool), "a number")
        return cast(float, value)

    def opt_number(self, key: str) -> float | None:
        value = self._raw(key, False)
        if value is None:
            return None
        self._typed(key, value, isinstance(value, int | float) and not isinstance(value, bool), "a number")
        return cast(float, value)

    def flag(self, key: str) -> bool:
        value = self._raw(key, False)
        self._typed(key, value, isinstance(value, bool), "true or false")
        return cast(bool, value)

    def opt_flag(self, key: str, *, absent: bool = False) -> bool | None:
        value = self._raw(key, absent)
        if value is None:
            return None
        self._typed(key, value, isinstance(value, bool), "true or false")
        return cast(bool, value)

    def text(self, key: str) -> str:
        value = self._raw(key, False)
        self._typed(key, value, isinstance(value, str), "a string")
        return cast(str, value)

    def opt_text(self, key: str, *, absent: bool = False) -> str | None:
        value = self._raw(key, absent)
        if value is None:
            return None
        self._typed(key, value, isinstance(value, str), "a string")
        return cast(str, value)

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in choices:
            raise self.error(f"{key!r} is {value!r}, expected one of {', '.join(map(repr, choices))}")
        return value

    def ints(self, key: str) -> tuple[int, ...]:
        value = self._raw(key, False)
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        self._typed(key, value, ok, "a list of integers")
        return tuple(cast(list[int], value))

    def layer_ids(self, key: str) -> tuple[int | str, ...]:
        value = self._raw(key, False)
        ok = isinstance(value, list) and all(
            isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in value
        )
        self._typed(key, value, ok, "a list of features indices or module paths")
        return tuple(cast(list[int | str], value))

    def strs(self, key: str) -> tuple[str, ...]:
        value = self._raw(key, False)
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        self._typed(key, value, ok, "a list of strings")
        return tuple(cast(list[str], value))

    def span(self, key: str) -> Span | None:
        if key not in self.data:
            self.taken.add(key)
            return None
        found = self.ints(key)
        if len(found) != 2:
            raise self.error(f"{key!r} is {list(found)}, expected [start, stop]")
        return found[0], found[1]

    def objects(self, key: str, read: Callable[[_Reader], T]) -> tuple[T, ...]:
        value = self._raw(key, False)
        self._typed(key, value, isinstance(value, list), "a list")
        place = f"{self.place}." if self.place else ""
        return tuple(
            read(_Reader(item, self.where, f"{place}{key}[{k}]"))
            for k, item in enumerate(cast(list[Any], value))
        )

    def object(self, key: str, read: Callable[[_Reader], T]) -> T:
        place = f"{self.place}.{key}" if self.place else key
        return read(_Reader(self._raw(key, False), self.where, place))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.taken)
        if unknown:
            raise self.error(f"unknown key {unknown[0]!r}")


_SCALARS = (str, int, float, bool, type(None))


def _json_value(value: object) -> object:
    """A field's value as JSON holds it: tuples as lists, records as their objects."""
    if type(value) in _SCALARS:  # most fields: answered before any of the checks below
        return value
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    to_json = getattr(value, "to_json", None)
    if to_json is not None:
        return to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(value)
    return value


def _plain(record: Any, skip: str = "") -> Json:
    """A record's fields as a JSON object, each under its own name (the manifest's key)."""
    return {
        name: _json_value(getattr(record, name))
        for name in _field_names(cast(Hashable, type(record)))
        if name != skip
    }


@functools.cache
def _field_names(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _drop_none(data: Json, *keys: str) -> Json:
    """``data`` without the optional ``keys`` that are None (absent from the manifest, not null)."""
    return {k: v for k, v in data.items() if not (k in keys and v is None)}


# --- the schema ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One memory file: where it is, what it holds and how its words decode (``spec``).

    ``where`` places a tiled file in the layer (systolic profiles); ``padded`` is set for inputs,
    ``channels``/``padded_channels`` where zero lanes pad the channel axis. A key that is None
    is absent from the manifest.
    """

    path: str
    tensor: str
    format: str
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    lanes: int
    lane_bits: int
    signed: bool
    lane_order: LaneOrder
    word_bits: int
    words: int
    header_lines: int
    depth: int
    fill: int
    sha256: str
    padded: bool | None = None
    channels: int | None = None
    padded_channels: int | None = None
    where: Placement = Placement()

    def to_json(self) -> Json:
        data = _plain(self, skip="where") | dict(self.where.items())
        return _drop_none(data, "padded", "channels", "padded_channels")

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str, place: str = "") -> FileEntry:
        return cls.read(_Reader(dict(data), where, place))

    @classmethod
    def read(cls, r: _Reader) -> FileEntry:
        entry = cls(
            path=r.text("path"),
            tensor=r.text("tensor"),
            format=r.text("format"),
            shape=r.ints("shape"),
            axes=r.strs("axes"),
            lanes=r.integer("lanes"),
            lane_bits=r.integer("lane_bits"),
            signed=r.flag("signed"),
            lane_order=cast("LaneOrder", r.choice("lane_order", ("lsb_first", "msb_first"))),
            word_bits=r.integer("word_bits"),
            words=r.integer("words"),
            header_lines=r.integer("header_lines"),
            depth=r.integer("depth"),
            fill=r.integer("fill"),
            sha256=r.text("sha256"),
            padded=r.opt_flag("padded", absent=True),
            channels=r.opt_integer("channels", absent=True),
            padded_channels=r.opt_integer("padded_channels", absent=True),
            where=Placement(
                tile=r.opt_integer("tile", absent=True),
                n=r.opt_integer("n", absent=True),
                y=r.span("y"),
                x=r.span("x"),
                itile=r.opt_integer("itile", absent=True),
                otile=r.opt_integer("otile", absent=True),
                kij=r.opt_integer("kij", absent=True),
                ic=r.span("ic"),
                oc=r.span("oc"),
                pixels=r.span("pixels"),
            ),
        )
        r.done()
        return entry


@dataclass(frozen=True, slots=True)
class RenderedFacts:
    """What rendering a memory file learnt that the manifest records (besides the tensor plan)."""

    path: str
    format: str
    lanes: int
    word_bits: int
    words: int
    header_lines: int
    depth: int
    channel_padding: ChannelPadding | None = None


def file_entry(tp: TensorPlan, facts: RenderedFacts, sha256: str) -> FileEntry:
    """The manifest entry of a file: the layout's plan, what rendering it found, the bytes' hash."""
    spec, padding = tp.spec, facts.channel_padding
    return FileEntry(
        path=facts.path,
        tensor=tp.tensor,
        format=facts.format,
        shape=tuple(int(s) for s in tp.array.shape),
        axes=tp.axes,
        lanes=facts.lanes,
        lane_bits=spec.lane_bits,
        signed=spec.signed,
        lane_order=spec.lane_order,
        word_bits=facts.word_bits,
        words=facts.words,
        header_lines=facts.header_lines,
        depth=facts.depth,
        fill=0,
        sha256=sha256,
        padded=None if tp.padded is None else bool(tp.padded),
        channels=None if padding is None else padding.channels,
        padded_channels=None if padding is None else padding.padded_channels,
        where=tp.where,
    )


def _checks(r: _Reader) -> LayerChecks:
    checks = LayerChecks(
        output_mean_error=r.number("output_mean_error"),
        output_max_error=r.number("output_max_error"),
        next_input_mean_error=r.opt_number("next_input_mean_error"),
        next_input_max_error=r.opt_number("next_input_max_error"),
        passed=r.flag("passed"),
    )
    r.done()
    return checks


@dataclass(frozen=True, slots=True)
class RequantEntry:
    """One consumer of a fixed-point block end: ``x_int = min(rshift_even(out * multiplier, shift),
    levels)`` is ``consumer``'s input, golden in the layer's ``tensor`` file."""

    consumer: str
    tensor: str
    multiplier: int
    shift: int
    levels: int

    def to_json(self) -> Json:
        return _plain(self)

    @classmethod
    def read(cls, r: _Reader) -> RequantEntry:
        entry = cls(
            r.text("consumer"),
            r.text("tensor"),
            r.integer("multiplier"),
            r.integer("shift"),
            r.integer("levels"),
        )
        r.done()
        return entry


FIXED_POINT_ROLES = ("block_end", "shortcut")


@dataclass(frozen=True, slots=True)
class FixedPointEntry:
    """A conv's fixed-point SFU (ResNets; README "Running more than one layer" has the arithmetic).

    ``role`` ``block_end``: ``out = max(rshift_up(psum * multiplier[c], shift[c]) + bias[c] +
    shortcut, 0)``, the shortcut ``rshift_up(skip * skip_multiplier, skip_shift)`` (``add``
    ``identity``, the ``skip`` file), the fold of the downsample conv ``add`` names, or nothing
    (``add`` absent: a quantized stem); then each ``requant``. ``role`` ``shortcut``: the fold of
    this conv's psums is added into ``add_into``'s accumulator. ``unit`` is the float value of one
    accumulator step (the float end reads ``out * unit``); ``fold_rounding`` / ``requant_rounding``
    name the two shifts' rules.
    """

    role: str
    mult_bits: int
    frac_bits: int
    skip_bits: int
    bias_bits: int
    unit: float
    fold_rounding: str = "half_up"
    requant_rounding: str = "half_even"
    add: str | None = None
    add_into: str | None = None
    skip_multiplier: int | None = None
    skip_shift: int | None = None
    requant: tuple[RequantEntry, ...] = ()

    def to_json(self) -> Json:
        return _drop_none(_plain(self), "add", "add_into", "skip_multiplier", "skip_shift")

    @classmethod
    def read(cls, r: _Reader) -> FixedPointEntry:
        entry = cls(
            role=r.choice("role", FIXED_POINT_ROLES),
            mult_bits=r.integer("mult_bits"),
            frac_bits=r.integer("frac_bits"),
            skip_bits=r.integer("skip_bits"),
            bias_bits=r.integer("bias_bits"),
            unit=r.number("unit"),
            fold_rounding=r.choice("fold_rounding", ("half_up",)),
            requant_rounding=r.choice("requant_rounding", ("half_even",)),
            add=r.opt_text("add", absent=True),
            add_into=r.opt_text("add_into", absent=True),
            skip_multiplier=r.opt_integer("skip_multiplier", absent=True),
            skip_shift=r.opt_integer("skip_shift", absent=True),
            requant=r.objects("requant", RequantEntry.read),
        )
        r.done()
        return entry


@dataclass(frozen=True, slots=True)
class LayerEntry:
    """One conv layer: its geometry and quantization, the seeds' checks and its files.

    ``name`` is the module path (``layer1.0.conv2``); ``index`` the VGG features index (absent
    for other families). ``w_bit_source`` / ``act_bit_source`` say where each width came from;
    ``weight_q_ties`` counts weights whose stored value was used at a rounding tie.
    """

    name: str
    index: int | None
    conv_number: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    w_bit: int
    act_bit: int
    act_clip: str
    act_alpha: float
    wgt_alpha: float
    w_delta: float
    x_delta: float
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    checks: LayerChecks
    files: tuple[FileEntry, ...]
    w_bit_source: str = "model"
    act_bit_source: str = "model"
    weight_q_ties: int = 0
    next: str | None = None
    """With SFU files: the module path of the conv that reads this layer's ``requant`` (else absent)."""
    between: tuple[str, ...] | None = None
    """With SFU files: the ops between this conv and ``next`` (``["batchnorm", "relu", "maxpool2"]``)."""
    fixed_point: FixedPointEntry | None = None
    """With a ResNet's SFU files: the fixed-point SFU's parameters (absent for thresholds)."""

    @property
    def key(self) -> int | str:
        """How reports name the layer: the features index (VGG, 33) or its module path."""
        return self.name if self.index is None else self.index

    def to_json(self) -> Json:
        return _drop_none(_plain(self), "index", "next", "between", "fixed_point")

    @classmethod
    def read(cls, r: _Reader) -> LayerEntry:
        index = r.opt_integer("index", absent=True)
        name = r.opt_text("name", absent=True)  # older sets: VGG only, named by index
        if name is None and index is None:
            raise r.error("'name' is missing")
        entry = cls(
            name=name if name is not None else f"features.{index}",
            index=index,
            conv_number=r.integer("conv_number"),
            in_channels=r.integer("in_channels"),
            out_channels=r.integer("out_channels"),
            kernel=r.integer("kernel"),
            stride=r.integer("stride"),
            padding=r.integer("padding"),
            w_bit=r.integer("w_bit"),
            act_bit=r.integer("act_bit"),
            act_clip=r.text("act_clip"),
            act_alpha=r.number("act_alpha"),
            wgt_alpha=r.number("wgt_alpha"),
            w_delta=r.number("w_delta"),
            x_delta=r.number("x_delta"),
            input_shape=r.ints("input_shape"),
            output_shape=r.ints("output_shape"),
            checks=r.object("checks", _checks),
            files=r.objects("files", FileEntry.read),
            w_bit_source=r.opt_text("w_bit_source", absent=True) or "model",
            act_bit_source=r.opt_text("act_bit_source", absent=True) or "model",
            weight_q_ties=r.opt_integer("weight_q_ties", absent=True) or 0,
            next=r.opt_text("next", absent=True),
            between=r.strs("between") if "between" in r.data else None,
            fixed_point=None
            if "fixed_point" not in r.data
            else r.object("fixed_point", FixedPointEntry.read),
        )
        r.done()
        if (entry.next is None) != (entry.between is None):
            raise r.error("'next' and 'between' come together (a layer with SFU files has both)")
        return entry


@dataclass(frozen=True, slots=True)
class Source:
    """The model's origin: a checkpoint (its file name and sha256) or the built-in demo model."""

    checkpoint: str | None = None
    sha256: str | None = None
    demo: bool | None = None

    def to_json(self) -> Json:
        return _drop_none(_plain(self), "checkpoint", "sha256", "demo")

    @classmethod
    def from_json(cls, data: Mapping[str, object], where: str, place: str = "source") -> Source:
        return cls.read(_Reader(dict(data), where, place))

    @classmethod
    def read(cls, r: _Reader) -> Source:
        source = cls(
            checkpoint=r.opt_text("checkpoint", absent=True),
            sha256=r.opt_text("sha256", absent=True),
            demo=r.opt_flag("demo", absent=True),
        )
        r.done()
        return source


@dataclass(frozen=True, slots=True)
class InputsRecord:
    """Which images went in: CIFAR-10's split, an --input file's name or the demo's, the selection."""

    images: str
    count: int
    cifar10: str | None = None
    input: str | None = None
    demo: str | None = None

    def to_json(self) -> Json:
        return _drop_none(_plain(self), "cifar10", "input", "demo")

    @classmethod
    def from_json(cls, data: Mapping[str, object], where: str, place: str = "inputs") -> InputsRecord:
        return cls.read(_Reader(dict(data), where, place))

    @classmethod
    def read(cls, r: _Reader) -> InputsRecord:
        record = cls(
            images=r.text("images"),
            count=r.integer("count"),
            cifar10=r.opt_text("cifar10", absent=True),
            input=r.opt_text("input", absent=True),
            demo=r.opt_text("demo", absent=True),
        )
        r.done()
        return record


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """Where `qexport check` finds the checkpoint (relative to the set's folder) and its sha256."""

    path: str
    sha256: str

    def to_json(self) -> Json:
        return _plain(self)


@dataclass(frozen=True, slots=True)
class RecipeSource:
    """The source options of the command that made a set (``SourceOptions``, paths as typed).

    ``checkpoint`` is a ``CheckpointRecord``, or (an older recipe) the path as typed.
    """

    checkpoint: CheckpointRecord | str | None
    model: str | None
    data_dir: str | None
    input_file: str | None
    images: str | None
    act_clip: str
    trust_recomputed: bool
    bits_config: str | None

    def to_json(self) -> Json:
        return _plain(self)

    @classmethod
    def read(cls, r: _Reader) -> RecipeSource:
        checkpoint: CheckpointRecord | str | None
        if isinstance(r.data.get("checkpoint"), dict):
            checkpoint = r.object("checkpoint", _checkpoint_record)
        else:
            checkpoint = r.opt_text("checkpoint")
        source = cls(
            checkpoint=checkpoint,
            model=r.opt_text("model"),
            data_dir=r.opt_text("data_dir"),
            input_file=r.opt_text("input_file"),
            images=r.opt_text("images"),
            act_clip=r.text("act_clip"),
            trust_recomputed=r.flag("trust_recomputed"),
            bits_config=r.opt_text("bits_config"),
        )
        r.done()
        return source


def _checkpoint_record(r: _Reader) -> CheckpointRecord:
    record = CheckpointRecord(r.text("path"), r.text("sha256"))
    r.done()
    return record


def _layout(r: _Reader) -> LayoutOptions:
    lane_order = r.opt_text("lane_order")
    if lane_order not in (None, "lsb_first", "msb_first"):
        raise r.error(f"'lane_order' is {lane_order!r}, expected 'lsb_first' or 'msb_first'")
    layout = LayoutOptions(
        lanes=r.opt_integer("lanes"),
        psum_lanes=r.opt_integer("psum_lanes"),
        lane_order=cast("LaneOrder | None", lane_order),
        psum_bits=r.opt_integer("psum_bits"),
        input_sign=cast(Any, r.choice("input_sign", ("auto", "unsigned", "signed"))),
        pad_input=r.flag("pad_input"),
    )
    r.done()
    return layout


RecipeKind = Literal["dump", "testbench"]

_WIDTH_KEYS = ("mult_bits", "frac_bits", "skip_bits", "bias_bits")


def _widths(r: _Reader) -> dict[str, int]:
    widths = {key: r.integer(key) for key in _WIDTH_KEYS}
    r.done()
    return widths


@dataclass(frozen=True, slots=True)
class Recipe:
    """Everything `qexport check` needs to make a set again, and the command that made it.

    ``layers`` None is ``--all``; ``profile`` names a built-in profile, else ``profile_toml`` holds
    the profile's TOML text.
    """

    kind: RecipeKind
    source: RecipeSource
    layers: tuple[int | str, ...] | None
    """Features indices (VGG) or module paths, as the export named them; None is every layer."""
    format: str
    profile: str | None
    profile_toml: str | None
    depth: str
    layout: LayoutOptions
    template_dir: str | None
    command: str
    sfu: bool = False
    """SFU files (threshold, direction, requant) for every layer with a next conv; absent when False."""
    chain: bool = False
    """Inputs from the integer network's own previous outputs (``dump --chain``); absent when False."""
    fixed_point: dict[str, int] | None = None
    """A ResNet set's fixed-point widths (``mult_bits`` ...) when not the defaults; else absent."""
    vcd: bool = False
    """The testbench dumps waveforms (``testbench --vcd``); absent when False."""

    def to_json(self) -> Json:
        data = _plain(self) | {"layers": "all" if self.layers is None else list(self.layers)}
        # absent when off, so a set made without them keeps its bytes
        return {k: v for k, v in data.items() if k not in ("sfu", "chain", "fixed_point", "vcd") or v}

    @classmethod
    def read(cls, r: _Reader) -> Recipe:
        layers: tuple[int | str, ...] | None = None
        if r.data.get("layers") == "all":
            r.taken.add("layers")
        else:
            layers = r.layer_ids("layers")
        recipe = cls(
            kind=cast(RecipeKind, r.choice("kind", ("dump", "testbench"))),
            source=r.object("source", RecipeSource.read),
            layers=layers,
            format=r.text("format"),
            profile=r.opt_text("profile"),
            profile_toml=r.opt_text("profile_toml"),
            depth=r.choice("depth", ("exact", "pow2")),
            layout=r.object("layout", _layout),
            template_dir=r.opt_text("template_dir"),
            command=r.text("command"),
            sfu=bool(r.opt_flag("sfu", absent=True)),
            chain=bool(r.opt_flag("chain", absent=True)),
            fixed_point=None if "fixed_point" not in r.data else r.object("fixed_point", _widths),
            vcd=bool(r.opt_flag("vcd", absent=True)),
        )
        r.done()
        if recipe.profile is None and recipe.profile_toml is None:
            raise r.error("'profile' and 'profile_toml' are both null; one names the profile")
        return recipe


@dataclass(frozen=True, slots=True)
class ArrayEntry:
    """One float32 parameter array of the model's float end, a ``.npy`` file: its state-dict
    ``key`` (``classifier.weight``), where it is, its shape and dtype, the bytes' sha256."""

    key: str
    path: str
    shape: tuple[int, ...]
    dtype: str
    sha256: str

    def to_json(self) -> Json:
        return _plain(self)

    @classmethod
    def read(cls, r: _Reader) -> ArrayEntry:
        entry = cls(r.text("key"), r.text("path"), r.ints("shape"), r.text("dtype"), r.text("sha256"))
        r.done()
        return entry


TAIL_OPS = ("batchnorm", "relu", "maxpool", "avgpool", "flatten", "linear")


@dataclass(frozen=True, slots=True)
class TailOp:
    """One op of the float end, in order: ``batchnorm`` (``module``, ``eps``; its arrays
    ``<module>.weight``, ``.bias``, ``.running_mean``, ``.running_var``), ``relu``, ``maxpool`` /
    ``avgpool`` (``kernel`` = stride, no padding), ``flatten`` (N, C, H, W -> N, C*H*W) or
    ``linear`` (``module``; ``<module>.weight`` (out, in), ``<module>.bias`` if it has one)."""

    op: str
    module: str | None = None
    kernel: int | None = None
    eps: float | None = None

    def to_json(self) -> Json:
        return _drop_none(_plain(self), "module", "kernel", "eps")

    @classmethod
    def read(cls, r: _Reader) -> TailOp:
        op = cls(
            op=r.choice("op", TAIL_OPS),
            module=r.opt_text("module", absent=True),
            kernel=r.opt_integer("kernel", absent=True),
            eps=r.number("eps") if "eps" in r.data else None,
        )
        r.done()
        return op


@dataclass(frozen=True, slots=True)
class ClassifierEntry:
    """The model's float end (``dump --sfu`` of a set holding the last conv): after the last
    quantized conv ``after``, its dequantised psums (``psum * x_delta * w_delta``) go through
    ``ops``, whose parameters are ``files``; the result is the logits (N, classes)."""

    after: str
    ops: tuple[TailOp, ...]
    files: tuple[ArrayEntry, ...]

    def to_json(self) -> Json:
        return _plain(self)

    @classmethod
    def read(cls, r: _Reader) -> ClassifierEntry:
        entry = cls(r.text("after"), r.objects("ops", TailOp.read), r.objects("files", ArrayEntry.read))
        r.done()
        return entry


@dataclass(frozen=True, slots=True)
class SvPackageEntry:
    """The set's SystemVerilog package (``qexport_vectors_pkg.sv``): where it is, its bytes' sha256."""

    path: str
    sha256: str

    def to_json(self) -> Json:
        return _plain(self)

    @classmethod
    def read(cls, r: _Reader) -> SvPackageEntry:
        entry = cls(r.text("path"), r.text("sha256"))
        r.done()
        return entry


@dataclass(frozen=True, slots=True)
class Manifest:
    """A vector set's ``manifest.json``: the model, the inputs, each layer with its files, the recipe."""

    qexport_version: str
    model: str
    source: Source
    inputs: InputsRecord
    act_clip: str
    profile: str
    format: str
    layers: tuple[LayerEntry, ...]
    label: str | None = None
    recipe: Recipe | None = None
    """None in a manifest an older qexport wrote (it cannot be checked)."""
    schema: int = MANIFEST_SCHEMA
    classifier: ClassifierEntry | None = None
    """The float end's ops and arrays (``dump --sfu`` with the last conv), else absent."""
    sv_package: SvPackageEntry | None = None
    """The set's SystemVerilog package of file shapes; absent in a set an older qexport wrote."""

    def files(self) -> list[tuple[int | str, FileEntry]]:
        """Every file with its layer's key (VGG: the features index 33, else the module path)."""
        return [(layer.key, f) for layer in self.layers for f in layer.files]

    def to_json(self) -> Json:
        return _drop_none(_plain(self), "label", "recipe", "classifier", "sv_package")

    @classmethod
    def read(cls, r: _Reader) -> Manifest:
        manifest = cls(
            qexport_version=r.text("qexport_version"),
            schema=r.integer("schema"),
            model=r.text("model"),
            source=r.object("source", Source.read),
            inputs=r.object("inputs", InputsRecord.read),
            act_clip=r.text("act_clip"),
            profile=r.text("profile"),
            format=r.text("format"),
            layers=r.objects("layers", LayerEntry.read),
            label=r.opt_text("label", absent=True),
            recipe=None if "recipe" not in r.data else r.object("recipe", Recipe.read),
            classifier=None if "classifier" not in r.data else r.object("classifier", ClassifierEntry.read),
            sv_package=None if "sv_package" not in r.data else r.object("sv_package", SvPackageEntry.read),
        )
        r.done()
        return manifest


def dumps(manifest: Manifest) -> str:
    """Sorted, indented JSON with a final newline: byte-identical for identical content.

    Exactly ``dumps_json(manifest.to_json())``; a layer's file entries (a tiled layer has tens of
    thousands, all alike but for a few values) are spelt from one ``json.dumps`` of each shape of
    entry, their values put in after, then set in place of a stand-in for the layer's list.
    """
    data = manifest.to_json()
    lists: list[list[Json]] = []
    for layer in data["layers"]:
        files = layer["files"]
        if files:
            layer["files"] = f"@@qexport-files-{len(lists)}@@"
            lists.append(files)
    shapes: dict[tuple[Any, ...], str] = {}

    def spliced(match: re.Match[str]) -> str:
        indent = match[1]
        entries = lists[int(match[2])]
        inner = indent + "  "
        items = ",\n".join(inner + _entry_text(entry, len(inner), shapes) for entry in entries)
        return f'{indent}"files": [\n{items}\n{indent}]'

    return _FILES_STAND_IN.sub(spliced, dumps_json(data))


_FILES_STAND_IN = re.compile(r'(?m)^( *)"files": "@@qexport-files-(\d+)@@"')
_LEAF = '"@@qexport-leaf@@"'


def _entry_text(entry: Json, indent: int, shapes: dict[tuple[Any, ...], str]) -> str:
    """``entry`` as ``dumps_json`` spells it nested ``indent`` spaces deep (first line unindented).

    Entries of one shape (the same keys, the same list lengths) share a %-template made by
    ``json.dumps`` with a stand-in for each scalar; an entry holding anything else is dumped alone.
    """
    shape: list[tuple[str, int]] = []
    leaves: list[object] = []
    for name, value in sorted(entry.items()):
        if type(value) is list:
            shape.append((name, len(value)))
            leaves.extend(value)
        else:
            shape.append((name, -1))
            leaves.append(value)
    spelt = [_scalar_json(leaf) for leaf in leaves]
    if None in spelt:  # a record, a nested list, a number JSON cannot hold: as json.dumps does it
        text = json.dumps(entry, sort_keys=True, indent=2, allow_nan=False)
        return text.replace("\n", "\n" + " " * indent)
    key = (indent, *shape)
    template = shapes.get(key)
    if template is None:
        sample = {k: [_LEAF_VALUE] * n if n >= 0 else _LEAF_VALUE for k, n in shape}
        text = json.dumps(sample, sort_keys=True, indent=2).replace("\n", "\n" + " " * indent)
        template = shapes[key] = "%s".join(part.replace("%", "%%") for part in text.split(_LEAF))
    text = template % tuple(spelt)
    return text


_LEAF_VALUE = _LEAF[1:-1]
_encode_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _scalar_json(value: object) -> str | None:
    """A scalar as ``json.dumps`` spells it (ASCII strings, int's repr), or None for anything else."""
    kind = type(value)
    if kind is str:
        return _encode_string(cast(str, value))
    if kind is int:
        return int.__repr__(cast(int, value))
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    return None  # floats (nan, inf refused), int subclasses, records: json.dumps decides


def dumps_json(data: Mapping[str, Any]) -> str:
    """Any of our JSON records (a study's manifest too) as ``dumps`` writes it."""
    return json.dumps(data, sort_keys=True, indent=2, allow_nan=False) + "\n"


def _parse(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where} is not valid JSON ({err}); it is not a qexport manifest") from err


def written_by_qexport(text: str) -> bool:
    """True for any manifest qexport writes (an export's or a study's): a JSON object with
    ``qexport_version``. Its schema is not checked, so a damaged set can still be replaced."""
    try:
        data = _parse(text, "")
    except InputError:
        return False
    return isinstance(data, dict) and "qexport_version" in data


def loads(text: str, where: str = MANIFEST_NAME) -> Manifest:
    """Parse and check a vector set's manifest; InputError names the first bad key and its place."""
    data = _parse(text, where)
    if not isinstance(data, dict) or "qexport_version" not in data:
        raise InputError(f"{where} has no 'qexport_version'; it was not written by qexport")
    return Manifest.read(_Reader(data, where, ""))
