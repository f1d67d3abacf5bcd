"""The one running tally of loss and top-1 over batches, for the study's evaluations and training.

It sums as the seeds' ``evaluate`` does (``loss.item() * x.size(0)`` and ``pred.eq(y).sum()``),
in float64 on the model's device, so no batch waits for the host; a training run under torchrun
adds up every process's sums before they are read. Counts are exact: float64 holds integers to
2**53.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(slots=True)
class Tally:
    """Loss sum, correct count and sample count, kept on ``device`` until read."""

    device: torch.device
    sums: torch.Tensor | None = None

    def add(self, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        """One batch: ``loss`` is its mean cross-entropy, ``output`` (N, classes), ``target`` (N,)."""
        n = target.shape[0]
        batch = torch.stack(
            [
                loss.detach().double() * n,
                (output.detach().argmax(dim=1) == target).sum().double(),
                torch.tensor(float(n), dtype=torch.float64, device=self.device),
            ]
        )
        self.sums = batch if self.sums is None else self.sums + batch

    def totals(self, *, all_reduce: bool = False) -> tuple[float, int, int]:
        """(loss sum, correct, count); ``all_reduce`` sums them over the torch.distributed group."""
        sums = self.sums if self.sums is not None else torch.zeros(3, dtype=torch.float64, device=self.device)
        if all_reduce:
            sums = sums.clone()
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        loss_sum, correct, count = (float(v) for v in sums.cpu())
        return loss_sum, int(correct), int(count)
