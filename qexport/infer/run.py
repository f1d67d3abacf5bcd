"""Run a VGG network in integers and compare every layer with the float model.

Per batch: one float forward (:func:`qexport.frontend.capture.capture`, which also gives each conv's
own ``x_int`` and float output), then the integer network: the first conv's ``x_int`` as the float
model quantises the image, each conv's exact psum (:func:`qexport.ir.reference.integer_conv`), the
SFU thresholds and max-pool to the next conv's ``x_int``, and after the last conv the float tail on
its dequantised psums (psum * x_delta * w_delta).

Two comparisons per layer: ``differ`` runs the conv and SFU from the float model's own ``x_int`` (the
SFU alone; each difference is tested against :func:`qexport.ir.sfu.float32_band`, ``near`` counts
those within float32 rounding of a threshold), ``differ_chained`` from the integer network's own
previous output (what an accelerator running layer after layer produces).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from qexport.errors import InputError
from qexport.frontend.capture import ConvBits, capture
from qexport.frontend.models.network import layer_label
from qexport.infer.chain import Chain, vgg_chains
from qexport.infer.end import EndLinear, EndOp, run_int8_end
from qexport.ir.fixed_point import FixedPointWidths
from qexport.ir.integerize import IntLayer, integerize
from qexport.ir.reference import integer_conv
from qexport.ir.sfu import Thresholds, float32_band, max_pool, scale, thresholds
from qexport.precision import exact_math


@dataclass
class LayerAgreement:
    """One conv's SFU against the float model: counts of the next conv's ``x_int`` values."""

    name: str
    index: int | None
    next: str | None
    between: tuple[str, ...]
    values: int = 0
    differ: int = 0
    near: int = 0
    differ_chained: int = 0
    sfu: str = "thresholds"
    """``thresholds`` (:mod:`qexport.ir.sfu`) or ``fixed_point`` (:mod:`qexport.ir.fixed_point`)."""

    @property
    def label(self) -> str:
        return layer_label(self.name, self.index)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "next": self.next,
            "between": list(self.between),
            "values": self.values,
            "differ": self.differ,
            "differ_within_float32_rounding": self.near,
            "differ_chained": self.differ_chained,
            "sfu": self.sfu,
        }


@dataclass
class InferReport:
    """The integer network against the float model over every image."""

    layers: list[LayerAgreement]
    images: int = 0
    top1_agree: int = 0
    labelled: bool = False
    int_correct: int = 0
    float_correct: int = 0
    predictions: list[int] = field(default_factory=list)
    fixed_point: dict[str, int] | None = None
    """The fixed-point widths used (ResNets), else None."""
    x_int: dict[str, list[np.ndarray]] = field(default_factory=dict)
    """With ``keep_x_int`` (VGG): each conv's chained ``x_int`` batch by batch, by module path."""
    end: End = "float"
    """How the model's end ran for the headline figures (:mod:`qexport.infer.end`)."""
    agreement_by_end: dict[str, float] = field(default_factory=dict)
    """With ``end="int8"``: top-1 agreement with the float model under each end (float, int8)."""
    int8_scales: dict[str, float] = field(default_factory=dict)
    """With ``end="int8"``: each Linear's calibrated input scale, by module path."""

    @property
    def agreement(self) -> float:
        return self.top1_agree / self.images if self.images else 1.0

    def add_batch(self, logits: torch.Tensor, ours: torch.Tensor, truth: torch.Tensor | None) -> None:
        """One batch's top-1: the float model's ``logits`` against the integer network's ``ours``."""
        top_float, top_int = logits.argmax(1), ours.argmax(1)
        self.images += int(top_int.shape[0])
        self.top1_agree += int((top_float == top_int).sum())
        self.predictions.extend(int(p) for p in top_int)
        if truth is not None:
            self.int_correct += int((top_int == truth).sum())
            self.float_correct += int((top_float == truth).sum())

    @property
    def x_int_equal(self) -> float:
        """The fraction of the integer network's own (chained) ``x_int`` equal to the float model's."""
        values = sum(layer.values for layer in self.layers)
        return 1.0 - sum(layer.differ_chained for layer in self.layers) / values if values else 1.0

    @property
    def x_int_equal_sfu(self) -> float:
        """The same for each SFU alone, run from the float model's own inputs (``differ``)."""
        values = sum(layer.values for layer in self.layers)
        return 1.0 - sum(layer.differ for layer in self.layers) / values if values else 1.0

    @property
    def unexplained(self) -> int:
        """x_int differences not within float32 rounding of a threshold (0 when the SFU is exact)."""
        return sum(layer.differ - layer.near for layer in self.layers)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "images": self.images,
            "top1_agreement": self.agreement,
            "top1_agree": self.top1_agree,
            "layers": [layer.as_dict() for layer in self.layers],
            "unexplained_differences": self.unexplained,
            "x_int_equal_chained": self.x_int_equal,
            "x_int_equal_sfu": self.x_int_equal_sfu,
        }
        if self.fixed_point is not None:
            out["fixed_point"] = dict(self.fixed_point)
        out["end"] = self.end
        if self.agreement_by_end:
            out["top1_agreement_by_end"] = dict(self.agreement_by_end)
            out["int8_input_scales"] = dict(self.int8_scales)
        if self.labelled:
            out["accuracy_integer"] = self.int_correct / self.images if self.images else 0.0
            out["accuracy_float"] = self.float_correct / self.images if self.images else 0.0
        return out


