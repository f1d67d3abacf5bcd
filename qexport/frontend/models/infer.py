"""A VGG-style architecture inferred from a state dict alone, and whether two architectures match."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from qexport.errors import InputError
from qexport.frontend.models.vgg import Arch, ModuleKind, ModuleSpec

_FEATURE_KEY = re.compile(r"^features\.(\d+)\.(.+)$")


def infer_arch(state: Mapping[str, torch.Tensor], name: str = "inferred") -> Arch:
    """Rebuild a VGG-style architecture from a state dict alone.

    Convs and BatchNorms are found by their keys; the gaps between them are module indices with
    no parameters: the first after a conv block is its ReLU, any further ones are 2x2 max-pools.
    After the last block: ReLU, the max-pools that bring 32x32 down to the classifier's input, and
    the course's closing 1x1 AvgPool. Kernels are square with stride 1 and padding k // 2.

    A BatchNorm replaced by ``nn.Identity`` has no keys, so "conv, Identity, ReLU" looks like
    "conv, ReLU, max-pool". The course's cfg ends with a max-pool, so the tail keeps at least one:
    when reading every such gap as a pool leaves the tail none, the gaps that cannot all be pools
    are Identities — if exactly that many BatchNorm-less convs have a gap of two or more. Any
    other count is refused as ambiguous, pointing to ``--model module:factory``.
    """
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _FEATURE_KEY.match(key)
        if match:
            by_index.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if not by_index or "classifier.weight" not in state:
        raise InputError(
            "cannot infer the architecture: the state dict has no 'features.<i>.…' or "
            "'classifier.weight' keys, so it is not a VGG-style course model"
        )
    specs: dict[int, ModuleSpec] = {}
    channels = 3
    for i in sorted(by_index):
        params = by_index[i]
        weight = params.get("weight")
        if "running_mean" in params:
            specs[i] = ModuleSpec("bn", out_channels=int(params["running_mean"].shape[0]))
        elif weight is not None and weight.dim() == 4:
            out_c, in_c, kh, kw = (int(s) for s in weight.shape)
            if kh != kw:
                raise InputError(f"features[{i}] has a {kh}x{kw} kernel; only square kernels are supported")
            kind: ModuleKind = "qconv" if "act_alpha" in params else "conv"
            specs[i] = ModuleSpec(kind, in_c, out_c, kh, 1, kh // 2)
            channels = out_c
        else:
            raise InputError(f"features[{i}] has keys {sorted(params)}; neither a conv nor a BatchNorm")
    classifier = state["classifier.weight"]
    num_classes, classifier_in = (int(s) for s in classifier.shape)
    last = max(specs)
    pools_needed = _pools_for(classifier_in, channels)
    pools_in_gaps = 0
    identities = _replaced_bns(specs, pools_needed)
    features: list[ModuleSpec] = []
    for i in range(last + 1):
        if i in specs:
            features.append(specs[i])
        elif i in identities:
            features.append(ModuleSpec("identity", out_channels=specs[i - 1].out_channels))
        elif features[-1].kind in ("qconv", "conv", "bn", "identity"):
            features.append(ModuleSpec("relu"))
        else:
            features.append(ModuleSpec("maxpool"))
            pools_in_gaps += 1
    tail_pools = pools_needed - pools_in_gaps
    if tail_pools < 0:
        raise InputError(
            f"cannot infer the architecture: classifier expects {classifier_in} inputs from "
            f"{channels} channels but the layer gaps already hold {pools_in_gaps} max-pools"
        )
    features += [ModuleSpec("relu"), *[ModuleSpec("maxpool")] * tail_pools, ModuleSpec("avgpool")]
    return Arch(name, tuple(features), num_classes=num_classes, classifier_in=classifier_in)


def _replaced_bns(specs: dict[int, ModuleSpec], pools_needed: int) -> set[int]:
    """The gap indices that are an ``nn.Identity`` in a BatchNorm's place (see :func:`infer_arch`)."""
    last = max(specs)
    gaps = [i for i in range(last + 1) if i not in specs]
    relus = {i for i in gaps if i - 1 in specs}
    pools = len(gaps) - len(relus)
    if pools_needed - pools >= 1:
        return set()  # every gap can be what it looks like, leaving the tail its max-pool
    # BatchNorm-less convs followed by a gap of two or more: conv, ReLU, pool ... or conv, Identity, ReLU
    candidates = [
        i for i in relus if specs[i - 1].kind in ("qconv", "conv") and i + 1 not in specs and i + 1 <= last
    ]
    wanted = 1 - (pools_needed - pools)
    if not candidates or not any(m.kind == "bn" for m in specs.values()):
        return set()  # nothing to decide: the pool count check in infer_arch names any misfit
    if len(candidates) != wanted:
        shown = ", ".join(f"features[{i}]" for i in sorted(candidates))
        raise InputError(
            f"cannot infer the architecture: {wanted} of the keyless entries {shown} (after "
            "BatchNorm-less convs) must be nn.Identity in a BatchNorm's place rather than max-pools, "
            "and the keys cannot tell which; give your model code with --model module.path:factory"
        )
    return set(candidates)


def _pools_for(classifier_in: int, channels: int) -> int:
    """How many 2x2 max-pools turn a 32x32 map of ``channels`` into ``classifier_in`` features."""
    for pools in range(6):
        side = 32 >> pools
        if channels * side * side == classifier_in:
            return pools
    raise InputError(
        f"cannot infer the architecture: classifier takes {classifier_in} inputs, which no "
        f"32x32 / 2^k map of the last conv's {channels} channels gives"
    )


def same_arch(a: Arch, b: Arch) -> bool:
    return a.features == b.features and (a.num_classes, a.classifier_in) == (
        b.num_classes,
        b.classifier_in,
    )
