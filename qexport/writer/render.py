"""The one Jinja environment: strict, newline-keeping, loading templates through the package."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np

from qexport import __version__
from qexport.errors import InputError, QExportError
from qexport.layout.flat import TensorPlan
from qexport.writer import formats
from qexport.writer.formats import DIGITS, Field, Part, WordSyntax
from qexport.writer.manifest import RenderedFacts
from qexport.writer.pack import line_matrix, to_words

Depth = Literal["exact", "pow2"]


@lru_cache(maxsize=4)
def environment(template_dir: str | None = None) -> jinja2.Environment:
    """Package templates, with ``template_dir`` (if given) searched first to override any by name."""
    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        loaders.append(jinja2.FileSystemLoader(template_dir))
    loaders.append(jinja2.PackageLoader("qexport.templates", "."))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        # without it the final newline goes, and $readmem may lose the last word
        keep_trailing_newline=True,
        trim_blocks=True,
        autoescape=False,
    )
    env.filters["token"] = token
    return env


def token(text: str) -> str:
    """``text`` as one header token: runs of whitespace and commas become one ``_``.

    ``"VGG16_quant_gradual demo, untrained"`` -> ``"VGG16_quant_gradual_demo_untrained"``
    (the course testbench skips whitespace-separated tokens, not lines).
    """
    return "_".join(text.replace(",", " ").split())


def _template(name: str, template_dir: Path | None) -> jinja2.Template:
    env = environment(str(template_dir) if template_dir else None)
    try:
        return env.get_template(name)
    except jinja2.TemplateNotFound as err:
        raise InputError(f"template {name} not found (looked in {template_dir or 'the package'})") from err
    except jinja2.TemplateSyntaxError as err:
        raise InputError(
            f"template {name} ({err.filename or name}, line {err.lineno}) is not valid Jinja: {err.message}"
        ) from err


def _failed(template: jinja2.Template, err: jinja2.TemplateError) -> InputError:
    where = f"template {template.name} ({template.filename})"
    if isinstance(err, jinja2.UndefinedError):
        return InputError(f"{where} uses an unknown variable: {err.message}")
    return InputError(f"{where} cannot be rendered: {err.message}")


def render(name: str, context: dict[str, Any], template_dir: Path | None = None) -> str:
    """Render template ``name`` (e.g. ``hex/memory.hex.j2``) with ``context``."""
    template = _template(name, template_dir)
    try:
        return template.render(**context)
    except jinja2.TemplateError as err:
        raise _failed(template, err) from err


@dataclass(frozen=True)
class MemoryContext:
    """What a memory file's template needs beyond the tensor: its model, layer and format."""

    model: str
    demo_label: str | None
    profile: str
    layer: str
    """How headers name the layer: ``33`` (VGG) or its module path."""
    folder: str
    """The layer's folder in the set (``layer33``, ``layer1.0.conv2``)."""
    conv_number: int
    fmt: str
    depth: Depth
    template_dir: Path | None


def _depth_of(words: int, depth: Depth) -> int:
    return words if depth == "exact" or words <= 1 else 1 << (words - 1).bit_length()


@dataclass(frozen=True, slots=True)
class RenderedMemory:
    """A memory file's content, as chunks to write in order (made as they are read), and what
    rendering it found out for the manifest."""

    content: bytes | Iterable[bytes | memoryview]
    """One ``bytes`` (a small file, as render_memories makes them) or chunks to write in order."""
    facts: RenderedFacts


def render_memory(tp: TensorPlan, ctx: MemoryContext) -> RenderedMemory:
    """Pack and render one memory file; nothing is written (the writer writes and hashes it)."""
    fmt, spec = ctx.fmt, tp.spec
    path = f"{tp.stem}.{fmt}"  # a format's name is its extension
    content: Iterable[bytes | memoryview]
    if fmt == "npy":
        dtype = _npy_dtype(spec.lane_bits, spec.signed)
        content = [_npy_bytes(tp.array, dtype)]
        size = int(tp.array.size)
        return RenderedMemory(content, RenderedFacts(path, fmt, 1, 8 * dtype.itemsize, size, 0, size))
    words = to_words(tp.lane_values(), spec)
    # the course core's text files have fixed line counts: never padded
    depth = _depth_of(words.shape[0], "exact" if fmt == "txt" else ctx.depth)
    content, header_lines = _memory_file(tp, ctx, words, depth)
    facts = RenderedFacts(
        path, fmt, spec.lanes, spec.word_bits, int(words.shape[0]), header_lines, depth, tp.channel_padding
    )
    return RenderedMemory(content, facts)


