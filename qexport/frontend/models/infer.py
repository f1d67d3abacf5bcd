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
    features: list[ModuleSpec] = []
    for i in range(last + 1):
        if i in specs:
            features.append(specs[i])
        elif i - 1 in specs:
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
