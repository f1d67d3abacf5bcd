"""Fixture builders: course-format checkpoints and a tiny CIFAR-10 in torchvision's on-disk format.

Checkpoints are written the way the course's ``main.py`` writes them: a randomised model, one
forward pass so every ``weight_q`` holds the weights it last computed with, then
``torch.save({'epoch', 'state_dict', 'best_prec', 'optimizer'}, path)``.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qexport.frontend.capture import LayerTensors
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.vgg import BUILTIN, Arch, VGGQuant, build_model

StateDict = dict[str, torch.Tensor]
Mutate = Callable[[StateDict], StateDict | None]
ActBits = int | Mapping[int, int] | None

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_LABEL_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _arch(arch: str | Arch) -> Arch:
    return BUILTIN[arch] if isinstance(arch, str) else arch


def _act_bits_key(act_bit: ActBits) -> int | tuple[tuple[int, int], ...] | None:
    return tuple(sorted(act_bit.items())) if isinstance(act_bit, Mapping) else act_bit


def randomised_model(arch: str | Arch, *, seed: int = 0, act_bit: ActBits = None) -> VGGQuant:
    """The architecture with deterministic random parameters, after one eval forward pass.

    Conv weights are N(0, 0.1²), BatchNorms near identity with positive running variances,
    ``act_alpha`` in [2, 3) and ``wgt_alpha`` in [2.5, 3) (normalised weights are about N(0, 1)).
    ``act_bit`` is one width for every quantized conv or a {features index: bits} map.
    """
    model = build_model(_arch(arch))
    model.load_state_dict(_randomised_state(_arch(arch), seed, _act_bits_key(act_bit)))
    _set_act_bits(model, act_bit)
    return model.eval()


def course_state_dict(arch: str | Arch, *, seed: int = 0, act_bit: ActBits = None) -> StateDict:
    """The state dict ``course_checkpoint`` saves (before its options), as fresh tensors."""
    state = _randomised_state(_arch(arch), seed, _act_bits_key(act_bit))
    return {k: v.clone() for k, v in state.items()}


def _set_act_bits(model: VGGQuant, act_bit: ActBits) -> None:
    for i, module in enumerate(model.features):
        if isinstance(module, QuantConv2d) and act_bit is not None:
            module.act_bit = act_bit if isinstance(act_bit, int) else act_bit.get(i, module.act_bit)


@lru_cache(maxsize=8)
def _raw_state(arch: Arch, seed: int) -> StateDict:
    """Randomised parameters; every ``weight_q`` is still zero (no forward pass yet)."""
    gen = torch.Generator().manual_seed(seed)
    model = build_model(arch)

    def uniform(shape: torch.Size | tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, QuantConv2d):
                module.weight.copy_(0.1 * torch.randn(module.weight.shape, generator=gen))
                module.act_alpha.fill_(float(uniform((), 2.0, 3.0)))
                module.weight_quant.wgt_alpha.fill_(float(uniform((), 2.5, 3.0)))
            elif isinstance(module, nn.Conv2d | nn.Linear):
                module.weight.copy_(0.1 * torch.randn(module.weight.shape, generator=gen))
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(uniform((c,), 0.8, 1.2))
                module.bias.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_var.copy_(uniform((c,), 0.5, 1.5))
                module.num_batches_tracked.fill_(391 * 3)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@lru_cache(maxsize=8)
def _randomised_state(arch: Arch, seed: int, act_bit: int | tuple[tuple[int, int], ...] | None) -> StateDict:
    """After one eval forward pass, as training leaves it. Cached: VGG16 takes seconds on a CPU.

    The eval forward writes ``weight_q`` and nothing else (BatchNorm statistics stay), so without
    ``weight_q`` this equals :func:`_raw_state`.
    """
    model = build_model(arch)
    model.load_state_dict(_raw_state(arch, seed))
    _set_act_bits(model, dict(act_bit) if isinstance(act_bit, tuple) else act_bit)
    model.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
        model(x)  # fills every weight_q, as the course's training loop does
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def course_checkpoint(
    path: Path,
    arch_name: str | Arch = "VGG16_quant_gradual",
    *,
    wrapper: bool = True,
    module_prefix: bool = False,
    weight_q: bool = True,
    seed: int = 0,
    act_bit: ActBits = None,
    mutate: Mutate | None = None,
) -> Path:
    """Write a checkpoint as the course's training script does and return ``path``.

    ``arch_name`` is a built-in name or an :class:`Arch` (a student's own variant).
    ``wrapper=False`` saves the bare state dict; ``module_prefix`` adds ``module.`` to every key as
    ``nn.DataParallel`` does; ``weight_q=False`` drops the ``weight_q`` keys; ``mutate(sd)``
    edits the state dict in place (or returns a replacement) just before saving.
    """
    if weight_q:
        sd = course_state_dict(arch_name, seed=seed, act_bit=act_bit)
    else:  # the same tensors without weight_q, and without paying for a forward pass
        raw = _raw_state(_arch(arch_name), seed)
        sd = {k: v.clone() for k, v in raw.items() if not k.endswith(".weight_q")}
    if mutate is not None:
        replaced = mutate(sd)
        if replaced is not None:
            sd = dict(replaced)
    if module_prefix:
        sd = {f"module.{k}": v for k, v in sd.items()}
    if wrapper:
        first = next(iter(sd.values()))
        optimizer = {
            "state": {0: {"momentum_buffer": torch.zeros_like(first)}},
            "param_groups": [
                {
                    "lr": 0.02,
                    "momentum": 0.9,
                    "dampening": 0,
                    "weight_decay": 1e-4,
                    "nesterov": False,
                    "maximize": False,
                    "foreach": None,
                    "params": [0],
                }
            ],
        }
        torch.save({"epoch": 3, "state_dict": sd, "best_prec": 12.5, "optimizer": optimizer}, path)
    else:
        torch.save(sd, path)
    return path


def write_fake_cifar10(
    root: Path, n_test: int = 20, n_train: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A tiny CIFAR-10 under ``root/cifar-10-batches-py`` exactly as torchvision reads it.

    The real files are Python 2 pickles that torchvision loads with ``encoding="latin1"``, so their
    keys arrive as ``str``: ``data`` (uint8 N×3072, channel-major rows), ``labels`` and, in
    ``batches.meta``, ``label_names``. ``n_train`` images go in each of the five training batches.
    Returns the test set's images (N, 32, 32, 3) and labels.
    MD5s differ from the real files: tests need the ``fake_cifar_md5`` fixture.
    """
    rng = np.random.default_rng(seed)
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)

    def batch(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)
        entry = {
            "batch_label": f"fake {name}",
            "labels": [int(v) for v in labels],
            "data": rows,
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        return images, labels

    for b in range(1, 6):
        batch(f"data_batch_{b}", n_train)
    test_images, test_labels = batch("test_batch", n_test)
    meta = {"num_cases_per_batch": n_train, "label_names": CIFAR_LABEL_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return test_images, test_labels


def conv_tensors(
    c_in: int,
    c_out: int,
    side: int,
    kernel: int,
    stride: int,
    padding: int,
    *,
    seed: int = 0,
    images: int = 1,
    name: str = "layer2.0.conv1",
    layer: int | None = None,
) -> LayerTensors:
    """One captured conv of random 4-bit integers with any kernel, stride and padding, as capture
    gives it: x = x_int / 15, weight_q = w_int / 7 (alphas 1), y their float64 conv in float32."""
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    x_int = rng.integers(0, 15, size=(images, c_in, side, side), endpoint=True)
    w_int = rng.integers(-7, 7, size=(c_out, c_in, kernel, kernel), endpoint=True)
    x = torch.from_numpy(x_int / 15.0)
    w = torch.from_numpy(w_int / 7.0)
    y = F.conv2d(x, w, stride=stride, padding=padding)
    return LayerTensors(
        name=name,
        layer=layer,
        conv_number=0,
        in_channels=c_in,
        out_channels=c_out,
        kernel=kernel,
        stride=stride,
        padding=padding,
        w_bit=4,
        act_bit=4,
        act_clip="relu",
        act_alpha=1.0,
        wgt_alpha=1.0,
        weight_q=w.float(),
        x=x.float(),
        y=y.float(),
    )
