"""The whole-model export done the way the seed notebooks do it, as a comparison point for `dump --all`.

Seed 003 captures one layer's input with a hook, turns weights and activations into integers with
torch, convolves the integers as floats and checks the result. Done for every conv layer, with the
integers written out one value a line, that becomes this module. Its formulas are transcribed here on
purpose (not imported from qexport.ir.integerize), so it shares no integer code with qexport.

Not collected by pytest (bench/ lies outside testpaths); bench/run.py times it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.vgg import BUILTIN, VGGQuant


@dataclass(frozen=True)
class NotebookLayer:
    """One conv layer's integers as the notebook computes them, in torch's (N, C, H, W) order."""

    layer: int
    w_int: np.ndarray  # (oc, ic, kh, kw)
    x_int: np.ndarray  # (n, c, h, w)
    psum: np.ndarray  # (n, oc, h', w')


@dataclass(frozen=True)
class NotebookExport:
    seconds: float
    build_seconds: float  # of ``seconds``: building the demo model and its images
    files: int
    bytes_written: int
    layers: list[NotebookLayer]


class _SaveInput:
    """Seed 003's SaveOutput: a forward pre-hook that keeps the layer's input."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def __call__(self, _module: torch.nn.Module, module_in: tuple[torch.Tensor, ...]) -> None:
        self.inputs.append(module_in[0])


def _act_quant(x: torch.Tensor, alpha: float, act_bit: int) -> torch.Tensor:
    """The course's act_quantization: clip x / alpha at 1 (not at 0), round to 2^b - 1 levels."""
    levels = 2**act_bit - 1
    x_q: torch.Tensor = torch.round((x / alpha).clamp(max=1.0) * levels) / levels * alpha
    return x_q


def _write_per_value(path: Path, values: np.ndarray, bits: int) -> int:
    """One value a line in two's complement binary, formatted one value at a time, as the notebooks do."""
    mask = (1 << bits) - 1
    line_format = f"0{bits}b"  # '{:04b}'.format(v & 15) for 4 bits
    with path.open("w") as f:
        for v in values.reshape(-1).tolist():
            f.write(format(v & mask, line_format) + "\n")
    return path.stat().st_size


def _layer_integers(model: VGGQuant, images: torch.Tensor, layer: int, conv: QuantConv2d) -> NotebookLayer:
    """Hook ``conv`` (features[layer]), run the whole model, and turn what it saw into integers (seed 003)."""
    save_input = _SaveInput()
    handle = conv.register_forward_pre_hook(save_input)
    with torch.no_grad():
        model(images)
    handle.remove()
    x = save_input.inputs[0]

    w_bit, act_bit = conv.w_bit, conv.act_bit
    w_alpha = conv.weight_quant.wgt_alpha.item()
    w_delta = w_alpha / (2 ** (w_bit - 1) - 1)
    x_alpha = conv.act_alpha.item()
    x_delta = x_alpha / (2**act_bit - 1)
    with torch.no_grad():
        weight_q = conv.weight_quant(conv.weight)
        w_int = torch.round(weight_q / w_delta)
        x_int = torch.round(_act_quant(x, x_alpha, act_bit) / x_delta)
        # float32 holds these sums exactly: at most 4608 taps x 7 x 15 < 2^24
        psum = F.conv2d(x_int.float(), w_int.float(), stride=conv.stride, padding=conv.padding)
    return NotebookLayer(
        layer,
        w_int.to(torch.int64).numpy(),
        x_int.to(torch.int64).numpy(),
        psum.to(torch.int64).numpy(),
    )


def _psum_bits(conv: QuantConv2d) -> int:
    """Signed width of the worst case in_channels * k^2 * max|w| * max|x|, as the README states it."""
    kernel = int(conv.kernel_size[0]) * int(conv.kernel_size[1])
    bound = conv.in_channels * kernel * (2 ** (conv.w_bit - 1) - 1) * (2**conv.act_bit - 1)
    return int(bound).bit_length() + 1


def export_notebook_way(out_dir: Path, images_spec: str = "0") -> NotebookExport:
    """Every conv layer of the demo VGG16_quant_gradual: one forward pass and three files a layer.

    Layer 0's negative activations (the course clip has no lower bound) are written masked to 4
    bits, wrapped, as `v & 15` does in a notebook: this path checks nothing, it is only timed.
    """
    start = time.perf_counter()
    model = demo_model(BUILTIN["VGG16_quant_gradual"])
    images = load_demo(images_spec).images
    built = time.perf_counter()
    layers: list[NotebookLayer] = []
    files = written = 0
    for index, module in enumerate(model.features):
        if not isinstance(module, QuantConv2d):
            continue
        ints = _layer_integers(model, images, index, module)
        folder = out_dir / f"layer{index}"
        folder.mkdir(parents=True)
        written += _write_per_value(folder / "weight.txt", ints.w_int, module.w_bit)
        written += _write_per_value(folder / "activation.txt", ints.x_int, module.act_bit)
        written += _write_per_value(folder / "psum.txt", ints.psum, _psum_bits(module))
        files += 3
        layers.append(ints)
    return NotebookExport(time.perf_counter() - start, built - start, files, written, layers)
