"""Accuracy, per-layer activation-bit sensitivity and the mixed-precision search of seed 000.

The seed re-evaluates the whole model for every variant. Here a variant whose first changed conv
is ``features[L]`` shares everything before ``features[L]`` with a configuration already run, so
that prefix runs once and only the suffix runs per variant:

- ``sensitivity`` walks each batch through the all-``from_bits`` model once and, at every conv's
  input, branches off that conv's ``to_bits`` variant (all variants in one pass over the data);
- ``search`` (the greedy loop) keeps the activations entering each conv under the currently
  accepted configuration, so a candidate runs from its own conv onwards, and reuses any result
  already measured (a candidate tried with nothing accepted yet is a sensitivity row).
  ``cache_bytes`` bounds what is kept; less memory means longer runs, never other results.

The same modules see the same batches in the same order, and evaluation is deterministic on the
CPU, so every accuracy, loss and decision equals the seed loop's to the bit
(``tests/test_study.py`` checks this against the seed loop itself).

Layers are named by ``layer`` (the ``model.features`` index, as ``dump --layer``) and
``conv_number`` (position among the QuantConv2d modules, as seed 000 numbers them).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qexport import __version__
from qexport.api import Loaded, SourceOptions, load
from qexport.errors import InputError
from qexport.frontend.capture import capture
from qexport.frontend.device import device_of
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.vgg import CONFIG_ACT_BITS, VGGQuant
from qexport.precision import exact_math
from qexport.writer.manifest import MANIFEST_NAME, dumps_json
from qexport.writer.write import StagedFolder, staged

Progress = Callable[[str, int, int], None]
"""``progress(label, done, total)``, called after each batch; the library itself never prints."""

Strategy = Literal["greedy", "budget"]
STRATEGIES: tuple[Strategy, ...] = ("greedy", "budget")

PSEUDO_LABEL_BITS = 4
"""Demo images have no labels: they are labelled with the model's own predictions at 4 bits."""

DEFAULT_CACHE_MB = 1024


# --------------------------------------------------------------------------------------------
# values


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

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "loss": self.loss, "correct": self.correct, "count": self.count}


@dataclass(frozen=True, slots=True)
class ConvInfo:
    """One QuantConv2d: seed 000's number, its features index and its real input shape (C, H, W)."""

    conv_number: int
    layer: int
    input_shape: tuple[int, ...]

    @property
    def input_elements(self) -> int:
        return math.prod(self.input_shape)

    @property
    def name(self) -> str:
        """``conv 9 (features[30])``."""
        return f"conv {self.conv_number} (features[{self.layer}])"


@dataclass(frozen=True, slots=True)
class SensitivityRow:
    """The model with only this conv's input at ``to_bits``; ``drop`` = baseline - accuracy (%)."""

    conv_number: int
    layer: int
    result: EvalResult
    drop: float

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
    layer: int
    accepted: bool
    result: EvalResult
    drop: float


