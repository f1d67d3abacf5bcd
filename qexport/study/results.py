"""The study's values: frozen results of eval, sensitivity and search, and their JSON and CSV.

A layer's identity is ``name``, its module path (``features.30``, ``layer2.0.conv1``); ``layer``
is the VGG ``model.features`` index (None for other families), which VGG reports keep showing
as ever, and ``conv_number`` its position among the quantized convs (seed 000's numbering).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qexport.frontend.models.network import layer_label
from qexport.tally import Tally

Strategy = Literal["greedy", "budget"]
STRATEGIES: tuple[Strategy, ...] = ("greedy", "budget")


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Top-1 hits and mean cross-entropy over ``count`` images, summed as the seed does."""

    correct: int
    count: int
    loss: float

    @property
    def accuracy(self) -> float:
        """Percent, computed as the seed does: ``100.0 * correct / total``."""
        return 100.0 * self.correct / self.count

    @classmethod
    def of(cls, tally: Tally) -> EvalResult:
        """The tally's sums, with the mean loss as the seed computes it: loss sum / count."""
        loss_sum, correct, count = tally.totals()
        return cls(correct, count, loss_sum / count)

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "loss": self.loss, "correct": self.correct, "count": self.count}


def where(name: str, layer: int | None) -> str:
    """How reports place a layer: ``features[30]`` for VGG (as ever), else the module path."""
    return name if layer is None else f"features[{layer}]"


@dataclass(frozen=True, slots=True)
class ConvInfo:
    """One quantized conv: seed 000's number, its module path, its features index (VGG only) and
    its real input shape (C, H, W)."""

    conv_number: int
    name: str
    layer: int | None
    input_shape: tuple[int, ...]

    @property
    def input_elements(self) -> int:
        return math.prod(self.input_shape)

    @property
    def title(self) -> str:
        """``conv 9 (features[30])``; ``conv 4 (layer2.0.downsample.0)``."""
        return f"conv {self.conv_number} ({where(self.name, self.layer)})"


@dataclass(frozen=True, slots=True)
class SensitivityRow:
    """The model with only this conv's input at ``to_bits``; ``drop`` = baseline - accuracy (%)."""

    conv_number: int
    name: str
    result: EvalResult
    drop: float
    layer: int | None = None

    @property
    def accuracy(self) -> float:
        return self.result.accuracy


@dataclass(frozen=True, slots=True)
class Sensitivity:
    """Per-layer sensitivity; ``rows`` in conv order, ``ranked`` sorted as the seed sorts them."""

    from_bits: int
    to_bits: int
    baseline: EvalResult
    rows: tuple[SensitivityRow, ...]

    @property
    def ranked(self) -> list[SensitivityRow]:
        """By drop, least sensitive first; ties keep conv order (Python's sort is stable)."""
        return sorted(self.rows, key=lambda r: r.drop)


@dataclass(frozen=True, slots=True)
class SearchStep:
    """One greedy decision: the candidate at ``to_bits`` with every accepted layer before it."""

    conv_number: int
    name: str
    accepted: bool
    result: EvalResult
    drop: float
    layer: int | None = None


@dataclass(frozen=True, slots=True)
class BudgetOutcome:
    """The knapsack's proposal, its one verifying evaluation, and whether it replaced greedy's."""

    names: tuple[str, ...]
    predicted_drop: float
    result: EvalResult
    drop: float
    saved_bits: int
    chosen: bool
    reason: str


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The answer: ``low_names`` (module paths) run at ``to_bits``, the rest at ``from_bits``."""

    strategy: Strategy
    epsilon: float
    sensitivity: Sensitivity
    steps: tuple[SearchStep, ...]
    greedy_names: tuple[str, ...]
    greedy_result: EvalResult
    budget: BudgetOutcome | None
    low_names: tuple[str, ...]
    result: EvalResult
    convs: tuple[ConvInfo, ...]

    @property
    def baseline(self) -> EvalResult:
        return self.sensitivity.baseline

    @property
    def drop(self) -> float:
        return self.baseline.accuracy - self.result.accuracy

    def act_bits(self) -> dict[str, int]:
        """Module path -> activation bits, for every conv."""
        s = self.sensitivity
        return {c.name: s.to_bits if c.name in self.low_names else s.from_bits for c in self.convs}

    def saved_bits(self) -> dict[str, int]:
        """Activation-memory bits saved per image, per conv (0 where the conv keeps ``from_bits``)."""
        return saved_bits(self.convs, self.low_names, self.sensitivity.from_bits, self.sensitivity.to_bits)


def saved_bits(
    convs: Sequence[ConvInfo], low_names: Sequence[str], from_bits: int, to_bits: int
) -> dict[str, int]:
    """Per conv (module path): input elements x (from_bits - to_bits) if it runs at ``to_bits``, else 0."""
    low = set(low_names)
    return {c.name: c.input_elements * (from_bits - to_bits) if c.name in low else 0 for c in convs}


def _layer(name: str, layer: int | None) -> dict[str, Any]:
    """A report's layer fields: ``name`` always, and the features index ``layer`` for VGG."""
    return {"name": name} if layer is None else {"name": name, "layer": layer}


