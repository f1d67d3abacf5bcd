"""How a state dict differs from what a model expects: one comparison for every model family."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

OPTIONAL_SUFFIXES = (".weight_q",)  # recomputed from weight when absent


@dataclass(frozen=True, slots=True)
class KeyReport:
    """The missing, unexpected and mis-shaped keys of a state dict against a model's."""

    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.wrong_shape)

    def describe(self) -> list[str]:
        """The message parts naming each kind of problem (a few keys each, and how many more)."""
        parts = []
        if self.missing:
            parts.append(f"missing keys {short_list(self.missing)};")
        if self.unexpected:
            parts.append(f"unexpected keys {short_list(self.unexpected)};")
        if self.wrong_shape:
            parts.append(f"wrongly shaped {short_list(self.wrong_shape, 3)};")
        return parts


def key_report(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor]) -> KeyReport:
    """``state`` against ``expected`` (key -> shape); a missing stored ``weight_q`` is no problem."""
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {list(state[k].shape)}, model {list(shape)}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    return KeyReport(missing, unexpected, wrong)


def short_list(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` items, and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
