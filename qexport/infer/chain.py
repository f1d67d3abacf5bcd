"""What lies between one quantized conv and the next, read off a VGG-style model.

A chain is ``[BatchNorm] -> ReLU -> [MaxPool]`` (ReLU and max-pool in either order, both after the
BatchNorm, as the course's ``_make_layers`` builds them); eval-mode ``Dropout`` and ``Identity``
are skipped. Anything else between two quantized convs is refused by its module path, never
approximated. The last conv's chain has no ``next``: what follows it (the rest of ``features``,
flatten, ``classifier``) runs in float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import nn

from qexport.errors import InputError
from qexport.frontend.capture import LayerSettings
from qexport.frontend.models.network import is_quantized_conv
from qexport.ir.sfu import BatchNorm, Thresholds, scale, thresholds
from qexport.writer.manifest import TailOp


@dataclass(frozen=True)
class Chain:
    """One quantized conv's SFU: ``name`` the conv's module path, ``next`` the conv reading its
    output (None for the last), ``between`` the ops (``["batchnorm", "relu", "maxpool2"]``),
    ``bn`` (the identity when there is none) and ``pool`` (max-pool kernel = stride, or None)."""

    name: str
    next: str | None
    between: tuple[str, ...]
    bn: BatchNorm
    pool: int | None


def is_vgg(model: nn.Module) -> bool:
    """A features Sequential, then a classifier: the models whose chains qexport reads."""
    features = getattr(model, "features", None)
    return isinstance(features, nn.Sequential) and isinstance(getattr(model, "classifier", None), nn.Module)


def vgg_chains(model: nn.Module) -> tuple[list[Chain], list[nn.Module]]:
    """Each quantized conv's chain in ``features`` order, and the float tail after the last conv
    (the remaining ``features`` modules; the caller flattens and applies ``classifier``)."""
    if not is_vgg(model):
        raise InputError(
            f"qexport infer runs VGG-style models (a features Sequential, then classifier) and the "
            f"built-in ResNet-CIFAR family; {type(model).__name__} is neither (give a VGG-style "
            "model, or a ResNet checkpoint that loads as resnet20_quant ... resnet110_quant)"
        )
    features: nn.Sequential = model.features  # type: ignore[assignment]
    entries = list(features.named_children())
    convs = [i for i, (_, m) in enumerate(entries) if is_quantized_conv(m)]
    if not convs:
        raise InputError(f"{type(model).__name__}.features holds no quantized conv")
    others = [name for name, m in model.named_modules() if is_quantized_conv(m)]
    outside = [name for name in others if name not in {f"features.{entries[i][0]}" for i in convs}]
    if outside:
        raise InputError(f"quantized conv {outside[0]} is outside features; qexport infer cannot run it")
    chains = []
    for pos, i in enumerate(convs):
        end = convs[pos + 1] if pos + 1 < len(convs) else None
        name = f"features.{entries[i][0]}"
        conv = entries[i][1]
        if end is None:
            chains.append(Chain(name, None, (), BatchNorm.identity(int(conv.out_channels)), None))  # type: ignore[arg-type]
            tail = [m for _, m in entries[i + 1 :]]
            return chains, tail
        chains.append(_chain(name, f"features.{entries[end][0]}", entries[i + 1 : end], conv))
    raise AssertionError("unreachable: the last conv returns")  # pragma: no cover


def _chain(name: str, nxt: str, between: list[tuple[str, nn.Module]], conv: nn.Module) -> Chain:
    ops: list[str] = []
    bn: BatchNorm | None = None
    pool: int | None = None
    relu = False
    for child, module in between:
        path = f"features.{child}"
        if isinstance(module, nn.Dropout | nn.Identity):
            continue
        if isinstance(module, nn.BatchNorm2d) and bn is None and not ops:
            bn = _batchnorm(module, path)
            ops.append("batchnorm")
        elif isinstance(module, nn.ReLU) and not relu:
            relu = True
            ops.append("relu")
        elif isinstance(module, nn.MaxPool2d) and pool is None and _plain_pool(module):
            pool = int(module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0])
            ops.append(f"maxpool{pool}")
        else:
            raise InputError(
                f"{path} ({type(module).__name__}) lies between quantized convs {name} and {nxt}; "
                "the SFU expresses [BatchNorm] -> ReLU -> [MaxPool(k, k)] only, so qexport infer "
                "cannot run this model"
            )
    if not relu:
        raise InputError(
            f"no ReLU between quantized convs {name} and {nxt}; the SFU expresses "
            "[BatchNorm] -> ReLU -> [MaxPool(k, k)] only"
        )
    return Chain(name, nxt, tuple(ops), bn or BatchNorm.identity(int(conv.out_channels)), pool)  # type: ignore[arg-type]


def _plain_pool(module: nn.MaxPool2d) -> bool:
    """kernel == stride, no padding, dilation 1, floor mode: the integer max-pool's window."""

    def one(v: object) -> object:
        return v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v

    kernel, stride = one(module.kernel_size), one(module.stride)
    return (
        isinstance(kernel, int)
        and kernel == stride
        and one(module.padding) == 0
        and one(module.dilation) == 1
        and not module.ceil_mode
    )


