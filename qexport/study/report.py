"""``qexport eval``, ``sensitivity`` and ``search`` as library calls: compute, then write atomically.

Each ``run_*`` checks ``out_dir`` first, then asks ``load`` (the CLI passes ``api.load``) for the
model and images, computes, and writes its files and a manifest through one staging folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qexport import __version__
from qexport.frontend.models.network import features_index, layer_label
from qexport.frontend.source import Loaded, SourceOptions
from qexport.study.bits import check_bits, qconvs
from qexport.study.data import Study, check_selection, prepare
from qexport.study.engine import DEFAULT_CACHE_MB, Progress, evaluate, sensitivity
from qexport.study.results import (
    EvalResult,
    SearchResult,
    SearchStep,
    Sensitivity,
    Strategy,
    bits_config,
    rows_json,
    sensitivity_csv,
    summary,
    where,
)
from qexport.study.strategies import search
from qexport.writer.manifest import MANIFEST_NAME, dumps_json
from qexport.writer.write import StagedFolder, staged

Load = Callable[[SourceOptions], Loaded]
"""How a command gets its model and images: ``api.load``."""


@dataclass(frozen=True)
class Written:
    out_dir: Path
    files: tuple[str, ...]


def _study(
    opts: SourceOptions, load: Load, labels_file: Path | None, limit: int | None, batch_size: int
) -> Study:
    check_selection(limit, batch_size)  # a bad request is refused before the model loads
    return prepare(load(opts), labels_file=labels_file, limit=limit, batch_size=batch_size)


def _header(study: Study, command: str) -> dict[str, Any]:
    loaded = study.loaded
    header: dict[str, Any] = {
        "qexport_version": __version__,
        "command": command,
        "model": loaded.arch.name,
        "source": loaded.source,
        "inputs": {**loaded.inputs.source, "count": int(study.images.shape[0])},
        "labels": study.labels_from,
    }
    if study.note:
        header["label"] = study.note
    elif loaded.demo_label:
        header["label"] = loaded.demo_label
    return header


def _write(
    study: Study, command: str, files: dict[str, bytes], folder: StagedFolder, out_dir: Path
) -> Written:
    for name, content in sorted(files.items()):
        folder.add(name, content)
    manifest = {
        **_header(study, command),
        "files": {n: hashlib.sha256(c).hexdigest() for n, c in files.items()},
    }
    folder.add(MANIFEST_NAME, dumps_json(manifest))
    return Written(out_dir, tuple(sorted(files)))


def run_eval(
    opts: SourceOptions,
    out_dir: Path,
    *,
    load: Load,
    labels_file: Path | None = None,
    limit: int | None = None,
    batch_size: int = 128,
    force: bool = False,
    progress: Progress | None = None,
) -> tuple[Study, EvalResult, Written]:
    """``qexport eval``: accuracy and loss of the model (with ``opts.bits_config`` applied).

    ``out_dir`` is checked before ``load(opts)`` runs (an existing one needs ``force``).
    """
    with staged(out_dir, force=force) as folder:
        study = _study(opts, load, labels_file, limit, batch_size)
        result = evaluate(study, batch_size, progress)
        report = {
            **_header(study, "eval"),
            "bits_config": opts.bits_config.name if opts.bits_config else None,
            # a VGG layer by its features index (as ever), any other by its module path
            "act_bits": {
                layer_label(name, features_index(name)): m.act_bit for name, m in qconvs(study.model).items()
            },
            "batch_size": batch_size,
            **result.as_dict(),
        }
        written = _write(study, "eval", {"eval.json": dumps_json(report).encode()}, folder, out_dir)
    return study, result, written


def run_sensitivity(
    opts: SourceOptions,
    out_dir: Path,
    *,
    load: Load,
    from_bits: int = 4,
    to_bits: int = 2,
    labels_file: Path | None = None,
    limit: int | None = None,
    batch_size: int = 128,
    force: bool = False,
    progress: Progress | None = None,
) -> tuple[Study, Sensitivity, Written]:
    """``qexport sensitivity``: the table as JSON and CSV, and a PNG bar chart of the drops.

    ``out_dir`` is checked before ``load(opts)`` runs (an existing one needs ``force``).
    """
    from qexport.study.chart import bar_chart

    check_bits(from_bits, to_bits)
    with staged(out_dir, force=force) as folder:
        study = _study(opts, load, labels_file, limit, batch_size)
        sens = sensitivity(study, from_bits, to_bits, batch_size=batch_size, progress=progress)
        report = {
            **_header(study, "sensitivity"),
            "from_bits": from_bits,
            "to_bits": to_bits,
            "batch_size": batch_size,
            "baseline": sens.baseline.as_dict(),
            "rows": rows_json(sens),
        }
        title = (
            f"{study.loaded.arch.name}: accuracy drop with one conv's input at {to_bits} bit "
            f"(others {from_bits} bit), {sens.baseline.count} images"
        )
        subtitle = study.note or study.loaded.demo_label or ""
        png = bar_chart(
            [f"conv {r.conv_number} ({where(r.name, r.layer)})" for r in sens.ranked],
            [r.drop for r in sens.ranked],
            title=title,
            subtitle=subtitle,
            unit="%",
        )
        files = {
            "sensitivity.json": dumps_json(report).encode(),
            "sensitivity.csv": sensitivity_csv(sens).encode(),
            "sensitivity.png": png,
        }
        written = _write(study, "sensitivity", files, folder, out_dir)
    return study, sens, written


def run_search(
    opts: SourceOptions,
    out_dir: Path,
    *,
    load: Load,
    epsilon: float = 1.0,
    from_bits: int = 4,
    to_bits: int = 2,
    strategy: Strategy = "greedy",
    labels_file: Path | None = None,
    limit: int | None = None,
    batch_size: int = 128,
    cache_bytes: int = DEFAULT_CACHE_MB << 20,
    force: bool = False,
    progress: Progress | None = None,
    on_start: Callable[[Study, Sensitivity], None] | None = None,
    on_step: Callable[[SearchStep], None] | None = None,
) -> tuple[Study, SearchResult, Written]:
    """``qexport search``: the bits config (``bits_config.json``) and ``summary.json``.

    ``on_start`` is called once the sensitivities are known, ``on_step`` after each decision.
    ``out_dir`` is checked before ``load(opts)`` runs (an existing one needs ``force``).
    """
    check_bits(from_bits, to_bits)
    with staged(out_dir, force=force) as folder:
        study = _study(opts, load, labels_file, limit, batch_size)

        def started(sens: Sensitivity) -> None:
            if on_start:
                on_start(study, sens)

        result = search(
            study,
            epsilon,
            from_bits,
            to_bits,
            strategy=strategy,
            batch_size=batch_size,
            cache_bytes=cache_bytes,
            progress=progress,
            on_sensitivity=started,
            on_step=on_step,
        )
        report = {**_header(study, "search"), "batch_size": batch_size, **summary(result)}
        files = {
            "bits_config.json": dumps_json(bits_config(result)).encode(),
            "summary.json": dumps_json(report).encode(),
        }
        written = _write(study, "search", files, folder, out_dir)
    return study, result, written
