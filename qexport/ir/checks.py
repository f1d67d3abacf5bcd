"""The seeds' recovery checks of one layer, as a value (no torch: manifests carry it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class LayerChecks:
    """How far psum * x_delta * w_delta lies from the float model (seed 003's check).

    ``next_input_*`` compare ReLU of it with the next conv's input; None where no conv follows.
    ``passed``: both mean errors below ``reference.MEAN_ERROR_LIMIT``.
    """

    output_mean_error: float
    output_max_error: float
    next_input_mean_error: float | None
    next_input_max_error: float | None
    passed: bool

    def to_json(self) -> dict[str, float | bool | None]:
        return asdict(self)
