"""The library API: each function reads like a recipe, one pipeline stage a line."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from qexport import __version__, formats
from qexport.capture import LayerTensors, capture
from qexport.checkpoint import load_checkpoint, resolve_arch
from qexport.errors import CheckFailed, InputError
from qexport.formats import EXTENSIONS, FORMATS
from qexport.inputs import Inputs, load_array, load_cifar10, load_demo
from qexport.integerize import IntLayer, integerize
from qexport.layout import LayoutOptions, TensorPlan, flat_layout, with_defaults
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
from qexport.pack import to_words
from qexport.profile import Profile, load_profile, parse_profile
from qexport.profile import builtin_names as builtin_profiles
from qexport.quant_layer import DEFAULT_ACT_CLIP, ActClip
from qexport.reference import Psums, conv_psum
from qexport.render import render
from qexport.systolic import systolic_layout
from qexport.write import ExportPlan, write_plan

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


Depth = Literal["exact", "pow2"]


@dataclass(frozen=True)
class _RenderContext:
    loaded: Loaded
    fmt: str
    profile: Profile
    depth: Depth
    template_dir: Path | None


def export(
    opts: SourceOptions,
    layer_ids: Sequence[int] | None,
    out_dir: Path,
    fmt: str | None = None,
    layout: LayoutOptions | None = None,
    *,
    profile: str | Profile = "flat",
    depth: Depth = "exact",
    force: bool = False,
    template_dir: Path | None = None,
) -> ExportResult:
    """Vectors for the named layers (all conv layers if None), written atomically to ``out_dir``.

    ``profile`` names a built-in layout profile or a TOML file; ``fmt`` defaults to its format.
    """
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    plan, manifest, notices = _build_plan(
        opts, layer_ids, fmt or prof.format, layout, prof, depth, template_dir
    )
    write_plan(plan, out_dir, force=force)
    return ExportResult(out_dir, manifest, notices)


def _build_plan(
    opts: SourceOptions,
    layer_ids: Sequence[int] | None,
    fmt: str,
    layout: LayoutOptions | None,
    prof: Profile,
    depth: Depth,
    template_dir: Path | None,
    path_prefix: str = "",
    kind: str = "dump",
) -> tuple[ExportPlan, dict[str, Any], list[str]]:
    """Render every file of an export in memory; nothing touches the disk."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; formats are {', '.join(FORMATS)}")
    if fmt == "txt" and prof.kind == "flat":
        raise InputError("format txt is the course core's file format; use it with --profile course")
    layout = with_defaults(layout or LayoutOptions(), prof.lanes, prof.psum_lanes, prof.lane_order)
    loaded = load(opts)
    selected = _select(loaded.arch, layer_ids)
    captured = {t.layer: t for t in capture(loaded.model, loaded.inputs.images)}
    context = _RenderContext(loaded, fmt, prof, depth, template_dir)
    plan = ExportPlan()
    notices = list(loaded.notices)
    layer_entries = []
    for layer in selected:
        t = captured[layer]
        int_layer, psums = _checked(t)
        if prof.kind == "flat":
            tensors = flat_layout(int_layer, psums, layout, f"{path_prefix}layer{layer}/")
        else:
            folder = "" if len(selected) == 1 else f"layer{layer}/"
            tensors = systolic_layout(int_layer, psums, prof, path_prefix + folder)
        files = [_render_file(tp, t, context, plan) for tp in tensors]
        layer_entries.append(_layer_entry(int_layer, psums, files))
        notices += [tp.notice for tp in tensors if tp.notice]
    manifest = _manifest(loaded, opts, layer_entries, prof, fmt)
    manifest["recipe"] = _recipe(kind, opts, layer_ids, fmt, layout, prof, depth, template_dir)
    plan.add(MANIFEST_NAME, dumps(manifest))
    return plan, manifest, notices


def _path_text(path: Path | None) -> str | None:
    # what the user typed, so `qexport check` runs from the same folder; never an absolute path
    if path is None:
        return None
    return path.name if path.is_absolute() else path.as_posix()


