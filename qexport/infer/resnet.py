"""Run a ResNet-CIFAR network in integers and compare every conv's ``x_int`` with the float model.

The float stem (``conv1``, a plain ``nn.Conv2d``) runs in float, as the float model does, and its
output is quantised by ``layer1.0.conv1``'s act quantiser (the float model's own ``x_int``); its
shortcut is that float output on the accumulator grid (:func:`qexport.ir.fixed_point.to_skip`).
A quantized stem runs as a fixed-point SFU without an add. Then every block in integers:

    conv1 psum -> thresholds (bn1, ReLU, conv2's act quantiser; exact, :mod:`qexport.ir.sfu`)
    conv2 psum -> fold (bn2) + shortcut (identity rescaled, or downsample psum -> fold) -> ReLU
               -> requantisation to the next block's conv1 (and downsample.0) grid; the
                  accumulator itself is the next block's shortcut (:mod:`qexport.ir.fixed_point`)

and the end (``avgpool``, ``fc``) in float on the dequantised accumulator. Only the course's
``ResNet_Cifar`` / ``BasicBlock`` forward (ours, :mod:`qexport.frontend.models.resnet`) is run: any
other module where the SFU sits is refused by its module path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from qexport.errors import InputError
from qexport.frontend.capture import ConvBits, capture
from qexport.frontend.models.network import is_quantized_conv
from qexport.frontend.models.resnet import BasicBlock, ResNetQuant
from qexport.infer.chain import _batchnorm
from qexport.infer.run import End, EndRun, InferReport, LayerAgreement, end_ops
from qexport.ir.fixed_point import (
    Affine,
    FixedPointWidths,
    Requant,
    check_skip,
    fold,
    near_boundary,
    pre_rounding,
    requant,
    rescale,
    to_skip,
)
from qexport.ir.integerize import IntLayer, integerize
from qexport.ir.reference import integer_conv
from qexport.ir.sfu import BatchNorm, Thresholds, float32_band, scale, thresholds
from qexport.precision import exact_math


@dataclass(frozen=True)
class Block:
    """One ``BasicBlock`` by module path, with its BatchNorms (identity where ``bn2`` is absent)."""

    path: str
    bn1: BatchNorm
    bn2: BatchNorm
    downsample_bn: BatchNorm | None
    has_bn2: bool = True

    @property
    def conv1(self) -> str:
        return f"{self.path}.conv1"

    @property
    def conv2(self) -> str:
        return f"{self.path}.conv2"

    @property
    def downsample(self) -> str | None:
        return None if self.downsample_bn is None else f"{self.path}.downsample.0"


def is_resnet(model: nn.Module) -> bool:
    return isinstance(model, ResNetQuant)


def _refuse(path: str, module: nn.Module, where: str) -> InputError:
    return InputError(
        f"{path} ({type(module).__name__}) lies {where}; the fixed-point SFU expresses the course "
        "BasicBlock only (conv1 -> BatchNorm -> ReLU -> conv2 -> [BatchNorm] -> + shortcut -> ReLU, "
        "shortcut the block input or downsample = quantized 1x1 conv -> BatchNorm), so qexport "
        "infer cannot run this model"
    )


def _bn(module: nn.Module, path: str, where: str) -> BatchNorm:
    if isinstance(module, nn.BatchNorm2d):
        return _batchnorm(module, path)
    raise _refuse(path, module, where)


def resnet_blocks(model: nn.Module) -> tuple[BatchNorm, list[Block]]:
    """The stem's BatchNorm and every block, checked to be what the integer network computes."""
    if not isinstance(model, ResNetQuant) or type(model).forward is not ResNetQuant.forward:
        raise InputError(f"{type(model).__name__} is not the built-in ResNet-CIFAR model")
    stem = model.conv1
    if not isinstance(stem, nn.Conv2d) or stem.bias is not None:
        raise _refuse("conv1", stem, "at the stem (a bias-free conv)")
    stem_bn = _bn(model.bn1, "bn1", "after the stem conv1")
    if type(model.relu) is not nn.ReLU:
        raise _refuse("relu", model.relu, "after the stem")
    if type(model.avgpool) is not nn.AvgPool2d or type(model.fc) is not nn.Linear:
        raise _refuse("avgpool", model.avgpool, "at the end (AvgPool2d, then a Linear fc)")
    blocks: list[Block] = []
    for stage in ("layer1", "layer2", "layer3"):
        for child, block in getattr(model, stage).named_children():
            path = f"{stage}.{child}"
            if type(block) is not BasicBlock:
                raise _refuse(path, block, "where a BasicBlock is expected")
            for conv in ("conv1", "conv2"):
                if not is_quantized_conv(getattr(block, conv)):
                    raise _refuse(
                        f"{path}.{conv}", getattr(block, conv), "where a quantized conv is expected"
                    )
            if type(block.relu) is not nn.ReLU:
                raise _refuse(f"{path}.relu", block.relu, f"in block {path}")
            bn1 = _bn(block.bn1, f"{path}.bn1", f"between quantized convs {path}.conv1 and {path}.conv2")
            channels = int(block.conv2.out_channels)
            has_bn2 = type(block.bn2) is not nn.Identity  # the course's variant without bn2
            bn2 = (
                _bn(block.bn2, f"{path}.bn2", f"between {path}.conv2 and the residual add")
                if has_bn2
                else BatchNorm.identity(channels)
            )
            ds_bn = None
            if block.downsample is not None:
                ds = list(block.downsample.named_children())
                if len(ds) != 2 or not is_quantized_conv(ds[0][1]):
                    raise _refuse(f"{path}.downsample", block.downsample, f"in block {path}'s shortcut")
                ds_bn = _bn(ds[1][1], f"{path}.downsample.{ds[1][0]}", f"in block {path}'s shortcut")
            blocks.append(Block(path, bn1, bn2, ds_bn, has_bn2))
    return stem_bn, blocks


