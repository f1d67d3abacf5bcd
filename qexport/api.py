"""The library API: each function reads like a recipe, one pipeline stage a line."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np

from qexport import __version__
from qexport.errors import CheckFailed, InputError
from qexport.frontend.capture import LayerSettings, LayerTensors, capture
from qexport.frontend.models.network import ConvRef, layer_label
from qexport.frontend.models.quant import ActClip
from qexport.frontend.source import Loaded as Loaded  # re-exported, as SourceOptions and load
from qexport.frontend.source import SourceOptions as SourceOptions
from qexport.frontend.source import load as load
from qexport.ir.checks import LayerChecks
from qexport.ir.fixed_point import FixedPointWidths, LayerFixedPoint
from qexport.ir.integerize import IntLayer, integerize
from qexport.ir.reference import Psums, TiledPsums, check_tiled, conv_psum, integer_conv, tiled_psums
from qexport.ir.sfu import LayerSfu, sfu_output
from qexport.layout.arrange import arrange
from qexport.layout.flat import LayerPlan, LayoutOptions, TensorPlan, with_defaults
from qexport.layout.profile import Profile, load_profile, parse_profile
from qexport.layout.systolic import check_systolic
from qexport.verify.testbench import check_drivable, testbench_context
from qexport.writer.formats import FORMATS
from qexport.writer.manifest import (
    MANIFEST_NAME,
    ArrayEntry,
    CheckpointRecord,
    ClassifierEntry,
    FileEntry,
    FixedPointEntry,
    InputsRecord,
    LayerEntry,
    Manifest,
    Recipe,
    RecipeKind,
    RequantEntry,
    Source,
    SvPackageEntry,
    dumps,
    file_entry,
)
from qexport.writer.recipe import build_recipe, find_checkpoint
from qexport.writer.render import Depth, MemoryContext, RenderedMemory, render, render_memories
from qexport.writer.sv_package import SV_PACKAGE_NAME, render_sv_package
from qexport.writer.write import ExportPlan, FileSink, staged, write_hashed

if TYPE_CHECKING:
    from qexport.infer import InferReport
    from qexport.infer.chain import Chain
    from qexport.infer.resnet_files import ResNetSfu
    from qexport.ir.sfu import Thresholds


@dataclass(frozen=True)
class LayerInfo(LayerSettings):
    """One conv layer as ``qexport layers`` lists it: its captured settings and (C, H, W) shapes."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    next_check: bool
    """Whether the seeds' ReLU(recovered) vs next-conv-input check applies (only a ReLU between)."""

    @classmethod
    def of(cls, t: LayerTensors) -> LayerInfo:
        return cls(
            **t.settings(),
            input_shape=tuple(t.x.shape[1:]),
            output_shape=tuple(t.y.shape[1:]),
            next_check=t.next_x is not None,
        )


def layers(opts: SourceOptions) -> tuple[Loaded, list[LayerInfo]]:
    """The conv layers of the model, with shapes from one forward pass of one image."""
    loaded = load(opts)
    captured = capture(loaded.model, loaded.inputs.images[:1], bits=loaded.bits)
    return loaded, [LayerInfo.of(t) for t in captured]


LayerId = int | str
"""A conv layer by module path (``"layer1.0.conv2"``), VGG features index (``33``) or conv number."""


def _select(loaded: Loaded, layer_ids: Sequence[LayerId] | None, skip_invalid: bool = False) -> list[ConvRef]:
    """The named layers (each once, in the order given), or every one; a layer that cannot be
    exported (:meth:`Loaded.blocked`) is refused by name, or with ``skip_invalid`` left out of
    ``--all``."""
    table = loaded.table
    blocked = loaded.blocked()
    if layer_ids is not None:
        refs = list({ref.name: ref for ref in (table.resolve(layer) for layer in layer_ids)}.values())
        for ref in refs:
            if ref.name in blocked:
                raise InputError(blocked[ref.name])
        return refs
    if blocked and not skip_invalid:
        bad = sorted(loaded.report.problems, key=table.names().index)
        reasons = " ".join(loaded.report.problems[name] for name in bad)
        raise InputError(
            f"{len(bad)} layer(s) of {table.model} cannot be exported ({', '.join(bad)}), nor the "
            f"{len(blocked) - len(bad)} after them that see their output: {reasons} Pass "
            "--skip-invalid to export the other layers, or name layers with --layer"
        )
    return [ref for ref in table.convs if ref.name not in blocked]


