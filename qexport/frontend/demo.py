"""The built-in demo: a deterministic, untrained model and images, the same bits on any machine.

Both families have a demo (the VGG ones and the ResNet-CIFAR ones): the same seeded stream, the
same snapping, the same calibration steps, walked in forward order through each family's structure
(a ResNet block's residual sum included).

Random numbers come from numpy's PCG64 raw 64-bit stream (fixed by its algorithm, unlike
distribution samplers or torch's generators), turned into floats by our own arithmetic. Every
parameter is snapped to a dyadic grid, so it is exact in float32. Calibration is exact integer and
rational arithmetic plus single IEEE operations (see ``_calibrate``), so a value that lies exactly on
a tie of its grid, as some BatchNorm means do, rounds the same way on every machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import overload

import numpy as np
import torch
from torch import nn

from qexport.frontend.models.quant import DEFAULT_ACT_CLIP, ActClip, QuantConv2d, quantize_weight
from qexport.frontend.models.resnet import BasicBlock, ResNetArch, ResNetQuant, build_resnet
from qexport.frontend.models.vgg import Arch, VGGQuant, build_model

DemoArch = Arch | ResNetArch
DemoModel = VGGQuant | ResNetQuant

DEMO_LABEL = "demo, untrained"
DEMO_SEED = 284
DEMO_IMAGES = 128
_CALIBRATION_IMAGES = 32
# calibrated act_alphas and BatchNorm statistics of the built-in models (scripts/make_demo_calibration.py)
CALIBRATION_FILE = Path(__file__).with_name("demo_calibration.npz")
CALIBRATED_DEMOS = (
    ("VGG16_quant_gradual", "course"),
    ("VGG16_quant", "course"),
    ("VGG16_quant_squeeze", "course"),
    ("resnet20_quant", "course"),
    ("resnet32_quant", "course"),
    ("resnet44_quant", "course"),
    ("resnet56_quant", "course"),
    ("resnet110_quant", "course"),
)


class _Stream:
    """Uniform floats in [0, 1) from PCG64's raw output: 53 high bits / 2^53."""

    def __init__(self, seed: int) -> None:
        self._bits = np.random.PCG64(seed)

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape)) if shape else 1
        raw = self._bits.random_raw(count).astype(np.uint64)
        return ((raw >> np.uint64(11)).astype(np.float64) / float(1 << 53)).reshape(shape)


def _snap(values: np.ndarray | float, step: float) -> np.ndarray:
    return np.round(np.asarray(values, dtype=np.float64) / step) * step


def demo_images(count: int = DEMO_IMAGES) -> np.ndarray:
    """Deterministic uint8 images (N, 32, 32, 3): smooth colour gradients, blobs and noise."""
    stream = _Stream(DEMO_SEED + 1)
    yy, xx = np.meshgrid(np.arange(32) / 31.0, np.arange(32) / 31.0, indexing="ij")
    images = np.empty((count, 32, 32, 3), dtype=np.uint8)
    for n in range(count):
        p = stream.uniform((12,))
        noise = stream.uniform((32, 32, 3))
        base = p[0:3] * 0.6 + 0.2
        slope = (p[3:6] - 0.5) * 0.8
        cy, cx, radius = p[6], p[7], 0.1 + 0.3 * p[8]
        blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (radius**2)))
        img = (
            base[None, None, :]
            + slope[None, None, :] * (yy if p[9] > 0.5 else xx)[..., None]
            + (p[10] - 0.5) * blob[..., None]
            + (noise - 0.5) * 0.2
        )
        images[n] = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return images