@dataclass(frozen=True)
class _Plan:
    """Every integer the SFUs need, built once from the first batch's settings."""

    inner: dict[str, tuple[Fraction, Thresholds]]
    """conv1 path -> its scale and the thresholds to conv2's x_int"""
    main: dict[str, Affine]
    """conv2 (or a quantized stem) path -> its BatchNorm fold"""
    short: dict[str, Affine]
    """block path -> the shortcut's fold (downsample) or rescale (identity)"""
    unit: dict[str, float]
    """producer path -> the accumulator's unit u"""
    requants: dict[str, list[tuple[str, Requant]]]
    """producer path -> (consumer conv path, its requantisation)"""


def _delta(layer: IntLayer) -> float:
    return layer.x_delta


def _consumers(blocks: list[Block], i: int) -> list[str]:
    if i >= len(blocks):
        return []
    nxt = blocks[i]
    return [nxt.conv1] + ([nxt.downsample] if nxt.downsample else [])


def _plan(
    stem_bn: BatchNorm,
    blocks: list[Block],
    ints: dict[str, IntLayer],
    widths: FixedPointWidths,
    quant_stem: bool,
) -> _Plan:
    two = 2.0**-widths.frac_bits
    inner: dict[str, tuple[Fraction, Thresholds]] = {}
    main: dict[str, Affine] = {}
    short: dict[str, Affine] = {}
    unit: dict[str, float] = {}
    requants: dict[str, list[tuple[str, Requant]]] = {}

    def consumers_of(producer: str, i: int) -> None:
        target = blocks[i].conv1 if i < len(blocks) else blocks[-1].conv1
        d = _delta(ints[target])
        unit[producer] = d * two
        requants[producer] = [
            (c, requant(d / _delta(ints[c]), ints[c].act_bit, widths, f"{producer} -> {c} requantisation"))
            for c in _consumers(blocks, i)
        ]

    if quant_stem:
        consumers_of("conv1", 0)
        stem = ints["conv1"]
        s = scale(stem.act_alpha, stem.act_bit, stem.wgt_alpha, stem.w_bit)
        main["conv1"] = fold(float(s), stem_bn, unit["conv1"], widths, "conv1 (bn1 fold)")
    for i, block in enumerate(blocks):
        c1, c2 = ints[block.conv1], ints[block.conv2]
        s1 = scale(c1.act_alpha, c1.act_bit, c1.wgt_alpha, c1.w_bit)
        inner[block.conv1] = (s1, thresholds(s1, block.bn1, c2.act_alpha, c2.act_bit))
        consumers_of(block.conv2, i + 1)
        u = unit[block.conv2]
        s2 = scale(c2.act_alpha, c2.act_bit, c2.wgt_alpha, c2.w_bit)
        main[block.conv2] = fold(float(s2), block.bn2, u, widths, f"{block.conv2} (bn2 fold)")
        if block.downsample is not None and block.downsample_bn is not None:
            ds = ints[block.downsample]
            sd = scale(ds.act_alpha, ds.act_bit, ds.wgt_alpha, ds.w_bit)
            short[block.path] = fold(
                float(sd), block.downsample_bn, u, widths, f"{block.downsample} (BatchNorm fold)"
            )
        else:
            u_in = _delta(c1) * two
            short[block.path] = rescale(u_in / u, widths, f"{block.path} shortcut rescale")
    return _Plan(inner, main, short, unit, requants)


