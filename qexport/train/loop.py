"""Train a course model on CIFAR-10 with seed 003's recipe, in one process or many under torchrun.

The recipe (seed 003): batch 128; RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and the
seeds' normalisation; SGD lr 0.01, momentum 0.9, weight decay 1e-4; 200 epochs; lr x0.1 at epochs
80 and 120; cross-entropy. Checkpoints are the course's: ``<out>/<model>/checkpoint.pth`` every
epoch and ``model_best.pth.tar`` on improvement, each ``{'epoch', 'state_dict', 'best_prec',
'optimizer'}`` where ``epoch`` counts the epochs done (the next one to run).

:func:`train` is a generator: it yields progress records and never prints. Under ``torchrun`` (the
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` environment) it trains with DistributedDataParallel; only
rank 0 writes files and yields records.

Its parts: :mod:`~qexport.train.options` (what a run takes, the model it builds),
:mod:`~qexport.train.data` (CIFAR-10 loaders), :mod:`~qexport.train.checkpoints` (the run's files),
:mod:`~qexport.train.distributed` (torchrun) and :mod:`~qexport.train.curves` (the PNG).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from qexport.frontend.device import pick_device
from qexport.frontend.models.network import quantized_convs
from qexport.frontend.models.quant import QuantConv2d
from qexport.tally import Tally
from qexport.train.checkpoints import (
    BEST_NAME,
    CHECKPOINT_NAME,
    CURVES_NAME,
    METRICS_NAME,
    check_run_dir,
    cpu_state,
    prepare_run_dir,
    read_metrics,
    resume_run,
    save_checkpoint,
    write_metrics,
)
from qexport.train.curves import render_curves
from qexport.train.data import loaders
from qexport.train.distributed import Dist, dist_from_env, process_group, summed
from qexport.train.options import TrainOptions, build_training_model, check_options, lr_at
from qexport.writer.write import write_file_atomic


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_dir: Path
    model: str
    device: str
    world_size: int
    amp: bool
    start_epoch: int
    """Epochs already done (0 for a fresh run); the first epoch trained is ``start_epoch + 1``."""
    epochs: int
    train_images: int
    test_images: int


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Rank 0's running averages within an epoch (1-based ``epoch``, 0-based ``batch``)."""

    epoch: int
    batch: int
    batches: int
    loss: float
    top1: float