@dataclass(frozen=True)
class LayerCheck:
    name: str
    layer: int | None
    conv_number: int
    checks: LayerChecks

    @property
    def label(self) -> str:
        return layer_label(self.name, self.layer)


def verify(
    opts: SourceOptions, layer_ids: Sequence[LayerId] | None = None, skip_invalid: bool = False
) -> tuple[Loaded, list[LayerCheck]]:
    """Run the seeds' checks on every (or the named) conv layer; the caller decides on failure."""
    loaded = load(opts)
    wanted = {ref.name for ref in _select(loaded, layer_ids, skip_invalid)}
    results = []
    for t in capture(loaded.model, loaded.inputs.images, bits=loaded.bits):
        if t.name in wanted:
            psums = conv_psum(integerize(t))
            results.append(LayerCheck(t.name, t.layer, t.conv_number, psums.checks))
    return loaded, results


@dataclass
class StageTimes:
    """Seconds spent in each stage of an export (summed over layers)."""

    load: float = 0.0
    forward_capture: float = 0.0
    integerize_reference: float = 0.0
    pack_write: float = 0.0

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, stage, getattr(self, stage) + time.perf_counter() - start)

    def describe(self) -> str:
        stages = (
            f"load {self.load:.2f} s, forward+capture {self.forward_capture:.2f} s, "
            f"integerize+reference {self.integerize_reference:.2f} s, pack+write {self.pack_write:.2f} s"
        )
        total = self.load + self.forward_capture + self.integerize_reference + self.pack_write
        return f"{stages}, total {total:.2f} s"


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: Manifest
    notices: list[str]


def export(
    opts: SourceOptions,
    layer_ids: Sequence[LayerId] | None,
    out_dir: Path,
    fmt: str | None = None,
    layout: LayoutOptions | None = None,
    *,
    profile: str | Profile = "flat",
    depth: Depth = "exact",
    force: bool = False,
    template_dir: Path | None = None,
    timings: StageTimes | None = None,
    skip_invalid: bool = False,
    sfu: bool = False,
    chain: bool = False,
    widths: FixedPointWidths | None = None,
) -> ExportResult:
    """Vectors for the named layers (all conv layers if None), written atomically to ``out_dir``.

    ``profile`` names a built-in layout profile or a TOML file; ``fmt`` defaults to its format.
    Files are written as each layer is rendered; ``timings`` (if given) gets each stage's time.
    ``sfu`` adds each layer's SFU files (threshold, direction, requant; VGG chains); ``chain``
    takes every layer's input from the integer network's own previous output (and implies ``sfu``);
    ``widths`` are a ResNet's fixed-point SFU widths (defaults: ``FixedPointWidths()``).
    """
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    with staged(out_dir, force=force) as folder:
        manifest, notices = _render_set(
            folder,
            opts,
            layer_ids,
            fmt or prof.format,
            layout,
            prof,
            depth,
            template_dir,
            times=timings,
            set_dir=out_dir,
            skip_invalid=skip_invalid,
            sfu=sfu,
            chain=chain,
            widths=widths,
        )
    return ExportResult(out_dir, manifest, notices)


