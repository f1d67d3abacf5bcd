"""Options and error handling shared by every qexport command module."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from qexport.errors import QExportError

if TYPE_CHECKING:
    from qexport.frontend.source import Loaded, SourceOptions

F = TypeVar("F", bound=Callable[..., Any])

MODELS = (
    "VGG16_quant",
    "VGG16_quant_gradual",
    "VGG16_quant_squeeze",
    # the ResNet-CIFAR built-ins (frontend.models.resnet.RESNET_BUILTIN; spelt out: no torch import here)
    "resnet20_quant",
    "resnet32_quant",
    "resnet44_quant",
    "resnet56_quant",
    "resnet110_quant",
)


def _fail(err: QExportError) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(err.exit_code)


def handles_errors(func: F) -> F:
    """Turn library errors into one message on stderr and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except QExportError as err:
            _fail(err)

    return wrapper  # type: ignore[return-value]


def source_options(func: F) -> F:
    """Model and input options shared by every command that runs the model."""
    options = [
        click.option(
            "--checkpoint",
            type=click.Path(path_type=Path),
            help="Course checkpoint (.pth / .pth.tar). Without it: the demo model (untrained).",
        ),
        click.option(
            "--model",
            metavar="NAME|module.path:factory",
            help="Architecture: a built-in (VGG16_quant, VGG16_quant_gradual, VGG16_quant_squeeze, "
            "resnet20_quant ... resnet110_quant) or your own model code as module.path:factory "
            "(with --checkpoint). Default: the built-in that fits the checkpoint, else one inferred "
            "from its state dict; VGG16_quant_gradual for the demo.",
        ),
        click.option(
            "--data-dir",
            type=click.Path(path_type=Path),
            help="Folder holding cifar-10-batches-py. Default ./data when it has CIFAR-10, "
            "else the demo images.",
        ),
        click.option("--download", is_flag=True, help="Download CIFAR-10 into --data-dir first."),
        click.option(
            "--input",
            "input_file",
            type=click.Path(path_type=Path),
            help="Inputs as .npy/.pt: float N×3×32×32 (normalised) or uint8 images.",
        ),
        click.option(
            "--images",
            help="Which images: an index (0), a range (0:128, the seeds' first batch) or a list (1,5,9) "
            "[default: 0; with --input, every image of the file].",
        ),
        click.option(
            "--act-clip",
            type=click.Choice(["course", "relu"]),
            default="course",
            show_default=True,
            help="Activation clip: 'course' clips at alpha only (the course code, so the first "
            "layer's normalised image gives negative ints); 'relu' also clips at 0.",
        ),
        click.option(
            "--trust-recomputed",
            is_flag=True,
            help="Export weights recomputed from 'weight' even if a stored weight_q disagrees.",
        ),
        click.option("--device", help="torch device (default: cuda when present, else cpu)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


bits_config_option = click.option(
    "--bits-config",
    type=click.Path(path_type=Path),
    help='Per-layer activation bits 1..8, JSON {"act_bits": {"33": 2}} (features index or "conv 10").',
)


def _source(kwargs: dict[str, Any]) -> SourceOptions:
    """The shared source options, taken out of a command's ``kwargs`` (a command without one of
    the options, as ``train`` without ``--checkpoint``, gets that field's default)."""
    from dataclasses import fields

    from qexport.frontend.source import SourceOptions

    names = [f.name for f in fields(SourceOptions)]  # each field has the CLI option of its name
    return SourceOptions(**{name: kwargs.pop(name) for name in names if name in kwargs})


def _describe_source(loaded: Loaded) -> str:
    model = loaded.arch.name
    if loaded.demo_label:
        return f"{model} ({loaded.demo_label})"
    return f"{model} from {loaded.source['checkpoint']}"


_MODULE_PATH = re.compile(r"[A-Za-z_]\w*(\.\w+)+")
_CONV_NUMBER = re.compile(r"conv\s*\d+")
"""A layer's module path, as ``features.33`` or ``layer1.0.conv2``."""


def _parse_layers(text: str) -> list[int | str]:
    """Features indices (``33``), module paths (``features.33``, ``layer1.0.conv2``) and conv
    numbers (``conv 9``), comma separated."""
    layers: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if _MODULE_PATH.fullmatch(part) or _CONV_NUMBER.fullmatch(part):
            layers.append(part)
            continue
        try:
            layers.append(int(part))
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is not a features index (33), a module path (features.33, layer1.0.conv2), "
                "a conv number (conv 9) or a comma list of them"
            ) from None
    return layers


def _default_folder(layers: list[int | str]) -> str:
    """``layer33_35`` for VGG layers (features.33 as 33, the alias), else the names joined."""
    texts = [str(layer).removeprefix("features.").replace(" ", "") for layer in layers]
    return "layer" + "_".join(texts) if all(t.isdigit() for t in texts) else "_".join(texts)


def fixed_point_options(func: F) -> F:
    """``--mult-bits``, ``--frac-bits``, ``--skip-bits``, ``--bias-bits``: the ResNet fixed-point
    SFU's widths (``infer`` runs it, ``dump --sfu`` writes it); the defaults are ``FixedPointWidths()``'s."""
    for name, default, text in reversed(
        (
            ("--mult-bits", 28, "ResNet fixed point: signed multiplier width."),
            ("--frac-bits", 20, "ResNet fixed point: accumulator bits below the next x_int's step."),
            ("--skip-bits", 32, "ResNet fixed point: unsigned shortcut width."),
            ("--bias-bits", 40, "ResNet fixed point: signed folded-bias width."),
        )
    ):
        func = click.option(name, type=int, default=default, show_default=True, help=text)(func)
    return func


def fixed_point_widths(mult_bits: int, frac_bits: int, skip_bits: int, bias_bits: int) -> Any:
    """The ``FixedPointWidths`` the options give (imported here, so ``--help`` stays light)."""
    from qexport.ir.fixed_point import FixedPointWidths

    return FixedPointWidths(mult_bits, frac_bits, skip_bits, bias_bits)
