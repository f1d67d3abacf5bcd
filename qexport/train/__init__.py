"""Seed 003's training loop as a command, with course-format checkpoints and curves.

``options`` (what a run takes), ``data`` (CIFAR-10 loaders), ``checkpoints`` (the run's files),
``distributed`` (torchrun), ``loop`` (the epochs) and ``curves`` (the PNG).
"""

from qexport.train.checkpoints import BEST_NAME, CHECKPOINT_NAME, CURVES_NAME, METRICS_NAME, read_metrics
from qexport.train.loop import BatchProgress, EpochResult, RunFinished, RunStarted, TrainEvent, train
from qexport.train.options import TrainOptions, build_training_model, lr_at

__all__ = [
    "BEST_NAME",
    "CHECKPOINT_NAME",
    "CURVES_NAME",
    "METRICS_NAME",
    "BatchProgress",
    "EpochResult",
    "RunFinished",
    "RunStarted",
    "TrainEvent",
    "TrainOptions",
    "build_training_model",
    "lr_at",
    "read_metrics",
    "train",
]
