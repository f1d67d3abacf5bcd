"""A training run's files: course-format checkpoints, resume, ``metrics.jsonl``, the run folder.

Checkpoints are the course's: ``<out>/<model>/checkpoint.pth`` every epoch and
``model_best.pth.tar`` on improvement, each ``{'epoch', 'state_dict', 'best_prec', 'optimizer'}``
where ``epoch`` counts the epochs done (the next one to run). Every file is replaced through the
writer's one atomic file writer, so a run killed at any moment leaves the previous complete file.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qexport.errors import InputError
from qexport.frontend.checkpoint import Checkpoint, load_checkpoint
from qexport.frontend.models.load import load_weights
from qexport.frontend.models.resnet import ResNetQuant, resolve_resnet
from qexport.frontend.models.resolve import resolve_arch
from qexport.frontend.models.vgg import VGGQuant
from qexport.train.options import TrainOptions
from qexport.writer.write import temp_leftovers, write_file_atomic

CHECKPOINT_NAME = "checkpoint.pth"
BEST_NAME = "model_best.pth.tar"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "training_curves.png"


RUN_FILES = (CHECKPOINT_NAME, BEST_NAME, METRICS_NAME, CURVES_NAME)


def check_run_dir(opts: TrainOptions) -> None:
    """Refuse, before any work, a run folder that is a file or holds an earlier run's files.

    Continuing there needs ``--resume``; starting over there needs ``--force``.
    """
    run_dir = opts.out_dir / opts.model
    for folder in (opts.out_dir, run_dir):
        if folder.exists() and not folder.is_dir():
            raise InputError(f"output {folder} exists and is a file; choose another --out folder")
    if opts.resume is not None or opts.force or not run_dir.is_dir():
        return
    earlier = [name for name in RUN_FILES if (run_dir / name).exists()]
    if earlier:
        resume = (
            f"--resume {run_dir / CHECKPOINT_NAME} to continue it, " if CHECKPOINT_NAME in earlier else ""
        )
        raise InputError(
            f"run folder {run_dir} already holds {', '.join(earlier)} from an earlier run; pass "
            f"{resume}--force to train from scratch over it, or choose another --out folder"
        )


def resume_run(
    path: Path, model_name: str, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, float]:
    """Load weights and optimizer state from a course checkpoint; return (epochs done, best_prec)."""
    if not path.is_file():
        raise InputError(
            f"--resume {path} is not a file; give the checkpoint.pth of an earlier run, e.g. "
            f"result/{model_name}/checkpoint.pth"
        )
    ckpt = load_checkpoint(path)
    # refuses a checkpoint of another architecture, naming it
    if isinstance(model, ResNetQuant):
        resolve_resnet(ckpt, model_name)
    else:
        resolve_arch(ckpt, model_name)
    if ckpt.epoch is None:
        raise InputError(
            f"--resume {path} holds weights only (no 'epoch' and 'optimizer'), so there is nothing to "
            "continue; resume from the checkpoint.pth a training run wrote"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        optimizer_state = raw.get("optimizer") if isinstance(raw, dict) else None
        if not isinstance(optimizer_state, dict):
            raise InputError(
                f"--resume {path} has no 'optimizer' state; resume from the checkpoint.pth a training "
                "run wrote"
            )
        _load_resumed(model, ckpt)
        optimizer.load_state_dict(optimizer_state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise InputError(
            f"--resume {path}: its optimizer state does not fit {model_name} with SGD "
            f"({type(err).__name__}: {err}); resume with the --model it was trained with"
        ) from err
    return ckpt.epoch, float(ckpt.best_prec or 0.0)


def _load_resumed(model: nn.Module, ckpt: Checkpoint) -> None:
    if isinstance(model, VGGQuant):
        load_weights(model, ckpt.state_dict, trust_recomputed=True)
        return
    # the keys were matched by resolve_resnet; weight_q is recomputed by the next forward pass
    model.load_state_dict(ckpt.state_dict, strict=True)


def cpu_state(value: Any) -> Any:
    """Tensors moved to the CPU inside dicts and lists, so a checkpoint loads on any machine."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: cpu_state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [cpu_state(v) for v in value]
    return value


def save_checkpoint(state: dict[str, Any], is_best: bool, run_dir: Path) -> None:
    """checkpoint.pth every epoch, the same bytes as model_best.pth.tar on improvement (as the course)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    write_file_atomic(run_dir / CHECKPOINT_NAME, data)
    if is_best:
        write_file_atomic(run_dir / BEST_NAME, data)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; unreadable lines (a run killed mid-write) are skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    return records


def write_metrics(path: Path, records: Sequence[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    write_file_atomic(path, text.encode("utf-8"))


def prepare_run_dir(run_dir: Path, fresh: bool) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the run folder {run_dir} ({err}); pick another --out") from err
    for name in RUN_FILES:
        for stale in temp_leftovers(run_dir / name):  # left by a run killed while writing it
            stale.unlink(missing_ok=True)
        if fresh:  # --force: no earlier run's model_best.pth.tar may outlive this run's start
            (run_dir / name).unlink(missing_ok=True)
