"""Train a course model on CIFAR-10 with seed 003's recipe, in one process or many under torchrun.

The recipe (seed 003): batch 128; RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and the
seeds' normalisation; SGD lr 0.01, momentum 0.9, weight decay 1e-4; 200 epochs; lr x0.1 at epochs
80 and 120; cross-entropy. Checkpoints are the course's: ``<out>/<model>/checkpoint.pth`` every
epoch and ``model_best.pth.tar`` on improvement, each ``{'epoch', 'state_dict', 'best_prec',
'optimizer'}`` where ``epoch`` counts the epochs done (the next one to run).

:func:`train` is a generator: it yields progress records and never prints. Under ``torchrun`` (the
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` environment) it trains with DistributedDataParallel; only
rank 0 writes files and yields records.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import time
from collections.abc import Generator, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset

from qexport.errors import InputError
from qexport.frontend.bits import apply_act_bits, read_bits_config
from qexport.frontend.checkpoint import load_checkpoint
from qexport.frontend.device import pick_device
from qexport.frontend.inputs import CIFAR_FOLDER, CIFAR_MEAN, CIFAR_STD
from qexport.frontend.models.load import load_weights
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.resolve import resolve_arch
from qexport.frontend.models.vgg import DEFAULT_MODEL, VGGQuant, build_model, builtin_arch
from qexport.train.curves import render_curves

CHECKPOINT_NAME = "checkpoint.pth"
BEST_NAME = "model_best.pth.tar"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "training_curves.png"


@dataclass(frozen=True, slots=True)
class TrainOptions:
    """Everything ``qexport train`` takes; the defaults are seed 003's recipe."""

    model: str = DEFAULT_MODEL
    data_dir: Path = Path("data")
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
    download: bool = False
    resume: Path | None = None
    bits_config: Path | None = None
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


@dataclass(frozen=True, slots=True)
class _Dist:
    """Where this process sits in a torchrun job (world_size 1: no torch.distributed)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def lr_at(opts: TrainOptions, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: lr x gamma for each milestone <= epoch (MultiStepLR)."""
    return opts.lr * opts.gamma ** sum(1 for m in opts.milestones if m <= epoch)


def build_training_model(opts: TrainOptions) -> VGGQuant:
    """The named built-in model with ``--w-bit``/``--a-bit`` on every QuantConv2d, then the bits config."""
    arch = builtin_arch(opts.model)
    model = build_model(arch)
    convs = [m for m in model.features if isinstance(m, QuantConv2d)]
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
    if opts.bits_config is not None:
        apply_act_bits(model, read_bits_config(opts.bits_config, arch))
    return model


def train(opts: TrainOptions) -> Iterator[TrainEvent]:
    """Train as seed 003 does, yielding progress; files go to ``<out_dir>/<model>/``.

    Resumable (``opts.resume``): epoch, optimizer state, lr schedule and best_prec continue. Every
    file is written to a temporary name beside its target and renamed into place, so a run killed
    at any moment leaves the previous complete checkpoint.
    """
    _check_options(opts)
    _check_run_dir(opts)  # in every process, before any of them can create the folder
    where = _dist_from_env()
    # before the process group, so nccl knows each process's GPU
    device = pick_device(local_rank=where.local_rank)
    owns_group = where.enabled and not dist.is_initialized()
    try:
        if owns_group:
            _init_group(where)
        with _deterministic(opts.deterministic):
            yield from _run(opts, where, device)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _check_options(opts: TrainOptions) -> None:
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


_RUN_FILES = (CHECKPOINT_NAME, BEST_NAME, METRICS_NAME, CURVES_NAME)