End = Literal["float", "int8"]
"""The model's end: float on the dequantised integers, or every Linear in int8."""


@dataclass
class EndRun:
    """Every batch's float logits, the integer network's float-end logits and the end's input,
    kept for ``end="int8"``: the int8 input scales are calibrated on all images at once."""

    ops: list[EndOp]
    logits: list[torch.Tensor] = field(default_factory=list)
    ours: list[torch.Tensor] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    truth: list[torch.Tensor] = field(default_factory=list)

    def add(
        self, logits: torch.Tensor, ours: torch.Tensor, features: np.ndarray, truth: torch.Tensor | None
    ) -> None:
        self.logits.append(logits)
        self.ours.append(ours)
        self.features.append(features)
        if truth is not None:
            self.truth.append(truth)

    def finish(self, report: InferReport) -> None:
        """The int8 end on every image; tallies ``report`` with its logits, both ends' agreement."""
        if not self.logits:
            return
        logits, ours = torch.cat(self.logits), torch.cat(self.ours)
        truth = torch.cat(self.truth) if self.truth else None
        float_agree = int((logits.argmax(1) == ours.argmax(1)).sum())
        int8_logits, layers = run_int8_end(self.ops, np.concatenate(self.features))
        report.add_batch(logits, torch.from_numpy(int8_logits), truth)
        report.end = "int8"
        report.agreement_by_end = {"float": float_agree / report.images, "int8": report.agreement}
        report.int8_scales = {layer.path: layer.x_scale for layer in layers}


def end_ops(module: nn.Module, path: str) -> list[EndOp]:
    """A classifier (a Linear, or a Sequential of Linear, ReLU, Dropout, Identity) as end ops;
    anything else is refused by its module path."""
    if isinstance(module, nn.Sequential):
        return [op for child, inner in module.named_children() for op in end_ops(inner, f"{path}.{child}")]
    if isinstance(module, nn.Dropout | nn.Identity):
        return []
    if isinstance(module, nn.ReLU):
        return ["relu"]
    if isinstance(module, nn.Linear):

        def array(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().float().numpy())

        return [EndLinear(path, array(module.weight), None if module.bias is None else array(module.bias))]
    raise InputError(
        f"{path} ({type(module).__name__}) is in the model's end; --end int8 runs Linear, ReLU and "
        "Dropout only (run the end in float: --end float)"
    )


@dataclass(frozen=True)
class _Sfu:
    chain: Chain
    s: Fraction
    thresholds: Thresholds | None
    next_alpha: float
    next_bit: int


def infer_network(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    bits: Mapping[str, ConvBits] | None = None,
    batch_size: int = 32,
    widths: FixedPointWidths | None = None,
    keep_x_int: bool = False,
    end: End = "float",
) -> InferReport:
    """The integer network on ``images`` (N, 3, 32, 32), batch by batch, against the float model.

    A VGG runs with thresholds between its convs; a ResNet-CIFAR model with thresholds inside each
    block and the fixed-point SFU (``widths``) at each residual add (:mod:`qexport.infer.resnet`).
    ``keep_x_int`` keeps every conv's chained ``x_int`` in the report (VGG). ``end="int8"`` runs
    the classifier in int8 (:mod:`qexport.infer.end`) for the top-1 figures and reports both ends'.
    """
    from qexport.infer.resnet import infer_resnet_network, is_resnet

    if is_resnet(model):
        return infer_resnet_network(model, images, labels, bits, batch_size, widths, end)
    chains, tail = vgg_chains(model)
    ends = EndRun(end_ops(model.classifier, "classifier")) if end == "int8" else None  # type: ignore[arg-type]
    report = InferReport(
        [LayerAgreement(c.name, _index(c.name), c.next, c.between) for c in chains],
        labelled=labels is not None,
    )
    sfus: dict[str, _Sfu] = {}
    ints: dict[str, IntLayer] = {}
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        logits, ints = _float_pass(model, batch, bits, ints)
        if not sfus:
            sfus = {c.name: _sfu(c, ints) for c in chains}
        ours, features = _integer_pass(chains, sfus, ints, tail, model, report, keep_x_int)
        truth = None if labels is None else labels[start : start + batch_size].cpu()
        if ends is None:
            report.add_batch(logits, ours, truth)
        else:
            ends.add(logits, ours, features, truth)
    if ends is not None:
        ends.finish(report)
    return report