def _render_set(
    sink: FileSink,
    opts: SourceOptions,
    layer_ids: Sequence[LayerId] | None,
    fmt: str,
    layout: LayoutOptions | None,
    prof: Profile,
    depth: Depth,
    template_dir: Path | None,
    path_prefix: str = "",
    kind: RecipeKind = "dump",
    times: StageTimes | None = None,
    set_dir: Path | None = None,
    plans: list[tuple[LayerPlan, MemoryContext]] | None = None,
    skip_invalid: bool = False,
    sfu: bool = False,
    chain: bool = False,
    widths: FixedPointWidths | None = None,
    vcd: bool = False,
) -> tuple[Manifest, list[str]]:
    """Render every file of an export into ``sink``, a layer at a time.

    ``set_dir`` is the set's folder, which the recipe records the checkpoint's path from;
    ``plans`` (if given) collects each layer's plan and context (the testbench renders from them).
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; formats are {', '.join(FORMATS)}")
    if fmt == "txt" and prof.kind == "flat":
        raise InputError("format txt is the course core's file format; use it with --profile course")
    times = times or StageTimes()
    layout = with_defaults(layout or LayoutOptions(), prof.lanes, prof.psum_lanes, prof.lane_order)
    with times.measure("load"):
        loaded = load(opts)
        selected = _select(loaded, layer_ids, skip_invalid)
        notices = list(loaded.notices) + _skipped_notices(loaded, selected, layer_ids is None)
        if layer_ids is not None or len(selected) < len(loaded.table.convs):
            # the recipe names what was made, so `check` makes it again without --skip-invalid
            layer_ids = [_recorded(ref) for ref in selected]
    with times.measure("forward_capture"):
        captured = {t.name: t for t in capture(loaded.model, loaded.inputs.images, bits=loaded.bits)}
    sfu = sfu or chain
    with times.measure("integerize_reference"):
        rules: dict[str, tuple[Chain, Thresholds]] = {}
        resnet: dict[str, ResNetSfu] = {}
        chained: dict[str, np.ndarray] = {}
        if sfu and _is_resnet(loaded):
            resnet, chained = _resnet_sfus(loaded, captured, chain, widths)
        elif sfu:
            rules = _sfu_rules(loaded, captured, chain, notices)
            chained = _chained_inputs(rules, captured, [ref.name for ref in selected]) if chain else {}
    layer_entries = []
    for ref in selected:
        t = captured.pop(ref.name)  # dropped once rendered: memory stays about one layer deep
        with times.measure("integerize_reference"):
            int_layer, psums = _checked(t, chained.get(ref.name))
            notice = _chain_notice(t, chained.get(ref.name))
            tiled = _tiled(int_layer, psums, prof)
            layer_sfu = resnet.get(ref.name) or _layer_sfu(rules.get(ref.name), psums)
        with times.measure("pack_write"):
            folder = f"{path_prefix}{t.folder}/"
            plan = arrange(int_layer, psums, tiled, prof, layout, folder, layer_sfu)
            context = MemoryContext(
                loaded.arch.name,
                loaded.demo_label,
                prof.name,
                t.label,
                t.folder,
                t.conv_number,
                fmt,
                depth,
                template_dir,
            )
            rendered = render_memories(plan.tensors, context)
            files = [_write_memory(tp, r, sink) for tp, r in zip(plan.tensors, rendered, strict=True)]
        if plans is not None:
            plans.append((plan, context))
        layer_entries.append(_layer_entry(int_layer, psums, files, loaded, ref, layer_sfu))
        notices += [tp.notice for tp in plan.tensors if tp.notice] + ([notice] if notice else [])
    recipe = build_recipe(
        kind,
        opts,
        layer_ids,
        fmt,
        layout,
        prof,
        depth,
        template_dir,
        set_dir,
        loaded.source.get("sha256"),
        sfu=sfu,
        chain=chain,
        widths=None if not resnet or widths is None or widths == FixedPointWidths() else widths.as_dict(),
        vcd=vcd,
    )
    manifest = _manifest(loaded, opts, layer_entries, prof, fmt, recipe)
    if sfu and (rules or resnet):
        with times.measure("pack_write"):
            classifier = _classifier(loaded, [ref.name for ref in selected], sink, path_prefix, bool(resnet))
        manifest = replace(manifest, classifier=classifier)
    with times.measure("pack_write"):
        # written after every memory file, from their manifest entries; the manifest records its hash
        package = render_sv_package(
            [f for _, f in manifest.files()], manifest.model, loaded.demo_label, prof.name, fmt, template_dir
        )
        manifest = replace(
            manifest,
            sv_package=SvPackageEntry(
                SV_PACKAGE_NAME, write_hashed(sink, SV_PACKAGE_NAME, [package.encode()])
            ),
        )
        sink.add(MANIFEST_NAME, dumps(manifest))
    return manifest, notices


def testbench(
    opts: SourceOptions,
    layer: LayerId,
    out_dir: Path,
    profile: str | Profile = "course",
    fmt: str = "hex",
    *,
    force: bool = False,
    template_dir: Path | None = None,
    vcd: bool = False,
    sfu: bool = False,
) -> ExportResult:
    """A self-checking testbench folder: vectors/, tb.sv, the reference core, its Icarus and Verilator
    scripts, and a cocotb test with its runner script; ``vcd`` makes tb.sv dump waveforms; ``sfu``
    adds the layer's SFU files, qexport_ref_sfu.v and tb.sv's SFU stage (VGG layers with a next conv)."""
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    if prof.kind != "systolic":
        raise InputError(f"profile {prof.name} is {prof.kind}; the testbench drives a systolic core profile")
    check_drivable(prof)
    if fmt not in ("hex", "bin"):
        raise InputError(
            f"the testbench reads memories with $readmemh/$readmemb; use --format hex or bin, not {fmt}"
        )
    with staged(out_dir, force=force) as folder:
        manifest, notices = _testbench_set(folder, opts, layer, prof, fmt, template_dir, out_dir, vcd, sfu)
    return ExportResult(out_dir, manifest, notices)


def _testbench_set(
    sink: FileSink,
    opts: SourceOptions,
    layer: LayerId,
    prof: Profile,
    fmt: str,
    template_dir: Path | None,
    set_dir: Path | None,
    vcd: bool = False,
    sfu: bool = False,
) -> tuple[Manifest, list[str]]:
    plans: list[tuple[LayerPlan, MemoryContext]] = []
    manifest, notices = _render_set(
        sink,
        opts,
        [layer],
        fmt,
        None,
        prof,
        "exact",
        template_dir,
        "vectors/",
        kind="testbench",
        set_dir=set_dir,
        plans=plans,
        vcd=vcd,
        sfu=sfu,
    )
    ((plan, memory),) = plans
    ws = prof.dataflow == "weight_stationary"  # output-/input-stationary: tb_streamed, their own core
    if sfu and not ws:
        raise InputError(
            f"testbench --sfu: profile {prof.name} is {prof.dataflow.replace('_', '-')}; the SFU stage "
            "is rendered for weight-stationary testbenches only (its core exposes the pre-ReLU sums); "
            "use --profile course or systolic, or drop --sfu"
        )
    context = testbench_context(plan, memory, prof, vcd=vcd, sfu=sfu)
    sink.add(
        "tb.sv", render("testbench/tb.sv.j2" if ws else "testbench/tb_streamed.sv.j2", context, template_dir)
    )
    sink.add(
        "run_iverilog.sh", render("testbench/run_iverilog.sh.j2", context, template_dir), executable=True
    )
    core = context["dut_file"]  # the dataflow's reference core
    sink.add(core, render(f"testbench/{core}", {"sfu": sfu}, template_dir))
    if sfu:
        sink.add("qexport_ref_sfu.v", render("testbench/qexport_ref_sfu.v", {}, template_dir))
    # qexport.cocotb drives the weight-stationary handshake only: no cocotb files for the others
    for script in ("run_verilator.sh", "run_cocotb.sh") if ws else ("run_verilator.sh",):
        sink.add(script, render(f"testbench/{script}.j2", context, template_dir), executable=True)
    if ws:
        sink.add("cocotb_tb.py", render("testbench/cocotb_tb.py.j2", context, template_dir))
    return manifest, notices


def regenerate(recipe: Recipe, base: Path, set_dir: Path | None = None) -> ExportPlan:
    """Render again, in memory, the set a manifest's recipe describes.

    The checkpoint is found from ``set_dir`` (the set's folder) and its sha256 checked first;
    other relative paths (and an older recipe's checkpoint) are relative to ``base``.
    """
    checkpoint = None
    if isinstance(recipe.source.checkpoint, CheckpointRecord):
        if set_dir is None:
            raise InputError("this recipe names its checkpoint relative to its set; give the set's folder")
        set_dir = set_dir.absolute()
        checkpoint = find_checkpoint(recipe.source.checkpoint, set_dir)
    else:
        set_dir = None  # an older recipe: the checkpoint as typed, from ``base``
    with contextlib.chdir(base):  # the recipe's paths are relative to where the set was made
        return _regenerate(recipe, checkpoint, set_dir)


def _regenerate(recipe: Recipe, checkpoint: Path | None, set_dir: Path | None) -> ExportPlan:
    src = recipe.source

    def path(text: str | None) -> Path | None:
        return None if text is None else Path(text)

    opts = SourceOptions(
        checkpoint=checkpoint or path(src.checkpoint if isinstance(src.checkpoint, str) else None),
        model=src.model,
        data_dir=path(src.data_dir),
        input_file=path(src.input_file),
        images=src.images,
        act_clip=cast(ActClip, src.act_clip),
        trust_recomputed=src.trust_recomputed,
        bits_config=path(src.bits_config),
    )
    if recipe.profile_toml is not None:
        prof = parse_profile(recipe.profile_toml, "the manifest's recipe profile")
    else:
        prof = load_profile(recipe.profile or "")  # loads refuses a recipe with neither
    template_dir = path(recipe.template_dir)
    layers = None if recipe.layers is None else list(recipe.layers)
    plan = ExportPlan()
    if recipe.kind == "testbench":
        (layer,) = layers or [0]
        _testbench_set(plan, opts, layer, prof, recipe.format, template_dir, set_dir, recipe.vcd, recipe.sfu)
    else:
        depth = cast(Depth, recipe.depth)
        _render_set(
            plan,
            opts,
            layers,
            recipe.format,
            recipe.layout,
            prof,
            depth,
            template_dir,
            set_dir=set_dir,
            sfu=recipe.sfu,
            chain=recipe.chain,
            widths=None if recipe.fixed_point is None else FixedPointWidths(**recipe.fixed_point),
        )
    return plan


def _sfu_rules(
    loaded: Loaded, captured: dict[str, LayerTensors], chain: bool, notices: list[str]
) -> dict[str, tuple[Chain, Thresholds]]:
    """Each conv's chain and thresholds, for every conv a next one reads; a model that is neither a
    VGG nor the course ResNet gets none (``chain`` refuses it), a chain the SFU cannot express is
    refused by module path."""
    from qexport.infer.chain import is_vgg, sfu_rules, vgg_chains

    if not is_vgg(loaded.model):
        if chain:
            vgg_chains(loaded.model)  # raises, naming why
        notices.append(
            f"--sfu: {loaded.arch.name} is neither a VGG-style model (features, then classifier) nor "
            "the course ResNet-CIFAR, so qexport cannot say what its SFU computes; no layer has SFU files"
        )
        return {}
    chains, _ = vgg_chains(loaded.model)
    return sfu_rules(chains, captured)


def _is_resnet(loaded: Loaded) -> bool:
    from qexport.infer.resnet import is_resnet

    return is_resnet(loaded.model)


def _resnet_sfus(
    loaded: Loaded, captured: dict[str, LayerTensors], chain: bool, widths: FixedPointWidths | None
) -> tuple[dict[str, ResNetSfu], dict[str, np.ndarray]]:
    """A ResNet's SFU files' contents per conv (thresholds inside a block, fixed point at its end)
    and, with ``chain``, each conv's ``x_int`` from the integer network's own outputs."""
    from qexport.infer.resnet_files import resnet_sfus

    return resnet_sfus(loaded.model, captured, widths or FixedPointWidths(), chain)


def _classifier(
    loaded: Loaded, selected: list[str], sink: FileSink, prefix: str, resnet: bool = False
) -> ClassifierEntry | None:
    """The float end's ops and float32 arrays (``classifier/<key>.npy``) when the set holds the
    last conv, so the set alone runs the network to its logits (``qexport infer --from``)."""
    from qexport.infer.chain import float_end
    from qexport.infer.resnet_files import resnet_float_end

    last, ops, arrays = resnet_float_end(loaded.model) if resnet else float_end(loaded.model)
    if last not in selected:
        return None
    files = []
    for key, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array.astype("<f4"), allow_pickle=False)
        path = f"classifier/{key}.npy"
        sha256 = write_hashed(sink, prefix + path, buffer.getvalue())
        files.append(ArrayEntry(key, prefix + path, tuple(int(d) for d in array.shape), "float32", sha256))
    return ClassifierEntry(last, tuple(ops), tuple(files))


def _chained_inputs(
    rules: dict[str, tuple[Chain, Thresholds]], captured: dict[str, LayerTensors], wanted: list[str]
) -> dict[str, np.ndarray]:
    """Each conv's ``x_int`` as the integer network makes it: the first conv's from the image, each
    next one's from the previous conv's exact psums through its thresholds and max-pool (up to the
    last conv in ``wanted``)."""
    order = list(captured)  # forward order
    last = max(order.index(name) for name in wanted)
    x_int = integerize(captured[order[0]]).x_int
    inputs: dict[str, np.ndarray] = {}
    for name in order[: last + 1]:
        inputs[name] = x_int
        if name not in rules:
            break  # the last conv: nothing reads its output
        layer = integerize(captured[name])
        psum = integer_conv(x_int, layer.w_int, layer.stride, layer.padding)
        c, rule = rules[name]
        x_int = sfu_output(rule, psum, c.pool)
    return inputs


def _layer_sfu(rule: tuple[Chain, Thresholds] | None, psums: Psums) -> LayerSfu | None:
    """The layer's SFU files' contents: its rule and the next ``x_int`` from its golden psums."""
    if rule is None:
        return None
    c, thresholds = rule
    if c.next is None:
        return None
    return LayerSfu(c.next, c.between, thresholds, c.pool, sfu_output(thresholds, psums.psum, c.pool))


def _chain_notice(t: LayerTensors, x_int: np.ndarray | None) -> str | None:
    if x_int is None:
        return None
    differ = int((integerize(t).x_int != x_int).sum())
    if not differ:
        return None
    return (
        f"--chain: layer {t.label}'s input differs from the float model's x_int in {differ} of "
        f"{x_int.size} values (float32 rounding at an earlier threshold; `qexport infer` shows where)"
    )


def _checked(t: LayerTensors, x_int: np.ndarray | None = None) -> tuple[IntLayer, Psums]:
    """The layer in integers, its exact psums and the seeds' checks.

    ``x_int`` (``--chain``) replaces the input the float model gave with the integer network's own:
    the checks stay those of the float model's input (they prove the integers are the model's),
    the psums are those of ``x_int``.
    """
    int_layer, psums = _checked_float(t)
    if x_int is None or np.array_equal(x_int, int_layer.x_int):
        return int_layer, psums
    int_layer = replace(int_layer, x_int=x_int)
    return int_layer, Psums(
        integer_conv(x_int, int_layer.w_int, int_layer.stride, int_layer.padding), psums.checks
    )


def _checked_float(t: LayerTensors) -> tuple[IntLayer, Psums]:
    int_layer = integerize(t)
    psums = conv_psum(int_layer)
    if not psums.checks.passed:
        raise CheckFailed(
            f"layer {t.label}: recovered output differs from the float model (mean error "
            f"{psums.checks.output_mean_error:.3g}); the integers would be wrong, so nothing "
            "was written. Run `qexport verify` for the table"
        )
    return int_layer, psums


def _write_memory(tp: TensorPlan, rendered: RenderedMemory, sink: FileSink) -> FileEntry:
    """Write one rendered file (hashing it on the way) and say what the manifest records of it."""
    sha256 = write_hashed(sink, rendered.facts.path, rendered.content)
    return file_entry(tp, rendered.facts, sha256)


def _recorded(ref: ConvRef) -> LayerId:
    """How a recipe records a named layer: its features index for VGG (as ever), else its path."""
    return ref.index if ref.index is not None else ref.name


def _skipped_notices(loaded: Loaded, selected: list[ConvRef], every_layer: bool) -> list[str]:
    if not every_layer:
        return []
    skipped = [name for name in loaded.table.names() if name not in {r.name for r in selected}]
    if not skipped:
        return []
    return [f"--skip-invalid: left out {len(skipped)} layer(s) that cannot be exported: {', '.join(skipped)}"]


def _layer_entry(
    int_layer: IntLayer,
    psums: Psums,
    files: list[FileEntry],
    loaded: Loaded,
    ref: ConvRef,
    sfu: LayerSfu | LayerFixedPoint | None = None,
) -> LayerEntry:
    bits = loaded.bits.get(ref.name)
    fixed = _fixed_point_entry(sfu) if isinstance(sfu, LayerFixedPoint) else None
    nxt = None if sfu is None else sfu.next
    between = None if sfu is None or nxt is None else sfu.between
    return LayerEntry(
        name=int_layer.name,
        index=int_layer.layer,
        conv_number=int_layer.conv_number,
        in_channels=int_layer.in_channels,
        out_channels=int_layer.out_channels,
        kernel=int_layer.kernel,
        stride=int_layer.stride,
        padding=int_layer.padding,
        w_bit=int_layer.w_bit,
        act_bit=int_layer.act_bit,
        w_bit_source=bits.w_source if bits else "model",
        act_bit_source=bits.act_source if bits else "model",
        weight_q_ties=loaded.report.ties.get(ref.name, 0),
        act_clip=int_layer.act_clip,
        act_alpha=int_layer.act_alpha,
        wgt_alpha=int_layer.wgt_alpha,
        w_delta=int_layer.w_delta,
        x_delta=int_layer.x_delta,
        input_shape=tuple(int(s) for s in int_layer.x_int.shape),
        output_shape=tuple(int(s) for s in psums.psum.shape),
        checks=psums.checks,
        files=tuple(files),
        next=nxt,
        between=between,
        fixed_point=fixed,
    )


def _fixed_point_entry(fp: LayerFixedPoint) -> FixedPointEntry:
    """What the manifest says of a fixed-point SFU: its widths, unit, add and requantisations."""
    rescale = fp.skip_rescale
    return FixedPointEntry(
        role=fp.role,
        mult_bits=fp.widths.mult_bits,
        frac_bits=fp.widths.frac_bits,
        skip_bits=fp.widths.skip_bits,
        bias_bits=fp.widths.bias_bits,
        unit=fp.unit,
        add=fp.add,
        add_into=fp.add_into,
        skip_multiplier=None if rescale is None else int(rescale.multiplier[0]),
        skip_shift=None if rescale is None else int(rescale.shift[0]),
        requant=tuple(
            RequantEntry(rq.consumer, rq.tensor, rq.rule.multiplier, rq.rule.shift, rq.rule.levels)
            for rq in fp.requants
        ),
    )


def _tiled(int_layer: IntLayer, psums: Psums, prof: Profile) -> TiledPsums | None:
    """The checked psums a systolic profile's tiles hold (None for a flat profile)."""
    if prof.kind != "systolic":
        return None
    check_systolic(int_layer, prof)  # the core takes this layer, before any tile is summed
    tiled = tiled_psums(int_layer, prof.rows, prof.tile, prof.golden, prof.geometry)
    check_tiled(int_layer, psums, tiled, prof.golden)
    return tiled


def _manifest(
    loaded: Loaded,
    opts: SourceOptions,
    layer_entries: list[LayerEntry],
    profile: Profile,
    fmt: str,
    recipe: Recipe,
) -> Manifest:
    inputs = {**loaded.inputs.source, "count": len(loaded.inputs.indices)}
    return Manifest(
        qexport_version=__version__,
        model=loaded.arch.name,
        source=Source.from_json(loaded.source, "the loaded model's source"),
        inputs=InputsRecord.from_json(inputs, "the loaded inputs"),
        act_clip=opts.act_clip,
        profile=profile.name,
        format=fmt,
        layers=tuple(layer_entries),
        label=loaded.demo_label or None,
        recipe=recipe,
    )


def infer(
    opts: SourceOptions,
    batch_size: int = 32,
    widths: FixedPointWidths | None = None,
    end: Literal["float", "int8"] = "float",
) -> tuple[Loaded, InferReport]:
    """The network in integers (exact convs, SFU thresholds or fixed point, float tail) against the
    float model; ``widths`` are the ResNet fixed-point SFU's (defaults: ``FixedPointWidths()``);
    ``end="int8"`` runs the classifier in int8 (:mod:`qexport.infer.end`)."""
    from qexport.infer import infer_network

    loaded = load(opts)
    blocked = loaded.blocked()
    if blocked:
        name, why = next(iter(blocked.items()))
        raise InputError(f"qexport infer runs every layer, and layer {name} cannot run: {why}")
    report = infer_network(
        loaded.model,
        loaded.inputs.images,
        loaded.inputs.labels,
        loaded.bits,
        batch_size=batch_size,
        widths=widths,
        end=end,
    )
    return loaded, report
