"""The study's hold on a model: activation bits set for a block, weights quantized once, checks.

Every evaluation (engine), the pseudo-labels (data) and the search (strategies) run the model
inside :func:`act_bits` and :func:`frozen_weights`, so each conv's bits are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from qexport.errors import InputError
from qexport.frontend.bits import CONFIG_ACT_BITS
from qexport.frontend.models.network import quantized_convs


def qconvs(model: nn.Module) -> dict[str, Any]:
    """Module path -> quantized conv, in ``named_modules()`` order (any family).

    ``Any``: a quantized conv is duck-typed (``act_bit``, maybe ``quantized_weight()``), so a
    user's own class counts as the course ``QuantConv2d`` does.
    """
    return dict(quantized_convs(model))


def check_settable(model: nn.Module) -> None:
    """Refuse a quantized conv whose activation bits the study cannot set (a user's own class)."""
    for name, module in qconvs(model).items():
        if not isinstance(getattr(module, "act_bit", None), int):
            raise InputError(
                f"layer {name}: the study sets each quantized conv's act_bit, but your "
                f"{type(module).__name__} has no integer act_bit attribute; give it one that its "
                "forward uses (as the course QuantConv2d does)"
            )


@contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """Quantize each conv's weights once instead of on every forward.

    QuantConv2d re-quantizes its weights on every call; the result depends on the weights alone,
    so computing it once gives the same tensor and keeps QuantConv2d.forward the one definition of
    the layer. Nested use leaves the outer freeze in place.
    """
    patched = []
    try:
        with torch.no_grad():
            for module in qconvs(model).values():
                # a user's own class without quantized_weight() quantizes on every call, as before
                if "quantized_weight" in vars(module) or not hasattr(module, "quantized_weight"):
                    continue
                weight_q = module.quantized_weight().detach()
                setattr(module, "quantized_weight", lambda w=weight_q: w)  # noqa: B010 - shadows a method
                patched.append(module)
        yield
    finally:
        for module in patched:
            delattr(module, "quantized_weight")


@contextmanager
def act_bits(model: nn.Module, bits: dict[str, int]) -> Iterator[None]:
    """Set activation bits (module path -> bits) for the block, then restore every conv's."""
    check_settable(model)
    convs = qconvs(model)
    saved = {name: m.act_bit for name, m in convs.items()}
    try:
        for name, value in bits.items():
            convs[name].act_bit = value
        yield
    finally:
        for name, value in saved.items():
            convs[name].act_bit = value


def check_bits(from_bits: int, to_bits: int) -> None:
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


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: give at least 1")
