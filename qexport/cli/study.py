"""``qexport eval``, ``sensitivity`` and ``search``: click shells over :mod:`qexport.study`.

Each command parses options, calls one ``study.run_*`` function (handing it ``api.load``, so the
study never loads a model itself) and prints the seed's lines.
torch is imported inside command bodies only, so ``--help`` stays instant. The commands are
registered on the main group in ``cli.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from qexport.cli.common import _source, bits_config_option, handles_errors, source_options

if TYPE_CHECKING:
    from qexport.study import SearchResult, SearchStep, Sensitivity, Study, Written

F = TypeVar("F", bound=Callable[..., Any])


class _Bars:
    """One click progress bar per stage, drawn only on a terminal and never under CI."""

    def __init__(self) -> None:
        self.enabled = sys.stdout.isatty() and not os.environ.get("CI")
        self.bar: Any = None
        self.done = 0

    def __enter__(self) -> _Bars:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if done >= total:
                return  # a result from memory: nothing to watch
            self.bar = click.progressbar(length=total, label=label)
            self.done = 0
        self.bar.update(done - self.done)
        self.done = done
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None


def _all_images_by_default(command: click.Command) -> click.Command:
    """An evaluation runs over every image unless ``--images`` says otherwise."""
    for param in command.params:
        if param.name == "images" and isinstance(param, click.Option):
            param.default = ":"
            param.show_default = False
            param.help = "Which images: a range (0:1000), a list (1,5,9) or an index [default: all]."
    return command


def _study_options(command: str) -> Callable[[F], F]:
    """Labels, batching and output options shared by eval, sensitivity and search."""

    def decorate(func: F) -> F:
        options = [
            click.option(
                "--labels",
                "labels_file",
                type=click.Path(path_type=Path),
                help="Class indices for the images (.npy/.pt, 1-D integers, one per --input row). "
                "CIFAR-10 brings its own; demo images are labelled with the 4-bit model's predictions.",
            ),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                default=128,
                show_default=True,
                help="Images a forward pass (the seeds' BATCH_SIZE).",
            ),
            click.option("--limit", type=click.IntRange(min=1), help="Only the first N selected images."),
            click.option(
                "-o",
                "--out",
                "out_dir",
                type=click.Path(path_type=Path),
                default=Path("qexport-out") / command,
                show_default=True,
                help="Output folder.",
            ),
            click.option("--force", is_flag=True, help="Replace an existing qexport output folder."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


_BITS = [
    click.option(
        "--from",
        "from_bits",
        type=click.IntRange(1, 8),  # a bits config's widths (frontend.bits.CONFIG_ACT_BITS)
        default=4,
        show_default=True,
        help="Activation bits of every conv in the baseline.",
    ),
    click.option(
        "--to",
        "to_bits",
        type=click.IntRange(1, 8),  # a bits config's widths (frontend.bits.CONFIG_ACT_BITS)
        default=2,
        show_default=True,
        help="Activation bits a lowered conv gets.",
    ),
]


def _bits_options(func: F) -> F:
    for option in reversed(_BITS):
        func = option(func)
    return func


def _header(study: Study) -> None:
    for notice in study.loaded.notices:
        click.echo(f"notice: {notice}", err=True)
    click.echo(f"# {study.describe()}")


def _wrote(written: Written) -> None:
    click.echo(f"wrote {', '.join(written.files)} + manifest.json to {written.out_dir}")


@_all_images_by_default
@click.command("eval")
@source_options
@_study_options("eval")
@bits_config_option
@handles_errors
def eval_command(
    labels_file: Path | None,
    batch_size: int,
    limit: int | None,
    out_dir: Path,
    force: bool,
    **kwargs: Any,
) -> None:
    """Top-1 accuracy and mean cross-entropy loss, as seed 000's evaluate() measures them.

    Runs over the CIFAR-10 test set (--data-dir), over --input tensors with --labels, or over
    the demo images. The demo model is untrained and its images have no labels: they are labelled
    with the model's own predictions at 4 bits, and the result says so. --bits-config takes the
    bits_config.json `qexport search` writes. Writes eval.json.

    \b
    Example:
      qexport eval --checkpoint result/VGG16_quant/model_best.pth.tar --data-dir ./data
      qexport eval --bits-config qexport-out/search/bits_config.json --limit 1000
      qexport eval --input images.npy --labels labels.npy
    """
    from qexport import api, study

    opts = _source(kwargs)
    with _Bars() as bars:
        s, result, written = study.run_eval(
            opts,
            out_dir,
            load=api.load,
            labels_file=labels_file,
            limit=limit,
            batch_size=batch_size,
            force=force,
            progress=bars,
        )
    _header(s)
    if opts.bits_config is not None:
        click.echo(f"# activation bits from {opts.bits_config}")
    who = "Demo model" if s.loaded.demo_label else "Checkpoint model"
    note = f"  ({s.note})" if s.note else ""
    click.echo(f"[{who}] Test Accuracy: {result.accuracy:.2f}% | Test Loss: {result.loss:.4f}{note}")
    _wrote(written)


@_all_images_by_default
@click.command("sensitivity")
@source_options
@_study_options("sensitivity")
@_bits_options
@handles_errors
def sensitivity_command(
    from_bits: int,
    to_bits: int,
    labels_file: Path | None,
    batch_size: int,
    limit: int | None,
    out_dir: Path,
    force: bool,
    **kwargs: Any,
) -> None:
    """Seed 000's per-layer sensitivity: every conv at --from bits but one at --to bits.

    Prints the layers sorted by accuracy drop (least sensitive first, ties in conv order), and
    writes sensitivity.json, sensitivity.csv and a bar chart sensitivity.png. "Layer N" is the
    conv number (seed 000's numbering); features[L] (VGG) or the module path (layer1.0.conv2) is
    the name `dump --layer` takes.

    \b
    Example:
      qexport sensitivity --from 4 --to 2 --checkpoint result/VGG16_quant/model_best.pth.tar
      qexport sensitivity --limit 512 -o out/sens
    """
    from qexport import api, study

    with _Bars() as bars:
        s, sens, written = study.run_sensitivity(
            _source(kwargs),
            out_dir,
            load=api.load,
            from_bits=from_bits,
            to_bits=to_bits,
            labels_file=labels_file,
            limit=limit,
            batch_size=batch_size,
            force=force,
            progress=bars,
        )
    from qexport.study.results import where

    _header(s)
    click.echo(f"[All-{from_bits}bit activation] Test Accuracy: {sens.baseline.accuracy:.2f}%")
    click.echo("\n=> Per-layer sensitivity sorted by accuracy drop:")
    for r in sens.ranked:
        head = f"  Layer {r.conv_number:2d}: acc={r.accuracy:.2f}%, drop={r.drop:.2f}%"
        click.echo(f"{head} | {where(r.name, r.layer)}")
    _wrote(written)


def _step_line(step: SearchStep, to_bits: int, epsilon: float) -> str:
    from qexport.study.results import where

    acc = step.result.accuracy
    head = f"layer {step.conv_number:2d} -> {to_bits}bit | acc={acc:.2f}%, drop={step.drop:.2f}%"
    at = where(step.name, step.layer)
    if step.accepted:
        return f" ACCEPT {head} | {at}"
    return f" REJECT {head} (> {epsilon:.2f}%) | {at}"


def _budget(result: SearchResult) -> None:
    b = result.budget
    if b is None:
        return
    s = result.sensitivity
    names = ", ".join(c.title for c in result.convs if c.name in b.names) or "none"
    verdict = "chosen" if b.chosen else "kept greedy's answer"
    click.echo("\n=> Budget search (knapsack over the measured drops, maximising saved activation bits):")
    click.echo(
        f" knapsack: {names} -> {s.to_bits}bit | predicted drop={b.predicted_drop:.2f}%, "
        f"acc={b.result.accuracy:.2f}%, drop={b.drop:.2f}%"
    )
    click.echo(f" -> {verdict}: {b.reason}")


def _final(result: SearchResult) -> None:
    s = result.sensitivity
    bits = result.act_bits()
    per_conv = [bits[c.name] for c in result.convs]
    layers = len(per_conv)
    low = len(result.low_names)
    saved = sum(result.saved_bits().values())
    total = sum(c.input_elements * s.from_bits for c in result.convs)
    click.echo("\n===== Final Mixed-Precision Config =====")
    click.echo("Per-layer activation bits (per QuantConv2d):")
    click.echo(str(per_conv))
    click.echo(f"\nTotal conv layers = {layers}")
    click.echo(f"{s.to_bits}bit layers      = {low} ({low / layers * 100:.1f}%)")
    click.echo(f"\nFinal mixed-precision accuracy      : {result.result.accuracy:.2f}%")
    click.echo(f"Accuracy drop vs all-{s.from_bits}bit baseline : {result.drop:.2f}%")
    share = saved / total * 100
    click.echo(f"Activation memory saved             : {saved} of {total} bits per image ({share:.1f}%)")


@_all_images_by_default
@click.command("search")
@source_options
@_study_options("search")
@_bits_options
@click.option(
    "--epsilon",
    type=float,
    default=1.0,
    show_default=True,
    help="Largest accuracy drop (percentage points) vs the all --from bits baseline to accept.",
)
@click.option(
    "--strategy",
    type=click.Choice(["greedy", "budget"]),
    default="greedy",
    show_default=True,
    help="greedy: seed 000's search. budget: also a knapsack over the measured drops maximising "
    "saved activation bits, verified by one evaluation, kept only if it beats greedy's answer.",
)
@click.option(
    "--cache-mb",
    type=click.IntRange(min=0),
    help="Memory for activations kept between evaluations [default: 1024]; 0 keeps none "
    "(slower, same results).",
)
@handles_errors
def search_command(
    from_bits: int,
    to_bits: int,
    epsilon: float,
    strategy: str,
    cache_mb: int | None,
    labels_file: Path | None,
    batch_size: int,
    limit: int | None,
    out_dir: Path,
    force: bool,
    **kwargs: Any,
) -> None:
    """Seed 000's greedy mixed-precision search over per-layer activation bits.

    Measures each conv's sensitivity, then, least sensitive first, lowers a conv to --to bits and
    keeps it there if the accuracy drop vs the all --from bits baseline stays within --epsilon.
    Writes bits_config.json (read by `qexport eval --bits-config`) and summary.json: low-bit
    layer count and share, final accuracy, drop, and the activation memory saved per image
    (input elements of each lowered conv x (from - to) bits).

    \b
    Example:
      qexport search --epsilon 1.0 --checkpoint result/VGG16_quant/model_best.pth.tar
      qexport search --epsilon 0.5 --strategy budget --limit 1000
      qexport eval --bits-config qexport-out/search/bits_config.json
    """
    from qexport import api, study

    def on_start(s: Study, sens: Sensitivity) -> None:
        bars.close()
        _header(s)
        click.echo(f"[All-{from_bits}bit activation] Test Accuracy: {sens.baseline.accuracy:.2f}%")
        click.echo(
            f"\n=> Start greedy search from all-{from_bits}bit baseline: "
            f"acc={sens.baseline.accuracy:.2f}%, epsilon={epsilon:.2f}%\n"
        )

    def on_step(step: SearchStep) -> None:
        bars.close()
        click.echo(_step_line(step, to_bits, epsilon))

    extra = {} if cache_mb is None else {"cache_bytes": cache_mb << 20}
    with _Bars() as bars:
        _, result, written = study.run_search(
            _source(kwargs),
            out_dir,
            load=api.load,
            epsilon=epsilon,
            from_bits=from_bits,
            to_bits=to_bits,
            strategy=strategy,  # type: ignore[arg-type]
            labels_file=labels_file,
            limit=limit,
            batch_size=batch_size,
            force=force,
            progress=bars,
            on_start=on_start,
            on_step=on_step,
            **extra,
        )
    if result.budget is not None:
        _budget(result)
    _final(result)
    _wrote(written)
