"""A ResNet's SFU as exported files (``dump --sfu`` / ``--chain``): per quantized conv, what it holds.

The same integers :mod:`qexport.infer.resnet` runs, built once from one capture of the images:
a block's ``conv1`` gets thresholds (:class:`~qexport.ir.sfu.LayerSfu`, to ``conv2``'s ``x_int``),
its ``conv2`` (and a quantized stem) the fixed-point block end, its ``downsample.0`` the fold it
adds into ``conv2``'s accumulator (:class:`~qexport.ir.fixed_point.LayerFixedPoint`). Each file
set is consistent with the set's own psums: without ``chain`` every conv's psums are those of the
float model's ``x_int`` and an identity shortcut is the float block input on the accumulator grid;
with ``chain`` every conv's ``x_int`` and every shortcut are the integer network's own.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from qexport.frontend.capture import LayerTensors
from qexport.frontend.models.network import is_quantized_conv
from qexport.infer.resnet import _consumers, _plan, resnet_blocks
from qexport.ir.fixed_point import (
    FixedPointWidths,
    LayerFixedPoint,
    RequantTo,
    block_end,
    check_skip,
    to_skip,
)
from qexport.ir.integerize import integerize
from qexport.ir.reference import integer_conv
from qexport.ir.sfu import LayerSfu
from qexport.writer.manifest import TailOp

ResNetSfu = LayerSfu | LayerFixedPoint


def resnet_sfus(
    model: nn.Module, captured: dict[str, LayerTensors], widths: FixedPointWidths, chain: bool
) -> tuple[dict[str, ResNetSfu], dict[str, np.ndarray]]:
    """Each quantized conv's SFU files' contents by module path and, with ``chain``, each conv's
    ``x_int`` (N, C, H, W) as the integer network makes it (empty without)."""
    stem_bn, blocks = resnet_blocks(model)
    quant_stem = is_quantized_conv(model.conv1)  # type: ignore[arg-type]
    ints = {name: integerize(t) for name, t in captured.items()}
    plan = _plan(stem_bn, blocks, ints, widths, quant_stem)
    two = 2.0**-widths.frac_bits
    own: dict[str, np.ndarray] = {}  # the integer network's own x_int of each conv (chain)

    def x_of(name: str) -> np.ndarray:
        return own[name] if chain and name in own else ints[name].x_int

    def psum_of(name: str) -> np.ndarray:
        layer = ints[name]
        return integer_conv(x_of(name), layer.w_int, layer.stride, layer.padding)

    def requants(producer: str, out: np.ndarray) -> tuple[RequantTo, ...]:
        made = []
        for k, (consumer, rule) in enumerate(plan.requants[producer]):
            x = rule.apply(out)
            own[consumer] = x
            made.append(RequantTo(consumer, "requant" if k == 0 else "requant_shortcut", rule, x))
        return tuple(made)

    sfus: dict[str, ResNetSfu] = {}
    first = blocks[0]
    if quant_stem:
        own["conv1"] = ints["conv1"].x_int
        fold = plan.main["conv1"]
        out = block_end(psum_of("conv1"), fold, None)
        skip = check_skip(out, widths, "conv1 (stem) output")
        sfus["conv1"] = LayerFixedPoint(
            "block_end",
            fold,
            plan.unit["conv1"],
            widths,
            ("batchnorm", "relu"),
            requants=requants("conv1", out),
        )
    else:  # the float stem: its output quantised as the float model does, both ways
        for consumer in _consumers(blocks, 0):
            own[consumer] = ints[consumer].x_int
        u_in = ints[first.conv1].x_delta * two
        skip = to_skip(captured[first.conv1].x.numpy(), u_in, widths, "stem output")
    for block in blocks:
        _, thr = plan.inner[block.conv1]
        x2 = thr.apply(psum_of(block.conv1))
        own[block.conv2] = x2
        sfus[block.conv1] = LayerSfu(block.conv2, ("batchnorm", "relu"), thr, None, x2)
        u = plan.unit[block.conv2]
        fold2 = plan.main[block.conv2]
        psum2 = psum_of(block.conv2)
        short = plan.short[block.path]
        skip_in = None
        if block.downsample is not None:
            add = block.downsample
            shortcut = short.apply(psum_of(add))
            sfus[add] = LayerFixedPoint("shortcut", short, u, widths, ("batchnorm",), add_into=block.conv2)
        else:
            add = "identity"
            u_in = ints[block.conv1].x_delta * two
            skip_in = (
                skip
                if chain
                else to_skip(captured[block.conv1].x.numpy(), u_in, widths, f"{block.path} input")
            )
            shortcut = short.apply(skip_in)
        out = block_end(psum2, fold2, shortcut)
        skip = check_skip(out, widths, f"{block.path} output")
        between = (("batchnorm",) if block.has_bn2 else ()) + (f"add {add}", "relu")
        sfus[block.conv2] = LayerFixedPoint(
            "block_end",
            fold2,
            u,
            widths,
            between,
            add=add,
            skip=skip_in,
            skip_rescale=None if block.downsample is not None else short,
            requants=requants(block.conv2, out),
        )
    return sfus, (own if chain else {})


def resnet_float_end(model: nn.Module) -> tuple[str, list[TailOp], dict[str, np.ndarray]]:
    """The float end of the course ResNet: the last ``conv2``'s dequantised accumulator
    (``out * unit``), ``avgpool``, flatten, ``fc`` (ops and float32 arrays by state-dict key)."""
    _, blocks = resnet_blocks(model)  # refuses another end, by module path
    kernel = model.avgpool.kernel_size  # type: ignore[union-attr]
    k = int(kernel if isinstance(kernel, int) else kernel[0])  # type: ignore[index]
    fc: nn.Linear = model.fc  # type: ignore[assignment]
    arrays = {"fc.weight": np.ascontiguousarray(fc.weight.detach().cpu().float().numpy())}
    if fc.bias is not None:
        arrays["fc.bias"] = np.ascontiguousarray(fc.bias.detach().cpu().float().numpy())
    ops = [TailOp("avgpool", kernel=k), TailOp("flatten"), TailOp("linear", "fc")]
    return blocks[-1].conv2, ops, arrays