def _batchnorm(module: nn.BatchNorm2d, path: str) -> BatchNorm:
    if module.running_mean is None or module.running_var is None:
        raise InputError(
            f"{path}: a BatchNorm without running statistics normalises by each batch; the SFU needs "
            "fixed ones (track_running_stats=True)"
        )
    c = module.num_features

    def values(t: object, default: float) -> np.ndarray:
        if t is None:
            return np.full(c, default)
        return np.asarray(t.detach().cpu().double().numpy())  # type: ignore[attr-defined]

    return BatchNorm(
        gamma=values(module.weight, 1.0),
        beta=values(module.bias, 0.0),
        mean=values(module.running_mean, 0.0),
        var=values(module.running_var, 1.0),
        eps=float(module.eps),
    )


def chain_thresholds(chain: Chain, layer: LayerSettings, nxt: LayerSettings) -> Thresholds:
    """The thresholds of ``chain`` (which has a ``next``): ``layer``'s psum scale, the chain's
    BatchNorm and the next conv's ``act_alpha`` and ``act_bit``."""
    s = scale(layer.act_alpha, layer.act_bit, layer.wgt_alpha, layer.w_bit)
    return thresholds(s, chain.bn, nxt.act_alpha, nxt.act_bit)


def sfu_rules(
    chains: list[Chain], layers: Mapping[str, LayerSettings]
) -> dict[str, tuple[Chain, Thresholds]]:
    """Every chain that has a ``next``, with its thresholds, by the conv's module path."""
    return {
        c.name: (c, chain_thresholds(c, layers[c.name], layers[c.next])) for c in chains if c.next is not None
    }


def float_end(model: nn.Module) -> tuple[str, list[TailOp], dict[str, np.ndarray]]:
    """The float end of a VGG-style model as ops and float32 arrays (by state-dict key): what
    follows the last quantized conv in ``features``, flatten, then ``classifier``. The last conv's
    module path comes first. An op a set cannot describe is refused by its module path."""
    chains, _ = vgg_chains(model)
    last = chains[-1].name
    features: nn.Sequential = model.features  # type: ignore[assignment]
    entries = list(features.named_children())
    at = [f"features.{name}" for name, _ in entries].index(last)
    ops: list[TailOp] = []
    arrays: dict[str, np.ndarray] = {}
    for child, module in entries[at + 1 :]:
        _tail_op(f"features.{child}", module, ops, arrays, linear=False)
    ops.append(TailOp("flatten"))
    _tail_op("classifier", model.classifier, ops, arrays, linear=True)  # type: ignore[arg-type]
    return last, ops, arrays


def _tail_op(
    path: str, module: nn.Module, ops: list[TailOp], arrays: dict[str, np.ndarray], linear: bool
) -> None:
    def array(t: object) -> np.ndarray:
        return np.ascontiguousarray(t.detach().cpu().float().numpy())  # type: ignore[attr-defined]

    if isinstance(module, nn.Dropout | nn.Identity):
        return
    if isinstance(module, nn.Sequential):
        for child, inner in module.named_children():
            _tail_op(f"{path}.{child}", inner, ops, arrays, linear)
    elif isinstance(module, nn.ReLU):
        ops.append(TailOp("relu"))
    elif not linear and isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
        ops.append(TailOp("batchnorm", path, eps=float(module.eps)))
        c = module.num_features
        for key, value, default in (
            ("weight", module.weight, 1.0),
            ("bias", module.bias, 0.0),
            ("running_mean", module.running_mean, 0.0),
            ("running_var", module.running_var, 1.0),
        ):
            arrays[f"{path}.{key}"] = np.full(c, default, np.float32) if value is None else array(value)
    elif not linear and isinstance(module, nn.MaxPool2d) and _plain_pool(module):
        ops.append(TailOp("maxpool", kernel=_kernel(module.kernel_size)))
    elif not linear and isinstance(module, nn.AvgPool2d) and _plain_avg(module):
        ops.append(TailOp("avgpool", kernel=_kernel(module.kernel_size)))
    elif linear and isinstance(module, nn.Linear):
        ops.append(TailOp("linear", path))
        arrays[f"{path}.weight"] = array(module.weight)
        if module.bias is not None:
            arrays[f"{path}.bias"] = array(module.bias)
    else:
        raise InputError(
            f"{path} ({type(module).__name__}) is in the float end after the last quantized conv; a "
            "vector set describes BatchNorm, ReLU, MaxPool/AvgPool(k, k), Dropout, then Linear and "
            "ReLU in classifier only, so --sfu cannot export the classifier (export without it)"
        )


def _plain_avg(module: nn.AvgPool2d) -> bool:
    """kernel == stride (ints or equal pairs), no padding, floor mode."""

    def one(v: object) -> object:
        return v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v

    kernel, stride = one(module.kernel_size), one(module.stride)
    return isinstance(kernel, int) and kernel == stride and one(module.padding) == 0 and not module.ceil_mode


def _kernel(size: object) -> int:
    return int(size if isinstance(size, int) else size[0])  # type: ignore[index]
