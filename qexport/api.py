"""The library API: each function reads like a recipe, one pipeline stage a line."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from qexport import __version__
from qexport.capture import LayerTensors, capture
from qexport.checkpoint import load_checkpoint, resolve_arch
from qexport.errors import CheckFailed, InputError
from qexport.inputs import Inputs, load_array, load_cifar10, load_demo
from qexport.integerize import IntLayer, integerize
from qexport.layout import LayoutOptions, TensorPlan, flat_layout
from qexport.manifest import MANIFEST_NAME, MANIFEST_SCHEMA, dumps
from qexport.model import (
    DEFAULT_MODEL,
    Arch,
    VGGQuant,
    apply_act_bits,
    build_model,
    builtin_arch,
    load_weights,
    read_bits_config,
)
from qexport.pack import format_words, to_words
from qexport.quant_layer import DEFAULT_ACT_CLIP, ActClip
from qexport.reference import Psums, conv_psum
from qexport.render import render
from qexport.write import ExportPlan, write_plan

Format = Literal["hex", "bin", "npy"]
FORMATS: tuple[Format, ...] = ("hex", "bin", "npy")
_CIFAR_FOLDER = "cifar-10-batches-py"


@dataclass(frozen=True)
class SourceOptions:
    """Where the model and the images come from; every field has the CLI flag of its name."""

    checkpoint: Path | None = None
    model: str | None = None
    data_dir: Path | None = None
    input_file: Path | None = None
    images: str = "0"
    download: bool = False
    act_clip: ActClip = DEFAULT_ACT_CLIP
    trust_recomputed: bool = False
    device: str | None = None
    bits_config: Path | None = None


@dataclass(frozen=True)
class Loaded:
    model: VGGQuant
    arch: Arch
    inputs: Inputs
    source: dict[str, Any]
    demo_label: str | None
    notices: list[str] = field(default_factory=list)


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(opts: SourceOptions) -> Loaded:
    """Model (checkpoint or demo) and inputs (file, CIFAR-10 or demo images)."""
    from qexport.demo import DEMO_LABEL, demo_model

    notices: list[str] = []
    if opts.checkpoint is not None:
        ckpt = load_checkpoint(opts.checkpoint)
        arch = resolve_arch(ckpt, opts.model)
        model = build_model(arch, opts.act_clip)
        load_weights(model, ckpt.state_dict, trust_recomputed=opts.trust_recomputed)
        source: dict[str, Any] = {"checkpoint": ckpt.name, "sha256": ckpt.sha256}
        demo_label = None
    else:
        arch = builtin_arch(opts.model or DEFAULT_MODEL)
        model = demo_model(arch, opts.act_clip)
        source = {"demo": True}
        demo_label = DEMO_LABEL
    if opts.bits_config is not None:
        apply_act_bits(model, read_bits_config(opts.bits_config, arch))
    inputs = _inputs(opts, notices)
    model.eval()
    model.to(_device(opts.device))
    return Loaded(model, arch, inputs, source, demo_label, notices)


def _inputs(opts: SourceOptions, notices: list[str]) -> Inputs:
    if opts.input_file is not None:
        return load_array(opts.input_file, opts.images if opts.images != "0" else "")
    if opts.data_dir is not None or opts.download:
        return load_cifar10(opts.data_dir or Path("data"), opts.images, download=opts.download)
    if (Path("data") / _CIFAR_FOLDER).is_dir():
        return load_cifar10(Path("data"), opts.images)
    if opts.checkpoint is not None:
        notices.append("no CIFAR-10 under ./data and no --input: using the demo images")
    return load_demo(opts.images)


@dataclass(frozen=True)
class LayerInfo:
    layer: int
    conv_number: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    w_bit: int
    act_bit: int
    act_alpha: float
    wgt_alpha: float
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def layers(opts: SourceOptions) -> tuple[Loaded, list[LayerInfo]]:
    """The conv layers of the model, with shapes from one forward pass of one image."""
    loaded = load(opts)
    captured = capture(loaded.model, loaded.inputs.images[:1])
    infos = []
    for t in captured:
        conv = t.module
        infos.append(
            LayerInfo(
                t.layer,
                t.conv_number,
                conv.in_channels,
                conv.out_channels,
                int(conv.kernel_size[0]),
                int(conv.stride[0]),
                int(conv.padding[0]),
                conv.w_bit,
                conv.act_bit,
                float(conv.act_alpha.detach()),
                float(conv.weight_quant.wgt_alpha.detach()),
                tuple(t.x.shape[1:]),
                tuple(t.y.shape[1:]),
            )
        )
    return loaded, infos


def _select(arch: Arch, layer_ids: Sequence[int] | None) -> list[int]:
    convs = arch.qconv_indices()
    if layer_ids is None:
        return convs
    for layer in layer_ids:
        if layer not in convs:
            what = (
                f"features[{layer}] is a {arch.features[layer].kind}"
                if 0 <= layer < len(arch.features)
                else f"features has {len(arch.features)} entries, so {layer} is out of range"
            )
            raise InputError(
                f"--layer {layer} is not a quantized conv layer of {arch.name} ({what}); valid "
                f"layers are {', '.join(map(str, convs))} (see `qexport layers`)"
            )
    return list(layer_ids)


@dataclass(frozen=True)
class LayerCheck:
    layer: int
    conv_number: int
    checks: dict[str, float | bool | None]


def verify(opts: SourceOptions, layer_ids: Sequence[int] | None = None) -> tuple[Loaded, list[LayerCheck]]:
    """Run the seeds' checks on every (or the named) conv layer; the caller decides on failure."""
    loaded = load(opts)
    wanted = set(_select(loaded.arch, layer_ids))
    results = []
    for t in capture(loaded.model, loaded.inputs.images):
        if t.layer in wanted:
            psums = conv_psum(integerize(t))
            results.append(LayerCheck(t.layer, t.conv_number, psums.checks))
    return loaded, results


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: dict[str, Any]
    notices: list[str]