# stands in for the words while the template renders; the body itself never becomes a str
_BODY = "\x00qexport body\x00"
# stand in for a word's fields while the word macro is called once to learn its syntax
_FIELD = re.compile("\x01([a-z0-9]+)\x02")
_WORD_ARGUMENTS = ("digits", "address", "limbs", "last")


def _memory_file(
    tp: TensorPlan, ctx: MemoryContext, words: np.ndarray, depth: int
) -> tuple[Iterable[bytes | memoryview], int]:
    """A memory file's content (as chunks to write in order) and its header line count.

    The template renders once, with a marker for ``body``; its ``word`` macro (if any) is called
    once to learn a word's line. The words are then spelt in that syntax, a block at a time, in
    place of the marker.
    """
    spec, fmt = tp.spec, ctx.fmt
    name = "txt/address.txt.j2" if fmt == "txt" and tp.tensor == "address" else f"{fmt}/memory.{fmt}.j2"
    template = _template(name, ctx.template_dir)
    padded = formats.padded_to_depth(words, depth, 0)
    try:
        module = template.make_module(_template_context(tp, ctx, words, depth, _BODY))
        text = str(module)
        syntax = _word_syntax(template, getattr(module, "word", None), formats.c_limbs(spec.word_bits))
    except jinja2.TemplateError as err:
        raise _failed(template, err) from err
    where = f"template {name} ({template.filename})"
    pieces = text.split(_BODY)
    if len(pieces) == 1:
        raise InputError(
            f"{where} does not show the words: a memory template must contain {{{{ body }}}} where "
            "the words go (one a line, spelt by its word macro if it has one)"
        )
    if not text.isascii():
        raise InputError(f"{where} writes text that is not ASCII; memory files are ASCII only")
    radix = formats.RADIX[fmt]

    def chunks() -> Iterator[bytes | memoryview]:
        yield pieces[0].encode("ascii")
        for piece in pieces[1:]:  # a custom template may show the words more than once
            yield from formats.word_lines(padded, spec, radix, syntax)
            yield piece.encode("ascii")

    return chunks(), pieces[0].count("\n")


def _word_syntax(template: jinja2.Template, word: Any, limbs: int) -> WordSyntax:
    """A word's line as the template's ``word`` macro spells it (bare digits without one).

    ``{% macro word(address, digits, last) %}    {{ address }} : {{ digits }};{% endmacro %}``
    is called once (and once more with ``last=true``) with stand-ins for the fields.
    """
    if word is None:
        return WordSyntax()
    where = f"template {template.name} ({template.filename})"
    if not isinstance(word, jinja2.runtime.Macro):
        raise InputError(f"{where}: `word` must be a macro: {{% macro word(digits, last) %}}...")
    arguments = tuple(word.arguments)
    unknown = [a for a in arguments if a not in _WORD_ARGUMENTS]
    if unknown:
        raise InputError(
            f"{where}: macro word takes {', '.join(unknown)}; it may take only {', '.join(_WORD_ARGUMENTS)}"
        )
    stand_ins: dict[str, Any] = {
        "digits": "\x01digits\x02",
        "address": "\x01address\x02",
        "limbs": [f"\x01limb{k}\x02" for k in range(limbs)],
    }

    def line(last: bool) -> tuple[Part, ...]:
        given = {**stand_ins, "last": last}
        text = str(word(**{a: given[a] for a in arguments}))
        pieces = _FIELD.split(text)
        parts: list[Part] = []
        for k, piece in enumerate(pieces):
            if k % 2 == 0:
                parts.extend([piece] if piece else [])
            elif piece in ("digits", "address"):
                parts.append(DIGITS if piece == "digits" else Field("address"))
            elif piece.startswith("limb") and piece[4:].isdigit() and int(piece[4:]) < limbs:
                parts.append(Field("limb", int(piece[4:])))
            else:
                raise InputError(f"{where}: macro word changes a field ({piece!r}); show it as it is")
        literal = "".join(p for p in parts if isinstance(p, str))
        if "\x01" in literal or "\x02" in literal:
            raise InputError(f"{where}: macro word changes a field (a filter or slice); show it as it is")
        if not literal.isascii() or any(c in literal for c in "\x00\n\r"):
            raise InputError(
                f"{where}: macro word must give one line of ASCII text around {{{{ digits }}}}; "
                f"it gave {text!r} (end the macro with {{%- endmacro %}} to drop a newline)"
            )
        return tuple(parts)

    return WordSyntax(line(False), line(True))


