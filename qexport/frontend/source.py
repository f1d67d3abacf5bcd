"""Where the model and the images come from: :class:`SourceOptions` -> :func:`load` -> :class:`Loaded`.

The options are shared by every command that runs a model: export, verify, testbench, the study
(eval, sensitivity, search) and training (which uses the model, data and bits-config fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from qexport.errors import InputError
from qexport.frontend.bits import apply_bits, read_bits_config
from qexport.frontend.capture import ConvBits, module_bits
from qexport.frontend.checkpoint import load_checkpoint
from qexport.frontend.device import pick_device
from qexport.frontend.inputs import CIFAR_FOLDER, Inputs, load_array, load_cifar10, load_demo
from qexport.frontend.models.load import LoadReport, load_weights
from qexport.frontend.models.network import ConvTable, conv_table, float_convs, quantized_convs
from qexport.frontend.models.quant import DEFAULT_ACT_CLIP, ActClip
from qexport.frontend.models.resolve import ModelArch, build_any, builtin_model, resolve_model
from qexport.frontend.models.user import is_user_spec
from qexport.frontend.models.vgg import DEFAULT_MODEL


@dataclass(frozen=True)
class SourceOptions:
    """Where the model and the images come from; every field has the CLI flag of its name."""

    checkpoint: Path | None = None
    model: str | None = None
    data_dir: Path | None = None
    input_file: Path | None = None
    images: str | None = None
    """None: image 0 of CIFAR-10 or the demo, every image of an --input file."""
    download: bool = False
    act_clip: ActClip = DEFAULT_ACT_CLIP
    trust_recomputed: bool = False
    device: str | None = None
    bits_config: Path | None = None


@dataclass(frozen=True)
class Loaded:
    """A model ready to capture: its architecture, quantized convs, inputs, and what loading found."""

    model: nn.Module
    arch: ModelArch
    inputs: Inputs
    source: dict[str, Any]
    demo_label: str | None
    notices: list[str] = field(default_factory=list)
    table: ConvTable = ConvTable("", ())
    report: LoadReport = field(default_factory=LoadReport)

    @property
    def bits(self) -> dict[str, ConvBits]:
        return self.report.bits

    @property
    def float_convs(self) -> list[str]:
        """Plain ``nn.Conv2d``s (a float stem): listed by ``qexport layers``, never exported."""
        return float_convs(self.model)

    def blocked(self) -> dict[str, str]:
        """Layers that cannot be exported: each bad one, and every later one its output reaches.

        A bad layer's integers are undefined and every conv after it in the forward pass sees
        its output, so those refuse too; the convs before it export as usual.
        """
        blocked: dict[str, str] = {}
        first_bad: str | None = None
        for ref in self.table.convs:
            if ref.name in self.report.problems:
                blocked[ref.name] = self.report.problems[ref.name]
                first_bad = first_bad or ref.name
            elif first_bad is not None:
                blocked[ref.name] = (
                    f"layer {ref.label}: its input passes through layer "
                    f"{self.table.by_name(first_bad).label}, which cannot be exported "
                    f"({self.report.problems[first_bad]})"
                )
        return blocked


def load(opts: SourceOptions) -> Loaded:
    """Model (checkpoint or demo) and inputs (file, CIFAR-10 or demo images)."""
    from qexport.frontend.demo import DEMO_LABEL, demo_model

    notices: list[str] = []
    report = LoadReport()
    model: nn.Module
    if opts.checkpoint is not None:
        ckpt = load_checkpoint(opts.checkpoint)
        arch = resolve_model(ckpt, opts.model)
        model = build_any(arch, opts.act_clip)
        report = load_weights(model, ckpt.state_dict, trust_recomputed=opts.trust_recomputed)
        source: dict[str, Any] = {"checkpoint": ckpt.name, "sha256": ckpt.sha256}
        demo_label = None
    else:
        if is_user_spec(opts.model):
            raise InputError(
                f"--model {opts.model} is your own model code: give its trained weights with "
                "--checkpoint (the demo is for the built-in models)"
            )
        arch = builtin_model(opts.model or DEFAULT_MODEL)
        model = demo_model(arch, opts.act_clip)
        source = {"demo": True}
        demo_label = DEMO_LABEL
        report = LoadReport(bits={name: module_bits(m) for name, m in quantized_convs(model)})
    table = conv_table(model, arch.name)
    if opts.bits_config is not None:
        apply_bits(model, read_bits_config(opts.bits_config, table), report.bits)
    inputs = _inputs(opts, notices)
    model.eval()
    model.to(pick_device(opts.device))
    return Loaded(model, arch, inputs, source, demo_label, notices, table, report)


def _inputs(opts: SourceOptions, notices: list[str]) -> Inputs:
    if opts.input_file is not None:
        return load_array(opts.input_file, opts.images or "")
    spec = opts.images or "0"
    if opts.data_dir is not None or opts.download:
        return load_cifar10(opts.data_dir or Path("data"), spec, download=opts.download)
    if (Path("data") / CIFAR_FOLDER).is_dir():
        return load_cifar10(Path("data"), spec)
    if opts.checkpoint is not None:
        notices.append("no CIFAR-10 under ./data and no --input: using the demo images")
    return load_demo(spec)
