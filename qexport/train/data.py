"""CIFAR-10 for training: seed 003's augmentation, ``--limit-*`` cuts, and one loader per process.

Each process trains on its ``DistributedSampler`` share and tests its own unpadded slice, so
the summed test counts are the test set exactly.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset

from qexport.errors import InputError
from qexport.frontend.inputs import CIFAR_FOLDER, CIFAR_MEAN, CIFAR_STD
from qexport.train.distributed import Dist
from qexport.train.options import TrainOptions


def seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; python's and numpy's RNGs follow it
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def datasets(opts: TrainOptions, where: Dist) -> tuple[Dataset[Any], Dataset[Any]]:
    """Train and test CIFAR-10 with the seed's transforms, cut to ``--limit-*`` (the first N images)."""
    import torchvision
    from torchvision import transforms

    folder = opts.data_dir / CIFAR_FOLDER
    if not opts.source.download and not folder.is_dir():
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
        if opts.source.download and where.enabled:
            # one process downloads; the others wait, then find the files in place
            if where.is_main:
                torchvision.datasets.CIFAR10(root=root, train=True, download=True)
            dist.barrier()
        train_set = torchvision.datasets.CIFAR10(
            root=root, train=True, download=opts.source.download and not where.enabled, transform=train_tf
        )
        test_set = torchvision.datasets.CIFAR10(root=root, train=False, download=False, transform=test_tf)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as err:
        fix = (
            "the download failed; check the network or put cifar-10-batches-py there by hand"
            if opts.source.download
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
class Data:
    train: DataLoader[Any]
    test: DataLoader[Any]
    sampler: DistributedSampler[Any] | None
    train_images: int
    test_images: int


def loaders(opts: TrainOptions, where: Dist, device: torch.device, generator: torch.Generator) -> Data:
    train_set, test_set = datasets(opts, where)
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
        "worker_init_fn": seed_worker,
        "generator": generator,
    }
    return Data(
        DataLoader(train_set, sampler=sampler, **common),
        DataLoader(test_part, shuffle=False, **common),
        distributed,
        len(cast(Sized, train_set)),
        test_size,
    )