def _template_context(
    tp: TensorPlan, ctx: MemoryContext, words: np.ndarray, depth: int, body: str
) -> dict[str, Any]:
    spec = tp.spec
    name = tp.stem.rsplit("/", 1)[-1]
    where = ", ".join(f"{key} {value}" for key, value in tp.where.items())
    c_name = f"{ctx.folder}_{name}".replace(".", "_")
    return {
        "version": __version__,
        "model": ctx.model,
        "demo": ctx.demo_label,
        "profile": ctx.profile,
        "layer": ctx.layer,
        "layer_tag": ctx.folder,
        "conv_number": ctx.conv_number,
        "tensor": tp.tensor,
        "name": name,
        "where": where,
        "shape": list(tp.array.shape),
        "axes": list(tp.axes),
        "padded": bool(tp.padded),
        "lanes": spec.lanes,
        "lane_bits": spec.lane_bits,
        "signed": spec.signed,
        "lane_order": spec.lane_order,
        "word_bits": spec.word_bits,
        "words": int(words.shape[0]),
        "depth": depth,
        "fill": 0,
        "body": body,
        "c_name": c_name,
        "c_word_type": formats.c_word_type(spec.word_bits),
        "c_limbs": formats.c_limbs(spec.word_bits),
        "c_value_type": formats.c_value_type(spec),
        # only the C header shows the values; formatting them is not free
        "c_values": formats.c_values(tp.array) if ctx.fmt == "h" and formats.c_value_type(spec) else "",
        "value_count": int(tp.array.size),
    }


def _npy_dtype(bits: int, signed: bool) -> np.dtype[Any]:
    """The smallest signed numpy integer that holds the lanes (unsigned lanes need one more bit)."""
    needed = bits if signed else bits + 1
    for size in (8, 16, 32):
        if needed <= size:
            return np.dtype(f"i{size // 8}")
    return np.dtype("i8")


def _npy_bytes(array: np.ndarray, dtype: np.dtype[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array.astype(dtype)), allow_pickle=False)
    return buffer.getvalue()


# --- many files of one kind: one template render a group, the words packed in one pass -------

# the per-file values of a memory file's context; every other value is the same for a group
_PER_FILE = ("name", "where", "c_name", "c_values")
_FILE_MARK = re.compile("\x01file:([a-z_]+)\x02")
# a window of files rendered together: bounds the bytes held at once (batch 128 has millions of tiles)
_WINDOW_WORDS = 1 << 20