@dataclass(frozen=True, slots=True)
class BudgetOutcome:
    """The knapsack's proposal, its one verifying evaluation, and whether it replaced greedy's."""

    layers: tuple[int, ...]
    predicted_drop: float
    result: EvalResult
    drop: float
    saved_bits: int
    chosen: bool
    reason: str


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The answer: ``low_layers`` (features indices) run at ``to_bits``, the rest at ``from_bits``."""

    strategy: Strategy
    epsilon: float
    sensitivity: Sensitivity
    steps: tuple[SearchStep, ...]
    greedy_layers: tuple[int, ...]
    greedy_result: EvalResult
    budget: BudgetOutcome | None
    low_layers: tuple[int, ...]
    result: EvalResult
    convs: tuple[ConvInfo, ...]

    @property
    def baseline(self) -> EvalResult:
        return self.sensitivity.baseline

    @property
    def drop(self) -> float:
        return self.baseline.accuracy - self.result.accuracy

    def act_bits(self) -> dict[int, int]:
        """features index -> activation bits, for every conv."""
        s = self.sensitivity
        return {c.layer: s.to_bits if c.layer in self.low_layers else s.from_bits for c in self.convs}

    def saved_bits(self) -> dict[int, int]:
        """Activation-memory bits saved per image, per conv (0 where the conv keeps ``from_bits``)."""
        return saved_bits(self.convs, self.low_layers, self.sensitivity.from_bits, self.sensitivity.to_bits)


def saved_bits(
    convs: Sequence[ConvInfo], low_layers: Sequence[int], from_bits: int, to_bits: int
) -> dict[int, int]:
    """Per conv: input elements x (from_bits - to_bits) if the conv runs at ``to_bits``, else 0."""
    low = set(low_layers)
    return {c.layer: c.input_elements * (from_bits - to_bits) if c.layer in low else 0 for c in convs}


# --------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class Study:
    """A loaded model with labelled images (N, 3, 32, 32) float32 and labels (N,) int64, on the CPU.

    ``labels_from`` says where the labels come from (``cifar10``, a file name, or ``pseudo``);
    ``note`` is set when they are the model's own predictions and says so.
    """

    loaded: Loaded
    images: torch.Tensor
    labels: torch.Tensor
    labels_from: str
    note: str | None

    @property
    def model(self) -> VGGQuant:
        return self.loaded.model

    def describe(self) -> str:
        """``VGG16_quant from model_best.pth.tar, 10000 CIFAR-10 test image(s), labels: cifar10``."""
        loaded = self.loaded
        model = loaded.arch.name
        if loaded.demo_label:
            who = f"{model} ({loaded.demo_label})"
        else:
            who = f"{model} from {loaded.source['checkpoint']}"
        source = loaded.inputs.source
        count = self.images.shape[0]
        if "cifar10" in source:
            what = f"CIFAR-10 {source['cifar10']} image(s)"
        elif "input" in source:
            what = f"image(s) from {source['input']}"
        else:
            what = "demo image(s)"
        return f"{who}, {count} {what}, labels: {self.note or self.labels_from}"


def read_labels(path: Path, indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class indices from ``.npy`` / ``.pt`` (one per input row), picked at ``indices``."""
    if not path.is_file():
        raise InputError(f"--labels {path} is not a file; give a .npy or .pt array of class indices")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix == ".pt":
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(loaded, torch.Tensor):
                raise InputError(f"--labels {path} holds a {type(loaded).__name__}, not one tensor")
            array = loaded.numpy()
        else:
            raise InputError(f"--labels {path}: unknown suffix {path.suffix!r}; use .npy or .pt")
    except (ValueError, OSError, RuntimeError) as err:
        raise InputError(f"--labels {path} could not be read as an array: {err}") from err
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise InputError(
            f"--labels {path} has shape {list(array.shape)} and dtype {array.dtype}; expected a 1-D "
            "integer array with one class index per input row"
        )
    needed = max(indices) + 1
    if array.shape[0] < needed:
        raise InputError(
            f"--labels {path} holds {array.shape[0]} labels but image {needed - 1} is used; give one "
            "label per input row"
        )
    picked = array[list(indices)]
    bad = picked[(picked < 0) | (picked >= num_classes)]
    if bad.size:
        raise InputError(
            f"--labels {path} holds class {int(bad[0])}; the model has classes 0..{num_classes - 1}"
        )
    return torch.from_numpy(picked.astype(np.int64))


def prepare(
    opts: SourceOptions,
    *,
    labels_file: Path | None = None,
    limit: int | None = None,
    batch_size: int = 128,
) -> Study:
    """Load the model and images, then find labels: ``labels_file``, CIFAR-10's, or pseudo-labels.

    Demo images carry no labels, so they are labelled with the model's own predictions with every
    conv at 4 bits (the same batches as any later evaluation), and ``note`` says so.
    """
    _check_batch_size(batch_size)
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: give at least 1 image")
    loaded = load(opts)
    inputs = loaded.inputs
    count = inputs.images.shape[0] if limit is None else min(limit, inputs.images.shape[0])
    images = inputs.images[:count]
    indices = inputs.indices[:count]
    num_classes = loaded.arch.num_classes
    note = None
    if labels_file is not None:
        labels = read_labels(labels_file, indices, num_classes)
        labels_from = labels_file.name
    elif inputs.labels is not None:
        labels = inputs.labels[:count]
        labels_from = "cifar10"
    elif "input" in inputs.source:
        raise InputError(
            f"--input {inputs.source['input']} has no labels; pass --labels FILE.npy|.pt with one "
            "class index per input row"
        )
    else:
        labels = pseudo_labels(loaded.model, images, batch_size)
        labels_from = "pseudo"
        who = loaded.demo_label or "demo images"
        note = f"{who}: accuracy vs the {PSEUDO_LABEL_BITS}-bit model's own predictions"
    return Study(loaded, images, labels, labels_from, note)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: give at least 1")


