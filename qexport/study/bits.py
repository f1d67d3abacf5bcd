"""The study's hold on a model: activation bits set for a block, weights quantized once, checks.

Every evaluation (engine), the pseudo-labels (data) and the search (strategies) run the model
inside :func:`act_bits` and :func:`frozen_weights`, so each conv's bits are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from qexport.errors import InputError
from qexport.frontend.bits import CONFIG_ACT_BITS
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.vgg import VGGQuant


def qconvs(model: VGGQuant) -> dict[int, QuantConv2d]:
    """features index -> QuantConv2d, in order."""
    return {i: m for i, m in enumerate(model.features) if isinstance(m, QuantConv2d)}


@contextmanager
def frozen_weights(model: VGGQuant) -> Iterator[None]:
    """Quantize each conv's weights once instead of on every forward.

    QuantConv2d re-quantizes its weights on every call; the result depends on the weights alone,
    so computing it once gives the same tensor and keeps QuantConv2d.forward the one definition of
    the layer. Nested use leaves the outer freeze in place.
    """
    patched = []
    try:
        with torch.no_grad():
            for module in qconvs(model).values():
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
def act_bits(model: VGGQuant, bits: dict[int, int]) -> Iterator[None]:
    """Set activation bits (features index -> bits) for the block, then restore every conv's."""
    convs = qconvs(model)
    saved = {i: m.act_bit for i, m in convs.items()}
    try:
        for index, value in bits.items():
            convs[index].act_bit = value
        yield
    finally:
        for index, value in saved.items():
            convs[index].act_bit = value


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
