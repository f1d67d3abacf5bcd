"""``qexport infer``: the network in integers against the float model (a shell over ``api.infer``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from qexport.cli.common import (
    _describe_source,
    _fail,
    _source,
    bits_config_option,
    fixed_point_options,
    fixed_point_widths,
    handles_errors,
    source_options,
)
from qexport.errors import CheckFailed, InputError

__all__ = ["infer_command"]


@click.command("infer")
@source_options
@bits_config_option
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images a forward pass."
)
@fixed_point_options
@click.option(
    "--from",
    "from_set",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Run the network from this vector set alone (dump --all --sfu; no model, no torch).",
)
@click.option(
    "--end",
    type=click.Choice(["float", "int8"]),
    default="float",
    show_default=True,
    help="The model's end (classifier / fc): float on the dequantised integers, or int8 (per-row "
    "weight scales, input scale = max |x| / 127 over the images run, int32 accumulation).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--min-agreement",
    type=click.FloatRange(0.0, 1.0),
    help="Exit 1 when the integer network's top-1 agrees with the float model on fewer images (0..1).",
)
@handles_errors
def infer_command(
    batch_size: int,
    mult_bits: int,
    frac_bits: int,
    skip_bits: int,
    bias_bits: int,
    end: str,
    as_json: bool,
    min_agreement: float | None,
    from_set: Path | None,
    **kwargs: Any,
) -> None:
    """Run the whole network in integers: exact convs, SFU thresholds between them (a ResNet's
    residual adds in fixed point), float classifier.

    Per layer: how many of the next conv's x_int differ from the float model's own (and how many of
    those lie within float32 rounding of a threshold); top-1 agreement; accuracy when labels exist.

    \b
    Example:
      qexport infer --images 0:32 --min-agreement 1.0
      qexport infer --model resnet20_quant --images 0:128 --frac-bits 20
      qexport infer --images 0:100 --end int8
      qexport infer --from out/all    # a `dump --all --sfu` set, run from its files alone
    """
    if from_set is not None:
        _infer_from(from_set, batch_size, as_json)
        return
    from qexport import api

    widths = fixed_point_widths(mult_bits, frac_bits, skip_bits, bias_bits)
    loaded, report = api.infer(
        _source(kwargs), batch_size=batch_size, widths=widths, end="int8" if end == "int8" else "float"
    )
    if as_json:
        click.echo(json.dumps({"model": loaded.arch.name, **report.as_dict()}, sort_keys=True, indent=2))
    else:
        click.echo(f"# {_describe_source(loaded)}; {report.images} image(s)")
        if report.fixed_point is not None:
            click.echo("# fixed point: " + ", ".join(f"{k} {v}" for k, v in report.fixed_point.items()))
        names = [(layer.label, (layer.next or "-").removeprefix("features.")) for layer in report.layers]
        w = max([8] + [max(len(a), len(b)) for a, b in names])
        click.echo(
            f"{'layer':>{w}} {'next':>{w}} {'values':>9} {'differ':>7} {'rounding':>8} "
            f"{'chained':>7}  between"
        )
        for layer, (label, nxt) in zip(report.layers, names, strict=True):
            if layer.next is None:
                click.echo(f"{label:>{w}} {'-':>{w}} {'':>9} {'':>7} {'':>8} {'':>7}  float tail")
                continue
            click.echo(
                f"{label:>{w}} {nxt:>{w}} {layer.values:>9} {layer.differ:>7} {layer.near:>8} "
                f"{layer.differ_chained:>7}  {', '.join(layer.between)}"
            )
        if report.fixed_point is not None:
            click.echo(
                f"x_int equal to the float model's: {report.x_int_equal_sfu:.4%} each SFU alone, "
                f"{report.x_int_equal:.4%} chained"
            )
        click.echo(
            f"top-1 agreement with the float model: {report.top1_agree}/{report.images} "
            f"({report.agreement:.2%}{', int8 end' if report.end == 'int8' else ''})"
        )
        if report.agreement_by_end:
            click.echo(
                "top-1 agreement by end: "
                + ", ".join(f"{name} {value:.2%}" for name, value in report.agreement_by_end.items())
            )
        if report.labelled:
            click.echo(
                f"accuracy: integer {report.int_correct / report.images:.2%}, "
                f"float {report.float_correct / report.images:.2%}"
            )
    if min_agreement is not None and report.agreement < min_agreement:
        _fail(CheckFailed(f"top-1 agreement {report.agreement:.4f} is below --min-agreement {min_agreement}"))


def _infer_from(folder: Path, batch_size: int, as_json: bool) -> None:
    """``--from``: the set alone, torch never imported; every source option is refused."""
    ctx = click.get_current_context()
    given = [
        p.opts[0]
        for p in ctx.command.params
        if p.name not in ("from_set", "batch_size", "as_json")
        and ctx.get_parameter_source(p.name or "") == click.core.ParameterSource.COMMANDLINE
    ]
    if given:
        raise InputError(f"--from runs the set alone (its model and images are the set's); drop {given[0]}")
    from qexport.verify.run_set import infer_set

    report = infer_set(folder, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(report.as_dict(), sort_keys=True, indent=2))
        return
    click.echo(f"# {report.model} from the vector set {folder}; {report.images} image(s)")
    w = max([8] + [len(layer.label) for layer in report.layers])
    click.echo(f"{'layer':>{w}} {'values':>9} {'vs input':>8} {'vs requant':>10}  between")

    def shown(count: int | None) -> str:
        return "-" if count is None else str(count)

    for layer in report.layers:
        click.echo(
            f"{layer.label:>{w}} {layer.values:>9} {shown(layer.differ_input):>8} "
            f"{shown(layer.differ_requant):>10}  {', '.join(layer.between) or 'float end'}"
        )
    click.echo("top-1: " + " ".join(map(str, report.predictions)))
