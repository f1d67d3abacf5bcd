"""Seed 000's loop, transcribed from the notebook: the reference our faster search must equal.

Used by tests/study/test_study.py and bench/bench_search.py; it shares no code with qexport.study.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from qexport.frontend.models.quant import QuantConv2d


def seed_evaluate(model: nn.Module, loader: DataLoader[Any]) -> tuple[float, float]:
    criterion = nn.CrossEntropyLoss()
    with torch.no_grad():
        model.eval()
        total, correct = 0, 0
        loss_sum = 0.0
        for x, y in loader:
            out = model(x)
            loss = criterion(out, y)
            loss_sum += loss.item() * x.size(0)
            _, pred = out.max(1)
            correct += pred.eq(y).sum().item()
            total += y.size(0)
    return 100.0 * correct / total, loss_sum / total


def seed_sensitivity(model: nn.Module, loader: DataLoader[Any]) -> tuple[float, float, list[dict[str, Any]]]:
    qconvs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    for m in qconvs:
        m.act_bit = 4
    acc_all4, loss_all4 = seed_evaluate(model, loader)
    results = []
    for idx in range(len(qconvs)):
        for m in qconvs:
            m.act_bit = 4
        qconvs[idx].act_bit = 2
        acc, loss = seed_evaluate(model, loader)
        results.append({"layer": idx, "acc": acc, "loss": loss, "acc_drop": acc_all4 - acc})
    for m in qconvs:
        m.act_bit = 4
    return acc_all4, loss_all4, sorted(results, key=lambda x: x["acc_drop"])


def seed_greedy(
    model: nn.Module, loader: DataLoader[Any], acc_all4: float, ranked: list[dict[str, Any]], epsilon: float
) -> tuple[list[tuple[int, bool, float, float, float]], list[int], float]:
    qconvs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    precisions = [4] * len(qconvs)
    for m in qconvs:
        m.act_bit = 4
    current_acc = acc_all4
    decisions = []
    for r in ranked:
        idx = r["layer"]
        qconvs[idx].act_bit = 2
        precisions[idx] = 2
        acc, loss = seed_evaluate(model, loader)
        drop = acc_all4 - acc
        if drop <= epsilon:
            current_acc = acc
            decisions.append((idx, True, acc, loss, drop))
        else:
            qconvs[idx].act_bit = 4
            precisions[idx] = 4
            decisions.append((idx, False, acc, loss, drop))
    for m in qconvs:
        m.act_bit = 4
    return decisions, precisions, current_acc