# --------------------------------------------------------------------------------------------
# evaluation


def _qconvs(model: VGGQuant) -> dict[int, QuantConv2d]:
    """features index -> QuantConv2d, in order."""
    return {i: m for i, m in enumerate(model.features) if isinstance(m, QuantConv2d)}


def _batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches, as the seed's unshuffled DataLoader cuts them."""
    return [
        (images[i : i + batch_size].to(device), labels[i : i + batch_size].to(device))
        for i in range(0, images.shape[0], batch_size)
    ]


class _Tally:
    """The seed's ``evaluate`` sums: ``loss.item() * x.size(0)`` and ``pred.eq(y).sum().item()``."""

    def __init__(self) -> None:
        self.correct = 0
        self.count = 0
        self.loss_sum = 0.0

    def add(self, out: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(out, y)
        self.loss_sum += loss.item() * y.size(0)
        _, pred = out.max(1)
        self.correct += int(pred.eq(y).sum().item())
        self.count += int(y.size(0))

    def result(self) -> EvalResult:
        return EvalResult(self.correct, self.count, self.loss_sum / self.count)


@contextmanager
def _frozen_weights(model: VGGQuant) -> Iterator[None]:
    """Quantize each conv's weights once instead of on every forward.

    QuantConv2d re-quantizes its weights on every call; the result depends on the weights alone,
    so computing it once gives the same tensor and keeps QuantConv2d.forward the one definition of
    the layer. Nested use leaves the outer freeze in place.
    """
    patched = []
    try:
        with torch.no_grad():
            for module in _qconvs(model).values():
                if "quantized_weight" in vars(module):
                    continue
                weight_q = module.quantized_weight().detach()
                setattr(module, "quantized_weight", lambda w=weight_q: w)  # noqa: B010 - shadows a method
                patched.append(module)
        yield
    finally:
        for module in patched:
            delattr(module, "quantized_weight")


@contextmanager
def _act_bits(model: VGGQuant, bits: dict[int, int]) -> Iterator[None]:
    """Set activation bits (features index -> bits) for the block, then restore every conv's."""
    convs = _qconvs(model)
    saved = {i: m.act_bit for i, m in convs.items()}
    try:
        for index, value in bits.items():
            convs[index].act_bit = value
        yield
    finally:
        for index, value in saved.items():
            convs[index].act_bit = value


@torch.no_grad()
@exact_math()  # no TF32: a CUDA run counts what a CPU run counts
def pseudo_labels(model: VGGQuant, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """The model's own top-1 predictions (N,) with every conv at ``PSEUDO_LABEL_BITS``."""
    model.eval()
    device = device_of(model)
    preds = []
    with _act_bits(model, dict.fromkeys(_qconvs(model), PSEUDO_LABEL_BITS)), _frozen_weights(model):
        for i in range(0, images.shape[0], batch_size):
            _, pred = model(images[i : i + batch_size].to(device)).max(1)
            preds.append(pred.cpu())
    return torch.cat(preds)


@torch.no_grad()
@exact_math()  # no TF32: a CUDA run counts what a CPU run counts
def evaluate(study: Study, batch_size: int = 128, progress: Progress | None = None) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of the model as configured (seed 000's ``evaluate``)."""
    _check_batch_size(batch_size)
    model = study.model
    model.eval()
    batches = _batches(study.images, study.labels, batch_size, device_of(model))
    tally = _Tally()
    with _frozen_weights(model):
        for done, (x, y) in enumerate(batches, 1):
            tally.add(model(x), y)
            if progress:
                progress("evaluate", done, len(batches))
    return tally.result()


@torch.no_grad()
def conv_infos(study: Study) -> list[ConvInfo]:
    """Every QuantConv2d with its input shape (C, H, W), from a forward pass of one image."""
    return [
        ConvInfo(t.conv_number, t.layer, tuple(t.x.shape[1:])) for t in capture(study.model, study.images[:1])
    ]


class _Engine:
    """Evaluates configurations (the set of convs at ``to_bits``) reusing shared prefixes.

    ``cache[L]`` holds, per batch, the activation entering ``features[L]`` under ``accepted``.
    It serves any configuration that agrees with ``accepted`` on every conv before ``L``. A run
    also keeps the activations it passes (within ``cache_bytes``): those before its first
    difference from ``accepted`` join the cache at once, the later ones if it is accepted.
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
        self.features = list(self.model.features)
        self.qconvs = _qconvs(self.model)
        self.convs = list(self.qconvs)
        self.from_bits = from_bits
        self.to_bits = to_bits
        self.batches = _batches(study.images, study.labels, batch_size, device_of(self.model))
        self.cache_bytes = cache_bytes
        self.progress = progress
        self.infos = conv_infos(study)
        self.names = {c.layer: c.name for c in self.infos}
        per_image = study.images.element_size() * study.images.shape[0]
        self.point_bytes = {c.layer: c.input_elements * per_image for c in self.infos}
        # runs reuse the input batches; they start at a conv, which never writes its input, except
        # a run from features[0] when that is not a conv
        self.copy_input = not isinstance(self.features[0], nn.Conv2d)
        self.memo: dict[frozenset[int], EvalResult] = {}
        self.accepted: frozenset[int] = frozenset()
        self.cache: dict[int, list[torch.Tensor]] = {}
        self.pending: tuple[frozenset[int], dict[int, list[torch.Tensor]]] | None = None

    # -- running the model in pieces: the same modules in the same order as VGGQuant.forward

    def _run(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for module in self.features[start:stop]:
            h = module(h)
        return h

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone() if self.copy_input else x

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(h.flatten(1))  # type: ignore[no-any-return]

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

    def sensitivity(self) -> tuple[EvalResult, dict[int, EvalResult]]:
        """All-``from_bits`` and each single conv at ``to_bits``, in one pass over the batches."""
        self.pending = None
        self._set(frozenset())
        keep = self._choose(self.convs, self.cache_bytes - self._cached_bytes())
        stored: dict[int, list[torch.Tensor]] = {layer: [] for layer in keep}
        base = _Tally()
        tallies = {c: _Tally() for c in self.convs}
        end = len(self.features)
        for done, (x, y) in enumerate(self.batches, 1):
            h, pos = self._input(x), 0
            for c in self.convs:
                h, pos = self._run(h, pos, c), c
                if c in stored:
                    stored[c].append(h)
                # the variant shares this prefix; conv c's input is quantized inside conv c
                module = self.qconvs[c]
                module.act_bit = self.to_bits
                tallies[c].add(self._head(self._run(h, c, end)), y)
                module.act_bit = self.from_bits
            base.add(self._head(self._run(h, pos, end)), y)
            self._report(f"sensitivity {self.from_bits} -> {self.to_bits} bit", done)
        if not self.accepted:
            self.cache.update(stored)
        results = {c: tallies[c].result() for c in self.convs}
        baseline = base.result()
        self.memo[frozenset()] = baseline
        self.memo.update({frozenset({c}): r for c, r in results.items()})
        return baseline, results

    def evaluate(self, low: frozenset[int], label: str) -> EvalResult:
        """The model with the convs in ``low`` at ``to_bits`` and the rest at ``from_bits``."""
        self.pending = None
        if low in self.memo:
            self._report(label, len(self.batches))
            return self.memo[low]
        end = len(self.features)
        differ = low ^ self.accepted
        first = min(differ) if differ else end
        start = max((layer for layer in self.cache if layer <= first), default=0)
        points = [c for c in self.convs if c > start]
        keep = self._choose(points, self.cache_bytes - self._cached_bytes())
        stored: dict[int, list[torch.Tensor]] = {layer: [] for layer in keep}
        self._set(low)
        tally = _Tally()
        for done, (x, y) in enumerate(self.batches, 1):
            h = self.cache[start][done - 1] if start in self.cache else self._input(x)
            pos = start
            for layer in keep:
                h, pos = self._run(h, pos, layer), layer
                stored[layer].append(h)
            tally.add(self._head(self._run(h, pos, end)), y)
            self._report(label, done)
        # activations entering features[L] depend only on the convs before L
        self.cache.update({layer: t for layer, t in stored.items() if layer <= first})
        self.pending = (low, {layer: t for layer, t in stored.items() if layer > first})
        result = tally.result()
        self.memo[low] = result
        return result

    def accept(self, low: frozenset[int]) -> None:
        """Make ``low`` the configuration the cache follows."""
        differ = low ^ self.accepted
        first = min(differ) if differ else len(self.features)
        self.cache = {layer: t for layer, t in self.cache.items() if layer <= first}
        if self.pending is not None and self.pending[0] == low:
            self.cache.update(self.pending[1])
        self.pending = None
        self.accepted = low


def _check_bits(from_bits: int, to_bits: int) -> None:
    # the widths a bits config takes: the bits_config.json a search writes must read back
    low, high = CONFIG_ACT_BITS[0], CONFIG_ACT_BITS[-1]
    for flag, bits in (("--from", from_bits), ("--to", to_bits)):
        if bits not in CONFIG_ACT_BITS:
            raise InputError(f"{flag} {bits}: activation bits must be {low}..{high}")
    if to_bits >= from_bits:
        raise InputError(
            f"--to {to_bits} is not below --from {from_bits}; the study lowers one layer at a time "
            "from the --from baseline, e.g. --from 4 --to 2"
        )


def _sensitivity(engine: _Engine) -> Sensitivity:
    base, results = engine.sensitivity()
    numbers = {layer: n for n, layer in enumerate(engine.convs)}
    rows = tuple(
        SensitivityRow(numbers[layer], layer, r, base.accuracy - r.accuracy) for layer, r in results.items()
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
    _check_bits(from_bits, to_bits)
    _check_batch_size(batch_size)
    study.model.eval()
    with _act_bits(study.model, {}), _frozen_weights(study.model):
        engine = _Engine(study, from_bits, to_bits, batch_size, 0, progress)
        return _sensitivity(engine)


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
    _check_bits(from_bits, to_bits)
    _check_batch_size(batch_size)
    study.model.eval()
    with _act_bits(study.model, {}), _frozen_weights(study.model):
        engine = _Engine(study, from_bits, to_bits, batch_size, cache_bytes, progress)
        sens = _sensitivity(engine)
        if on_sensitivity:
            on_sensitivity(sens)
        convs = tuple(engine.infos)
        steps = _greedy(engine, sens, epsilon, on_step)
        greedy_layers = tuple(sorted(engine.accepted))
        greedy_result = engine.memo[engine.accepted]
        budget = None
        low_layers, result = greedy_layers, greedy_result
        if strategy == "budget":
            budget = _budget(engine, sens, convs, epsilon, greedy_layers, greedy_result)
            if budget.chosen:
                low_layers, result = budget.layers, budget.result
    return SearchResult(
        strategy, epsilon, sens, steps, greedy_layers, greedy_result, budget, low_layers, result, convs
    )


def _greedy(
    engine: _Engine, sens: Sensitivity, epsilon: float, on_step: Callable[[SearchStep], None] | None
) -> tuple[SearchStep, ...]:
    base = sens.baseline.accuracy
    steps = []
    for row in sens.ranked:
        low = engine.accepted | {row.layer}
        result = engine.evaluate(low, f"try {engine.names[row.layer]} at {engine.to_bits} bit")
        drop = base - result.accuracy
        accepted = drop <= epsilon
        if accepted:
            engine.accept(low)
        step = SearchStep(row.conv_number, row.layer, accepted, result, drop)
        steps.append(step)
        if on_step:
            on_step(step)
    return tuple(steps)


def _budget(
    engine: _Engine,
    sens: Sensitivity,
    convs: Sequence[ConvInfo],
    epsilon: float,
    greedy_layers: tuple[int, ...],
    greedy_result: EvalResult,
) -> BudgetOutcome:
    base = sens.baseline
    layers = [c.layer for c in convs]
    by_layer = {r.layer: r for r in sens.rows}
    # weights in misclassified images, so the capacity is exact: drop% = 100 * images / count
    weights = [base.correct - by_layer[layer].result.correct for layer in layers]
    values = [c.input_elements * (sens.from_bits - sens.to_bits) for c in convs]
    capacity = math.floor(epsilon * base.count / 100.0 + 1e-9)
    picked = tuple(layers[i] for i in knapsack(weights, values, capacity))
    predicted = 100.0 * sum(weights[layers.index(layer)] for layer in picked) / base.count
    result = engine.evaluate(frozenset(picked), "verify the knapsack's choice")
    drop = base.accuracy - result.accuracy
    bits = sum(saved_bits(convs, picked, sens.from_bits, sens.to_bits).values())
    greedy_bits = sum(saved_bits(convs, greedy_layers, sens.from_bits, sens.to_bits).values())
    if drop > epsilon:
        chosen, reason = False, f"its measured drop {drop:.2f}% exceeds epsilon {epsilon:.2f}%"
    elif (bits, result.correct) > (greedy_bits, greedy_result.correct):
        chosen, reason = True, f"saves {bits} bits per image vs greedy's {greedy_bits}"
    else:
        chosen, reason = False, f"saves {bits} bits per image, not more than greedy's {greedy_bits}"
    return BudgetOutcome(picked, predicted, result, drop, bits, chosen, reason)


# --------------------------------------------------------------------------------------------
# commands: compute, then write every file atomically


@dataclass(frozen=True)
class Written:
    out_dir: Path
    files: tuple[str, ...]


def _header(study: Study, command: str) -> dict[str, Any]:
    loaded = study.loaded
    header: dict[str, Any] = {
        "qexport_version": __version__,
        "command": command,
        "model": loaded.arch.name,
        "source": loaded.source,
        "inputs": {**loaded.inputs.source, "count": int(study.images.shape[0])},
        "labels": study.labels_from,
    }
    if study.note:
        header["label"] = study.note
    elif loaded.demo_label:
        header["label"] = loaded.demo_label
    return header


def _write(
    study: Study, command: str, files: dict[str, bytes], folder: StagedFolder, out_dir: Path
) -> Written:
    for name, content in sorted(files.items()):
        folder.add(name, content)
    manifest = {
        **_header(study, command),
        "files": {n: hashlib.sha256(c).hexdigest() for n, c in files.items()},
    }
    folder.add(MANIFEST_NAME, dumps_json(manifest))
    return Written(out_dir, tuple(sorted(files)))


def run_eval(
    opts: SourceOptions,
    out_dir: Path,
    *,
    labels_file: Path | None = None,
    limit: int | None = None,
    batch_size: int = 128,
    force: bool = False,
    progress: Progress | None = None,
) -> tuple[Study, EvalResult, Written]:
    """``qexport eval``: accuracy and loss of the model (with ``opts.bits_config`` applied).

    ``out_dir`` is checked before the model loads (an existing one needs ``force``).
    """
    with staged(out_dir, force=force) as folder:
        study = prepare(opts, labels_file=labels_file, limit=limit, batch_size=batch_size)
        result = evaluate(study, batch_size, progress)
        bits = {i: m.act_bit for i, m in _qconvs(study.model).items()}
        report = {
            **_header(study, "eval"),
            "bits_config": opts.bits_config.name if opts.bits_config else None,
            "act_bits": {str(layer): b for layer, b in bits.items()},
            "batch_size": batch_size,
            **result.as_dict(),
        }
        written = _write(study, "eval", {"eval.json": dumps_json(report).encode()}, folder, out_dir)
    return study, result, written


def _rows_json(sens: Sensitivity) -> list[dict[str, Any]]:
    return [
        {"rank": rank, "conv": r.conv_number, "layer": r.layer, "act_bit": sens.to_bits, "drop": r.drop}
        | r.result.as_dict()
        for rank, r in enumerate(sens.ranked)
    ]


def sensitivity_csv(sens: Sensitivity) -> str:
    """The ranked table as CSV: ``rank,conv,layer,act_bit,accuracy,drop,loss,correct,count``."""
    buffer = io.StringIO()
    fields = ["rank", "conv", "layer", "act_bit", "accuracy", "drop", "loss", "correct", "count"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_rows_json(sens))
    return buffer.getvalue()


def run_sensitivity(
    opts: SourceOptions,
    out_dir: Path,
    *,
    from_bits: int = 4,
    to_bits: int = 2,
    labels_file: Path | None = None,
    limit: int | None = None,
    batch_size: int = 128,
    force: bool = False,
    progress: Progress | None = None,
) -> tuple[Study, Sensitivity, Written]:
    """``qexport sensitivity``: the table as JSON and CSV, and a PNG bar chart of the drops.

    ``out_dir`` is checked before the model loads (an existing one needs ``force``).
    """
    from qexport.study.chart import bar_chart

    _check_bits(from_bits, to_bits)
    with staged(out_dir, force=force) as folder:
        study = prepare(opts, labels_file=labels_file, limit=limit, batch_size=batch_size)
        sens = sensitivity(study, from_bits, to_bits, batch_size=batch_size, progress=progress)
        report = {
            **_header(study, "sensitivity"),
            "from_bits": from_bits,
            "to_bits": to_bits,
            "batch_size": batch_size,
            "baseline": sens.baseline.as_dict(),
            "rows": _rows_json(sens),
        }
        title = (
            f"{study.loaded.arch.name}: accuracy drop with one conv's input at {to_bits} bit "
            f"(others {from_bits} bit), {sens.baseline.count} images"
        )
        subtitle = study.note or study.loaded.demo_label or ""
        png = bar_chart(
            [f"conv {r.conv_number} (features[{r.layer}])" for r in sens.ranked],
            [r.drop for r in sens.ranked],
            title=title,
            subtitle=subtitle,
            unit="%",
        )
        files = {
            "sensitivity.json": dumps_json(report).encode(),
            "sensitivity.csv": sensitivity_csv(sens).encode(),
            "sensitivity.png": png,
        }
        written = _write(study, "sensitivity", files, folder, out_dir)
    return study, sens, written


def bits_config(result: SearchResult) -> dict[str, Any]:
    """``{"act_bits": {"<features index>": bits, ...}}`` for every conv (read by read_bits_config)."""
    return {"act_bits": {str(layer): bits for layer, bits in result.act_bits().items()}}


def summary(result: SearchResult) -> dict[str, Any]:
    """Counts, accuracies, decisions and activation-memory savings of a search, for summary.json."""
    s = result.sensitivity
    convs = result.convs
    saved = result.saved_bits()
    total_bits = sum(c.input_elements * s.from_bits for c in convs)
    low = len(result.low_layers)
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
        "act_bits_per_conv": [result.act_bits()[c.layer] for c in convs],
        "act_bits": bits_config(result)["act_bits"],
        "activation_memory": {
            "unit": "bits per image",
            "baseline_bits": total_bits,
            "saved_bits": sum(saved.values()),
            "saved_share": sum(saved.values()) / total_bits,
            "per_layer": [
                {
                    "conv": c.conv_number,
                    "layer": c.layer,
                    "input_shape": list(c.input_shape),
                    "input_elements": c.input_elements,
                    "act_bit": result.act_bits()[c.layer],
                    "saved_bits": saved[c.layer],
                }
                for c in convs
            ],
        },
        "steps": [
            {
                "conv": st.conv_number,
                "layer": st.layer,
                "decision": "ACCEPT" if st.accepted else "REJECT",
                "drop": st.drop,
            }
            | st.result.as_dict()
            for st in result.steps
        ],
        "greedy": {"layers": list(result.greedy_layers), **result.greedy_result.as_dict()},
        "sensitivity": _rows_json(s),
    }
    if result.budget is not None:
        b = result.budget
        out["budget"] = {
            "layers": list(b.layers),
            "predicted_drop": b.predicted_drop,
            "drop": b.drop,
            "saved_bits": b.saved_bits,
            "chosen": b.chosen,
            "reason": b.reason,
            **b.result.as_dict(),
        }
    return out


def run_search(
    opts: SourceOptions,
    out_dir: Path,
    *,
    epsilon: float = 1.0,
    from_bits: int = 4,
    to_bits: int = 2,
    strategy: Strategy = "greedy",
    labels_file: Path | None = None,
    limit: int | None = None,
    batch_size: int = 128,
    cache_bytes: int = DEFAULT_CACHE_MB << 20,
    force: bool = False,
    progress: Progress | None = None,
    on_start: Callable[[Study, Sensitivity], None] | None = None,
    on_step: Callable[[SearchStep], None] | None = None,
) -> tuple[Study, SearchResult, Written]:
    """``qexport search``: the bits config (``bits_config.json``) and ``summary.json``.

    ``on_start`` is called once the sensitivities are known, ``on_step`` after each decision.
    ``out_dir`` is checked before the model loads (an existing one needs ``force``).
    """
    _check_bits(from_bits, to_bits)
    with staged(out_dir, force=force) as folder:
        study = prepare(opts, labels_file=labels_file, limit=limit, batch_size=batch_size)

        def started(sens: Sensitivity) -> None:
            if on_start:
                on_start(study, sens)

        result = search(
            study,
            epsilon,
            from_bits,
            to_bits,
            strategy=strategy,
            batch_size=batch_size,
            cache_bytes=cache_bytes,
            progress=progress,
            on_sensitivity=started,
            on_step=on_step,
        )
        report = {**_header(study, "search"), "batch_size": batch_size, **summary(result)}
        files = {
            "bits_config.json": dumps_json(bits_config(result)).encode(),
            "summary.json": dumps_json(report).encode(),
        }
        written = _write(study, "search", files, folder, out_dir)
    return study, result, written
