"""``qexport train``: a thin click shell over :func:`qexport.train.train`.

Runnable as ``python -m qexport.cli.train`` so that ``torchrun -m qexport.cli.train`` starts it in
every process. torch is imported inside the command body, so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from qexport.cli.common import MODELS, _source, handles_errors

# RESNET_BUILTIN's names, spelled out so that --help imports no torch (a test keeps them equal)


def _milestones(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        epochs = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma list of epochs, e.g. 80,120") from None
    if any(e < 1 for e in epochs) or list(epochs) != sorted(epochs):
        raise click.BadParameter(f"{value!r}: epochs must be >= 1 and ascending, e.g. 80,120")
    return epochs


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    type=click.Choice(MODELS),
    default="VGG16_quant_gradual",
    show_default=True,
    help="Built-in architecture to train: a VGG or a ResNet-CIFAR (layers named layer1.0.conv2).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("data"),
    show_default=True,
    help="Folder holding cifar-10-batches-py (torchvision's CIFAR-10 layout).",
)
@click.option("--download", is_flag=True, help="Download CIFAR-10 into --data-dir first (170 MB).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("result"),
    show_default=True,
    help="Checkpoints, metrics.jsonl and the curves go to <out>/<model>/, as the course's fdir.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Train from scratch in a run folder an earlier run wrote (its files are replaced).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=200, show_default=True, help="Total epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True)
@click.option("--momentum", type=click.FloatRange(min=0), default=0.9, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option(
    "--milestones",
    default="80,120",
    show_default=True,
    callback=_milestones,
    help="Epochs (0-based, ascending) at whose start lr is multiplied by --gamma; '' for none.",
)
@click.option("--gamma", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    help="Continue from a checkpoint this command wrote: epoch, optimizer, lr schedule, best_prec.",
)
@click.option(
    "--bits-config",
    type=click.Path(path_type=Path),
    help='Per-layer activation bits 1..8, JSON {"act_bits": {"33": 2, "conv 9": 3}} (after --a-bit); '
    "VGG models only.",
)
@click.option("--w-bit", type=click.IntRange(2, 16), help="Weight bits of every QuantConv2d [default: 4].")
@click.option(
    "--a-bit", type=click.IntRange(1, 16), help="Activation bits of every QuantConv2d [default: 4]."
)
@click.option("--limit-train", type=click.IntRange(min=1), help="Train on the first N training images only.")
@click.option("--limit-test", type=click.IntRange(min=1), help="Test on the first N test images only.")
@click.option(
    "--workers", type=click.IntRange(min=0), default=2, show_default=True, help="DataLoader workers."
)
@click.option(
    "--deterministic",
    is_flag=True,
    help="Deterministic algorithms only, for runs that repeat bit for bit (slower on GPU).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds weights, shuffling and augmentation."
)
@click.option("--no-amp", is_flag=True, help="Full float32 on CUDA (mixed precision is the default there).")
@click.option(
    "--print-freq",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Print the running loss every N batches (0: per epoch only).",
)
@handles_errors
def train_command(
    out_dir: Path,
    force: bool,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    milestones: tuple[int, ...],
    gamma: float,
    resume: Path | None,
    w_bit: int | None,
    a_bit: int | None,
    limit_train: int | None,
    limit_test: int | None,
    workers: int,
    deterministic: bool,
    seed: int,
    no_amp: bool,
    print_freq: int,
    **kwargs: Any,
) -> None:
    """Train a quantized course model on CIFAR-10 with seed 003's recipe.

    Defaults: batch 128, RandomCrop(32, padding=4) + horizontal flip, SGD lr 0.01 momentum 0.9
    weight decay 1e-4, 200 epochs, lr x0.1 at epochs 80 and 120, cross-entropy. Writes the course's
    checkpoint.pth (every epoch) and model_best.pth.tar to <out>/<model>/, which `qexport dump
    --checkpoint` reads as they are, plus metrics.jsonl and training_curves.png. Uses CUDA with
    mixed precision when present. Under torchrun, every process trains with DistributedDataParallel.

    \b
    Example:
      qexport train --model VGG16_quant_gradual --data-dir ./data
      qexport train --model resnet20_quant --data-dir ./data
      qexport train --resume result/VGG16_quant_gradual/checkpoint.pth
      qexport train --epochs 1 --limit-train 512 --limit-test 256 --workers 0
      torchrun --nproc_per_node=4 -m qexport.cli.train --data-dir ./data
    """
    from qexport.train import BatchProgress, EpochResult, RunFinished, RunStarted, TrainOptions, train

    opts = TrainOptions(
        source=_source(kwargs),  # --model, --data-dir, --download, --bits-config
        out_dir=out_dir,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        milestones=milestones,
        gamma=gamma,
        workers=workers,
        resume=resume,
        w_bit=w_bit,
        a_bit=a_bit,
        limit_train=limit_train,
        limit_test=limit_test,
        deterministic=deterministic,
        seed=seed,
        amp=not no_amp,
        print_freq=print_freq,
        force=force,
    )
    for event in train(opts):
        if isinstance(event, RunStarted):
            processes = f"{event.world_size} process{'es' if event.world_size > 1 else ''}"
            amp = ", mixed precision" if event.amp else ""
            first = f"resuming after epoch {event.start_epoch}" if event.start_epoch else "from scratch"
            click.echo(
                f"training {event.model} on {event.device} ({processes}{amp}), {first}, "
                f"to epoch {event.epochs}, {event.train_images} train / {event.test_images} test images "
                f"-> {event.run_dir}"
            )
        elif isinstance(event, BatchProgress):
            click.echo(
                f"Epoch: [{event.epoch}][{event.batch}/{event.batches}]  "
                f"Loss {event.loss:.4f}  Prec {event.top1:.3f}%"
            )
        elif isinstance(event, EpochResult):
            star = "  * best" if event.is_best else ""
            click.echo(
                f"epoch {event.epoch}/{event.epochs}  lr {event.lr:.4g}  "
                f"train loss {event.train_loss:.4f} top-1 {event.train_top1:.2f}%  "
                f"test loss {event.test_loss:.4f} top-1 {event.test_top1:.2f}%  "
                f"best {event.best_prec:.2f}%  {event.seconds:.1f}s{star}"
            )
        elif isinstance(event, RunFinished):
            written = [event.checkpoint, event.best_checkpoint, event.metrics, event.curves]
            click.echo(f"best top-1 {event.best_prec:.2f}%; files: {', '.join(str(p) for p in written if p)}")


if __name__ == "__main__":
    train_command(prog_name="qexport train")
