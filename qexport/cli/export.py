"""``qexport layers``, ``dump``, ``testbench`` and ``verify``: the commands that run the model.

Each parses options, calls one :mod:`qexport.api` function and prints what it wrote or found.
torch is imported inside command bodies only, so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import click

from qexport.cli.common import (
    _alias,
    _describe_source,
    _fail,
    _parse_layers,
    _source,
    bits_config_option,
    handles_errors,
    source_options,
)
from qexport.errors import CheckFailed

if TYPE_CHECKING:
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
    width = max([5, *(len(info.label) for info in infos)])  # a ResNet's module paths are long
    header = (
        f"{'layer':>{width}} {'conv':>4} {'in':>4} {'out':>4} {'k/s/p':>7} {'w_bit':>5} {'act_bit':>7} "
        f"{'act_alpha':>9} {'wgt_alpha':>9}  input -> output"
    )
    click.echo(header)
    for info in infos:
        ksp = f"{info.kernel}/{info.stride}/{info.padding}"
        shapes = f"{'x'.join(map(str, info.input_shape))} -> {'x'.join(map(str, info.output_shape))}"
        click.echo(
            f"{info.label:>{width}} {info.conv_number:>4} {info.in_channels:>4} {info.out_channels:>4} "
            f"{ksp:>7} {info.w_bit:>5} {info.act_bit:>7} {info.act_alpha:>9.4f} "
            f"{info.wgt_alpha:>9.4f}  {shapes}"
        )


@click.command("dump")
@source_options
@bits_config_option
@click.option(
    "--layer", "layer_text", help="features index (e.g. 33) or module path (features.33), or a comma list."
)
@click.option("--all", "all_layers", is_flag=True, help="Every quantized conv layer.")
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
    """
    from qexport import api
    from qexport.layout.flat import LayoutOptions

    if all_layers == (layer_text is not None):
        raise click.UsageError("give exactly one of --layer L or --all")
    layer_ids = None if all_layers else _parse_layers(layer_text or "")
    if out_dir is None:
        out_dir = Path("qexport-out") / (
            "all" if layer_ids is None else "layer" + "_".join(_alias(layer) for layer in layer_ids)
        )
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
    )
    for notice in result.notices:
        click.echo(f"notice: {notice}", err=True)
    manifest = result.manifest
    label = f" ({manifest.label})" if manifest.label is not None else ""
    files = sum(len(entry.files) for entry in manifest.layers)
    layers_written = ", ".join(
        entry.name if entry.index is None else str(entry.index) for entry in manifest.layers
    )
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
@handles_errors
def testbench_command(
    layer_text: str, profile: str, fmt: str, out_dir: Path, force: bool, **kwargs: Any
) -> None:
    """Render a self-checking SystemVerilog testbench with its vectors and a reference core.

    The folder holds manifest.json, vectors/layer<L>/ (the profile's files, read with
    $readmemh/$readmemb), tb.sv, qexport_ref_core.v (a behavioural core; swap in your DUT, same
    ports and handshake) and run_iverilog.sh, which compiles and runs it and exits 0 only on PASS.

    \b
    Example:
      qexport testbench --layer 33 --profile course -o tb33 && tb33/run_iverilog.sh
    """
    from qexport import api

    (layer,) = _parse_layers(layer_text)
    result = api.testbench(_source(kwargs), layer, out_dir, profile, fmt, force=force)
    for notice in result.notices:
        click.echo(f"notice: {notice}", err=True)
    vectors = out_dir / PurePosixPath(result.manifest.layers[0].files[0].path).parent
    click.echo(
        f"wrote testbench for layer {layer} ({profile}, {fmt}) to {out_dir} (vectors in {vectors}/); "
        f"run {out_dir}/run_iverilog.sh"
    )
    for line in _set_lines(out_dir, result.manifest):
        click.echo(f"  {line}")
    bench = ", ".join(str(out_dir / name) for name in ("tb.sv", "qexport_ref_core.v", "run_iverilog.sh"))
    click.echo(f"  testbench {bench}")


def _set_lines(out_dir: Path, manifest: Manifest) -> list[str]:
    """The set's real paths: its manifest, then each layer's folder with its files."""
    lines = [f"manifest  {out_dir / 'manifest.json'}"]
    for entry in manifest.layers:
        names = [PurePosixPath(f.path) for f in entry.files]
        folder = out_dir / names[0].parent  # layer<index>/: every file of a layer is in it
        listed = ": " + ", ".join(sorted(n.name for n in names)) if len(names) <= 6 else ""
        label = entry.name if entry.index is None else str(entry.index)  # VGG: its features index
        lines.append(f"layer {label:<3} {folder}/  {len(names)} files{listed}")
    return lines


@click.command("verify")
@source_options
@bits_config_option
@click.option("--layer", "layer_text", help="Only these features indices or module paths (comma list).")
@handles_errors
def verify(layer_text: str | None, **kwargs: Any) -> None:
    """Check every conv layer as seed 003 does; exit 1 if any layer fails.

    recovered = psum · x_delta · w_delta is compared with the float conv output, and ReLU(recovered)
    with the next conv's input where only a ReLU lies between. A layer passes when the mean
    absolute error is below 1e-3.

    \b
    Example:
      qexport verify --checkpoint result/VGG16_quant_gradual/model_best.pth.tar --data-dir ./data
    """
    from qexport import api
    from qexport.frontend.models.network import layer_label

    layer_ids = _parse_layers(layer_text) if layer_text else None
    loaded, results = api.verify(_source(kwargs), layer_ids)
    click.echo(f"# {_describe_source(loaded)}, {len(loaded.inputs.indices)} image(s)")
    labels = [layer_label(r.name, r.layer) for r in results]
    width = max([5, *map(len, labels)])
    click.echo(
        f"{'layer':>{width}} {'conv':>4} {'mean_err':>10} {'max_err':>10} "
        f"{'next_mean':>10} {'next_max':>10}  result"
    )

    def fmt(value: object) -> str:
        return f"{value:10.2e}" if isinstance(value, float) else f"{'-':>10}"

    failed: list[int | str] = []
    for r, label in zip(results, labels, strict=True):
        c = r.checks
        verdict = "PASS" if c.passed else "FAIL"
        if not c.passed:
            failed.append(r.name if r.layer is None else r.layer)
        click.echo(
            f"{label:>{width}} {r.conv_number:>4} {fmt(c.output_mean_error)} {fmt(c.output_max_error)} "
            f"{fmt(c.next_input_mean_error)} {fmt(c.next_input_max_error)}  {verdict}"
        )
    if failed:
        _fail(CheckFailed(f"{len(failed)} layer(s) failed the 1e-3 mean-error check: {failed}"))
    click.echo(f"all {len(results)} layers pass (mean error < 1e-3)")