def _recipe(
    kind: str,
    opts: SourceOptions,
    layer_ids: Sequence[int] | None,
    fmt: str,
    layout: LayoutOptions,
    prof: Profile,
    depth: Depth,
    template_dir: Path | None,
) -> dict[str, Any]:
    """Everything `qexport check` needs to regenerate this set, and the command that made it."""
    source = {
        "checkpoint": _path_text(opts.checkpoint),
        "model": opts.model,
        "data_dir": _path_text(opts.data_dir),
        "input_file": _path_text(opts.input_file),
        "images": opts.images,
        "act_clip": opts.act_clip,
        "trust_recomputed": opts.trust_recomputed,
        "bits_config": _path_text(opts.bits_config),
    }
    layout_fields = {
        "lanes": layout.lanes,
        "psum_lanes": layout.psum_lanes,
        "lane_order": layout.lane_order,
        "psum_bits": layout.psum_bits,
        "input_sign": layout.input_sign,
        "pad_input": layout.pad_input,
    }
    builtin = prof.name in builtin_profiles() and load_profile(prof.name).source == prof.source
    return {
        "kind": kind,
        "source": source,
        "layers": "all" if layer_ids is None else list(layer_ids),
        "format": fmt,
        "profile": prof.name if builtin else None,
        "profile_toml": None if builtin else prof.source,
        "depth": depth,
        "layout": layout_fields,
        "template_dir": _path_text(template_dir),
        "command": _command_line(kind, source, layer_ids, fmt, layout_fields, prof.name, depth),
    }


def _command_line(
    kind: str,
    source: dict[str, Any],
    layer_ids: Sequence[int] | None,
    fmt: str,
    layout: dict[str, Any],
    profile: str,
    depth: str,
) -> str:
    words = ["qexport", kind]
    words += ["--all"] if layer_ids is None else ["--layer", ",".join(map(str, layer_ids))]
    if profile != "flat":
        words += ["--profile", profile]
    words += ["--format", fmt]
    flags = {
        "checkpoint": "--checkpoint",
        "model": "--model",
        "data_dir": "--data-dir",
        "input_file": "--input",
        "bits_config": "--bits-config",
    }
    for key, flag in flags.items():
        if source[key] is not None:
            words += [flag, str(source[key])]
    if source["images"] != "0":
        words += ["--images", source["images"]]
    if source["act_clip"] != DEFAULT_ACT_CLIP:
        words += ["--act-clip", source["act_clip"]]
    if source["trust_recomputed"]:
        words.append("--trust-recomputed")
    if kind == "dump":
        if depth != "exact":
            words += ["--depth", depth]
        if profile == "flat":
            for key, flag, default in (
                ("lanes", "--lanes", 8),
                ("psum_lanes", "--psum-lanes", 1),
                ("lane_order", "--lane-order", "lsb_first"),
                ("psum_bits", "--psum-bits", None),
                ("input_sign", "--input-sign", "auto"),
            ):
                if layout[key] != default:
                    words += [flag, str(layout[key])]
            if layout["pad_input"]:
                words.append("--pad-input")
    return " ".join(words)


def testbench(
    opts: SourceOptions,
    layer: int,
    out_dir: Path,
    profile: str | Profile = "course",
    fmt: str = "hex",
    *,
    force: bool = False,
    template_dir: Path | None = None,
) -> ExportResult:
    """A self-checking testbench folder: vectors/, tb.sv, the reference core and run_iverilog.sh."""
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    if prof.kind != "systolic":
        raise InputError(f"profile {prof.name} is {prof.kind}; the testbench drives a systolic core profile")
    if fmt not in ("hex", "bin"):
        raise InputError(
            f"the testbench reads memories with $readmemh/$readmemb; use --format hex or bin, not {fmt}"
        )
    plan, manifest, notices = _testbench_plan(opts, layer, prof, fmt, template_dir)
    write_plan(plan, out_dir, force=force)
    return ExportResult(out_dir, manifest, notices)


def _testbench_plan(
    opts: SourceOptions, layer: int, prof: Profile, fmt: str, template_dir: Path | None
) -> tuple[ExportPlan, dict[str, Any], list[str]]:
    plan, manifest, notices = _build_plan(
        opts, [layer], fmt, None, prof, "exact", template_dir, "vectors/", kind="testbench"
    )
    (entry,) = manifest["layers"]
    context = _testbench_context(manifest, entry, prof, fmt)
    plan.add("tb.sv", render("testbench/tb.sv.j2", context, template_dir))
    plan.add(
        "run_iverilog.sh", render("testbench/run_iverilog.sh.j2", context, template_dir), executable=True
    )
    plan.add("qexport_ref_core.v", render("testbench/qexport_ref_core.v", {}, template_dir))
    return plan, manifest, notices