def _check_run_dir(opts: TrainOptions) -> None:
    """Refuse, before any work, a run folder that is a file or holds an earlier run's files.

    Continuing there needs ``--resume``; starting over there needs ``--force``.
    """
    run_dir = opts.out_dir / opts.model
    for folder in (opts.out_dir, run_dir):
        if folder.exists() and not folder.is_dir():
            raise InputError(f"output {folder} exists and is a file; choose another --out folder")
    if opts.resume is not None or opts.force or not run_dir.is_dir():
        return
    earlier = [name for name in _RUN_FILES if (run_dir / name).exists()]
    if earlier:
        resume = (
            f"--resume {run_dir / CHECKPOINT_NAME} to continue it, " if CHECKPOINT_NAME in earlier else ""
        )
        raise InputError(
            f"run folder {run_dir} already holds {', '.join(earlier)} from an earlier run; pass "
            f"{resume}--force to train from scratch over it, or choose another --out folder"
        )


def _dist_from_env() -> _Dist:
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    try:
        world_size, rank, local_rank = (
            int(os.environ.get(name, default)) for name, default in zip(names, ("1", "0", "0"), strict=True)
        )
    except ValueError:
        shown = ", ".join(f"{n}={os.environ.get(n)!r}" for n in names)
        raise InputError(f"torchrun environment is not numeric ({shown}); launch with torchrun") from None
    if world_size > 1 and not dist.is_available():
        raise InputError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    if not 0 <= rank < max(world_size, 1):
        raise InputError(f"RANK={rank} is outside WORLD_SIZE={world_size}; launch with torchrun")
    return _Dist(world_size, rank, local_rank)


def _init_group(where: _Dist) -> None:
    # nccl for GPUs; gloo is torch's CPU backend (and what the CPU tests run on)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, rank=where.rank, world_size=where.world_size)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # a fixed function of (seed, epoch, rank): a resumed run draws what an unbroken run would have
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; python's and numpy's RNGs follow it
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


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


