"""Loading a matched state dict into a model of any family, and judging each quantized conv on its
own: its weight bits (inferred from the stored ``weight_q``), its alphas, and whether the stored
``weight_q`` agrees with the one recomputed from ``weight`` — a bad layer is recorded, not fatal,
so the layers it cannot affect still export."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from qexport.errors import InputError
from qexport.frontend.capture import ConvBits, module_bits
from qexport.frontend.models.keys import key_report
from qexport.frontend.models.network import features_index, layer_label, quantized_convs
from qexport.frontend.models.probe import probe_act_bit
from qexport.frontend.models.quant import QuantConv2d

W_BITS = range(2, 9)
"""Weight widths ``w_bit`` inference tries, smallest first (1 bit has no symmetric grid)."""

_GRID_TOLERANCE = 1e-3
"""How far (in steps) a stored value may sit from a grid point: float32 noise is ~1e-6 of a step."""

_TIE_TOLERANCE = 1e-4
"""How close (in steps) to a half step the unrounded value must be for a flip to be a rounding tie."""


@dataclass(frozen=True)
class LoadReport:
    """What loading found, per quantized conv (module path -> ...)."""

    bits: dict[str, ConvBits] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    """Layers that cannot be exported, with the one message that says why and what to do."""
    ties: dict[str, int] = field(default_factory=dict)
    """Layers whose stored ``weight_q`` differs from the recomputation only at rounding ties."""


def _all_finite(value: torch.Tensor) -> bool:
    """No NaN or Inf: one min/max pass (NaN propagates), far faster than ``isfinite(v).all()``."""
    if value.numel() == 0:
        return True
    low, high = torch.aminmax(value.detach())
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def infer_w_bit(weight_q: torch.Tensor, wgt_alpha: float) -> int | None:
    """The smallest ``w_bit`` whose grid ``k * alpha / (2^(w_bit-1) - 1)`` holds every stored value."""
    values = weight_q.detach().to(torch.float64) / wgt_alpha
    for w_bit in W_BITS:
        levels = 2 ** (w_bit - 1) - 1
        steps = values * levels
        if (
            float((steps - steps.round()).abs().max()) <= _GRID_TOLERANCE
            and float(steps.abs().max()) <= levels + _GRID_TOLERANCE
        ):
            return w_bit
    return None


def load_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, trust_recomputed: bool = False
) -> LoadReport:
    """Load a matched state dict; judge every quantized conv (see the module docstring).

    A non-finite tensor outside any quantized conv (a BatchNorm, the classifier) refuses the
    checkpoint: every layer after it would see it. ``weight_q`` is never trusted blindly: it is
    recomputed from ``weight`` and the alphas; a stored one that differs by a step away from a
    rounding tie makes its layer a problem unless ``trust_recomputed``; one that differs only at
    ties is the trained model's own value and is used.
    """
    convs = quantized_convs(model)
    owners = {f"{name}.{key}": name for name, m in convs for key in m.state_dict()}
    report = LoadReport()
    _check_fits(model, state)
    for key, value in state.items():
        owner = owners.get(key)
        if value.is_floating_point() and not _all_finite(value):
            bad = int((~torch.isfinite(value)).sum())
            message = (
                f"checkpoint tensor {key} holds {bad} NaN/Inf value(s); the model diverged or the "
                "file is damaged; export from an earlier, finite checkpoint"
            )
            if owner is None:
                raise InputError(message)
            report.problems.setdefault(owner, message)
        elif key.endswith(("act_alpha", "wgt_alpha")) and float(value) <= 0 and owner is not None:
            report.problems.setdefault(
                owner,
                f"checkpoint {key} = {float(value):g}; an alpha must be > 0 to define a "
                "quantization step; this layer was not trained with the course's quantizer",
            )
    _load_strict(model, state)
    for name, module in convs:
        if name in report.problems:
            report.bits[name] = module_bits(module)
            continue
        stored = state.get(f"{name}.weight_q")
        report.bits[name] = _bits(name, module, stored)
        _judge_weight_q(name, module, stored, trust_recomputed, report)
    return report


def _check_fits(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """A state dict that does not fit the model (user code: nothing checked it before) is one message."""
    own = model.state_dict()
    # a placeholder weight_q (the course's may start as a scalar) is expected in its weight's shape
    expected = {
        k: tuple(own[k.removesuffix("_q")].shape if k.endswith(".weight_q") else v.shape)
        for k, v in own.items()
    }
    report = key_report(expected, state)
    if not report.ok:
        parts = [f"the checkpoint does not fit the model {type(model).__name__}:", *report.describe()]
        parts.append(
            "check that --model builds the network this checkpoint was trained with (same widths, "
            "depth and layer names)"
        )
        raise InputError(" ".join(parts))


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    own = model.state_dict()
    to_load = dict(state)
    for key, value in own.items():
        if key.endswith("weight_q") and (key not in state or state[key].shape != value.shape):
            # the course's QuantConv2d may start with a placeholder weight_q; forward refreshes it
            if key in state:
                owner = model.get_submodule(key.rsplit(".", 1)[0])
                owner.weight_q = nn.Parameter(state[key].detach().clone(), requires_grad=False)
                continue
            to_load[key] = value
    model.load_state_dict(to_load, strict=True)


def _bits(name: str, module: nn.Module, stored: torch.Tensor | None) -> ConvBits:
    own = module_bits(module)
    if stored is None:
        w = ConvBits(own.w_bit, own.act_bit, "module (no stored weight_q)", own.act_source)
    else:
        alpha = float(torch.as_tensor(module.weight_quant.wgt_alpha).detach())  # type: ignore[union-attr]
        w_bit = infer_w_bit(stored, alpha)
        if w_bit is None:
            w = own
        elif isinstance(module, QuantConv2d):
            # the course QuantConv2d has one bit for weights and activations
            module.w_bit = w_bit
            module.act_bit = w_bit
            return ConvBits(w_bit, w_bit, "inferred from weight_q", "= w_bit (course QuantConv2d)")
        else:
            w = ConvBits(w_bit, own.act_bit, "inferred from weight_q", own.act_source)
    if isinstance(module, QuantConv2d):
        return w
    # the user's own module quantizes as its code says: read act_bit off its act_alq
    act_bit = probe_act_bit(module, layer_label(name, features_index(name)))
    if act_bit is None:
        return ConvBits(w.w_bit, w.w_bit, w.w_source, "= w_bit (no act_alq to probe)")
    return ConvBits(w.w_bit, act_bit, w.w_source, "probed from act_alq")


def _recompute(module: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(module, QuantConv2d):
            return module.quantized_weight().detach()
        return torch.as_tensor(module.weight_quant(module.weight)).detach()  # type: ignore[operator]


def _judge_weight_q(
    name: str, module: nn.Module, stored: torch.Tensor | None, trust: bool, report: LoadReport
) -> None:
    label = layer_label(name, features_index(name))
    recomputed = _recompute(module)
    if not _all_finite(recomputed):
        first = float(module.weight.detach().flatten()[0])  # type: ignore[operator]
        report.problems[name] = (
            f"layer {label}: the course's weight quantizer gives NaN for these weights (they are "
            f"all equal, {first:g}, so their std is 0); such a layer cannot be quantized. Export "
            "from a checkpoint where it was trained"
        )
        return
    if isinstance(module, QuantConv2d):
        with torch.no_grad():
            module.weight_q.copy_(recomputed)
    w_bit = report.bits[name].w_bit
    if stored is None or trust:
        return
    alpha = float(torch.as_tensor(module.weight_quant.wgt_alpha).detach())  # type: ignore[union-attr]
    levels = 2 ** (w_bit - 1) - 1
    w_delta = alpha / levels
    stored = stored.detach().to(recomputed.dtype)
    diff = (stored - recomputed).abs()
    # one quantization step apart means a different integer; float noise is far below that
    flipped = diff > w_delta / 4
    if not bool(flipped.any()):
        return
    at_tie = flipped & _at_rounding_tie(module, levels) & ((diff - w_delta).abs() <= w_delta / 4)
    if bool((flipped & ~at_tie).any()):
        worst = float(diff[flipped & ~at_tie].max())
        report.problems[name] = (
            f"layer {label}: stored weight_q disagrees with the weights recomputed from 'weight' and "
            f"wgt_alpha (largest difference {worst:.4g}, {worst / w_delta:.2f} quantization steps); "
            "the checkpoint was saved between an optimizer step and a forward pass, or edited. "
            "Pass --trust-recomputed to export the recomputed weights"
        )
        return
    # every flip is a rounding tie: the stored value is what the trained model computed with
    report.ties[name] = int(at_tie.sum())
    if isinstance(module, QuantConv2d):
        with torch.no_grad():
            module.weight_q.copy_(stored)
        module.stored_weight_q = True
    else:  # user code recomputes weight_q in its forward: its weight quantizer returns the stored one
        _use_stored(module, stored.detach().clone())


def _use_stored(module: nn.Module, stored: torch.Tensor) -> None:
    def hook(_quant: nn.Module, _args: object, output: torch.Tensor) -> torch.Tensor:
        # same values; the autograd graph of the user's quantizer is not needed for export
        return stored.to(device=output.device, dtype=output.dtype)

    quantizer = getattr(module, "weight_quant", None)
    if not isinstance(quantizer, nn.Module):
        raise InputError(
            f"layer {module}: its weight_quant is not a module, so its stored weight_q cannot be "
            "used at its rounding ties; make weight_quant an nn.Module"
        )
    quantizer.register_forward_hook(hook)


def _at_rounding_tie(module: nn.Module, levels: int) -> torch.Tensor:
    """Where the unrounded grid position |w - mean| / std / alpha * levels is a half step, to
    within float32 rounding (devices that reduce mean and std in another order round it apart)."""
    weight = module.weight.detach().to(torch.float64)  # type: ignore[operator]
    alpha = float(torch.as_tensor(module.weight_quant.wgt_alpha).detach())  # type: ignore[union-attr]
    scaled = ((weight - weight.mean()) / weight.std() / alpha).abs().clamp(max=1.0) * levels
    return ((scaled - scaled.floor()) - 0.5).abs() <= _TIE_TOLERANCE
