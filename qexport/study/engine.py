"""The evaluation engine: accuracy and per-layer sensitivity, sharing the prefixes of variants.

The seed re-evaluates the whole model for every variant. On a VGG (every quantized conv in
``model.features``) a variant whose first changed conv is ``features[L]`` shares everything
before ``features[L]`` with a configuration already run, so that prefix runs once and only the
suffix runs per variant:

- ``sensitivity`` walks each batch through the all-``from_bits`` model once and, at every conv's
  input, branches off that conv's ``to_bits`` variant (all variants in one pass over the data);
- ``search`` (the greedy loop) keeps the activations entering each conv under the currently
  accepted configuration, so a candidate runs from its own conv onwards, and reuses any result
  already measured (a candidate tried with nothing accepted yet is a sensitivity row).
  ``cache_bytes`` bounds what is kept; less memory means longer runs, never other results.

Any other model (a ResNet, the user's own code: a residual sum reaches past a conv, so the
input of a conv is no cut) runs whole for every configuration not measured yet, as the seed does.

The same modules see the same batches in the same order, and evaluation is deterministic on the
CPU, so every accuracy, loss and decision equals the seed loop's to the bit
(``tests/study/test_study.py`` checks this against the seed loop itself).

Layers are named by their module path (``features.30``, ``layer2.0.conv1``), with
``conv_number`` (position among the quantized convs in forward order, as seed 000 numbers them).

The search strategies built on it are in :mod:`qexport.study.strategies`. ``Engine`` is one
class of about 150 lines on purpose: its cache, memo and pending activations are one state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from qexport.frontend.capture import capture
from qexport.frontend.device import device_of
from qexport.frontend.models.vgg import VGGQuant
from qexport.precision import exact_math
from qexport.study.bits import (
    act_bits,
    check_batch_size,
    check_bits,
    check_settable,
    frozen_weights,
    qconvs,
)
from qexport.study.data import Study
from qexport.study.results import ConvInfo, EvalResult, Sensitivity, SensitivityRow
from qexport.tally import Tally

Progress = Callable[[str, int, int], None]
"""``progress(label, done, total)``, called after each batch; the library itself never prints."""

DEFAULT_CACHE_MB = 1024


def _batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches, as the seed's unshuffled DataLoader cuts them."""
    return [
        (images[i : i + batch_size].to(device), labels[i : i + batch_size].to(device))
        for i in range(0, images.shape[0], batch_size)
    ]


def _add(tally: Tally, out: torch.Tensor, y: torch.Tensor) -> None:
    """One batch of logits into the tally, with the seed's loss: mean cross-entropy."""
    tally.add(F.cross_entropy(out, y), out, y)


