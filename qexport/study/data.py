"""What the study runs on: a loaded model with labelled images (:class:`Study`), from :func:`prepare`.

The model and images arrive loaded (``api.load``, called by the CLI layer); labels come from a
``--labels`` file, CIFAR-10 itself, or, for the demo, the model's own 4-bit predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qexport.errors import InputError
from qexport.frontend.device import device_of
from qexport.frontend.inputs import read_labels
from qexport.frontend.source import Loaded
from qexport.precision import exact_math
from qexport.study.bits import act_bits, check_batch_size, frozen_weights, qconvs

PSEUDO_LABEL_BITS = 4
"""Demo images have no labels: they are labelled with the model's own predictions at 4 bits."""


@dataclass(frozen=True)
class Study:
    """A loaded model with labelled images (N, 3, 32, 32) float32 and labels (N,) int64, on the CPU.

    ``labels_from`` says where the labels come from (``cifar10``, a file name, or ``pseudo``);
    ``note`` is set when they are the model's own predictions and says so.
    """

    loaded: Loaded
    images: torch.Tensor
    labels: torch.Tensor
    labels_from: str
    note: str | None

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    def describe(self) -> str:
        """``VGG16_quant from model_best.pth.tar, 10000 CIFAR-10 test image(s), labels: cifar10``."""
        loaded = self.loaded
        model = loaded.arch.name
        if loaded.demo_label:
            who = f"{model} ({loaded.demo_label})"
        else:
            who = f"{model} from {loaded.source['checkpoint']}"
        source = loaded.inputs.source
        count = self.images.shape[0]
        if "cifar10" in source:
            what = f"CIFAR-10 {source['cifar10']} image(s)"
        elif "input" in source:
            what = f"image(s) from {source['input']}"
        else:
            what = "demo image(s)"
        return f"{who}, {count} {what}, labels: {self.note or self.labels_from}"


def check_selection(limit: int | None, batch_size: int) -> None:
    """Refuse ``--limit`` and ``--batch-size`` below 1 (before anything loads)."""
    check_batch_size(batch_size)
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: give at least 1 image")


def prepare(
    loaded: Loaded,
    *,
    labels_file: Path | None = None,
    limit: int | None = None,
    batch_size: int = 128,
) -> Study:
    """Labels for the loaded images: ``labels_file``, CIFAR-10's, or pseudo-labels.

    Demo images carry no labels, so they are labelled with the model's own predictions with every
    conv at 4 bits (the same batches as any later evaluation), and ``note`` says so.
    """
    check_selection(limit, batch_size)
    inputs = loaded.inputs
    count = inputs.images.shape[0] if limit is None else min(limit, inputs.images.shape[0])
    images = inputs.images[:count]
    indices = inputs.indices[:count]
    num_classes = loaded.arch.num_classes
    note = None
    if labels_file is not None:
        labels = read_labels(labels_file, indices, num_classes)
        labels_from = labels_file.name
    elif inputs.labels is not None:
        labels = inputs.labels[:count]
        labels_from = "cifar10"
    elif "input" in inputs.source:
        raise InputError(
            f"--input {inputs.source['input']} has no labels; pass --labels FILE.npy|.pt with one "
            "class index per input row"
        )
    else:
        labels = pseudo_labels(loaded.model, images, batch_size)
        labels_from = "pseudo"
        who = loaded.demo_label or "demo images"
        note = f"{who}: accuracy vs the {PSEUDO_LABEL_BITS}-bit model's own predictions"
    return Study(loaded, images, labels, labels_from, note)


@torch.no_grad()
@exact_math()  # no TF32: a CUDA run counts what a CPU run counts
def pseudo_labels(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """The model's own top-1 predictions (N,) with every conv at ``PSEUDO_LABEL_BITS``."""
    model.eval()
    device = device_of(model)
    preds = []
    with act_bits(model, dict.fromkeys(qconvs(model), PSEUDO_LABEL_BITS)), frozen_weights(model):
        for i in range(0, images.shape[0], batch_size):
            _, pred = model(images[i : i + batch_size].to(device)).max(1)
            preds.append(pred.cpu())
    return torch.cat(preds)
