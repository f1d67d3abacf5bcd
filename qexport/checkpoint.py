"""Load course checkpoints safely and match them to an architecture."""

from __future__ import annotations

import hashlib
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from qexport.errors import InputError
from qexport.model import BUILTIN, Arch, builtin_arch, infer_arch, same_arch

_OPTIONAL_KEYS = ("weight_q",)  # recomputed from weight when absent


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's state dict (``module.`` prefixes removed) and where it came from."""

    name: str
    sha256: str
    state_dict: dict[str, torch.Tensor]
    epoch: int | None = None
    best_prec: float | None = None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a course checkpoint (``{'state_dict': …}`` or a bare state dict) with weights_only=True.

    Never runs code from the file: torch's restricted unpickler refuses anything but tensors and
    plain containers.
    """
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist; check the path given to --checkpoint")
    if path.is_dir():
        raise InputError(
            f"checkpoint {path} is a folder; pass the file inside it, e.g. {path}/model_best.pth.tar"
        )
    if path.stat().st_size == 0:
        raise InputError(f"checkpoint {path} is empty (0 bytes); re-copy or re-save it")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = _blocked_global(str(err))
        if blocked is None:  # the restricted unpickler also rejects plain garbage bytes
            raise _unreadable(path, err) from err
        raise InputError(
            f"checkpoint {path} was refused by the safe loader (weights_only=True): it would "
            f"import {blocked}. It holds objects other than tensors, which could run code when "
            "loaded; qexport never loads those. Re-save it as {'state_dict': model.state_dict()} "
            "from trusted code"
        ) from err
    except Exception as err:
        # torch.load on arbitrary bytes raises almost anything: KeyError for a text file,
        # RuntimeError for a truncated zip, EOFError, struct.error, UnicodeDecodeError …
        raise _unreadable(path, err) from err
    return _from_object(raw, path)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _blocked_global(message: str) -> str | None:
    """The module.name a weights_only refusal names, if it refused an import (code) at all."""
    match = _GLOBAL.search(message)
    return match.group(1) if match else None


def _unreadable(path: Path, err: Exception) -> InputError:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(err, pickle.UnpicklingError) and lines:
        detail = lines[-2] if len(lines) > 1 and lines[-1].startswith("Check the doc") else lines[-1]
    else:
        detail = lines[0] if lines else ""
    return InputError(
        f"checkpoint {path} is not a readable PyTorch checkpoint (truncated or not a torch.save "
        f"file: {type(err).__name__}: {detail[:200]}); re-copy or re-save it"
    )


def _number(value: object) -> float | None:
    """A finite number stored as a Python number or a one-element tensor (the course's best_prec)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool | int | float) and math.isfinite(value):
        return float(value)
    return None


def _from_object(raw: object, path: Path) -> Checkpoint:
    epoch = best_prec = None
    state = raw
    if isinstance(raw, Mapping) and "state_dict" in raw:
        state = raw["state_dict"]
        epoch = raw.get("epoch")
        best_prec = raw.get("best_prec")
    if not isinstance(state, Mapping) or not state:
        raise InputError(
            f"checkpoint {path} holds no state dict (expected a dict of tensors, or "
            "{'state_dict': …} as the course saves); re-save it with torch.save"
        )
    clean: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(
                f"checkpoint {path}: state dict entry {key!r} is not a tensor; not a model state dict"
            )
        clean[key.removeprefix("module.")] = value
    return Checkpoint(
        name=path.name,
        sha256=file_sha256(path),
        state_dict=clean,
        epoch=None if (e := _number(epoch)) is None else int(e),
        best_prec=_number(best_prec),
    )


@dataclass(frozen=True, slots=True)
class KeyReport:
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)


def compare_keys(arch: Arch, state: Mapping[str, torch.Tensor]) -> KeyReport:
    expected = arch.expected_shapes()
    missing = [
        k for k in expected if k not in state and not k.endswith(tuple("." + o for o in _OPTIONAL_KEYS))
    ]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {list(state[k].shape)}, model {list(shape)}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    return KeyReport(missing, unexpected, wrong)


def _short(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


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
    if report.missing:
        parts.append(f"missing keys {_short(report.missing)};")
    if report.unexpected:
        parts.append(f"unexpected keys {_short(report.unexpected)};")
    if report.wrong_shape:
        parts.append(f"wrongly shaped {_short(report.wrong_shape, 3)};")
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