def render_memories(tps: Iterable[TensorPlan], ctx: MemoryContext) -> Iterator[RenderedMemory]:
    """``render_memory`` of each plan, in order, byte for byte, made a group of files at a time.

    Files of one kind (tensor, spec, shape, axes, padding: a layer's thousands of tiles) share all
    but a few values of their template's context (``name``, ``where``, ``c_name``, ``c_values``).
    A group renders its template once, with stand-ins for those, and its words are packed and
    spelt in one numpy pass; each file is then the rendered text with its own values put in and
    its slice of the words. Rendering the group's first file alone checks the stand-in render;
    a template that does more with a per-file value than show it (compares it, filters it) gets
    each file rendered alone wherever the outcome could differ. A group's files come as one
    ``bytes`` each; a file of a kind of its own streams as ``render_memory`` makes it.
    """
    window: list[TensorPlan] = []
    words = 0
    for tp in tps:
        window.append(tp)
        words += -(-int(tp.array.size) // tp.spec.lanes)
        if words >= _WINDOW_WORDS:
            yield from _render_window(window, ctx)
            window, words = [], 0
    yield from _render_window(window, ctx)


def _render_window(tps: list[TensorPlan], ctx: MemoryContext) -> Iterator[RenderedMemory]:
    groups: dict[tuple[Any, ...], list[int]] = {}
    for k, tp in enumerate(tps):
        key = (tp.tensor, tp.spec, tp.array.shape, tp.array.dtype, tp.axes, tp.padded, tp.pad_to)
        groups.setdefault(key, []).append(k)
    done: dict[int, RenderedMemory] = {}
    for members in groups.values():
        group = [tps[k] for k in members]
        rendered = _render_group(group, ctx) if len(group) > 1 and ctx.fmt != "npy" else None
        # a file of its own kind streams (a flat layout's large bodies), a group's files are whole
        if rendered is None:
            rendered = [_whole(tp, ctx) if len(group) > 1 else render_memory(tp, ctx) for tp in group]
        done.update(zip(members, rendered, strict=True))
    for k in range(len(tps)):
        yield done[k]


def _whole(tp: TensorPlan, ctx: MemoryContext) -> RenderedMemory:
    """``render_memory`` with its content copied into one ``bytes`` (its chunks may share a buffer)."""
    rendered = render_memory(tp, ctx)
    return RenderedMemory(b"".join([bytes(chunk) for chunk in rendered.content]), rendered.facts)


class _NotShownOnly(Exception):
    """A template used a per-file value in a way the group's stand-in render cannot stand for."""


_Log = list[tuple[str, Callable[[str], Any], Any]]
"""What a template did with a per-file value: (field, the operation on a value, its outcome)."""


class _StandIn(str):
    """A per-file value while a group's template renders once.

    Shown (``{{ name }}``, ``~``, ``+``) it is its marker, replaced per file afterwards. Anything
    else a template does with it (``!=``, ``if``, ``| length``, a method) is done on the group's
    first file's value and logged, so each other file can be checked to give the same outcome.
    """

    def __new__(cls, field: str, real: str, log: _Log) -> _StandIn:
        self = super().__new__(cls, f"\x01file:{field}\x02")
        object.__setattr__(self, "_state", (field, real, log))
        return self

    def __str__(self) -> str:
        return str.__str__(self)

    def __add__(self, other: object) -> str:
        return str.__str__(self) + str(other)

    def __radd__(self, other: object) -> str:
        return str(other) + str.__str__(self)

    def _done(self, op: Callable[[str], Any]) -> Any:
        field, real, log = object.__getattribute__(self, "_state")
        result = op(real)
        log.append((field, op, result))
        return result

    def __getattribute__(self, attr: str) -> Any:
        if attr in ("_state", "_done", "__class__", "__str__"):
            return object.__getattribute__(self, attr)
        done = object.__getattribute__(self, "_done")
        _field, real, _log = object.__getattribute__(self, "_state")
        if not callable(getattr(real, attr)):
            return done(lambda s: getattr(s, attr))

        def logged(*args: Any, **kwargs: Any) -> Any:
            if any(isinstance(a, _StandIn) for a in (*args, *kwargs.values())):
                raise _NotShownOnly(attr)  # an outcome that depends on two files' values
            return done(lambda s: getattr(s, attr)(*args, **kwargs))

        return logged

    def __bool__(self) -> bool:
        return bool(object.__getattribute__(self, "_done")(bool))


def _logged_dunder(name: str) -> Any:
    def method(self: _StandIn, *args: Any) -> Any:
        return _StandIn.__getattribute__(self, name)(*args)

    method.__name__ = name
    return method


# operators Python looks up on the type, past __getattribute__: each is logged like a method
for _dunder in (
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__", "__len__", "__contains__",
    "__getitem__", "__iter__", "__reversed__", "__mul__", "__rmul__", "__mod__", "__rmod__",
    "__format__",
):  # fmt: skip
    setattr(_StandIn, _dunder, _logged_dunder(_dunder))


def _file_values(tp: TensorPlan, ctx: MemoryContext) -> dict[str, str]:
    """The per-file values of ``_template_context`` (``c_values`` only where a header shows them)."""
    name = tp.stem.rsplit("/", 1)[-1]
    values = {
        "name": name,
        "where": ", ".join(f"{key} {value}" for key, value in tp.where.items()),
        "c_name": f"{ctx.folder}_{name}".replace(".", "_"),
        "c_values": "",
    }
    if ctx.fmt == "h" and formats.c_value_type(tp.spec):
        values["c_values"] = formats.c_values(tp.array)
    return values


def _render_group(group: list[TensorPlan], ctx: MemoryContext) -> list[RenderedMemory] | None:
    """Every file of ``group`` (one kind), or None where the group cannot be made in one pass
    (the caller then renders each file alone, raising what that raises)."""
    first, fmt, spec = group[0], ctx.fmt, group[0].spec
    count, per_file = len(group), int(first.array.size)
    stacked = np.stack([tp.array for tp in group]).reshape(count, per_file)
    padding = first.channel_padding
    if padding is not None:  # zero lanes after each pixel's channels, as lane_values pads them
        lanes = stacked.reshape(count, -1, padding.channels)
        stacked = np.pad(lanes, [(0, 0), (0, 0), (0, padding.padded_channels)]).reshape(count, -1)
        per_file = stacked.shape[1]
    try:
        flat = to_words(stacked, spec)  # one check of the whole group's values
    except QExportError:
        return None  # each file alone says which one and why
    rows = -(-per_file // spec.lanes)
    words = np.zeros((count, rows * spec.lanes), dtype=flat.dtype)
    words[:, :per_file] = flat.reshape(-1)[: count * per_file].reshape(count, per_file)
    depth = _depth_of(rows, "exact" if fmt == "txt" else ctx.depth)
    padded = np.zeros((count, depth, spec.lanes), dtype=flat.dtype)
    padded[:, :rows] = words.reshape(count, rows, spec.lanes)
    name = "txt/address.txt.j2" if fmt == "txt" and first.tensor == "address" else f"{fmt}/memory.{fmt}.j2"
    template = _template(name, ctx.template_dir)
    reals = [_file_values(tp, ctx) for tp in group]
    log: _Log = []
    context = _template_context(first, ctx, padded[0], depth, _BODY)
    context["words"] = rows
    context.update({field: _StandIn(field, reals[0][field], log) for field in _PER_FILE})
    try:
        module = template.make_module(context)
        text = str(module)
        syntax = _word_syntax(template, getattr(module, "word", None), formats.c_limbs(spec.word_bits))
    except (jinja2.TemplateError, QExportError, _NotShownOnly):
        return None
    pieces = _FILE_MARK.split(text)
    literal = "".join(pieces[0::2])
    fields = pieces[1::2]
    if not text.isascii() or "\x01" in literal or "\x02" in literal or not set(fields) <= set(_PER_FILE):
        return None  # a template that changed a marker (a slice, a filter) or shows non-ASCII
    if _BODY not in literal or any(_BODY in value for real in reals for value in real.values()):
        return None
    radix = formats.RADIX[fmt]
    bare = syntax.line == syntax.last == (DIGITS,)
    if bare and depth:
        matrix = line_matrix(padded.reshape(count * depth, spec.lanes), spec, radix, check=False)
        blob, line = matrix.tobytes(), matrix.shape[1]

        def body(f: int) -> bytes:
            return blob[f * depth * line : (f + 1) * depth * line - 1]

    else:

        def body(f: int) -> bytes:
            return b"".join(formats.word_lines(padded[f], spec, radix, syntax))

    path_ext = f".{fmt}"
    out: list[RenderedMemory] = []
    for f, (tp, real) in enumerate(zip(group, reals, strict=True)):
        if f and not all(_same(op, real[field], result) for field, op, result in log):
            out.append(_whole(tp, ctx))
            continue
        filled = "".join(real[p] if k % 2 else p for k, p in enumerate(pieces))
        parts = filled.split(_BODY)
        data = body(f)
        content = parts[0].encode("ascii") + b"".join(data + p.encode("ascii") for p in parts[1:])
        facts = RenderedFacts(
            tp.stem + path_ext,
            fmt,
            spec.lanes,
            spec.word_bits,
            rows,
            parts[0].count("\n"),
            depth,
            tp.channel_padding,
        )
        out.append(RenderedMemory(content, facts))
    alone = _whole(first, ctx)
    if out[0].content != alone.content or out[0].facts != alone.facts:
        return None  # the stand-ins did not stand for the first file's values: render each alone
    return out


def _same(op: Callable[[str], Any], value: str, outcome: Any) -> bool:
    """Whether ``op`` on this file's ``value`` gives the first file's ``outcome``."""
    try:
        mine = op(value)
    except Exception:  # an operation the first file's value took and this one's does not
        return False
    return bool(type(mine) is type(outcome) and mine == outcome)