def _conv(x: np.ndarray, layer: IntLayer) -> np.ndarray:
    return integer_conv(x, layer.w_int, layer.stride, layer.padding, weights=layer.w_float)


def infer_resnet_network(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    bits: Mapping[str, ConvBits] | None = None,
    batch_size: int = 32,
    widths: FixedPointWidths | None = None,
    end: End = "float",
) -> InferReport:
    """The integer ResNet on ``images`` (N, 3, 32, 32), batch by batch, against the float model;
    ``end="int8"`` runs ``fc`` in int8 (:mod:`qexport.infer.end`)."""
    widths = widths or FixedPointWidths()
    stem_bn, blocks = resnet_blocks(model)
    quant_stem = is_quantized_conv(model.conv1)  # type: ignore[arg-type]
    rows: list[LayerAgreement] = []
    if quant_stem:
        rows += [
            LayerAgreement("conv1", None, c, ("batchnorm", "relu"), sfu="fixed_point")
            for c in _consumers(blocks, 0)
        ]
    for i, block in enumerate(blocks):
        rows.append(LayerAgreement(block.conv1, None, block.conv2, ("batchnorm", "relu")))
        add = f"add {block.downsample}" if block.downsample else "add identity"
        between = (("batchnorm",) if block.has_bn2 else ()) + (add, "relu")
        nxt = _consumers(blocks, i + 1)
        rows += [LayerAgreement(block.conv2, None, c, between, sfu="fixed_point") for c in nxt]
        if not nxt:
            rows.append(LayerAgreement(block.conv2, None, None, between, sfu="fixed_point"))
    report = InferReport(rows, labelled=labels is not None, fixed_point=widths.as_dict())
    index = {(r.name, r.next): r for r in rows}
    ends = EndRun(end_ops(model.fc, "fc")) if end == "int8" else None  # type: ignore[arg-type]
    plan: _Plan | None = None
    ints: dict[str, IntLayer] = {}
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        logits, ints, floats = _float_pass(model, batch, bits, ints)
        if plan is None:
            plan = _plan(stem_bn, blocks, ints, widths, quant_stem)
        ours, features = _integer_pass(model, blocks, plan, ints, floats, index, widths, quant_stem)
        truth = None if labels is None else labels[start : start + batch_size].cpu()
        if ends is None:
            report.add_batch(logits, ours, truth)
        else:
            ends.add(logits, ours, features, truth)
    if ends is not None:
        ends.finish(report)
    return report


def _float_pass(
    model: nn.Module,
    batch: torch.Tensor,
    bits: Mapping[str, ConvBits] | None,
    known: dict[str, IntLayer] | None = None,
) -> tuple[torch.Tensor, dict[str, IntLayer], dict[str, np.ndarray]]:
    """The float model's logits, every conv in integers and every conv's float input
    (``known``: the previous batch's, whose converted weights are taken over)."""
    out: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda _m, _a, o: out.append(o.detach().to("cpu")))
    try:
        captured = capture(model, batch, bits=bits)
    finally:
        handle.remove()
    ints = {t.name: integerize(t, (known or {}).get(t.name)) for t in captured}
    return out[0], ints, {t.name: t.x.numpy() for t in captured}


def _count(row: LayerAgreement, own: np.ndarray, local: np.ndarray, chained: np.ndarray) -> None:
    row.values += int(own.size)
    row.differ += int((local != own).sum())
    row.differ_chained += int((chained != own).sum())


def _fan_in(*layers: IntLayer) -> int:
    return max(layer.in_channels * layer.kernel**2 for layer in layers)


def _near(row: LayerAgreement, consumer: IntLayer, x: np.ndarray, local: np.ndarray, fan_in: int) -> None:
    """A fixed-point row's ``near``: differences within float32 rounding of the half-step between
    the two levels, judged on the float model's pre-rounding value (``x`` the consumer's float input)."""
    differ = local != consumer.x_int
    if differ.any():
        v = pre_rounding(x, consumer.act_alpha, consumer.act_bit)
        row.near += int((differ & near_boundary(v, consumer.x_int, local, fan_in)).sum())