def regenerate(recipe: dict[str, Any], base: Path) -> ExportPlan:
    """Render again, in memory, the set a manifest's recipe describes (paths relative to ``base``)."""
    with contextlib.chdir(base):  # the recipe's paths are relative to where the set was made
        return _regenerate(recipe)


def _regenerate(recipe: dict[str, Any]) -> ExportPlan:
    src = recipe["source"]

    def path(key: str) -> Path | None:
        return None if src.get(key) is None else Path(src[key])

    opts = SourceOptions(
        checkpoint=path("checkpoint"),
        model=src["model"],
        data_dir=path("data_dir"),
        input_file=path("input_file"),
        images=src["images"],
        act_clip=src["act_clip"],
        trust_recomputed=src["trust_recomputed"],
        bits_config=path("bits_config"),
    )
    if recipe["profile_toml"] is not None:
        prof = parse_profile(recipe["profile_toml"], "the manifest's recipe profile")
    else:
        prof = load_profile(recipe["profile"])
    template_dir = None if recipe["template_dir"] is None else Path(recipe["template_dir"])
    layers = None if recipe["layers"] == "all" else [int(i) for i in recipe["layers"]]
    if recipe["kind"] == "testbench":
        (layer,) = layers or [0]
        return _testbench_plan(opts, layer, prof, recipe["format"], template_dir)[0]
    layout = LayoutOptions(**recipe["layout"])
    return _build_plan(opts, layers, recipe["format"], layout, prof, recipe["depth"], template_dir)[0]


