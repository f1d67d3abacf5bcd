"""Which architecture a checkpoint's state dict is: the named model (a built-in VGG or ResNet, or
the user's ``module:factory``), a built-in that fits, or one inferred from its keys; a checkpoint
that almost fits is named with its missing, unexpected and mis-shaped keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from qexport.errors import InputError
from qexport.frontend.models.infer import infer_arch, same_arch
from qexport.frontend.models.keys import KeyReport, key_report
from qexport.frontend.models.quant import ActClip
from qexport.frontend.models.resnet import (
    RESNET_BUILTIN,
    ResNetArch,
    build_resnet,
    is_resnet_state,
    resolve_resnet,
)
from qexport.frontend.models.user import UserArch, build_user_model, classes_of, is_user_spec
from qexport.frontend.models.vgg import BUILTIN, Arch, build_model, builtin_arch

if TYPE_CHECKING:  # a value handed over by the checkpoint loader; no import at run time
    from qexport.frontend.checkpoint import Checkpoint


ModelArch = Arch | ResNetArch | UserArch
"""Any family's architecture: each has ``name`` and ``num_classes``."""

MODEL_NAMES = (*BUILTIN, *RESNET_BUILTIN)


def builtin_model(name: str) -> Arch | ResNetArch:
    """A built-in VGG or ResNet by name; an unknown name lists every one (and user code's form)."""
    if name in RESNET_BUILTIN:
        return RESNET_BUILTIN[name]
    if name in BUILTIN:
        return BUILTIN[name]
    raise InputError(
        f"unknown model {name!r}; built-in models are {', '.join(MODEL_NAMES)}, or give your own "
        "model code as --model module.path:factory"
    )


def build_any(arch: ModelArch, act_clip: ActClip) -> nn.Module:
    """A fresh model of ``arch`` (user code: the factory's model, whose own quantizers stay)."""
    if isinstance(arch, ResNetArch):
        return build_resnet(arch, act_clip)
    if isinstance(arch, UserArch):
        return build_user_model(arch.name)
    return build_model(arch, act_clip)


def resolve_model(ckpt: Checkpoint, model_name: str | None) -> ModelArch:
    """The architecture of any family for a checkpoint (see the module docstring)."""
    if is_user_spec(model_name):
        assert model_name is not None
        return UserArch(model_name, classes_of(build_user_model(model_name)))
    if model_name in RESNET_BUILTIN or (model_name is None and is_resnet_state(ckpt.state_dict)):
        return resolve_resnet(ckpt, model_name)
    if model_name is not None and model_name not in BUILTIN:
        builtin_model(model_name)  # raises, listing every model
    return resolve_arch(ckpt, model_name)


def compare_keys(arch: Arch, state: Mapping[str, torch.Tensor]) -> KeyReport:
    return key_report(arch.expected_shapes(), state)


def resolve_arch(ckpt: Checkpoint, model_name: str | None) -> Arch:
    """The architecture for a checkpoint: the named model, a built-in that fits, or an inferred one."""
    state = ckpt.state_dict
    _check_quant_keys(ckpt)
    if model_name is not None:
        arch = builtin_arch(model_name)
        report = compare_keys(arch, state)
        if report.ok:
            return arch
        raise InputError(_mismatch_message(ckpt, arch, report))
    for arch in BUILTIN.values():
        if compare_keys(arch, state).ok:
            return arch
    inferred = infer_arch(state, name="inferred")
    report = compare_keys(inferred, state)
    if not report.ok:
        raise InputError(_mismatch_message(ckpt, inferred, report))
    if not inferred.qconv_indices():
        raise InputError(
            f"checkpoint {ckpt.name} has convs but no quantized ones (no features.<i>.act_alpha "
            "keys): it is a float model, or its alphas were stripped; qexport exports the "
            "course's QuantConv2d layers only"
        )
    return inferred


_QUANT_KEYS = ("act_alpha", "weight_quant.wgt_alpha", "weight_q")


def _check_quant_keys(ckpt: Checkpoint) -> None:
    """A layer with any QuantConv2d key needs both alphas: without one it cannot be quantized."""
    layers: dict[str, set[str]] = {}
    for key in ckpt.state_dict:
        for suffix in _QUANT_KEYS:
            if key.endswith("." + suffix):
                layers.setdefault(key.removesuffix(suffix), set()).add(suffix)
    for prefix, present in layers.items():
        absent = [f"{prefix}{k}" for k in _QUANT_KEYS[:2] if k not in present]
        if absent:
            raise InputError(
                f"checkpoint {ckpt.name}: {prefix.rstrip('.')} is a quantized conv (it has "
                f"{', '.join(sorted(present))}) but {' and '.join(absent)} "
                f"{'is' if len(absent) == 1 else 'are'} missing; without both alphas its "
                "quantization is undefined. Re-save the checkpoint from the training script"
            )


def _mismatch_message(ckpt: Checkpoint, arch: Arch, report: KeyReport) -> str:
    parts = [f"checkpoint {ckpt.name} does not fit model {arch.name}:"]
    parts += report.describe()
    fits = [a.name for a in BUILTIN.values() if compare_keys(a, ckpt.state_dict).ok]
    if fits:
        parts.append(f"it fits the built-in model {fits[0]}: pass --model {fits[0]}")
    else:
        try:
            inferred = infer_arch(ckpt.state_dict)
        except InputError as err:
            parts.append(f"no built-in model fits and {err}")
        else:
            if compare_keys(inferred, ckpt.state_dict).ok and not same_arch(inferred, arch):
                convs = len(inferred.conv_indices())
                parts.append(
                    f"no built-in model fits, but an inferred VGG-style architecture with {convs} "
                    "convs does: leave out --model to use it"
                )
            else:
                parts.append("no built-in or inferred architecture fits it")
    return " ".join(parts)
