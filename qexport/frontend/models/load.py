"""Loading a matched state dict into the model, refusing non-finite values and a stale ``weight_q``."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from qexport.errors import InputError
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.vgg import VGGQuant


def _all_finite(value: torch.Tensor) -> bool:
    """No NaN or Inf: one min/max pass (NaN propagates), far faster than ``isfinite(v).all()``."""
    if value.numel() == 0:
        return True
    low, high = torch.aminmax(value.detach())
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def load_weights(
    model: VGGQuant, state: Mapping[str, torch.Tensor], *, trust_recomputed: bool = False
) -> None:
    """Load a matched state dict, refusing non-finite values, alpha <= 0 and a stale ``weight_q``.

    ``weight_q`` is never trusted: it is recomputed from ``weight`` and the alphas, and a stored one
    must agree with it (to within float rounding) unless ``trust_recomputed``.
    """
    for key, value in state.items():
        if value.is_floating_point() and not _all_finite(value):
            bad = int((~torch.isfinite(value)).sum())
            raise InputError(
                f"checkpoint tensor {key} holds {bad} NaN/Inf value(s); the model diverged or the "
                "file is damaged; export from an earlier, finite checkpoint"
            )
        if key.endswith(("act_alpha", "wgt_alpha")) and float(value) <= 0:
            raise InputError(
                f"checkpoint {key} = {float(value):g}; an alpha must be > 0 to define a "
                "quantization step; this checkpoint was not trained with the course's quantizer"
            )
    own = model.state_dict()
    to_load = {k: v for k, v in state.items() if not k.endswith("weight_q")}
    for key in own:
        if key.endswith("weight_q"):
            to_load[key] = own[key]
    model.load_state_dict(to_load, strict=True)
    for i, module in enumerate(model.features):
        if not isinstance(module, QuantConv2d):
            continue
        with torch.no_grad():
            recomputed = module.quantized_weight()
            module.weight_q.copy_(recomputed)
        if not _all_finite(recomputed):
            raise InputError(
                f"layer {i}: the course's weight quantizer gives NaN for these weights (they are all "
                f"equal, {float(module.weight.detach().flatten()[0]):g}, so their std is 0); such a "
                "layer cannot be quantized. Export from a checkpoint where it was trained"
            )
        stored = state.get(f"features.{i}.weight_q")
        if stored is None or trust_recomputed:
            continue
        # one quantization step apart means a different integer; float noise is far below that
        w_delta = float(module.weight_quant.wgt_alpha.detach()) / (2 ** (module.w_bit - 1) - 1)
        diff = float((stored.to(recomputed.dtype) - recomputed).abs().max())
        if diff > w_delta / 4:
            raise InputError(
                f"layer {i}: stored weight_q disagrees with the weights recomputed from 'weight' and "
                f"wgt_alpha (largest difference {diff:.4g}, {diff / w_delta:.2f} quantization steps); "
                "the checkpoint was saved between an optimizer step and a forward pass, or edited. "
                "Pass --trust-recomputed to export the recomputed weights"
            )
