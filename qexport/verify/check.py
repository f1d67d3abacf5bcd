"""`qexport check`: regenerate a committed vector set from its manifest and compare byte for byte."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from qexport.errors import InputError, QExportError
from qexport.verify.compare import compare_file
from qexport.writer.manifest import MANIFEST_NAME, FileEntry, Manifest, loads


@dataclass
class CheckResult:
    folder: Path
    command: str
    problems: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.problems


def without_check_figures(text: bytes, where: str = MANIFEST_NAME) -> Manifest:
    """The manifest with the seeds' float error figures zeroed (None stays None).

    The figures depend on the BLAS in use; their pass/fail and every integer they describe are
    compared exactly.
    """
    manifest = loads(text.decode("utf-8"), where)

    def zeroed(value: float | None) -> float | None:
        return None if value is None else 0.0

    layers = tuple(
        replace(
            layer,
            checks=replace(
                layer.checks,
                output_mean_error=0.0,
                output_max_error=0.0,
                next_input_mean_error=zeroed(layer.checks.next_input_mean_error),
                next_input_max_error=zeroed(layer.checks.next_input_max_error),
            ),
        )
        for layer in manifest.layers
    )
    return replace(manifest, layers=layers)


def vector_sets(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The paths that are vector sets (a folder with a manifest.json), and a line per path skipped.

    A path that does not exist, or a lone path that is not a set, is an error; so is a list with
    no set in it: a check of nothing must never pass.
    """
    sets: list[Path] = []
    skipped: list[str] = []
    for path in paths:
        if not path.exists():
            raise InputError(f"{path} does not exist; give vector set folders (e.g. vectors/*/)")
        if (path / MANIFEST_NAME).is_file():
            sets.append(path)
            continue
        if len(paths) == 1:
            raise InputError(f"{path} is not a vector set (no {MANIFEST_NAME}){_inside_hint(path)}")
        skipped.append(f"skipped {path}: not a vector set (no {MANIFEST_NAME})")
    if not sets:
        raise InputError(
            f"no vector set among the given paths ({', '.join(map(str, paths))}): none holds a "
            f"{MANIFEST_NAME}; give the folders qexport wrote, e.g. vectors/*/"
        )
    return sets, skipped


def _inside_hint(path: Path) -> str:
    if path.is_dir() and any((sub / MANIFEST_NAME).is_file() for sub in path.iterdir()):
        return f"; to check the sets inside it, give {path.as_posix().rstrip('/')}/*/"
    return "; `qexport check` takes folders that qexport wrote"


def check_set(folder: Path, base: Path | None = None) -> CheckResult:
    """Regenerate ``folder`` from its manifest's recipe and list every difference, decoded."""
    from qexport.api import regenerate

    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise InputError(f"{folder} has no {MANIFEST_NAME}; `qexport check` takes folders that qexport wrote")
    manifest = loads(manifest_path.read_text(encoding="utf-8"), str(manifest_path))
    recipe = manifest.recipe
    if recipe is None:
        raise InputError(f"{manifest_path} has no recipe (written by an older qexport); regenerate it")
    result = CheckResult(folder, recipe.command)
    plan = regenerate(recipe, base or Path.cwd(), folder)
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    for missing in sorted(set(plan.files) - on_disk):
        result.problems.append(f"{missing}: missing from {folder} (the recipe writes it)")
    for extra in sorted(on_disk - set(plan.files)):
        result.problems.append(f"{extra}: in {folder} but not written by the recipe")
    entries = {f.path: (index, f) for index, f in manifest.files()}
    for rel in sorted(set(plan.files) & on_disk):
        committed = (folder / rel).read_bytes()
        fresh = plan.files[rel]
        if rel == MANIFEST_NAME:
            if without_check_figures(committed, str(folder / rel)) != without_check_figures(fresh):
                result.problems.append(f"{rel}: differs from the regenerated manifest")
            continue
        if committed == fresh:
            continue
        result.problems.append(_first_difference(folder, rel, fresh, entries.get(rel)))
    return result


def _first_difference(folder: Path, rel: str, fresh: bytes, entry: tuple[int | str, FileEntry] | None) -> str:
    """Name the first differing value of a data file, or the first differing line."""
    if entry is not None and entry[1].format in ("hex", "bin", "txt"):
        layer, spec = entry
        try:
            report = compare_file(folder, spec, layer, fresh.decode("ascii"), f"regenerated {rel}")
        except QExportError as err:
            return f"{rel}: committed file is unreadable: {err}"
        if report.diffs:
            first = report.diffs[0]
            return (
                f"{rel}: {report.differences} value(s) differ; first: word {first.word} lane {first.lane} at "
                + ", ".join(f"{k}={v}" for k, v in first.where.items())
                + f": committed {first.expected}, regenerated {first.got}"
            )
        if report.problem or report.patterns:
            return f"{rel}: " + "; ".join([report.problem or "", *report.patterns]).lstrip("; ")
    committed = (folder / rel).read_bytes().splitlines()
    regenerated = fresh.splitlines()
    for number, (a, b) in enumerate(zip(committed, regenerated, strict=False), start=1):
        if a != b:
            return f"{rel}: line {number} differs: committed {a[:60]!r}, regenerated {b[:60]!r}"
    return f"{rel}: committed {len(committed)} lines, regenerated {len(regenerated)}"