def _testbench_context(
    manifest: dict[str, Any], entry: dict[str, Any], prof: Profile, fmt: str
) -> dict[str, Any]:
    files = entry["files"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for f in files:
        by_kind.setdefault(f["tensor"], []).append(f)
    activation = {(f["tile"], f["itile"]): f["path"] for f in by_kind["input"]}
    weights = {(f["itile"], f["otile"], f["kij"]): f["path"] for f in by_kind["weight"]}
    itiles = 1 + max(i for _, i in activation)
    tiles = []
    for out in by_kind["output"]:
        s, o = out["tile"], out["otile"]
        tiles.append(
            {
                "tile": s,
                "otile": o,
                "n": out["n"],
                "y0": out["y"][0],
                "x0": out["x"][0],
                "oc0": out["oc"][0],
                "oc1": out["oc"][1],
                "out": out["path"],
                "itiles": [
                    {"activation": activation[(s, i)], "weights": [weights[(i, o, k)] for k in range(9)]}
                    for i in range(itiles)
                ],
            }
        )
    address = by_kind.get("address", [{"path": ""}])[0]["path"]
    return {
        "version": __version__,
        "model": manifest["model"],
        "demo": manifest.get("label"),
        "profile": prof.name,
        "layer": entry["index"],
        "radix": "h" if fmt == "hex" else "b",
        "rows": prof.rows,
        "cols": prof.cols,
        "act_bits": prof.act_bits,
        "w_bits": prof.w_bits,
        "psum_bits": prof.psum_bits,
        "out_bits": by_kind["output"][0]["lane_bits"],
        "tile": prof.tile,
        "address_bits": prof.address_bits,
        "weight_stationary": prof.dataflow == "weight_stationary",
        "relu": "relu" in prof.golden,
        "address_file": address,
        "tiles": sorted(tiles, key=lambda t: (t["tile"], t["otile"])),
        "dut": "qexport_ref_core",
        "dut_file": "qexport_ref_core.v",
    }


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


def _depth_of(words: int, depth: Depth) -> int:
    return words if depth == "exact" or words <= 1 else 1 << (words - 1).bit_length()


def _render_file(tp: TensorPlan, t: LayerTensors, ctx: _RenderContext, plan: ExportPlan) -> dict[str, Any]:
    fmt, spec = ctx.fmt, tp.spec
    path = f"{tp.stem}.{EXTENSIONS[fmt]}"
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
        content = _npy_bytes(tp.array, spec.lane_bits, spec.signed)
        entry |= {"lanes": 1, "word_bits": 8 * _npy_dtype(spec.lane_bits).itemsize, "words": tp.array.size}
        entry |= {"header_lines": 0, "depth": tp.array.size, "fill": 0}
    else:
        words = to_words(tp.array, spec)
        # the course core's text files have fixed line counts: never padded
        depth = _depth_of(words.shape[0], "exact" if fmt == "txt" else ctx.depth)
        text = render(f"{fmt}/memory.{fmt}.j2", _template_context(tp, t, ctx, words, depth), ctx.template_dir)
        if fmt == "txt" and tp.tensor == "address":
            text = render("txt/address.txt.j2", {"body": formats.body(words, spec, "txt")}, ctx.template_dir)
        content = text.encode("ascii")
        entry |= {"lanes": spec.lanes, "word_bits": spec.word_bits, "words": int(words.shape[0])}
        entry |= {"header_lines": _header_lines(text, fmt, words.shape[0], depth), "depth": depth, "fill": 0}
    entry["sha256"] = hashlib.sha256(content).hexdigest()
    plan.add(path, content)
    return entry


def _header_lines(text: str, fmt: str, words: int, depth: int) -> int:
    """Lines before the first data word (for hex/bin/txt: total lines minus the words)."""
    if fmt in ("hex", "bin", "txt"):
        return text.count("\n") - depth
    marker = {"coe": "memory_initialization_vector=", "mif": "CONTENT BEGIN", "h": "_words"}[fmt]
    lines = text.split("\n")
    return next(i for i, line in enumerate(lines) if marker in line) + 1


def _template_context(
    tp: TensorPlan, t: LayerTensors, ctx: _RenderContext, words: np.ndarray, depth: int
) -> dict[str, Any]:
    spec = tp.spec
    loaded = ctx.loaded
    padded_words = formats.padded_to_depth(words, depth, 0)
    name = tp.stem.rsplit("/", 1)[-1]
    label = loaded.arch.name + (f"_{loaded.demo_label}" if loaded.demo_label else "")
    where = ", ".join(f"{key} {value}" for key, value in sorted(tp.meta.items()))
    c_name = f"layer{t.layer}_{name}"
    return {
        "version": __version__,
        "model": loaded.arch.name,
        "demo": loaded.demo_label,
        "profile": ctx.profile.name,
        "layer": t.layer,
        "conv_number": t.conv_number,
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
        "body": formats.body(padded_words, spec, ctx.fmt),  # type: ignore[arg-type]
        "tokens": [
            f"#qexport_{__version__}_do_not_edit#",
            "#" + "_".join(label.replace(",", " ").split()) + "#",
            f"#layer{t.layer}_{name}#",
        ],
        "c_name": c_name,
        "c_word_type": formats.c_word_type(spec.word_bits),
        "c_limbs": formats.c_limbs(spec.word_bits),
        "c_value_type": formats.c_value_type(spec),
        "c_values": formats.c_values(tp.array) if formats.c_value_type(spec) else "",
        "value_count": int(tp.array.size),
    }


def _npy_dtype(bits: int) -> np.dtype[Any]:
    for size in (8, 16, 32):
        if bits <= size:
            return np.dtype(f"i{size // 8}")
    return np.dtype("i8")


def _npy_bytes(array: np.ndarray, bits: int, signed: bool) -> bytes:
    # signed dtype even for unsigned lanes: one more bit than needed, but never a wrap-around
    dtype = _npy_dtype(bits + (0 if signed else 1))
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array.astype(dtype)), allow_pickle=False)
    return buffer.getvalue()


def _manifest(
    loaded: Loaded, opts: SourceOptions, layer_entries: list[dict[str, Any]], profile: Profile, fmt: str
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "qexport_version": __version__,
        "schema": MANIFEST_SCHEMA,
        "model": loaded.arch.name,
        "source": loaded.source,
        "inputs": {**loaded.inputs.source, "count": len(loaded.inputs.indices)},
        "act_clip": opts.act_clip,
        "profile": profile.name,
        "format": fmt,
        "layers": layer_entries,
    }
    if loaded.demo_label:
        manifest["label"] = loaded.demo_label
    return manifest
