"""The built-in demo: a deterministic, untrained model and images, the same bits on any machine.

Random numbers come from numpy's PCG64 raw 64-bit stream (fixed by its algorithm, unlike
distribution samplers or torch's generators), turned into floats by our own arithmetic. Every
parameter is snapped to a dyadic grid, so it is exact in float32 and tiny float differences in
calibration cannot move it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qexport.frontend.models.quant import DEFAULT_ACT_CLIP, ActClip, QuantConv2d, quantize_weight
from qexport.frontend.models.vgg import Arch, VGGQuant, build_model

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


def demo_model(arch: Arch, act_clip: ActClip = DEFAULT_ACT_CLIP) -> VGGQuant:
    """A fresh demo model; the calibrated parameters are computed once a process."""
    with torch.device("meta"):  # no random init: every tensor comes from the cached state
        model = build_model(arch, act_clip)
    model.load_state_dict({k: v.clone() for k, v in _demo_state(arch, act_clip).items()}, assign=True)
    model.eval()
    return model


@lru_cache(maxsize=8)
def _demo_state(arch: Arch, act_clip: ActClip) -> dict[str, torch.Tensor]:
    """Seeded weights; alphas and BatchNorm statistics calibrated on the demo images.

    Each act_alpha sits near the 98th percentile of its layer's input, so the 4-bit activation
    integers spread over 0..15; each BatchNorm normalises its conv's output, so about half the
    ReLU outputs are non-zero. Calibration takes a float64 forward pass (about a second), so the
    results for the built-in models are shipped in demo_calibration.npz and used when the seeded
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


def _seeded_model(arch: Arch, act_clip: ActClip) -> VGGQuant:
    """The demo model before calibration: every parameter from the seeded stream."""
    with _zero_init():
        model = build_model(arch, act_clip)
    stream = _Stream(DEMO_SEED)
    with torch.no_grad():
        for module in model.features:
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
        w = (stream.uniform(tuple(model.classifier.weight.shape)) * 2 - 1) * 0.05
        model.classifier.weight.copy_(torch.from_numpy(_snap(w, 2**-14)))
        model.classifier.bias.zero_()
    return model


@torch.no_grad()
def _refresh_weight_q(model: VGGQuant) -> None:
    """weight_q as a float32 forward pass stores it (calibration's float64 pass left its own)."""
    for module in model.features:
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


def calibrate_demo(model: VGGQuant) -> None:
    """Set every act_alpha and BatchNorm statistic from the calibration images (slow: float64)."""
    from qexport.frontend.inputs import normalise_uint8

    _calibrate(model, normalise_uint8(demo_images(_CALIBRATION_IMAGES)))


def _calibrated_keys(model: VGGQuant) -> list[str]:
    return [k for k in model.state_dict() if k.endswith(("act_alpha", "running_mean", "running_var"))]


def _fingerprint(model: VGGQuant, act_clip: ActClip) -> str:
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


def _shipped_calibration(arch: Arch, act_clip: ActClip, fingerprint: str) -> dict[str, torch.Tensor] | None:
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


def calibration_arrays(arch: Arch, act_clip: ActClip) -> dict[str, np.ndarray]:
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
def _calibrate(model: VGGQuant, images: torch.Tensor) -> None:
    """Walk ``features`` in float64, setting each alpha and BatchNorm from the data it sees."""
    model.eval()
    model.double()
    x = images.double()
    for module in model.features:
        if isinstance(module, QuantConv2d):
            magnitude = np.percentile(np.abs(x.numpy()), 98.0)
            module.act_alpha.fill_(max(float(_snap(magnitude, 2**-4)), 2**-4))
        if isinstance(module, nn.BatchNorm2d):
            per_channel = x.transpose(0, 1).reshape(x.shape[1], -1).numpy()
            mean = _snap(per_channel.mean(axis=1), 2**-10)
            var = np.maximum(_snap(per_channel.var(axis=1), 2**-10), 2**-10)
            module.running_mean.copy_(torch.from_numpy(mean))  # type: ignore[union-attr]
            module.running_var.copy_(torch.from_numpy(var))  # type: ignore[union-attr]
        x = module(x)
    model.float()
