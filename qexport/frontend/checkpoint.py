"""Load course checkpoints safely: a state dict and where it came from (the models match it)."""

from __future__ import annotations

import codecs
import hashlib
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from qexport.errors import InputError


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
    plain containers. The first bytes say what the file is (a zip or a pickle, as torch.save
    writes; text; something else) before torch reads it, so a refusal can say which.
    """
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist; check the path given to --checkpoint")
    if path.is_dir():
        raise InputError(
            f"checkpoint {path} is a folder; pass the file inside it, e.g. {path}/model_best.pth.tar"
        )
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(_HEAD_BYTES)
    except OSError as err:
        raise InputError(
            f"checkpoint {path} cannot be read ({err.strerror or err}); check its permissions"
        ) from err
    if size == 0:
        raise InputError(f"checkpoint {path} is empty (0 bytes); re-copy or re-save it")
    kind = _file_kind(head)
    if kind == "other":
        raise InputError(_not_a_checkpoint(path, head))
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError as err:
        raise InputError(
            f"the machine ran out of memory loading checkpoint {path} ({_size(size)}); the file "
            "itself may be fine. Free memory (close other programs) or load it on a machine with "
            "more RAM"
        ) from err
    except pickle.UnpicklingError as err:
        blocked = _blocked_global(str(err))
        if blocked is None:  # the restricted unpickler also rejects damaged pickle bytes
            raise _unreadable(path, kind, err) from err
        raise InputError(
            f"checkpoint {path} was refused by the safe loader (weights_only=True): it would "
            f"import {blocked}. It holds objects other than tensors, which could run code when "
            "loaded; qexport never loads those. Re-save it as {'state_dict': model.state_dict()} "
            "from trusted code"
        ) from err
    except Exception as err:
        # torch.load on damaged zip or pickle bytes raises almost anything: RuntimeError from the
        # zip reader, EOFError, KeyError, IndexError, struct.error, UnicodeDecodeError …
        raise _unreadable(path, kind, err) from err
    return _from_object(raw, path)


_HEAD_BYTES = 4096  # enough to tell text from binary and to quote a first line
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip of data.pkl + tensor data
# b"\x80" then the protocol byte: torch.save's legacy format (_use_new_zipfile_serialization=False)
# and plain pickles. weights_only=True reads no other pickle protocol.
_PICKLE_PROTOCOLS = range(2, 6)
_TEXT_CONTROLS = frozenset("\t\n\r\f\v")
_FileKind = Literal["zip", "pickle", "other"]


def _file_kind(head: bytes) -> _FileKind:
    """What the first bytes say a file is: ``b"PK\\x03\\x04…"`` -> zip, ``b"\\x80\\x02…"`` -> pickle."""
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
        return "pickle"
    return "other"


def _as_text(head: bytes) -> str | None:
    """The file's start as text if it reads as UTF-8 text (a character cut at the end is fine)."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    text = text.removeprefix("\ufeff")  # a byte-order mark
    if not all(c.isprintable() or c in _TEXT_CONTROLS for c in text):
        return None
    return text


def _not_a_checkpoint(path: Path, head: bytes) -> str:
    fix = "give the .pth/.pth.tar file that torch.save wrote"
    text = _as_text(head)
    if text is None:
        return (
            f"checkpoint {path} is not a PyTorch checkpoint (not a zip or pickle file: it starts "
            f"with the bytes {head[:4].hex(' ')}, where torch.save writes 50 4b 03 04 or 80 02); {fix}"
        )
    if text.startswith("version https://git-lfs"):
        return (
            f"checkpoint {path} is a Git LFS pointer (a small text file), not the checkpoint itself; "
            "fetch the real file with `git lfs pull`, or " + fix
        )
    stripped = text.lstrip().lower()
    if stripped.startswith(("<!doctype html", "<html")):
        return (
            f"checkpoint {path} is not a PyTorch checkpoint (it looks like text: an HTML page, as "
            f"a download link that needs a login returns); {fix}"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    shown = first if len(first) <= 40 else first[:40] + "…"
    return f"checkpoint {path} is not a PyTorch checkpoint (it looks like text, starting {shown!r}); {fix}"


def _unreadable(path: Path, kind: _FileKind, err: Exception) -> InputError:
    """A zip or pickle torch.load could not read back: say what is wrong, not torch's internals."""
    damaged = f"checkpoint {path} is not a readable PyTorch checkpoint (truncated or damaged: "
    fix = "re-copy or re-save it"
    if kind == "zip" and not zipfile.is_zipfile(path):
        return InputError(
            f"{damaged}it starts as a zip archive, as torch.save writes, but its end is missing); {fix}"
        )
    if kind == "zip" and not _has_data_pkl(path):
        return InputError(
            f"checkpoint {path} is a zip archive but not a PyTorch checkpoint (it holds no data.pkl, "
            "which torch.save writes); if the archive holds a checkpoint, unzip it and give the "
            ".pth/.pth.tar inside"
        )
    if kind == "zip":
        return InputError(
            f"{damaged}a zip archive as torch.save writes, but its records do not read back); {fix}"
        )
    if isinstance(err, EOFError):
        return InputError(f"{damaged}a pickle, as torch.save writes, that ends early); {fix}")
    return InputError(
        f"checkpoint {path} is a pickle file but not a PyTorch checkpoint, or a damaged one (its "
        f"contents are not what torch.save writes); {fix}"
    )


def _has_data_pkl(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _blocked_global(message: str) -> str | None:
    """The module.name a weights_only refusal names, if it refused an import (code) at all."""
    match = _GLOBAL.search(message)
    return match.group(1) if match else None


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB, {size} bytes" if size >= 1_000_000 else f"{size} bytes"


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