@torch.no_grad()
@exact_math()  # no TF32: a CUDA run counts what a CPU run counts
def evaluate(study: Study, batch_size: int = 128, progress: Progress | None = None) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of the model as configured (seed 000's ``evaluate``)."""
    check_batch_size(batch_size)
    model = study.model
    model.eval()
    batches = _batches(study.images, study.labels, batch_size, device_of(model))
    tally = Tally(device_of(model))
    with frozen_weights(model):
        for done, (x, y) in enumerate(batches, 1):
            _add(tally, model(x), y)
            if progress:
                progress("evaluate", done, len(batches))
    return EvalResult.of(tally)


@torch.no_grad()
def conv_infos(study: Study) -> list[ConvInfo]:
    """Every quantized conv in forward order with its input shape (C, H, W), from one image."""
    return [
        ConvInfo(t.conv_number, t.name, t.layer, tuple(t.x.shape[1:]))
        for t in capture(study.model, study.images[:1])
    ]


def runs_in_pieces(model: nn.Module, infos: Sequence[ConvInfo]) -> bool:
    """A VGG whose quantized convs all sit in ``features``: ``classifier(features(x).flatten(1))``,
    so the activation entering ``features[L]`` is a cut every later module depends on alone.

    Any other model (a ResNet: a residual sum reaches past a conv) runs whole per configuration.
    """
    return isinstance(model, VGGQuant) and all(c.layer is not None for c in infos)


class Engine:
    """Evaluates configurations (the set of convs, by module path, at ``to_bits``) reusing shared
    prefixes where the model allows it.

    A conv's position is its features index on a VGG run in pieces (:func:`runs_in_pieces`), else
    its conv number. ``cache[L]`` holds, per batch, the activation entering ``features[L]`` under
    ``accepted``. It serves any configuration that agrees with ``accepted`` on every conv before
    ``L``. A run also keeps the activations it passes (within ``cache_bytes``): those before its
    first difference from ``accepted`` join the cache at once, the later ones if it is accepted.
    A model run whole keeps no activations: every configuration not measured yet runs in full.
    """

    def __init__(
        self,
        study: Study,
        from_bits: int,
        to_bits: int,
        batch_size: int,
        cache_bytes: int,
        progress: Progress | None,
    ) -> None:
        self.model = study.model
        check_settable(self.model)
        self.infos = conv_infos(study)
        modules = qconvs(self.model)
        self.pieces = runs_in_pieces(self.model, self.infos)
        self.pos = {
            c.name: c.layer if self.pieces and c.layer is not None else c.conv_number for c in self.infos
        }
        self.name_at = {p: name for name, p in self.pos.items()}
        self.qconvs = {self.pos[c.name]: modules[c.name] for c in self.infos}
        self.convs = [self.pos[c.name] for c in self.infos]
        self.vgg = cast(VGGQuant, self.model) if self.pieces else None
        self.features = list(self.vgg.features) if self.vgg is not None else []
        self.end = len(self.features) if self.pieces else len(self.convs)
        self.from_bits = from_bits
        self.to_bits = to_bits
        self.device = device_of(self.model)
        self.batches = _batches(study.images, study.labels, batch_size, self.device)
        self.cache_bytes = cache_bytes if self.pieces else 0
        self.progress = progress
        self.titles = {c.name: c.title for c in self.infos}
        per_image = study.images.element_size() * study.images.shape[0]
        self.point_bytes = {self.pos[c.name]: c.input_elements * per_image for c in self.infos}
        # runs reuse the input batches; they start at a conv, which never writes its input, except
        # a run from features[0] when that is not a conv, and a whole model (its code may)
        self.copy_input = not self.pieces or not isinstance(self.features[0], nn.Conv2d)
        self.memo: dict[frozenset[int], EvalResult] = {}
        self.current: frozenset[int] = frozenset()
        self.cache: dict[int, list[torch.Tensor]] = {}
        self.pending: tuple[frozenset[int], dict[int, list[torch.Tensor]]] | None = None

    # -- names outside, positions inside

    def _positions(self, names: frozenset[str]) -> frozenset[int]:
        return frozenset(self.pos[name] for name in names)

    def _names(self, positions: frozenset[int]) -> frozenset[str]:
        return frozenset(self.name_at[p] for p in positions)

    @property
    def accepted(self) -> frozenset[str]:
        """The module paths of the configuration the cache follows."""
        return self._names(self.current)

    def measured(self, low: frozenset[str]) -> EvalResult:
        """The result of a configuration already evaluated."""
        return self.memo[self._positions(low)]

    # -- running the model in pieces: the same modules in the same order as VGGQuant.forward

    def _run(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for module in self.features[start:stop]:
            h = module(h)
        return h

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone() if self.copy_input else x

    def _tail(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """Logits from the activation entering position ``start`` (a whole model: from the image)."""
        if self.vgg is None:
            return self.model(h)  # type: ignore[no-any-return]
        h = self._run(h, start, self.end)
        return self.vgg.classifier(h.flatten(1))  # type: ignore[no-any-return]

    def _set(self, low: frozenset[int]) -> None:
        for i, module in self.qconvs.items():
            module.act_bit = self.to_bits if i in low else self.from_bits

    def _report(self, label: str, done: int) -> None:
        if self.progress:
            self.progress(label, done, len(self.batches))

    def _choose(self, points: Sequence[int], free: int) -> list[int]:
        """Points to keep within ``free`` bytes, deepest first: small, and the longest prefix saved."""
        chosen = []
        for layer in sorted(points, reverse=True):
            if layer != 0 and self.point_bytes[layer] <= free:
                chosen.append(layer)
                free -= self.point_bytes[layer]
        return sorted(chosen)

    def _cached_bytes(self) -> int:
        return sum(self.point_bytes[layer] for layer in self.cache)

    # -- the two access patterns

    def sensitivity(self) -> tuple[EvalResult, dict[str, EvalResult]]:
        """All-``from_bits`` and each single conv at ``to_bits``, in one pass over the batches."""
        self.pending = None
        self._set(frozenset())
        base = Tally(self.device)
        tallies = {c: Tally(self.device) for c in self.convs}
        label = f"sensitivity {self.from_bits} -> {self.to_bits} bit"
        if not self.pieces:
            for done, (x, y) in enumerate(self.batches, 1):
                _add(base, self._tail(self._input(x), 0), y)
                for c in self.convs:
                    module = self.qconvs[c]
                    module.act_bit = self.to_bits
                    _add(tallies[c], self._tail(self._input(x), 0), y)
                    module.act_bit = self.from_bits
                self._report(label, done)
        else:
            self._sensitivity_in_pieces(base, tallies, label)
        results = {c: EvalResult.of(tallies[c]) for c in self.convs}
        baseline = EvalResult.of(base)
        self.memo[frozenset()] = baseline
        self.memo.update({frozenset({c}): r for c, r in results.items()})
        return baseline, {self.name_at[c]: r for c, r in results.items()}

    def _sensitivity_in_pieces(self, base: Tally, tallies: dict[int, Tally], label: str) -> None:
        keep = self._choose(self.convs, self.cache_bytes - self._cached_bytes())
        stored: dict[int, list[torch.Tensor]] = {layer: [] for layer in keep}
        for done, (x, y) in enumerate(self.batches, 1):
            h, pos = self._input(x), 0
            for c in self.convs:
                h, pos = self._run(h, pos, c), c
                if c in stored:
                    stored[c].append(h)
                # the variant shares this prefix; conv c's input is quantized inside conv c
                module = self.qconvs[c]
                module.act_bit = self.to_bits
                _add(tallies[c], self._tail(h, c), y)
                module.act_bit = self.from_bits
            _add(base, self._tail(h, pos), y)
            self._report(label, done)
        if not self.current:
            self.cache.update(stored)

    def evaluate(self, names: frozenset[str], label: str) -> EvalResult:
        """The model with the convs in ``names`` at ``to_bits`` and the rest at ``from_bits``."""
        self.pending = None
        low = self._positions(names)
        if low in self.memo:
            self._report(label, len(self.batches))
            return self.memo[low]
        differ = low ^ self.current
        first = min(differ) if differ else self.end
        start = max((layer for layer in self.cache if layer <= first), default=0)
        points = [c for c in self.convs if c > start]
        keep = self._choose(points, self.cache_bytes - self._cached_bytes())
        stored: dict[int, list[torch.Tensor]] = {layer: [] for layer in keep}
        self._set(low)
        tally = Tally(self.device)
        for done, (x, y) in enumerate(self.batches, 1):
            h = self.cache[start][done - 1] if start in self.cache else self._input(x)
            pos = start
            for layer in keep:
                h, pos = self._run(h, pos, layer), layer
                stored[layer].append(h)
            _add(tally, self._tail(h, pos), y)
            self._report(label, done)
        # activations entering features[L] depend only on the convs before L
        self.cache.update({layer: t for layer, t in stored.items() if layer <= first})
        self.pending = (low, {layer: t for layer, t in stored.items() if layer > first})
        result = EvalResult.of(tally)
        self.memo[low] = result
        return result

    def accept(self, names: frozenset[str]) -> None:
        """Make ``names`` the configuration the cache follows."""
        low = self._positions(names)
        differ = low ^ self.current
        first = min(differ) if differ else self.end
        self.cache = {layer: t for layer, t in self.cache.items() if layer <= first}
        if self.pending is not None and self.pending[0] == low:
            self.cache.update(self.pending[1])
        self.pending = None
        self.current = low


def sensitivity_table(engine: Engine) -> Sensitivity:
    """The engine's one-pass sensitivity as the table, conv numbers in order."""
    base, results = engine.sensitivity()
    rows = tuple(
        SensitivityRow(c.conv_number, c.name, r, base.accuracy - r.accuracy, c.layer)
        for c, r in ((c, results[c.name]) for c in engine.infos)
    )
    return Sensitivity(engine.from_bits, engine.to_bits, base, rows)


@torch.no_grad()
@exact_math()  # no TF32: a CUDA run counts what a CPU run counts
def sensitivity(
    study: Study,
    from_bits: int = 4,
    to_bits: int = 2,
    *,
    batch_size: int = 128,
    progress: Progress | None = None,
) -> Sensitivity:
    """Seed 000's per-layer table: every conv at ``from_bits`` except one at ``to_bits``.

    One pass over the data: each batch runs the all-``from_bits`` model once and branches off each
    conv's variant at that conv's input.
    """
    check_bits(from_bits, to_bits)
    check_batch_size(batch_size)
    study.model.eval()
    with act_bits(study.model, {}), frozen_weights(study.model):
        engine = Engine(study, from_bits, to_bits, batch_size, 0, progress)
        return sensitivity_table(engine)