def _datasets(opts: TrainOptions, where: _Dist) -> tuple[Dataset[Any], Dataset[Any]]:
    """Train and test CIFAR-10 with the seed's transforms, cut to ``--limit-*`` (the first N images)."""
    import torchvision
    from torchvision import transforms

    folder = opts.data_dir / CIFAR_FOLDER
    if not opts.download and not folder.is_dir():
        raise InputError(
            f"no CIFAR-10 under --data-dir {opts.data_dir}: {folder} does not exist. Point --data-dir "
            f"at the folder that holds {CIFAR_FOLDER}, or add --download to fetch it (170 MB) there"
        )
    normalize = transforms.Normalize(mean=CIFAR_MEAN, std=CIFAR_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    root = str(opts.data_dir)
    try:
        if opts.download and where.enabled:
            # one process downloads; the others wait, then find the files in place
            if where.is_main:
                torchvision.datasets.CIFAR10(root=root, train=True, download=True)
            dist.barrier()
        train_set = torchvision.datasets.CIFAR10(
            root=root, train=True, download=opts.download and not where.enabled, transform=train_tf
        )
        test_set = torchvision.datasets.CIFAR10(root=root, train=False, download=False, transform=test_tf)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as err:
        fix = (
            "the download failed; check the network or put cifar-10-batches-py there by hand"
            if opts.download
            else f"delete {folder} and add --download, or point --data-dir at a good copy"
        )
        raise InputError(
            f"CIFAR-10 under {folder} is missing files or damaged ({type(err).__name__}: {err}); {fix}"
        ) from err
    return _limited(train_set, opts.limit_train), _limited(test_set, opts.limit_test)


def _limited(dataset: Dataset[Any], limit: int | None) -> Dataset[Any]:
    size = len(cast(Sized, dataset))
    return dataset if limit is None or limit >= size else Subset(dataset, range(limit))


@dataclass(frozen=True, slots=True)
class _Data:
    train: DataLoader[Any]
    test: DataLoader[Any]
    sampler: DistributedSampler[Any] | None
    train_images: int
    test_images: int


def _loaders(opts: TrainOptions, where: _Dist, device: torch.device, generator: torch.Generator) -> _Data:
    train_set, test_set = _datasets(opts, where)
    sampler: DistributedSampler[Any] | RandomSampler
    distributed: DistributedSampler[Any] | None = None
    if where.enabled:
        distributed = DistributedSampler(
            train_set, num_replicas=where.world_size, rank=where.rank, shuffle=True, seed=opts.seed
        )
        sampler = distributed
    else:
        sampler = RandomSampler(cast(Sized, train_set), generator=generator)
    # each process tests its own slice, unpadded, so the summed counts are the test set exactly
    test_size = len(cast(Sized, test_set))
    test_part = (
        Subset(test_set, range(where.rank, test_size, where.world_size)) if where.enabled else test_set
    )
    common: dict[str, Any] = {
        "batch_size": opts.batch_size,
        "num_workers": opts.workers,
        "pin_memory": device.type == "cuda",
        "worker_init_fn": _seed_worker,
        "generator": generator,
    }
    return _Data(
        DataLoader(train_set, sampler=sampler, **common),
        DataLoader(test_part, shuffle=False, **common),
        distributed,
        len(cast(Sized, train_set)),
        test_size,
    )


def _resume(path: Path, model: VGGQuant, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    """Load weights and optimizer state from a course checkpoint; return (epochs done, best_prec)."""
    if not path.is_file():
        raise InputError(
            f"--resume {path} is not a file; give the checkpoint.pth of an earlier run, e.g. "
            f"result/{model.arch.name}/checkpoint.pth"
        )
    ckpt = load_checkpoint(path)
    resolve_arch(ckpt, model.arch.name)  # refuses a checkpoint of another architecture, naming it
    if ckpt.epoch is None:
        raise InputError(
            f"--resume {path} holds weights only (no 'epoch' and 'optimizer'), so there is nothing to "
            "continue; resume from the checkpoint.pth a training run wrote"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        optimizer_state = raw.get("optimizer") if isinstance(raw, dict) else None
        if not isinstance(optimizer_state, dict):
            raise InputError(
                f"--resume {path} has no 'optimizer' state; resume from the checkpoint.pth a training "
                "run wrote"
            )
        load_weights(model, ckpt.state_dict, trust_recomputed=True)
        optimizer.load_state_dict(optimizer_state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise InputError(
            f"--resume {path}: its optimizer state does not fit {model.arch.name} with SGD "
            f"({type(err).__name__}: {err}); resume with the --model it was trained with"
        ) from err
    return ckpt.epoch, float(ckpt.best_prec or 0.0)


@dataclass(slots=True)
class _Tally:
    """Loss sum, correct count and sample count, kept on the device until read."""

    device: torch.device
    sums: torch.Tensor | None = None

    def add(self, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        n = target.shape[0]
        batch = torch.stack(
            [
                loss.detach().double() * n,
                (output.detach().argmax(dim=1) == target).sum().double(),
                torch.tensor(float(n), dtype=torch.float64, device=self.device),
            ]
        )
        self.sums = batch if self.sums is None else self.sums + batch

    def summed(self, where: _Dist) -> tuple[float, float, int]:
        """(mean loss, top-1 %, count), all-reduced over the processes."""
        sums = self.sums if self.sums is not None else torch.zeros(3, dtype=torch.float64, device=self.device)
        if where.enabled:
            sums = sums.clone()
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        loss_sum, correct, count = (float(v) for v in sums.cpu())
        if count == 0:
            return float("nan"), 0.0, 0
        return loss_sum / count, 100.0 * correct / count, int(count)


def _train_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp: bool,
    epoch: int,
    opts: TrainOptions,
    where: _Dist,
) -> Generator[BatchProgress, None, _Tally]:
    """One pass over this process's share of the training set; returns its (unreduced) tally."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    tally = _Tally(device)
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
            loss_avg, top1, _ = tally.summed(_Dist())
            yield BatchProgress(epoch + 1, i, batches, loss_avg, top1)
    return tally


def _validate(
    model: VGGQuant, loader: DataLoader[Any], device: torch.device, amp: bool, where: _Dist
) -> tuple[float, float, int]:
    """Test loss and top-1, summed over the processes. Like the course's validate(), its eval forward
    refreshes every ``weight_q`` after the last optimizer step, so the saved model is consistent."""
    criterion = nn.CrossEntropyLoss()
    model.eval()
    tally = _Tally(device)
    with torch.no_grad():
        for images, target in loader:
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, enabled=amp):
                output = model(images)
                loss = criterion(output, target)
            tally.add(loss, output, target)
        if tally.sums is None:  # an empty test slice: refresh weight_q as the forward would have
            for module in model.features:
                if isinstance(module, QuantConv2d):
                    module.weight_q.copy_(module.quantized_weight().detach())
    return tally.summed(where)


def _cpu(value: Any) -> Any:
    """Tensors moved to the CPU inside dicts and lists, so a checkpoint loads on any machine."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cpu(v) for v in value]
    return value


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(target)  # os.replace: atomic within one folder
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {target} ({err}); free some space or pick another --out") from err


def _save_checkpoint(state: dict[str, Any], is_best: bool, run_dir: Path) -> None:
    """checkpoint.pth every epoch, the same bytes as model_best.pth.tar on improvement (as the course)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    _write_atomic(run_dir / CHECKPOINT_NAME, data)
    if is_best:
        _write_atomic(run_dir / BEST_NAME, data)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; unreadable lines (a run killed mid-write) are skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    return records


def _write_metrics(path: Path, records: Sequence[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    _write_atomic(path, text.encode("utf-8"))


def _prepare_run_dir(run_dir: Path, fresh: bool) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the run folder {run_dir} ({err}); pick another --out") from err
    for name in _RUN_FILES:
        for stale in run_dir.glob(f".{name}.*.tmp"):  # left by a run killed while writing it
            stale.unlink(missing_ok=True)
        if fresh:  # --force: no earlier run's model_best.pth.tar may outlive this run's start
            (run_dir / name).unlink(missing_ok=True)


def _run(opts: TrainOptions, where: _Dist, device: torch.device) -> Iterator[TrainEvent]:
    amp = opts.amp and device.type == "cuda"
    generator = torch.Generator()
    data = _loaders(opts, where, device, generator)
    _seed_everything(opts.seed)  # the same initial weights in every process (DDP broadcasts rank 0's)
    model = build_training_model(opts).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay
    )
    start_epoch, best_prec = 0, 0.0
    if opts.resume is not None:
        start_epoch, best_prec = _resume(opts.resume, model, optimizer)
    run_dir = opts.out_dir / opts.model
    metrics_path = run_dir / METRICS_NAME
    history: list[dict[str, Any]] = []
    if where.is_main:
        _prepare_run_dir(run_dir, fresh=opts.resume is None)
        # epochs after the resumed one are trained again, so their old lines go
        history = [r for r in read_metrics(metrics_path) if r["epoch"] <= start_epoch]
        _write_metrics(metrics_path, history)
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
        train_loss, train_top1, train_count = tally.summed(where)
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
                "state_dict": _cpu(model.state_dict()),
                "best_prec": best_prec,
                "optimizer": _cpu(optimizer.state_dict()),
            }
            _save_checkpoint(state, is_best, run_dir)
            history.append(result.record())
            _write_metrics(metrics_path, history)
            yield result
    if where.is_main:
        curves = run_dir / CURVES_NAME
        _write_atomic(curves, render_curves(history, f"{opts.model}, seed 003 recipe: {run_dir}"))
        checkpoint, best = run_dir / CHECKPOINT_NAME, run_dir / BEST_NAME
        yield RunFinished(
            run_dir,
            checkpoint if checkpoint.is_file() else None,
            best if best.is_file() else None,
            metrics_path,
            curves,
            best_prec,
        )