@torch.no_grad()
def _integer_pass(
    model: nn.Module,
    blocks: list[Block],
    plan: _Plan,
    ints: dict[str, IntLayer],
    floats: dict[str, np.ndarray],
    index: dict[tuple[str, str | None], LayerAgreement],
    widths: FixedPointWidths,
    quant_stem: bool,
) -> tuple[torch.Tensor, np.ndarray]:
    """The integer network on one batch; adds each row's counts; returns its logits and fc's input."""
    first = blocks[0]
    x: dict[str, np.ndarray] = {}  # the integer network's own x_int of each conv
    if quant_stem:
        out = np.maximum(plan.main["conv1"].apply(_conv(ints["conv1"].x_int, ints["conv1"])), 0)
        skip = check_skip(out, widths, "conv1 (stem) output")
        for consumer, rq in plan.requants["conv1"]:
            x[consumer] = rq.apply(out)
            own = ints[consumer].x_int
            _count(index[("conv1", consumer)], own, x[consumer], x[consumer])
            _near(
                index[("conv1", consumer)],
                ints[consumer],
                floats[consumer],
                x[consumer],
                _fan_in(ints["conv1"]),
            )
    else:  # the float stem: its output quantised as the float model does
        for consumer in _consumers(blocks, 0):
            x[consumer] = ints[consumer].x_int
        skip = to_skip(
            floats[first.conv1], _delta(ints[first.conv1]) * 2.0**-widths.frac_bits, widths, "stem output"
        )
    for i, block in enumerate(blocks):
        c1, c2 = ints[block.conv1], ints[block.conv2]
        s1, thr = plan.inner[block.conv1]
        psum1 = _conv(x[block.conv1], c1)
        x[block.conv2] = thr.apply(psum1)
        local_psum1 = _conv(c1.x_int, c1)
        local2 = thr.apply(local_psum1)
        row = index[(block.conv1, block.conv2)]
        _count(row, c2.x_int, local2, x[block.conv2])
        differ = local2 != c2.x_int
        if differ.any():
            low, high = float32_band(local_psum1, c1.y_float, s1, block.bn1, c2.act_alpha, c2.act_bit)
            both = (c2.x_int >= low) & (c2.x_int <= high) & (local2 >= low) & (local2 <= high)
            row.near += int((differ & both).sum())
        # the block's end, chained and from the float model's own inputs
        out = _block_end(block, plan, ints, x[block.conv2], x.get(block.downsample or ""), skip)
        u_in = _delta(c1) * 2.0**-widths.frac_bits
        local_skip = (
            None if block.downsample else to_skip(floats[block.conv1], u_in, widths, f"{block.path} input")
        )
        local_ds = ints[block.downsample].x_int if block.downsample else None
        local_out = _block_end(block, plan, ints, c2.x_int, local_ds, local_skip)
        skip = check_skip(out, widths, f"{block.path} output")
        fan_in = _fan_in(c2, *([ints[block.downsample]] if block.downsample else []))
        for consumer, rq in plan.requants[block.conv2]:
            x[consumer] = rq.apply(out)
            local = rq.apply(local_out)
            _count(index[(block.conv2, consumer)], ints[consumer].x_int, local, x[consumer])
            _near(index[(block.conv2, consumer)], ints[consumer], floats[consumer], local, fan_in)
        if i == len(blocks) - 1:
            return _tail(model, skip, plan.unit[block.conv2])
    raise AssertionError("unreachable: the last block runs the tail")  # pragma: no cover


def _block_end(
    block: Block,
    plan: _Plan,
    ints: dict[str, IntLayer],
    x2: np.ndarray,
    x_ds: np.ndarray | None,
    skip: np.ndarray | None,
) -> np.ndarray:
    """``max(fold(conv2 psum) + shortcut, 0)`` in accumulator units (N, C, H, W) int64."""
    term = plan.main[block.conv2].apply(_conv(x2, ints[block.conv2]))
    if block.downsample is not None and x_ds is not None:
        shortcut = plan.short[block.path].apply(_conv(x_ds, ints[block.downsample]))
    elif skip is not None:
        shortcut = plan.short[block.path].apply(skip)
    else:  # pragma: no cover - the caller passes one of them
        raise AssertionError("a block end needs its shortcut")
    return np.asarray(np.maximum(term + shortcut, 0))


def _tail(model: nn.Module, out: np.ndarray, unit: float) -> tuple[torch.Tensor, np.ndarray]:
    """The float end on the dequantised accumulator: avgpool, flatten, fc; the logits and fc's input."""
    device = next(model.parameters()).device
    y = torch.from_numpy((out.astype(np.float64) * unit).astype(np.float32)).to(device)
    with exact_math():
        features = model.avgpool(y).flatten(1)  # type: ignore[operator]
        logits = model.fc(features)  # type: ignore[operator]
    return logits.detach().to("cpu"), features.detach().cpu().numpy()
