"""Course-format checkpoints of the variants issue 15 lists, written from its key names (not from
our model code), and the float64 references a test computes from a state dict on its own.

ResNet keys: ``conv1.*``, ``bn1.*``, ``layer{s}.{b}.conv{1,2}.*``, ``layer{s}.{b}.bn{1,2}.*``,
``layer{s}.0.downsample.{0,1}.*`` (stages 2 and 3), ``fc.*``; a quantized conv's keys are
``weight``, ``act_alpha``, ``weight_q``, ``weight_quant.wgt_alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ResNetVariant:
    blocks: int = 3
    widths: tuple[int, int, int] = (16, 32, 64)
    stem: str = "float"
    without_bn2: tuple[str, ...] = ()
    bits: int = 4


def normalised(weight: torch.Tensor) -> torch.Tensor:
    """The course's weight normalisation, in float32 as the training device computed it."""
    return (weight - weight.mean()) / weight.std()


def weight_q(weight: torch.Tensor, wgt_alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """The course's weight_q: normalise, /alpha, clip [-1, 1], round to 2^(b-1)-1 levels, *alpha."""
    levels = 2 ** (bits - 1) - 1
    clipped = (normalised(weight) / wgt_alpha).clamp(-1.0, 1.0)
    return torch.round(clipped.abs() * levels) / levels * clipped.sign() * wgt_alpha


def resnet_state(v: ResNetVariant, *, seed: int = 0) -> StateDict:
    """A state dict with the issue's key names, as a trained course ResNet saves it."""
    gen = torch.Generator().manual_seed(seed)
    sd: StateDict = {}

    def uniform(low: float, high: float, shape: tuple[int, ...] = ()) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen)

    def qconv(prefix: str, in_c: int, out_c: int, k: int) -> None:
        weight = 0.1 * torch.randn(out_c, in_c, k, k, generator=gen)
        wgt_alpha = uniform(2.5, 3.0) if v.bits > 2 else uniform(1.2, 1.6)
        sd[f"{prefix}.weight"] = weight
        sd[f"{prefix}.act_alpha"] = uniform(2.0, 3.0)
        sd[f"{prefix}.weight_q"] = weight_q(weight, wgt_alpha, v.bits)
        sd[f"{prefix}.weight_quant.wgt_alpha"] = wgt_alpha

    def bn(prefix: str, c: int) -> None:
        sd[f"{prefix}.weight"] = uniform(0.8, 1.2, (c,))
        sd[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=gen)
        sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=gen)
        sd[f"{prefix}.running_var"] = uniform(0.5, 1.5, (c,))
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(391 * 3)

    if v.stem == "quant":
        qconv("conv1", 3, v.widths[0], 3)
    else:  # a plain nn.Conv2d(3, w, 3, padding=1, bias=False): its weight only
        sd["conv1.weight"] = 0.1 * torch.randn(v.widths[0], 3, 3, 3, generator=gen)
    bn("bn1", v.widths[0])
    in_c = v.widths[0]
    for s in (1, 2, 3):
        out_c = v.widths[s - 1]
        for b in range(v.blocks):
            p = f"layer{s}.{b}"
            qconv(f"{p}.conv1", in_c, out_c, 3)
            bn(f"{p}.bn1", out_c)
            qconv(f"{p}.conv2", out_c, out_c, 3)
            if p not in v.without_bn2:
                bn(f"{p}.bn2", out_c)
            if b == 0 and (s > 1 or in_c != out_c):
                qconv(f"{p}.downsample.0", in_c, out_c, 1)
                bn(f"{p}.downsample.1", out_c)
            in_c = out_c
    sd["fc.weight"] = 0.1 * torch.randn(10, v.widths[2], generator=gen)
    sd["fc.bias"] = 0.1 * torch.randn(10, generator=gen)
    return sd


def write_checkpoint(path: Path, sd: StateDict) -> Path:
    """The course's ``main.py`` wrapper: ``{'epoch', 'state_dict', 'best_prec', 'optimizer'}``."""
    optimizer = {"state": {}, "param_groups": [{"lr": 0.02, "momentum": 0.9, "params": []}]}
    torch.save({"epoch": 199, "state_dict": sd, "best_prec": 91.5, "optimizer": optimizer}, path)
    return path


def make_tie(sd: StateDict, prefix: str) -> int:
    """2 bits: set wgt_alpha so one weight sits exactly on a rounding tie (|w|/alpha = .5 in
    float32), and store the rounding away from zero (±alpha) a GPU gave where the CPU rounds half
    to even (0). Returns the flat index of that weight."""
    levels = 1
    weight = sd[f"{prefix}.weight"]
    norm = normalised(weight).flatten()
    at = int((norm.abs() - 0.7).abs().argmin())
    value = float(norm[at])
    # (|n| / alpha) * levels == 0.5 exactly: alpha = 2 * levels * |n| (a power-of-two multiple)
    alpha = torch.tensor(2.0 * levels * abs(value))
    sd[f"{prefix}.weight_quant.wgt_alpha"] = alpha
    stored = weight_q(weight, alpha, 2).flatten().clone()
    assert float(stored[at]) == 0.0  # the CPU rounds the tie to even
    stored[at] = float(np.sign(value)) * float(alpha)
    sd[f"{prefix}.weight_q"] = stored.view_as(weight)
    return at


def w_int_reference(sd: StateDict, prefix: str, w_bit: int) -> np.ndarray:
    """w_int: the stored ``weight_q`` on its grid (the trained model's own values), checked here
    against a float64 recomputation from ``weight`` and ``wgt_alpha``, which may differ only where
    the unrounded value is within float32 noise of a half step (a rounding tie)."""
    levels = 2 ** (w_bit - 1) - 1
    alpha = float(sd[f"{prefix}.weight_quant.wgt_alpha"])
    steps = sd[f"{prefix}.weight_q"].double().numpy() / alpha * levels
    stored = np.rint(steps).astype(np.int64)
    assert np.abs(steps - stored).max() < 1e-4, prefix  # on the w_bit grid
    w = sd[f"{prefix}.weight"].double()
    scaled = (((w - w.mean()) / w.std()) / alpha).clamp(-1.0, 1.0)
    unrounded = (scaled.abs() * levels).numpy()
    recomputed = (np.rint(unrounded) * np.sign(scaled.numpy())).astype(np.int64)
    near_tie = np.abs(unrounded - np.floor(unrounded) - 0.5) < 1e-4
    assert np.array_equal(stored[~near_tie], recomputed[~near_tie]), prefix
    return stored


def x_int_reference(x: np.ndarray, act_alpha: float, act_bit: int) -> np.ndarray:
    """round(clip(x / alpha, max 1) * (2^b - 1)): the course's activation quantiser, in float64."""
    levels = 2**act_bit - 1
    return np.rint(np.minimum(x.astype(np.float64) / act_alpha, 1.0) * levels).astype(np.int64)


def psum_reference(x_int: np.ndarray, w_int: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """The exact integer conv (n, oc, h', w'), by windows in int64."""
    n, c, h, w = x_int.shape
    oc, _, k, _ = w_int.shape
    padded = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=np.int64)
    padded[:, :, padding : padding + h, padding : padding + w] = x_int
    oh, ow = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    out = np.zeros((n, oc, oh, ow), dtype=np.int64)
    for i in range(k):
        for j in range(k):
            window = padded[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            out += np.einsum("nchw,oc->nohw", window, w_int[:, :, i, j].astype(np.int64))
    return out
