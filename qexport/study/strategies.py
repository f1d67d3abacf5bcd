"""Seed 000's greedy mixed-precision search and the budget (0/1 knapsack) strategy over it.

Both run on the :class:`~qexport.study.engine.Engine`, so a candidate evaluates only from its
own conv onwards and every measured configuration is reused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from qexport.errors import InputError
from qexport.precision import exact_math
from qexport.study.bits import act_bits, check_batch_size, check_bits, frozen_weights
from qexport.study.data import Study
from qexport.study.engine import DEFAULT_CACHE_MB, Engine, Progress, sensitivity_table
from qexport.study.results import (
    STRATEGIES,
    BudgetOutcome,
    ConvInfo,
    EvalResult,
    SearchResult,
    SearchStep,
    Sensitivity,
    Strategy,
    saved_bits,
)


def knapsack(weights: Sequence[int], values: Sequence[int], capacity: int) -> list[int]:
    """Indices maximising the summed value with summed weight <= ``capacity`` (0/1, exact DP).

    Items of weight <= 0 are always taken (they free room or cost nothing); ties keep the first
    solution found, so the answer is deterministic.
    """
    free = [i for i, w in enumerate(weights) if w <= 0]
    rest = [i for i, w in enumerate(weights) if w > 0]
    room = capacity - sum(weights[i] for i in free)
    if room < 0:
        return []
    best = [0] * (room + 1)
    took = []
    for i in rest:
        w, v = weights[i], values[i]
        row = [False] * (room + 1)
        for c in range(room, w - 1, -1):
            if best[c - w] + v > best[c]:
                best[c] = best[c - w] + v
                row[c] = True
        took.append(row)
    chosen = list(free)
    c = room
    for k in range(len(rest) - 1, -1, -1):
        if took[k][c]:
            chosen.append(rest[k])
            c -= weights[rest[k]]
    return sorted(chosen)


@torch.no_grad()
@exact_math()  # no TF32: a CUDA run counts what a CPU run counts
def search(
    study: Study,
    epsilon: float = 1.0,
    from_bits: int = 4,
    to_bits: int = 2,
    *,
    strategy: Strategy = "greedy",
    batch_size: int = 128,
    cache_bytes: int = DEFAULT_CACHE_MB << 20,
    progress: Progress | None = None,
    on_sensitivity: Callable[[Sensitivity], None] | None = None,
    on_step: Callable[[SearchStep], None] | None = None,
) -> SearchResult:
    """Seed 000's greedy mixed-precision search, optionally followed by a knapsack (``budget``).

    greedy: from all-``from_bits``, try the convs least sensitive first; keep each at ``to_bits``
    if the accuracy drop vs the baseline stays <= ``epsilon`` (percentage points).

    budget: also pick, by an exact 0/1 knapsack over the measured single-layer drops (taken as
    additive), the convs that save the most activation bits within ``epsilon``; evaluate that
    choice once, and keep it only if it holds the drop within ``epsilon`` and saves more bits
    than greedy's answer (on equal bits, a higher accuracy). Otherwise greedy's answer stands.
    """
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; use {' or '.join(STRATEGIES)}")
    if not math.isfinite(epsilon) or epsilon < 0:
        raise InputError(f"--epsilon {epsilon}: give the largest accuracy drop to accept, in %, >= 0")
    if cache_bytes < 0:
        raise InputError("--cache-mb must be >= 0")
    check_bits(from_bits, to_bits)
    check_batch_size(batch_size)
    study.model.eval()
    with act_bits(study.model, {}), frozen_weights(study.model):
        engine = Engine(study, from_bits, to_bits, batch_size, cache_bytes, progress)
        sens = sensitivity_table(engine)
        if on_sensitivity:
            on_sensitivity(sens)
        convs = tuple(engine.infos)
        steps = _greedy(engine, sens, epsilon, on_step)
        greedy_names = tuple(c.name for c in convs if c.name in engine.accepted)  # conv order
        greedy_result = engine.measured(engine.accepted)
        budget = None
        low_names, result = greedy_names, greedy_result
        if strategy == "budget":
            budget = _budget(engine, sens, convs, epsilon, greedy_names, greedy_result)
            if budget.chosen:
                low_names, result = budget.names, budget.result
    return SearchResult(
        strategy, epsilon, sens, steps, greedy_names, greedy_result, budget, low_names, result, convs
    )


def _greedy(
    engine: Engine, sens: Sensitivity, epsilon: float, on_step: Callable[[SearchStep], None] | None
) -> tuple[SearchStep, ...]:
    base = sens.baseline.accuracy
    steps = []
    for row in sens.ranked:
        low = engine.accepted | {row.name}
        result = engine.evaluate(low, f"try {engine.titles[row.name]} at {engine.to_bits} bit")
        drop = base - result.accuracy
        accepted = drop <= epsilon
        if accepted:
            engine.accept(low)
        step = SearchStep(row.conv_number, row.name, accepted, result, drop, row.layer)
        steps.append(step)
        if on_step:
            on_step(step)
    return tuple(steps)


def _budget(
    engine: Engine,
    sens: Sensitivity,
    convs: Sequence[ConvInfo],
    epsilon: float,
    greedy_names: tuple[str, ...],
    greedy_result: EvalResult,
) -> BudgetOutcome:
    base = sens.baseline
    names = [c.name for c in convs]
    by_name = {r.name: r for r in sens.rows}
    # weights in misclassified images, so the capacity is exact: drop% = 100 * images / count
    weights = [base.correct - by_name[name].result.correct for name in names]
    values = [c.input_elements * (sens.from_bits - sens.to_bits) for c in convs]
    capacity = math.floor(epsilon * base.count / 100.0 + 1e-9)
    picked = tuple(names[i] for i in knapsack(weights, values, capacity))
    predicted = 100.0 * sum(weights[names.index(name)] for name in picked) / base.count
    result = engine.evaluate(frozenset(picked), "verify the knapsack's choice")
    drop = base.accuracy - result.accuracy
    bits = sum(saved_bits(convs, picked, sens.from_bits, sens.to_bits).values())
    greedy_bits = sum(saved_bits(convs, greedy_names, sens.from_bits, sens.to_bits).values())
    if drop > epsilon:
        chosen, reason = False, f"its measured drop {drop:.2f}% exceeds epsilon {epsilon:.2f}%"
    elif (bits, result.correct) > (greedy_bits, greedy_result.correct):
        chosen, reason = True, f"saves {bits} bits per image vs greedy's {greedy_bits}"
    else:
        chosen, reason = False, f"saves {bits} bits per image, not more than greedy's {greedy_bits}"
    return BudgetOutcome(picked, predicted, result, drop, bits, chosen, reason)
