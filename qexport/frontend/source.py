"""Where the model and the images come from: :class:`SourceOptions` -> :func:`load` -> :class:`Loaded`.

The options are shared by every command that runs a model: export, verify, testbench, the study
(eval, sensitivity, search) and training (which uses the model, data and bits-config fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qexport.frontend.bits import apply_act_bits, read_bits_config
from qexport.frontend.checkpoint import load_checkpoint
from qexport.frontend.device import pick_device
from qexport.frontend.inputs import CIFAR_FOLDER, Inputs, load_array, load_cifar10, load_demo
from qexport.frontend.models.load import load_weights
from qexport.frontend.models.quant import DEFAULT_ACT_CLIP, ActClip
from qexport.frontend.models.resolve import resolve_arch
from qexport.frontend.models.vgg import (
    DEFAULT_MODEL,
    Arch,
    VGGQuant,
    build_model,
    builtin_arch,
)


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
    model: VGGQuant
    arch: Arch
    inputs: Inputs
    source: dict[str, Any]
    demo_label: str | None
    notices: list[str] = field(default_factory=list)


def load(opts: SourceOptions) -> Loaded:
    """Model (checkpoint or demo) and inputs (file, CIFAR-10 or demo images)."""
    from qexport.frontend.demo import DEMO_LABEL, demo_model

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
    model.to(pick_device(opts.device))
    return Loaded(model, arch, inputs, source, demo_label, notices)


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
