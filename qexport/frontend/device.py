"""Where models run: the one rule every command follows (CUDA when present, else the CPU)."""

from __future__ import annotations

import torch


def pick_device(name: str | None = None, *, local_rank: int | None = None) -> torch.device:
    """``name`` as given (``--device``), else CUDA when present, else the CPU.

    ``local_rank`` (a torchrun worker's) picks that GPU and makes it the current one, so each
    worker of a distributed run computes on its own device.
    """
    if name:
        return torch.device(name)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank is None:
        return torch.device("cuda")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def device_of(model: torch.nn.Module) -> torch.device:
    """The device a model's parameters live on (where its inputs must go)."""
    return next(model.parameters()).device
