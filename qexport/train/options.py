"""What ``qexport train`` takes (:class:`TrainOptions`, seed 003's recipe) and the model it builds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from qexport.errors import InputError
from qexport.frontend.bits import apply_bits, read_bits_config
from qexport.frontend.models.network import conv_table, quantized_convs
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.resnet import RESNET_BUILTIN, build_resnet
from qexport.frontend.models.vgg import BUILTIN, DEFAULT_MODEL, build_model
from qexport.frontend.source import SourceOptions

TRAIN_MODELS = (*sorted(BUILTIN), *RESNET_BUILTIN)
"""Every name ``--model`` takes: the built-in VGGs, then the ResNets shallow to deep."""

_SOURCE = SourceOptions(model=DEFAULT_MODEL, data_dir=Path("data"))


@dataclass(frozen=True, slots=True)
class TrainOptions:
    """Everything ``qexport train`` takes; the defaults are seed 003's recipe."""

    source: SourceOptions = _SOURCE
    """The options every command shares; training reads ``model`` (default VGG16_quant_gradual),
    ``data_dir`` (default ./data), ``download``, ``bits_config``, ``act_clip`` and ``device`` (each
    torchrun worker on its own GPU when not given). A run continues from ``resume``, not a
    ``checkpoint``, and trains on CIFAR-10, not ``input_file``/``images``."""
    out_dir: Path = Path("result")
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] = (80, 120)
    """Epochs (0-based, as the course's adjust_learning_rate) at whose start lr is multiplied by gamma."""
    gamma: float = 0.1
    workers: int = 2
    resume: Path | None = None
    w_bit: int | None = None
    a_bit: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    deterministic: bool = False
    seed: int = 0
    amp: bool = True
    """Mixed precision (autocast + GradScaler); used on CUDA only."""
    print_freq: int = 100
    """Yield a :class:`BatchProgress` every this many batches (0: never), as the course prints."""
    force: bool = False
    """Train from scratch in a run folder an earlier run wrote, replacing its files."""

    @property
    def model(self) -> str:
        return self.source.model or DEFAULT_MODEL

    @property
    def data_dir(self) -> Path:
        return self.source.data_dir or Path("data")


def lr_at(opts: TrainOptions, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: lr x gamma for each milestone <= epoch (MultiStepLR)."""
    return opts.lr * opts.gamma ** sum(1 for m in opts.milestones if m <= epoch)


def build_training_model(opts: TrainOptions) -> nn.Module:
    """The named built-in model with ``--w-bit``/``--a-bit`` on every quantized conv, then the bits config.

    A VGG is built from :data:`~qexport.frontend.models.vgg.BUILTIN`, a ResNet from
    :data:`~qexport.frontend.models.resnet.RESNET_BUILTIN` (its layers are named by module path,
    ``layer1.0.conv2``).
    """
    _check_model(opts)
    name = opts.model
    model: nn.Module
    if name in RESNET_BUILTIN:
        model = build_resnet(RESNET_BUILTIN[name], opts.source.act_clip)
    else:
        model = build_model(BUILTIN[name], opts.source.act_clip)
    _set_widths(model, opts)
    if opts.source.bits_config is not None:
        table = conv_table(model, name)
        apply_bits(model, read_bits_config(opts.source.bits_config, table), {})
    return model


def _set_widths(model: nn.Module, opts: TrainOptions) -> None:
    """``--w-bit``/``--a-bit`` on every quantized conv (the built-ins' are the course QuantConv2d)."""
    convs = [m for _, m in quantized_convs(model) if isinstance(m, QuantConv2d)]
    if opts.w_bit is not None:
        if not 2 <= opts.w_bit <= 16:
            raise InputError(f"--w-bit {opts.w_bit}: weights need 2..16 bits (one is the sign)")
        for conv in convs:
            conv.w_bit = opts.w_bit
            conv.weight_quant.w_bit = opts.w_bit
    if opts.a_bit is not None:
        if not 1 <= opts.a_bit <= 16:
            raise InputError(f"--a-bit {opts.a_bit}: activations need 1..16 bits")
        for conv in convs:
            conv.act_bit = opts.a_bit


def _check_model(opts: TrainOptions) -> None:
    name = opts.model
    if name not in BUILTIN and name not in RESNET_BUILTIN:
        raise InputError(f"unknown model {name!r}; qexport train builds {', '.join(TRAIN_MODELS)}")


def check_options(opts: TrainOptions) -> None:
    """Refuse values no run can use, naming the flag, before any work."""
    _check_model(opts)
    source = opts.source
    unused = {"checkpoint": source.checkpoint, "input_file": source.input_file, "images": source.images}
    for name, given in unused.items():
        if given is not None:
            raise InputError(
                f"training builds {opts.model} afresh on CIFAR-10 and takes no source {name} "
                f"({given}); continue a run with resume (--resume) instead"
            )
    positive = {
        "--epochs": opts.epochs,
        "--batch-size": opts.batch_size,
        "--limit-train": opts.limit_train,
        "--limit-test": opts.limit_test,
    }
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: must be at least 1")
    if opts.lr <= 0 or opts.momentum < 0 or opts.weight_decay < 0 or opts.gamma <= 0:
        raise InputError(
            f"lr {opts.lr}, momentum {opts.momentum}, weight decay {opts.weight_decay}, gamma "
            f"{opts.gamma}: lr and gamma must be > 0, momentum and weight decay >= 0"
        )
    if any(m < 1 for m in opts.milestones):
        raise InputError(f"--milestones {list(opts.milestones)}: epochs must be >= 1")
    if opts.workers < 0:
        raise InputError(f"--workers {opts.workers}: use 0 (load in the main process) or more")