@overload
def demo_model(arch: Arch, act_clip: ActClip = DEFAULT_ACT_CLIP) -> VGGQuant: ...
@overload
def demo_model(arch: ResNetArch, act_clip: ActClip = DEFAULT_ACT_CLIP) -> ResNetQuant: ...
@overload
def demo_model(arch: DemoArch, act_clip: ActClip = DEFAULT_ACT_CLIP) -> DemoModel: ...
def demo_model(arch: DemoArch, act_clip: ActClip = DEFAULT_ACT_CLIP) -> DemoModel:
    """A fresh demo model (VGG or ResNet); the calibrated parameters are computed once a process."""
    with torch.device("meta"):  # no random init: every tensor comes from the cached state
        model = _build(arch, act_clip)
    model.load_state_dict({k: v.clone() for k, v in _demo_state(arch, act_clip).items()}, assign=True)
    model.eval()
    return model


def _build(arch: DemoArch, act_clip: ActClip) -> DemoModel:
    return build_resnet(arch, act_clip) if isinstance(arch, ResNetArch) else build_model(arch, act_clip)


@lru_cache(maxsize=8)
def _demo_state(arch: DemoArch, act_clip: ActClip) -> dict[str, torch.Tensor]:
    """Seeded weights; alphas and BatchNorm statistics calibrated on the demo images.

    Each act_alpha sits near the 98th percentile of its layer's input, so the 4-bit activation
    integers spread over 0..15; each BatchNorm normalises its conv's output, so about half the
    ReLU outputs are non-zero. Calibration takes an exact integer forward pass (about a second), so
    the results for the built-in models are shipped in demo_calibration.npz and used when the seeded
    weights they were made from match (tests recompute them).
    """
    model = _seeded_model(arch, act_clip)
    shipped = _shipped_calibration(arch, act_clip, _fingerprint(model, act_clip))
    if shipped is not None:
        model.load_state_dict(shipped, strict=False)
    else:
        calibrate_demo(model)
    _refresh_weight_q(model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _seeded_model(arch: DemoArch, act_clip: ActClip) -> DemoModel:
    """The demo model before calibration: every parameter from the seeded stream."""
    with _zero_init():
        model = _build(arch, act_clip)
    _seed(_seeded_modules(model), _Stream(DEMO_SEED))
    return model


def _seeded_modules(model: DemoModel) -> list[nn.Module]:
    """The modules the stream seeds, in the order it seeds them."""
    if isinstance(model, ResNetQuant):
        return list(model.modules())  # registration order: conv1, bn1, layer1.0.conv1, ..., fc
    return [*model.features, model.classifier]


@torch.no_grad()
def _seed(modules: Iterable[nn.Module], stream: _Stream) -> None:
    """Convs uniform in +-sqrt(3 / fan_in), alphas in [2, 3), BatchNorm near (1, 0), Linear +-0.05."""
    for module in modules:
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            w = (stream.uniform(tuple(module.weight.shape)) * 2 - 1) * np.sqrt(3.0 / fan_in)
            module.weight.copy_(torch.from_numpy(_snap(w, 2**-14)))
        if isinstance(module, QuantConv2d):
            alpha = 2.0 + stream.uniform(())
            module.weight_quant.wgt_alpha.fill_(float(_snap(alpha, 2**-6)))
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.copy_(torch.from_numpy(_snap(0.8 + 0.4 * stream.uniform((c,)), 2**-8)))
            module.bias.copy_(torch.from_numpy(_snap((stream.uniform((c,)) - 0.3) * 0.4, 2**-8)))
        if isinstance(module, nn.Linear):
            w = (stream.uniform(tuple(module.weight.shape)) * 2 - 1) * 0.05
            module.weight.copy_(torch.from_numpy(_snap(w, 2**-14)))
            module.bias.zero_()


@torch.no_grad()
def _refresh_weight_q(model: DemoModel) -> None:
    """weight_q as a float32 forward pass stores it (calibration's float64 pass left its own)."""
    for module in model.modules():
        if isinstance(module, QuantConv2d):
            module.weight_q.copy_(quantize_weight(module.weight, module.weight_quant.wgt_alpha, module.w_bit))


@contextlib.contextmanager
def _zero_init() -> Iterator[None]:
    """Conv and Linear layers start at zero instead of a random init the stream overwrites anyway."""

    def zero(module: nn.Conv2d | nn.Linear) -> None:
        with torch.no_grad():
            module.weight.zero_()
            if module.bias is not None:
                module.bias.zero_()

    saved = nn.Conv2d.reset_parameters, nn.Linear.reset_parameters
    nn.Conv2d.reset_parameters = zero  # type: ignore[method-assign,assignment]
    nn.Linear.reset_parameters = zero  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Conv2d.reset_parameters, nn.Linear.reset_parameters = saved  # type: ignore[method-assign]


def calibrate_demo(model: DemoModel) -> None:
    """Set every act_alpha and BatchNorm statistic from the calibration images (about a second)."""
    from qexport.frontend.inputs import normalise_uint8

    _calibrate(model, normalise_uint8(demo_images(_CALIBRATION_IMAGES)))


def _calibrated_keys(model: DemoModel) -> list[str]:
    return [k for k in model.state_dict() if k.endswith(("act_alpha", "running_mean", "running_var"))]


def _fingerprint(model: DemoModel, act_clip: ActClip) -> str:
    """What calibration depends on: the seeded parameters, the act clip and the calibration images.

    A few thousand evenly spaced values a tensor: any change to the seeding moves them, and
    hashing every weight would cost more than the rest of the check.
    """
    digest = hashlib.sha256(f"{act_clip}:{DEMO_SEED}:{_CALIBRATION_IMAGES}".encode())
    calibrated = set(_calibrated_keys(model))
    for key, value in sorted(model.state_dict().items()):
        if key not in calibrated:
            flat = value.detach().cpu().reshape(-1)
            digest.update(f"{key}:{tuple(value.shape)}".encode())
            digest.update(flat[:: max(1, flat.numel() // 4096)].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _shipped_calibration(
    arch: DemoArch, act_clip: ActClip, fingerprint: str
) -> dict[str, torch.Tensor] | None:
    if not CALIBRATION_FILE.is_file():
        return None
    with np.load(CALIBRATION_FILE, allow_pickle=False) as data:
        prefix = f"{arch.name}/{act_clip}/"
        if f"{prefix}fingerprint" not in data or str(data[f"{prefix}fingerprint"]) != fingerprint:
            return None
        return {
            k[len(prefix) :]: torch.from_numpy(data[k])
            for k in data.files
            if k.startswith(prefix) and not k.endswith("fingerprint")
        }


def calibration_arrays(arch: DemoArch, act_clip: ActClip) -> dict[str, np.ndarray]:
    """The calibrated parameters of a built-in demo model, as stored in demo_calibration.npz."""
    model = _seeded_model(arch, act_clip)
    fingerprint = _fingerprint(model, act_clip)
    calibrate_demo(model)
    prefix = f"{arch.name}/{act_clip}/"
    state = model.state_dict()
    arrays = {prefix + k: state[k].detach().cpu().numpy() for k in _calibrated_keys(model)}
    arrays[prefix + "fingerprint"] = np.array(fingerprint)
    return arrays


@torch.no_grad()
def _calibrate(model: DemoModel, images: torch.Tensor) -> None:
    """Walk the model in forward order, setting each alpha and BatchNorm from the data it sees.

    VGG: ``features`` in order. ResNet: the stem, then each block's ``conv1, bn1, relu, conv2, bn2``
    and its shortcut (``downsample`` or the block's input) from the block's input, summed (one IEEE
    add per element) and ReLU'd, so every later layer is calibrated on what the real block gives.
    The same bits anywhere:

    Each step is exact, or one correctly rounded IEEE operation per element, so no BLAS kernel,
    SIMD width, thread count or summation order can move a bit (a torch float64 conv did: MKL's
    dgemm sums in a CPU-dependent order, and a BatchNorm mean on an exact tie of the 2^-10 grid
    went either way):

    - the images are float32 (elementwise ops in ``normalise_uint8``), widened exactly to float64;
    - act_alpha is an order statistic (exact selection) interpolated and snapped in rationals;
    - ``x_int`` and ``w_int`` are the course's quantizers as single IEEE ops per element, with the
      weights' mean and std from exact integer sums (the seeded weights lie on a 2^-14 grid);
    - the conv is of the integers, exact (``integer_conv``), then ``psum * (alphas' numerators)``
      exactly in int64 and divided by the levels and grid denominators: one rounding;
    - a float conv (the ResNet stem) takes its input on the 2^-24 grid (an exact scaling and one
      rounding per element), so it too is an exact integer conv scaled by a power of two;
    - BatchNorm statistics are the exact mean and (population) variance of that exact conv
      output, from integer sums of psums, rounded half-even to the 2^-10 grid in rationals;
    - BatchNorm (eval) is four numpy ufuncs in a fixed order, each one IEEE op per element, with
      per-channel constants from Python's correctly rounded float ops; ReLU and max-pool only pick.
    """
    model.eval()
    x = images.detach().double().numpy()
    if isinstance(model, ResNetQuant):
        _calibrate_resnet(model, x)
        return
    calibrated = [i for i, m in enumerate(model.features) if isinstance(m, (QuantConv2d, nn.BatchNorm2d))]
    _calibrate_sequence(list(model.features)[: max(calibrated) + 1], x)


def _calibrate_resnet(model: ResNetQuant, x: np.ndarray) -> None:
    x = _calibrate_sequence([model.conv1, model.bn1, model.relu], x)
    for stage in (model.layer1, model.layer2, model.layer3):
        for block in stage:
            if not isinstance(block, BasicBlock):
                raise TypeError(f"demo calibration has no exact form of {block}")
            out = _calibrate_sequence([block.conv1, block.bn1, block.relu, block.conv2, block.bn2], x)
            shortcut = x if block.downsample is None else _calibrate_sequence(list(block.downsample), x)
            x = _residual(out, shortcut)


def _residual(out: np.ndarray, shortcut: np.ndarray) -> np.ndarray:
    """A block's ``relu(out + shortcut)``: one IEEE add per element, then a pick."""
    return np.asarray(np.maximum(np.add(out, shortcut), 0.0))


def _calibrate_sequence(modules: list[nn.Module], x: np.ndarray) -> np.ndarray:
    """Calibrate ``modules`` run one after another on ``x``; their output."""
    conv: _ExactConv | None = None
    for module in modules:
        if isinstance(module, QuantConv2d):
            alpha = _act_alpha(x)
            module.act_alpha.fill_(float(alpha))
            conv = _exact_conv(module, x, alpha)
            x = conv.value
        elif isinstance(module, nn.Conv2d):
            conv = _exact_float_conv(module, x)
            x = conv.value
        elif isinstance(module, nn.BatchNorm2d):
            if conv is None:
                raise TypeError("demo calibration: a BatchNorm2d must follow a conv")
            mean, var = conv.moments()
            module.running_mean.copy_(torch.from_numpy(mean))  # type: ignore[union-attr]
            module.running_var.copy_(torch.from_numpy(var))  # type: ignore[union-attr]
            x = _batch_norm(module, x, mean, var)
        elif isinstance(module, nn.ReLU):
            x = np.maximum(x, 0.0)
        elif isinstance(module, nn.MaxPool2d):
            x = _max_pool(module, x)
        elif not isinstance(module, nn.Identity):
            raise TypeError(f"demo calibration has no exact form of {module}")
        if not isinstance(module, nn.Conv2d):
            conv = None  # a BatchNorm's statistics are those of the conv right before it
    return x


_ALPHA_STEP = Fraction(1, 16)  # act_alpha grid
_STAT_STEP = Fraction(1, 1024)  # running_mean / running_var grid
_WEIGHT_STEP = 2**-14  # the seeded weights' grid (_seeded_model)


def _snap_exact(value: Fraction, step: Fraction) -> Fraction:
    return round(value / step) * step  # Fraction's round is half-even, as np.round


def _act_alpha(x: np.ndarray) -> Fraction:
    """The 98th percentile of |x| (numpy's "linear" method, in rationals), on the 2^-4 grid, >= 2^-4."""
    magnitude = np.abs(x).reshape(-1)
    position = Fraction(98, 100) * (magnitude.size - 1)
    lo = int(position)
    hi = min(lo + 1, magnitude.size - 1)
    picked = np.partition(magnitude, [lo, hi])
    low, high = Fraction(float(picked[lo])), Fraction(float(picked[hi]))
    percentile = low + (high - low) * (position - lo)
    return max(_snap_exact(percentile, _ALPHA_STEP), _ALPHA_STEP)


@dataclass(frozen=True, slots=True)
class _ExactConv:
    """A conv output as exact integers: value = psum * numerator / denominator, (N, C, H, W)."""

    psum: np.ndarray
    numerator: int
    denominator: int
    value: np.ndarray  # float64, each the correctly rounded psum * numerator / denominator

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and population variance of the exact values, snapped to 2^-10."""
        per_channel = self.psum.transpose(1, 0, 2, 3).reshape(self.psum.shape[1], -1)
        count = per_channel.shape[1]
        peak = int(np.abs(per_channel).max(initial=0))
        if peak * peak * count >= 2**63:  # int64 sums of squares would overflow: Python ints
            per_channel = per_channel.astype(object)
        sums = per_channel.sum(axis=1)
        squares = (per_channel * per_channel).sum(axis=1)
        scale = Fraction(self.numerator, self.denominator)
        means, variances = [], []
        for total, square in zip(sums.tolist(), squares.tolist(), strict=True):
            mean = scale * Fraction(int(total), count)
            var = scale * scale * Fraction(int(square) * count - int(total) ** 2, count * count)
            means.append(float(_snap_exact(mean, _STAT_STEP)))
            variances.append(float(max(_snap_exact(var, _STAT_STEP), _STAT_STEP)))
        return np.array(means), np.array(variances)


def _exact_conv(module: QuantConv2d, x: np.ndarray, act_alpha: Fraction) -> _ExactConv:
    """The layer's conv as ``psum = conv(x_int, w_int)`` exactly, scaled by the deltas in one rounding."""
    from qexport.ir.reference import integer_conv

    if module.bias is not None:
        raise TypeError("demo calibration: a QuantConv2d with a bias has no exact form here")
    act_levels = 2**module.act_bit - 1
    w_levels = 2 ** (module.w_bit - 1) - 1
    # the course's act_alq: round(clip(x / alpha) * levels); np.rint is half-even, as torch.round
    scaled = np.divide(x, float(act_alpha))
    clipped = np.clip(scaled, 0.0, 1.0) if module.act_clip == "relu" else np.minimum(scaled, 1.0)
    x_int = np.rint(np.multiply(clipped, float(act_levels))).astype(np.int64)
    wgt_alpha = Fraction(float(module.weight_quant.wgt_alpha.detach()))
    w_int = _weight_int(module.weight.detach().double().numpy(), wgt_alpha, w_levels)
    stride, padding = _square_geometry(module)
    psum = integer_conv(x_int, w_int, stride, padding)
    scale = act_alpha * wgt_alpha / (act_levels * w_levels)
    products = psum * scale.numerator  # exact: checked below to stay within float64's integers
    if int(np.abs(psum).max(initial=0)) * scale.numerator >= 2**53 or scale.denominator >= 2**53:
        raise TypeError("demo calibration: psum * scale is beyond float64's exact integers")
    value = np.divide(products.astype(np.float64), float(scale.denominator))
    return _ExactConv(psum, scale.numerator, scale.denominator, value)


_FLOAT_INPUT_STEP = 2**-24  # a float conv's input grid (float32 images keep 24 bits about 1)


def _exact_float_conv(module: nn.Conv2d, x: np.ndarray) -> _ExactConv:
    """A float conv (weights on the 2^-14 grid) of ``x`` on the 2^-24 grid: an exact integer conv."""
    from qexport.ir.reference import integer_conv

    if module.bias is not None:
        raise TypeError("demo calibration: a Conv2d with a bias has no exact form here")
    x_int = np.rint(np.divide(x, _FLOAT_INPUT_STEP)).astype(np.int64)  # exact scaling, one rounding
    if int(np.abs(x_int).max(initial=0)) >= 2**31:
        raise TypeError("demo calibration: a float conv's input is beyond 2^7")
    w_int = _grid_ints(module.weight.detach().double().numpy())
    stride, padding = _square_geometry(module)
    psum = integer_conv(x_int, w_int, stride, padding)
    if int(np.abs(psum).max(initial=0)) >= 2**53:
        raise TypeError("demo calibration: a float conv's psums are beyond float64's exact integers")
    denominator = int(1 / (_FLOAT_INPUT_STEP * _WEIGHT_STEP))
    value = np.divide(psum.astype(np.float64), float(denominator))  # a power of two: exact
    return _ExactConv(psum, 1, denominator, value)


def _square_geometry(module: nn.Conv2d) -> tuple[int, int]:
    stride, padding = module.stride[0], module.padding[0]
    if not isinstance(padding, int) or module.stride != (stride, stride) or module.padding != (padding,) * 2:
        raise TypeError(f"demo calibration needs square int stride and padding, not {module}")
    return stride, padding


def _grid_ints(weight: np.ndarray) -> np.ndarray:
    """Weights on the 2^-14 grid as the integers of that grid (|w| < 1)."""
    grid = np.divide(weight, _WEIGHT_STEP)
    ints = grid.astype(np.int64)
    if not np.array_equal(ints, grid) or int(np.abs(ints).max(initial=0)) >= 2**14:
        raise TypeError("demo calibration: the weights are not on the 2^-14 grid _seeded_model uses")
    return np.asarray(ints)


def _weight_int(weight: np.ndarray, wgt_alpha: Fraction, levels: int) -> np.ndarray:
    """The course's quantize_weight as integers, its mean and (unbiased) std from exact sums.

    (w - mean) / std / alpha, clip [-1, 1], * levels, round: one IEEE op per element each, with
    mean and std correctly rounded (float(Fraction) and math.sqrt) from integer sums of w / 2^-14.
    """
    ints = _grid_ints(weight)
    count = ints.size
    total, square = int(ints.sum()), int((ints * ints).sum())  # exact: |ints| < 2^14, count < 2^34
    step = Fraction(_WEIGHT_STEP)
    mean = float(Fraction(total, count) * step)
    std = math.sqrt(float(Fraction(square * count - total * total, count * (count - 1)) * step * step))
    normalised = np.divide(np.subtract(weight, mean), std)
    clipped = np.clip(np.divide(normalised, float(wgt_alpha)), -1.0, 1.0)
    return np.asarray(np.rint(np.multiply(clipped, float(levels))).astype(np.int64))  # rint(-a) == -rint(a)


def _max_pool(module: nn.MaxPool2d, x: np.ndarray) -> np.ndarray:
    """The 2x2, stride-2 max-pool of (N, C, H, W): picks, so exact."""
    if (module.kernel_size, module.stride, module.padding) != (2, 2, 0):
        raise TypeError(f"demo calibration has no exact form of {module}")
    n, c, h, w = x.shape
    return np.asarray(x[:, :, : h - h % 2, : w - w % 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5)))


def _batch_norm(module: nn.BatchNorm2d, x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Eval BatchNorm as (x - mean) / sqrt(var + eps) * weight + bias, one IEEE op at a time."""
    std = np.array([math.sqrt(v + module.eps) for v in var.tolist()])  # Python floats: correctly rounded
    weight = module.weight.detach().double().numpy()  # float32 -> float64: exact
    bias = module.bias.detach().double().numpy()
    per_channel = (slice(None), None, None)
    out = np.subtract(x, mean[per_channel])
    out = np.divide(out, std[per_channel])
    out = np.multiply(out, weight[per_channel])
    return np.asarray(np.add(out, bias[per_channel]))