def export(
    opts: SourceOptions,
    layer_ids: Sequence[int] | None,
    out_dir: Path,
    fmt: Format = "hex",
    layout: LayoutOptions | None = None,
    *,
    force: bool = False,
    template_dir: Path | None = None,
    profile: str = "flat",
) -> ExportResult:
    """Vectors for the named layers (all conv layers if None), written atomically to ``out_dir``."""
    layout = layout or LayoutOptions()
    loaded = load(opts)
    selected = _select(loaded.arch, layer_ids)
    captured = {t.layer: t for t in capture(loaded.model, loaded.inputs.images)}
    plan = ExportPlan()
    notices = list(loaded.notices)
    layer_entries = []
    for layer in selected:
        if profile == "flat":
            entry, layer_notices = _export_layer(captured[layer], loaded, fmt, layout, plan, template_dir)
        else:
            prefix = "" if len(selected) == 1 else f"layer{layer}/"
            entry, layer_notices = _export_course(
                captured[layer], loaded, profile, prefix, plan, template_dir
            )
        layer_entries.append(entry)
        notices += layer_notices
    manifest = _manifest(loaded, opts, layer_entries)
    plan.add(MANIFEST_NAME, dumps(manifest))
    write_plan(plan, out_dir, force=force)
    return ExportResult(out_dir, manifest, notices)


def _checked(t: LayerTensors) -> tuple[IntLayer, Psums]:
    int_layer = integerize(t)
    psums = conv_psum(int_layer)
    if not psums.checks["passed"]:
        raise CheckFailed(
            f"layer {t.layer}: recovered output differs from the float model (mean error "
            f"{psums.checks['output_mean_error']:.3g}); the integers would be wrong, so nothing "
            "was written. Run `qexport verify` for the table"
        )
    return int_layer, psums


def _layer_entry(int_layer: IntLayer, psums: Psums, files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "index": int_layer.layer,
        "conv_number": int_layer.conv_number,
        "in_channels": int_layer.in_channels,
        "out_channels": int_layer.out_channels,
        "kernel": int_layer.kernel,
        "stride": int_layer.stride,
        "padding": int_layer.padding,
        "w_bit": int_layer.w_bit,
        "act_bit": int_layer.act_bit,
        "act_clip": int_layer.act_clip,
        "act_alpha": int_layer.act_alpha,
        "wgt_alpha": int_layer.wgt_alpha,
        "w_delta": int_layer.w_delta,
        "x_delta": int_layer.x_delta,
        "input_shape": list(int_layer.x_int.shape),
        "output_shape": list(psums.psum.shape),
        "checks": psums.checks,
        "files": files,
    }