def _index(name: str) -> int | None:
    tail = name.removeprefix("features.")
    return int(tail) if tail.isdigit() else None


def _float_pass(
    model: nn.Module,
    batch: torch.Tensor,
    bits: Mapping[str, ConvBits] | None,
    known: dict[str, IntLayer] | None = None,
) -> tuple[torch.Tensor, dict[str, IntLayer]]:
    """The float model's logits (on the CPU) and every conv in integers, from one forward pass
    (``known``: the previous batch's, whose converted weights are taken over)."""
    out: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda _m, _a, o: out.append(o.detach().to("cpu")))
    try:
        captured = capture(model, batch, bits=bits)
    finally:
        handle.remove()
    return out[0], {t.name: integerize(t, (known or {}).get(t.name)) for t in captured}


def _sfu(chain: Chain, ints: dict[str, IntLayer]) -> _Sfu:
    layer = ints[chain.name]
    s = scale(layer.act_alpha, layer.act_bit, layer.wgt_alpha, layer.w_bit)
    if chain.next is None:
        return _Sfu(chain, s, None, 0.0, 0)
    nxt = ints[chain.next]
    return _Sfu(chain, s, thresholds(s, chain.bn, nxt.act_alpha, nxt.act_bit), nxt.act_alpha, nxt.act_bit)


def _pool(x: np.ndarray, chain: Chain) -> np.ndarray:
    return x if chain.pool is None else max_pool(x, chain.pool)


@torch.no_grad()
def _integer_pass(
    chains: list[Chain],
    sfus: dict[str, _Sfu],
    ints: dict[str, IntLayer],
    tail: list[nn.Module],
    model: nn.Module,
    report: InferReport,
    keep_x_int: bool = False,
) -> tuple[torch.Tensor, np.ndarray]:
    """The integer network on one batch; adds each layer's counts to ``report``; returns its logits
    and the classifier's input (N, features) float32."""
    x_chained = ints[chains[0].name].x_int
    for chain, agreement in zip(chains, report.layers, strict=True):
        if keep_x_int:
            report.x_int.setdefault(chain.name, []).append(x_chained)
        layer, sfu = ints[chain.name], sfus[chain.name]
        psum = integer_conv(x_chained, layer.w_int, layer.stride, layer.padding, weights=layer.w_float)
        if sfu.thresholds is None or chain.next is None:
            return _tail(psum, sfu.s, tail, model)
        own = ints[chain.next].x_int
        chained_next = _pool(sfu.thresholds.apply(psum), chain)
        same_input = np.array_equal(x_chained, layer.x_int)
        local_psum = (
            psum
            if same_input
            else integer_conv(layer.x_int, layer.w_int, layer.stride, layer.padding, weights=layer.w_float)
        )
        local_next = chained_next if same_input else _pool(sfu.thresholds.apply(local_psum), chain)
        differ = local_next != own
        agreement.values += int(own.size)
        agreement.differ += int(differ.sum())
        agreement.differ_chained += int((chained_next != own).sum())
        if differ.any():
            low, high = float32_band(local_psum, layer.y_float, sfu.s, chain.bn, sfu.next_alpha, sfu.next_bit)
            low, high = _pool(low, chain), _pool(high, chain)
            # explained: the exact value lies so near a boundary that both levels are in reach
            both = (own >= low) & (own <= high) & (local_next >= low) & (local_next <= high)
            agreement.near += int((differ & both).sum())
        x_chained = chained_next
    raise AssertionError("unreachable: the last conv runs the tail")  # pragma: no cover


def _tail(
    psum: np.ndarray, s: Fraction, tail: list[nn.Module], model: nn.Module
) -> tuple[torch.Tensor, np.ndarray]:
    """The float end on the dequantised psums: the rest of features, flatten, classifier; the
    logits and the classifier's input."""
    device = next(model.parameters()).device
    y = torch.from_numpy((psum.astype(np.float64) * float(s)).astype(np.float32)).to(device)
    with exact_math():
        for module in tail:
            y = module(y)
        features = y.flatten(1)
        logits = model.classifier(features)  # type: ignore[operator]
    return logits.detach().to("cpu"), features.detach().cpu().numpy()