@dataclass(frozen=True, slots=True)
class EpochResult:
    """One finished epoch, summed over every process. ``epoch`` is 1-based: the checkpoint's 'epoch'."""

    epoch: int
    epochs: int
    lr: float
    train_loss: float
    train_top1: float
    test_loss: float
    test_top1: float
    best_prec: float
    is_best: bool
    seconds: float
    train_images: int
    """Images trained on, over all processes (DistributedSampler pads to a multiple of them)."""
    test_images: int
    world_size: int

    def record(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` line for this epoch."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The files of the run; a checkpoint is None when this run folder has none (nothing trained,
    or no epoch beat best_prec, as the course writes model_best only on improvement)."""

    run_dir: Path
    checkpoint: Path | None
    best_checkpoint: Path | None
    metrics: Path
    curves: Path
    best_prec: float


TrainEvent = RunStarted | BatchProgress | EpochResult | RunFinished


def train(opts: TrainOptions) -> Iterator[TrainEvent]:
    """Train as seed 003 does, yielding progress; files go to ``<out_dir>/<model>/``.

    Resumable (``opts.resume``): epoch, optimizer state, lr schedule and best_prec continue. Every
    file is written to a temporary name beside its target and renamed into place, so a run killed
    at any moment leaves the previous complete checkpoint.
    """
    check_options(opts)
    check_run_dir(opts)  # in every process, before any of them can create the folder
    where = dist_from_env()
    # before the process group, so nccl knows each process's GPU
    device = pick_device(opts.source.device, local_rank=where.local_rank)
    with process_group(where), _deterministic(opts.deterministic):
        yield from _run(opts, where, device)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # a fixed function of (seed, epoch, rank): a resumed run draws what an unbroken run would have
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


@contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms only while training, then torch's previous settings again."""
    if not enabled:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    # cuBLAS needs a fixed workspace for deterministic matmuls; it is read when CUDA first runs one
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1:]


def _train_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp: bool,
    epoch: int,
    opts: TrainOptions,
    where: Dist,
) -> Generator[BatchProgress, None, Tally]:
    """One pass over this process's share of the training set; returns its (unreduced) tally."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    tally = Tally(device)
    batches = len(loader)
    for i, (images, target) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, enabled=amp):
            output = model(images)
            loss = criterion(output, target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        tally.add(loss, output, target)
        if where.is_main and opts.print_freq and i % opts.print_freq == 0:
            loss_avg, top1, _ = summed(tally, Dist())
            yield BatchProgress(epoch + 1, i, batches, loss_avg, top1)
    return tally


def _validate(
    model: nn.Module, loader: DataLoader[Any], device: torch.device, amp: bool, where: Dist
) -> tuple[float, float, int]:
    """Test loss and top-1, summed over the processes. Like the course's validate(), its eval forward
    refreshes every ``weight_q`` after the last optimizer step, so the saved model is consistent."""
    criterion = nn.CrossEntropyLoss()
    model.eval()
    tally = Tally(device)
    with torch.no_grad():
        for images, target in loader:
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, enabled=amp):
                output = model(images)
                loss = criterion(output, target)
            tally.add(loss, output, target)
        if tally.sums is None:  # an empty test slice: refresh weight_q as the forward would have
            for _, module in quantized_convs(model):
                if isinstance(module, QuantConv2d):
                    module.weight_q.copy_(module.quantized_weight().detach())
    return summed(tally, where)


def _run(opts: TrainOptions, where: Dist, device: torch.device) -> Iterator[TrainEvent]:
    amp = opts.amp and device.type == "cuda"
    generator = torch.Generator()
    data = loaders(opts, where, device, generator)
    _seed_everything(opts.seed)  # the same initial weights in every process (DDP broadcasts rank 0's)
    model = build_training_model(opts).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay
    )
    start_epoch, best_prec = 0, 0.0
    if opts.resume is not None:
        start_epoch, best_prec = resume_run(opts.resume, opts.model, model, optimizer)
    run_dir = opts.out_dir / opts.model
    metrics_path = run_dir / METRICS_NAME
    history: list[dict[str, Any]] = []
    if where.is_main:
        prepare_run_dir(run_dir, fresh=opts.resume is None)
        # epochs after the resumed one are trained again, so their old lines go
        history = [r for r in read_metrics(metrics_path) if r["epoch"] <= start_epoch]
        write_metrics(metrics_path, history)
        yield RunStarted(
            run_dir,
            opts.model,
            str(device),
            where.world_size,
            amp,
            start_epoch,
            opts.epochs,
            data.train_images,
            data.test_images,
        )
    trained: nn.Module = model
    if where.enabled:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[where.local_rank] if device.type == "cuda" else None
        )
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    for epoch in range(start_epoch, opts.epochs):
        began = time.perf_counter()
        lr = lr_at(opts, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if data.sampler is not None:
            data.sampler.set_epoch(epoch)
        seed = _epoch_seed(opts.seed, epoch, where.rank)
        generator.manual_seed(seed)
        torch.manual_seed(seed)  # augmentations drawn in this process (--workers 0)
        tally = yield from _train_epoch(
            trained, data.train, optimizer, scaler, device, amp, epoch, opts, where
        )
        train_loss, train_top1, train_count = summed(tally, where)
        test_loss, test_top1, test_count = _validate(model, data.test, device, amp, where)
        is_best = test_top1 > best_prec
        best_prec = max(test_top1, best_prec)
        result = EpochResult(
            epoch + 1,
            opts.epochs,
            lr,
            train_loss,
            train_top1,
            test_loss,
            test_top1,
            best_prec,
            is_best,
            time.perf_counter() - began,
            train_count,
            test_count,
            where.world_size,
        )
        if where.is_main:
            state = {
                "epoch": epoch + 1,
                "state_dict": cpu_state(model.state_dict()),
                "best_prec": best_prec,
                "optimizer": cpu_state(optimizer.state_dict()),
            }
            save_checkpoint(state, is_best, run_dir)
            history.append(result.record())
            write_metrics(metrics_path, history)
            yield result
    if where.is_main:
        curves = run_dir / CURVES_NAME
        write_file_atomic(curves, render_curves(history, f"{opts.model}, seed 003 recipe: {run_dir}"))
        checkpoint, best = run_dir / CHECKPOINT_NAME, run_dir / BEST_NAME
        yield RunFinished(
            run_dir,
            checkpoint if checkpoint.is_file() else None,
            best if best.is_file() else None,
            metrics_path,
            curves,
            best_prec,
        )