_COURSE_SHAPES = {
    "weight": (("oc", "kh", "kw", "ic"), lambda v: [v.shape[0], 1, 1, v.shape[1]]),
    "input": (("n", "h", "w", "c"), None),
    "psum": (("n", "h", "w", "c"), None),
    "output": (("n", "h", "w", "c"), None),
    "address": (("pixel", "kij"), lambda v: [v.shape[0] // 9, 9]),
}


def _export_course(
    t: LayerTensors, loaded: Loaded, profile: str, prefix: str, plan: ExportPlan, template_dir: Path | None
) -> tuple[dict[str, Any], list[str]]:
    from qexport.course import COURSE, course_layout

    if profile != "course":
        raise InputError(f"unknown profile {profile!r}; built-in profiles are flat and course")
    int_layer, psums = _checked(t)
    label = loaded.arch.name + (f" {loaded.demo_label}" if loaded.demo_label else "")
    entries = []
    for cf in course_layout(int_layer, psums, COURSE, label):
        body = cf.body().removesuffix("\n")
        template = "course/acc_address.txt.j2" if cf.kind == "address" else "course/memory.txt.j2"
        text = render(template, {"header": list(cf.header), "body": body}, template_dir)
        content = text.encode("ascii")
        tensor = "input" if cf.kind == "activation" else cf.kind
        axes, shape_of = _COURSE_SHAPES[tensor]
        if shape_of is not None:
            shape = shape_of(cf.values)
        else:
            side = int(round(cf.values.shape[0] ** 0.5))
            shape = [1, side, side, cf.values.shape[1]]
        plan.add(prefix + cf.path, content)
        entry: dict[str, Any] = {
            "path": prefix + cf.path,
            "tensor": tensor,
            "format": "bin",
            "shape": shape,
            "axes": list(axes),
            "lanes": cf.spec.lanes,
            "lane_bits": cf.spec.lane_bits,
            "signed": cf.spec.signed,
            "lane_order": cf.spec.lane_order,
            "word_bits": cf.spec.word_bits,
            "words": int(cf.values.shape[0]),
            "header_lines": len(cf.header),
            "sha256": hashlib.sha256(content).hexdigest(),
            **cf.meta,
        }
        if tensor == "input":
            entry["padded"] = True
        entries.append(entry)
    return _layer_entry(int_layer, psums, entries), []


def _export_layer(
    t: LayerTensors,
    loaded: Loaded,
    fmt: Format,
    layout: LayoutOptions,
    plan: ExportPlan,
    template_dir: Path | None,
) -> tuple[dict[str, Any], list[str]]:
    int_layer, psums = _checked(t)
    tensors = flat_layout(int_layer, psums, layout)
    files = [_render_file(tp, t.layer, t.conv_number, loaded, fmt, plan, template_dir) for tp in tensors]
    entry = _layer_entry(int_layer, psums, files)
    return entry, [tp.notice for tp in tensors if tp.notice]


_EXTENSIONS = {"hex": "hex", "bin": "bin", "npy": "npy"}


def _render_file(
    tp: TensorPlan,
    layer: int,
    conv_number: int,
    loaded: Loaded,
    fmt: Format,
    plan: ExportPlan,
    template_dir: Path | None,
) -> dict[str, Any]:
    path = f"layer{layer}/{tp.tensor}.{_EXTENSIONS[fmt]}"
    spec = tp.spec
    shape = list(tp.array.shape)
    if fmt == "npy":
        content = _npy_bytes(tp.array, spec.lane_bits, spec.signed)
        words, header_lines, lanes, word_bits = (
            tp.array.size,
            0,
            1,
            8 * _npy_dtype(spec.lane_bits, spec.signed).itemsize,
        )
    else:
        words_array = to_words(tp.array, spec)
        body = format_words(words_array, spec, fmt)
        context = {
            "version": __version__,
            "model": loaded.arch.name,
            "demo": loaded.demo_label,
            "layer": layer,
            "conv_number": conv_number,
            "tensor": tp.tensor,
            "shape": shape,
            "axes": list(tp.axes),
            "padded": bool(tp.padded),
            "lanes": spec.lanes,
            "lane_bits": spec.lane_bits,
            "signed": spec.signed,
            "lane_order": spec.lane_order,
            "word_bits": spec.word_bits,
            "words": words_array.shape[0],
            "body": body.removesuffix("\n"),
        }
        text = render(f"{fmt}/memory.{fmt}.j2", context, template_dir)
        content = text.encode("ascii")
        words = words_array.shape[0]
        header_lines = text.count("\n") - words
        lanes, word_bits = spec.lanes, spec.word_bits
    plan.add(path, content)
    entry: dict[str, Any] = {
        "path": path,
        "tensor": tp.tensor,
        "format": fmt,
        "shape": shape,
        "axes": list(tp.axes),
        "lanes": lanes,
        "lane_bits": spec.lane_bits,
        "signed": spec.signed,
        "lane_order": spec.lane_order,
        "word_bits": word_bits,
        "words": words,
        "header_lines": header_lines,
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    if tp.padded is not None:
        entry["padded"] = bool(tp.padded)
    return entry


def _npy_dtype(bits: int, signed: bool) -> np.dtype[Any]:
    for size in (8, 16, 32, 64):
        if bits <= size:
            return np.dtype(f"{'i' if signed else 'u'}{size // 8}")
    return np.dtype("i8")


def _npy_bytes(array: np.ndarray, bits: int, signed: bool) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array.astype(_npy_dtype(bits, signed))), allow_pickle=False)
    return buffer.getvalue()


def _manifest(loaded: Loaded, opts: SourceOptions, layer_entries: list[dict[str, Any]]) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "qexport_version": __version__,
        "schema": MANIFEST_SCHEMA,
        "model": loaded.arch.name,
        "source": loaded.source,
        "inputs": {**loaded.inputs.source, "count": len(loaded.inputs.indices)},
        "act_clip": opts.act_clip,
        "layers": layer_entries,
    }
    if loaded.demo_label:
        manifest["label"] = loaded.demo_label
    return manifest
