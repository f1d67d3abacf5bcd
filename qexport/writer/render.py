"""The one Jinja environment: strict, newline-keeping, loading templates through the package."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np

from qexport import __version__
from qexport.errors import InputError
from qexport.layout.flat import TensorPlan
from qexport.writer import formats
from qexport.writer.formats import DIGITS, Field, Part, WordSyntax
from qexport.writer.manifest import RenderedFacts
from qexport.writer.pack import to_words

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

    content: Iterable[bytes | memoryview]
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
