"""The one tally of the study and training: the seeds' evaluate() sums, exactly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qexport.tally import Tally


def test_tally_sums_as_the_seed_evaluate_does() -> None:
    gen = torch.Generator().manual_seed(0)
    tally = Tally(torch.device("cpu"))
    loss_sum, correct, count = 0.0, 0, 0
    for n in (5, 3, 7):
        out = torch.randn(n, 10, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        loss = F.cross_entropy(out, y)
        tally.add(loss, out, y)
        loss_sum += loss.item() * y.size(0)  # the seed's sums, in Python floats
        _, pred = out.max(1)
        correct += int(pred.eq(y).sum().item())
        count += n
    assert tally.totals() == (loss_sum, correct, count)


def test_an_empty_tally_reads_zero() -> None:
    assert Tally(torch.device("cpu")).totals() == (0.0, 0, 0)
