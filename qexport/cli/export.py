"""``qexport layers``, ``dump``, ``testbench`` and ``verify``: the commands that run the model.

Each parses options, calls one :mod:`qexport.api` function and prints what it wrote or found.
torch is imported inside command bodies only, so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, cast

import click

from qexport.cli.common import (
    _default_folder,
    _describe_source,
    _fail,
    _parse_layers,
    _source,
    bits_config_option,
    fixed_point_options,
    fixed_point_widths,
    handles_errors,
    source_options,
)
from qexport.errors import CheckFailed

if TYPE_CHECKING:
    from qexport.api import LayerInfo, Loaded
    from qexport.writer.manifest import Manifest

__all__ = ["dump", "layers", "testbench_command", "verify"]


@click.command("layers")
@source_options
@bits_config_option
@handles_errors
def layers(**kwargs: Any) -> None:
    """List the model's quantized conv layers (features index, channels, bits, alphas, shapes).

    \b
    Example:
      qexport layers --checkpoint result/VGG16_quant_gradual/model_best.pth.tar
    """
    from qexport import api

    loaded, infos = api.layers(_source(kwargs))
    click.echo(f"# {_describe_source(loaded)}")
    floats = set(loaded.float_convs)
    by_name = {info.name: info for info in infos}
    width = max([5, *(len(info.label) for info in infos), *(len(name) for name in floats)])
    header = (
        f"{'layer':>{width}} {'conv':>4} {'in':>4} {'out':>4} {'k/s/p':>7} {'w_bit':>5} {'act_bit':>7} "
        f"{'act_alpha':>9} {'wgt_alpha':>9}  input -> output  notes"
    )
    click.echo(header)
    blocked = loaded.blocked()
    for name, module in loaded.model.named_modules():  # forward order for these networks
        if name in floats:  # a plain nn.Conv2d (a float stem): no alphas, so nothing to export
            conv = cast("Any", module)
            ksp = f"{conv.kernel_size[0]}/{conv.stride[0]}/{conv.padding[0]}"
            click.echo(
                f"{name:>{width}} {'-':>4} {conv.in_channels:>4} {conv.out_channels:>4} {ksp:>7}"
                "  float nn.Conv2d (no alphas): not exported"
            )
        elif name in by_name:
            info = by_name[name]
            ksp = f"{info.kernel}/{info.stride}/{info.padding}"
            shapes = f"{'x'.join(map(str, info.input_shape))} -> {'x'.join(map(str, info.output_shape))}"
            click.echo(
                f"{info.label:>{width}} {info.conv_number:>4} {info.in_channels:>4} {info.out_channels:>4} "
                f"{ksp:>7} {info.w_bit:>5} {info.act_bit:>7} {info.act_alpha:>9.4f} "
                f"{info.wgt_alpha:>9.4f}  {shapes}  {_notes(info, loaded, blocked)}".rstrip()
            )
    bits = {(b.w_source, b.act_source) for b in loaded.bits.values()}
    if len(bits) == 1:
        ((w_source, act_source),) = bits
        click.echo(f"# w_bit: {w_source}; act_bit: {act_source}")
    if blocked:
        click.echo(
            f"# {len(blocked)} layer(s) cannot be exported "
            "(`qexport dump --all --skip-invalid` leaves them out):"
        )
        for name, why in blocked.items():
            click.echo(f"#   {name}: {why}")


def _notes(info: LayerInfo, loaded: Loaded, blocked: dict[str, str]) -> str:
    """Per layer: where its bits came from (when layers differ), ties, the next-input check, refusals."""
    notes = []
    if info.name != info.label:
        notes.append(info.name)
    bits = loaded.bits.get(info.name)
    if bits is not None and len({(b.w_source, b.act_source) for b in loaded.bits.values()}) > 1:
        notes.append(f"w_bit {bits.w_source}, act_bit {bits.act_source}")
    ties = loaded.report.ties.get(info.name)
    if ties:
        notes.append(f"{ties} weight_q rounding tie(s): stored values used")
    if info.next_check:
        notes.append("ReLU check vs next conv")
    if info.name in blocked:
        notes.append("CANNOT EXPORT" if info.name in loaded.report.problems else "after a bad layer")
    return "; ".join(notes)


@click.command("dump")
@source_options
@bits_config_option
@click.option(
    "--layer", "layer_text", help="features index (e.g. 33) or module path (features.33), or a comma list."
)
@click.option("--all", "all_layers", is_flag=True, help="Every quantized conv layer.")
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="With --all: leave out the layers that cannot be exported (invalid alphas, a disagreeing "
    "weight_q) and the later ones that see their output, instead of refusing; they are named.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["hex", "bin", "txt", "coe", "mif", "h", "npy"]),
    help="hex/bin ($readmemh/$readmemb), txt (course core), coe (Xilinx), mif (Intel), h (C header), "
    "npy [default: the profile's format: hex for flat]",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Output folder [default: qexport-out/layer<L> or qexport-out/all].",
)
@click.option("--force", is_flag=True, help="Replace an existing qexport output folder.")
@click.option(
    "--profile",
    default="flat",
    show_default=True,
    help="Layout profile: a built-in name (see `qexport profiles`) or a TOML file of your own.",
)
@click.option(
    "--depth",
    type=click.Choice(["exact", "pow2"]),
    default="exact",
    show_default=True,
    help="Memory depth: the words used, or the next power of two (padded with fill 0).",
)
@click.option(
    "--lanes",
    type=click.IntRange(1, 64),
    help="flat: values a word for weights and inputs [default: the profile's, 8].",
)
@click.option(
    "--psum-lanes",
    type=click.IntRange(1, 64),
    help="flat: values a word for psums and outputs [default: the profile's, 1].",
)
@click.option(
    "--lane-order",
    type=click.Choice(["lsb_first", "msb_first"]),
    help="flat: where a word's first value sits [default: the profile's, lsb_first].",
)
@click.option(
    "--psum-bits",
    type=click.IntRange(2, 62),
    help="Psum width [default: the layer's worst case]; smaller widths are checked for overflow.",
)
@click.option(
    "--input-sign",
    type=click.Choice(["auto", "unsigned", "signed"]),
    default="auto",
    show_default=True,
    help="Input lanes: auto = unsigned act_bit unless values are negative.",
)
@click.option("--pad-input", is_flag=True, help="Store the input with the conv's zero border.")
@click.option(
    "--template-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Templates here override the built-in ones by name.",
)
@click.option(
    "--sfu",
    is_flag=True,
    help="Also write each layer's SFU files: threshold, direction (VGG, a ResNet block's conv1) or "
    "multiplier, shift, bias, skip (a ResNet block's end), and requant, the next conv's x_int as the "
    "SFU must make it.",
)
@click.option(
    "--chain",
    is_flag=True,
    help="Write every layer's input from the integer network's own previous output (through the "
    "thresholds) instead of the float model's; implies --sfu.",
)
@fixed_point_options
@click.option("--timings", is_flag=True, help="Print the time each stage took, to stderr.")
@handles_errors
def dump(
    layer_text: str | None,
    all_layers: bool,
    fmt: str | None,
    out_dir: Path | None,
    force: bool,
    profile: str,
    depth: str,
    lanes: int | None,
    psum_lanes: int | None,
    lane_order: str | None,
    psum_bits: int | None,
    input_sign: str,
    pad_input: bool,
    template_dir: Path | None,
    timings: bool,
    skip_invalid: bool,
    sfu: bool,
    chain: bool,
    mult_bits: int,
    frac_bits: int,
    skip_bits: int,
    bias_bits: int,
    **kwargs: Any,
) -> None:
    """Write weight, input, psum and output vectors plus manifest.json for conv layers.

    Every set, for any profile and layer count, is OUT/manifest.json plus one folder a layer,
    OUT/layer<L>/; the paths written are printed.

    \b
    Example:
      qexport dump --layer 33 --format hex
      qexport dump --all --format bin -o out/
      qexport dump --layer 33 --profile course -o tb/vectors
      qexport dump --all --chain --profile course
      qexport dump --all --sfu --model resnet20_quant --frac-bits 20
    """
    from qexport import api
    from qexport.layout.flat import LayoutOptions

    if all_layers == (layer_text is not None):
        raise click.UsageError("give exactly one of --layer L or --all")
    layer_ids = None if all_layers else _parse_layers(layer_text or "")
    if out_dir is None:
        out_dir = Path("qexport-out") / ("all" if layer_ids is None else _default_folder(layer_ids))
    layout = LayoutOptions(
        lanes=lanes,
        psum_lanes=psum_lanes,
        lane_order=lane_order,  # type: ignore[arg-type]
        psum_bits=psum_bits,
        input_sign=input_sign,  # type: ignore[arg-type]
        pad_input=pad_input,
    )
    times = api.StageTimes()
    result = api.export(
        _source(kwargs),
        layer_ids,
        out_dir,
        fmt,
        layout,
        force=force,
        template_dir=template_dir,
        profile=profile,
        depth=depth,  # type: ignore[arg-type]
        timings=times,
        skip_invalid=skip_invalid,
        sfu=sfu,
        chain=chain,
        widths=fixed_point_widths(mult_bits, frac_bits, skip_bits, bias_bits),
    )
    for notice in result.notices:
        click.echo(f"notice: {notice}", err=True)
    manifest = result.manifest
    label = f" ({manifest.label})" if manifest.label is not None else ""
    files = sum(len(entry.files) for entry in manifest.layers)
    layers_written = ", ".join(str(entry.key) for entry in manifest.layers)
    click.echo(
        f"wrote {files} {manifest.format} files + manifest.json for layer(s) {layers_written} of "
        f"{manifest.model}{label} to the vector set {out_dir}:"
    )
    for line in _set_lines(out_dir, result.manifest):
        click.echo(f"  {line}")
    if timings:
        click.echo(f"timings: {times.describe()}", err=True)


@click.command("testbench")
@source_options
@bits_config_option
@click.option(
    "--layer",
    "layer_text",
    required=True,
    help="features index (e.g. 33) or module path (features.33) of the conv layer.",
)
@click.option("--profile", default="course", show_default=True, help="A systolic profile name or TOML file.")
@click.option("--format", "fmt", type=click.Choice(["hex", "bin"]), default="hex", show_default=True)
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--force", is_flag=True, help="Replace an existing qexport output folder.")
@click.option(
    "--vcd",
    is_flag=True,
    help="tb.sv dumps waveforms: the run scripts write tb.vcd (or $VCD) where they are run from.",
)
@click.option(
    "--sfu",
    is_flag=True,
    help="Also write the layer's SFU files and qexport_ref_sfu.v; tb.sv checks requant after the conv "
    "(VGG layers with a next conv).",
)
@handles_errors
def testbench_command(
    layer_text: str, profile: str, fmt: str, out_dir: Path, force: bool, vcd: bool, sfu: bool, **kwargs: Any
) -> None:
    """Render a self-checking SystemVerilog testbench with its vectors and a reference core.

    The folder holds manifest.json, vectors/layer<L>/ (the profile's files, read with
    $readmemh/$readmemb), tb.sv, qexport_ref_core.v (a behavioural core; swap in your DUT, same
    ports and handshake; qexport_ref_core_os.v / _is.v for course-os / systolic-is), run_iverilog.sh
    and run_verilator.sh, which compile and run it and exit 0 only on PASS, and (weight-stationary)
    cocotb_tb.py with run_cocotb.sh (the same check from cocotb; SIM=icarus or SIM=verilator).
    --vcd makes tb.sv dump waveforms to tb.vcd where a script runs. --sfu (weight-stationary) adds
    the SFU stage: the layer's threshold / direction / requant files, qexport_ref_sfu.v, and a
    requant check in tb.sv fed the core's pre-ReLU sums (cocotb_tb.py checks the conv only).

    \b
    Example:
      qexport testbench --layer 33 --profile course -o tb33 && tb33/run_iverilog.sh
      qexport testbench --layer 33 --sfu -o tb33s && tb33s/run_iverilog.sh
    """
    from qexport import api

    (layer,) = _parse_layers(layer_text)
    result = api.testbench(_source(kwargs), layer, out_dir, profile, fmt, force=force, vcd=vcd, sfu=sfu)
    for notice in result.notices:
        click.echo(f"notice: {notice}", err=True)
    vectors = out_dir / PurePosixPath(result.manifest.layers[0].files[0].path).parent
    click.echo(
        f"wrote testbench for layer {layer} ({profile}, {fmt}) to {out_dir} (vectors in {vectors}/); "
        f"run {out_dir}/run_iverilog.sh"
    )
    for line in _set_lines(out_dir, result.manifest):
        click.echo(f"  {line}")
    names: tuple[str, ...] = ("tb.sv", "qexport_ref_core.v", "qexport_ref_core_os.v", "qexport_ref_core_is.v")
    names += ("qexport_ref_sfu.v", "run_iverilog.sh", "run_verilator.sh", "cocotb_tb.py", "run_cocotb.sh")
    # the dataflow picks the core; output-/input-stationary sets have no cocotb files
    bench = ", ".join(str(out_dir / name) for name in names if (out_dir / name).exists())
    click.echo(f"  testbench {bench}")


def _set_lines(out_dir: Path, manifest: Manifest) -> list[str]:
    """The set's real paths: its manifest, then each layer's folder with its files."""
    lines = [f"manifest  {out_dir / 'manifest.json'}"]
    if manifest.sv_package is not None:
        lines.append(f"package   {out_dir / manifest.sv_package.path}  (the files' sizes as SV localparams)")
    for entry in manifest.layers:
        names = [PurePosixPath(f.path) for f in entry.files]
        folder = out_dir / names[0].parent  # layer<index>/: every file of a layer is in it
        listed = ": " + ", ".join(sorted(n.name for n in names)) if len(names) <= 6 else ""
        lines.append(f"layer {entry.key!s:<3} {folder}/  {len(names)} files{listed}")
    return lines


@click.command("verify")
@source_options
@bits_config_option
@click.option("--layer", "layer_text", help="Only these features indices or module paths (comma list).")
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Without --layer: leave out the layers that cannot be exported (invalid alphas, a disagreeing "
    "weight_q) and the later ones that see their output, instead of refusing; they are named.",
)
@handles_errors
def verify(layer_text: str | None, skip_invalid: bool, **kwargs: Any) -> None:
    """Check every conv layer as seed 003 does; exit 1 if any layer fails.

    recovered = psum · x_delta · w_delta is compared with the float conv output, and ReLU(recovered)
    with the next conv's input where only a ReLU lies between. A layer passes when the mean
    absolute error is below 1e-3.

    \b
    Example:
      qexport verify --checkpoint result/VGG16_quant_gradual/model_best.pth.tar --data-dir ./data
    """
    from qexport import api

    layer_ids = _parse_layers(layer_text) if layer_text else None
    loaded, results = api.verify(_source(kwargs), layer_ids, skip_invalid=skip_invalid)
    click.echo(f"# {_describe_source(loaded)}, {len(loaded.inputs.indices)} image(s)")
    header = f"{'mean_err':>10} {'max_err':>10} {'next_mean':>10} {'next_max':>10}  result"

    def fmt(value: object) -> str:
        return f"{value:10.2e}" if isinstance(value, float) else f"{'-':>10}"

    failed: list[int | str] = []
    width = max([5, *(len(r.label) for r in results)])
    click.echo(f"{'layer':>{width}} {'conv':>4} {header}")
    for r in results:
        c = r.checks
        verdict = "PASS" if c.passed else "FAIL"
        if not c.passed:
            failed.append(r.layer if r.layer is not None else r.name)
        click.echo(
            f"{r.label:>{width}} {r.conv_number:>4} {fmt(c.output_mean_error)} {fmt(c.output_max_error)} "
            f"{fmt(c.next_input_mean_error)} {fmt(c.next_input_max_error)}  {verdict}"
        )
    if failed:
        _fail(CheckFailed(f"{len(failed)} layer(s) failed the 1e-3 mean-error check: {failed}"))
    click.echo(f"all {len(results)} layers pass (mean error < 1e-3)")
