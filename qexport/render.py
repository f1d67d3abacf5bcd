"""The one Jinja environment: strict, newline-keeping, loading templates through the package."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np

from qexport import __version__, formats
from qexport.errors import InputError
from qexport.layout import TensorPlan
from qexport.pack import Radix, line_blocks, to_words
from qexport.write import FileSink

Depth = Literal["exact", "pow2"]


@lru_cache(maxsize=4)
def environment(template_dir: str | None = None) -> jinja2.Environment:
    """Package templates, with ``template_dir`` (if given) searched first to override any by name."""
    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        loaders.append(jinja2.FileSystemLoader(template_dir))
    loaders.append(jinja2.PackageLoader("qexport.templates", "."))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        # without it the final newline goes, and $readmem may lose the last word
        keep_trailing_newline=True,
        trim_blocks=True,
        autoescape=False,
    )


def render(name: str, context: dict[str, Any], template_dir: Path | None = None) -> str:
    """Render template ``name`` (e.g. ``hex/memory.hex.j2``) with ``context``."""
    env = environment(str(template_dir) if template_dir else None)
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as err:
        raise InputError(f"template {name} not found (looked in {template_dir or 'the package'})") from err
    except jinja2.UndefinedError as err:
        raise InputError(f"template {name} uses an unknown variable: {err.message}") from err


@dataclass(frozen=True)
class MemoryContext:
    """What a memory file's template needs beyond the tensor: its model, layer and format."""

    model: str
    demo_label: str | None
    profile: str
    layer: int
    conv_number: int
    fmt: str
    depth: Depth
    template_dir: Path | None


def _depth_of(words: int, depth: Depth) -> int:
    return words if depth == "exact" or words <= 1 else 1 << (words - 1).bit_length()


def render_memory(tp: TensorPlan, ctx: MemoryContext, plan: FileSink) -> dict[str, Any]:
    """Render one memory file into ``plan`` and return its manifest entry."""
    fmt, spec = ctx.fmt, tp.spec
    path = f"{tp.stem}.{fmt}"  # a format's name is its extension
    shape = list(tp.array.shape)
    entry: dict[str, Any] = {
        "path": path,
        "tensor": tp.tensor,
        "format": fmt,
        "shape": shape,
        "axes": list(tp.axes),
        "lane_bits": spec.lane_bits,
        "signed": spec.signed,
        "lane_order": spec.lane_order,
        **tp.meta,
    }
    if tp.padded is not None:
        entry["padded"] = bool(tp.padded)
    if fmt == "npy":
        dtype = _npy_dtype(spec.lane_bits, spec.signed)
        content: Iterable[bytes | memoryview] = [_npy_bytes(tp.array, dtype)]
        entry |= {"lanes": 1, "word_bits": 8 * dtype.itemsize, "words": tp.array.size}
        entry |= {"header_lines": 0, "depth": tp.array.size, "fill": 0}
    else:
        values, channel_padding = tp.lane_values()
        words = to_words(values, spec)
        # the course core's text files have fixed line counts: never padded
        depth = _depth_of(words.shape[0], "exact" if fmt == "txt" else ctx.depth)
        content, header_lines = _memory_file(tp, ctx, words, depth)
        entry |= {"lanes": spec.lanes, "word_bits": spec.word_bits, "words": int(words.shape[0])}
        entry |= {"header_lines": header_lines, "depth": depth, "fill": 0} | channel_padding
    digest = hashlib.sha256()
    plan.add(path, _hashed(content, digest.update))  # the sink takes every chunk before add returns
    entry["sha256"] = digest.hexdigest()
    return entry


def _hashed(
    chunks: Iterable[bytes | memoryview], update: Callable[[bytes | memoryview], None]
) -> Iterator[bytes | memoryview]:
    """Pass ``chunks`` on, hashing each while it is still in cache (a block may be reused after)."""
    for chunk in chunks:
        update(chunk)
        yield chunk


# stands in for a line-a-word body while the template renders; the body itself never becomes a str
_BODY = "\x00qexport body\x00"


def _memory_file(
    tp: TensorPlan, ctx: MemoryContext, words: np.ndarray, depth: int
) -> tuple[Iterable[bytes | memoryview], int]:
    """A memory file's content (as chunks to write in order) and its header line count."""
    spec, fmt = tp.spec, ctx.fmt
    if fmt == "txt" and tp.tensor == "address":
        text = render("txt/address.txt.j2", {"body": formats.body(words, spec, "txt")}, ctx.template_dir)
        return [text.encode("ascii")], _header_lines(text, fmt, depth)
    name = f"{fmt}/memory.{fmt}.j2"
    padded = formats.padded_to_depth(words, depth, 0)
    if fmt in ("hex", "bin", "txt"):
        text = render(name, _template_context(tp, ctx, words, depth, _BODY), ctx.template_dir)
        head, found, tail = text.partition(_BODY)
        if found and _BODY not in tail:  # else a custom template shows the body twice: render it whole
            # without its last newline, as formats.body
            radix: Radix = "hex" if fmt == "hex" else "bin"
            lines = line_blocks(padded, spec, radix, last_newline=False, check=False)  # to_words checked
            newlines = head.count("\n") + max(padded.shape[0] - 1, 0) + tail.count("\n")
            return chain([head.encode("ascii")], lines, [tail.encode("ascii")]), newlines - depth
    body = formats.body(padded, spec, fmt)  # type: ignore[arg-type]
    text = render(name, _template_context(tp, ctx, words, depth, body), ctx.template_dir)
    return [text.encode("ascii")], _header_lines(text, fmt, depth)


def _header_lines(text: str, fmt: str, depth: int) -> int:
    """Lines before the first data word (for hex/bin/txt: total lines minus the words)."""
    if fmt in ("hex", "bin", "txt"):
        return text.count("\n") - depth
    marker = {"coe": "memory_initialization_vector=", "mif": "CONTENT BEGIN", "h": "_words"}[fmt]
    lines = text.split("\n")
    return next(i for i, line in enumerate(lines) if marker in line) + 1


def _template_context(
    tp: TensorPlan, ctx: MemoryContext, words: np.ndarray, depth: int, body: str
) -> dict[str, Any]:
    spec = tp.spec
    name = tp.stem.rsplit("/", 1)[-1]
    label = ctx.model + (f"_{ctx.demo_label}" if ctx.demo_label else "")
    where = ", ".join(f"{key} {value}" for key, value in sorted(tp.meta.items()))
    c_name = f"layer{ctx.layer}_{name}"
    return {
        "version": __version__,
        "model": ctx.model,
        "demo": ctx.demo_label,
        "profile": ctx.profile,
        "layer": ctx.layer,
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
        "tokens": [
            f"#qexport_{__version__}_do_not_edit#",
            "#" + "_".join(label.replace(",", " ").split()) + "#",
            f"#layer{ctx.layer}_{name}#",
        ],
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