def _named(convs: Sequence[ConvInfo], names: Sequence[str]) -> dict[str, Any]:
    """``{"names": [...]}``, plus ``"layers"`` (features indices) when every conv has one (VGG)."""
    index = {c.name: c.layer for c in convs}
    out: dict[str, Any] = {"names": list(names)}
    if all(c.layer is not None for c in convs):
        out["layers"] = [index[n] for n in names]
    return out


def rows_json(sens: Sensitivity) -> list[dict[str, Any]]:
    return [
        {"rank": rank, "conv": r.conv_number, **_layer(r.name, r.layer), "act_bit": sens.to_bits}
        | {"drop": r.drop}
        | r.result.as_dict()
        for rank, r in enumerate(sens.ranked)
    ]


def sensitivity_csv(sens: Sensitivity) -> str:
    """The ranked table as CSV: ``rank,conv,layer,name,act_bit,accuracy,drop,loss,correct,count``
    (``layer``, the features index, is empty outside VGG)."""
    buffer = io.StringIO()
    fields = ["rank", "conv", "layer", "name", "act_bit", "accuracy", "drop", "loss", "correct", "count"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows_json(sens))
    return buffer.getvalue()


def bits_config(result: SearchResult) -> dict[str, Any]:
    """``{"act_bits": {"<layer>": bits, ...}}`` for every conv (read by read_bits_config): a VGG
    layer by its features index (``"30"``), any other by its module path (``"layer2.0.conv1"``)."""
    bits = result.act_bits()
    return {"act_bits": {layer_label(c.name, c.layer): bits[c.name] for c in result.convs}}


def summary(result: SearchResult) -> dict[str, Any]:
    """Counts, accuracies, decisions and activation-memory savings of a search, for summary.json."""
    s = result.sensitivity
    convs = result.convs
    saved = result.saved_bits()
    total_bits = sum(c.input_elements * s.from_bits for c in convs)
    low = len(result.low_names)
    out: dict[str, Any] = {
        "strategy": result.strategy,
        "epsilon": result.epsilon,
        "from_bits": s.from_bits,
        "to_bits": s.to_bits,
        "baseline": s.baseline.as_dict(),
        "final": result.result.as_dict() | {"drop": result.drop},
        "conv_layers": len(convs),
        "low_bit_layers": low,
        "low_bit_share": low / len(convs),
        "act_bits_per_conv": [result.act_bits()[c.name] for c in convs],
        "act_bits": bits_config(result)["act_bits"],
        "activation_memory": {
            "unit": "bits per image",
            "baseline_bits": total_bits,
            "saved_bits": sum(saved.values()),
            "saved_share": sum(saved.values()) / total_bits,
            "per_layer": [
                {
                    "conv": c.conv_number,
                    **_layer(c.name, c.layer),
                    "input_shape": list(c.input_shape),
                    "input_elements": c.input_elements,
                    "act_bit": result.act_bits()[c.name],
                    "saved_bits": saved[c.name],
                }
                for c in convs
            ],
        },
        "steps": [
            {
                "conv": st.conv_number,
                **_layer(st.name, st.layer),
                "decision": "ACCEPT" if st.accepted else "REJECT",
                "drop": st.drop,
            }
            | st.result.as_dict()
            for st in result.steps
        ],
        "greedy": {**_named(convs, result.greedy_names), **result.greedy_result.as_dict()},
        "sensitivity": rows_json(s),
    }
    if result.budget is not None:
        b = result.budget
        out["budget"] = {
            **_named(convs, b.names),
            "predicted_drop": b.predicted_drop,
            "drop": b.drop,
            "saved_bits": b.saved_bits,
            "chosen": b.chosen,
            "reason": b.reason,
            **b.result.as_dict(),
        }
    return out
