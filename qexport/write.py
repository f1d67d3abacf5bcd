"""Write an export atomically: stage beside the target, then rename into place.

Files are written to the staging folder as they are rendered (a layer at a time, so a whole
model's text is never held in memory at once); the folder appears under its name only when
every file is there.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from qexport.errors import InputError
from qexport.manifest import MANIFEST_NAME
from qexport.manifest import loads as manifest_loads

# a file's content: text, bytes, or chunks written one after another (a large body is not
# copied). A chunk may be a view of a buffer the producer reuses for the next chunk.
Content = str | bytes | Iterable[bytes | memoryview]


class FileSink(Protocol):
    """Where rendered files go: memory (ExportPlan) or a staging folder (StagedFolder).

    ``add`` takes in each chunk before asking for the next, and all of them before it returns.
    """

    def add(self, relpath: str, content: Content, *, executable: bool = False) -> None: ...


def _chunks(content: Content) -> Iterable[bytes | memoryview]:
    if isinstance(content, str):
        return [content.encode("ascii")]
    return [content] if isinstance(content, bytes) else content


@dataclass
class ExportPlan:
    """Every file of an export, in memory: `check` compares it, small sets go to write_plan."""

    files: dict[str, bytes] = field(default_factory=dict)
    executable: set[str] = field(default_factory=set)

    def add(self, relpath: str, content: Content, *, executable: bool = False) -> None:
        self.files[relpath] = b"".join([bytes(chunk) for chunk in _chunks(content)])
        if executable:
            self.executable.add(relpath)


@dataclass
class StagedFolder:
    """Files written straight into a hidden staging folder next to the output folder."""

    root: Path

    def add(self, relpath: str, content: Content, *, executable: bool = False) -> None:
        target = self.root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as file:
            for chunk in _chunks(content):
                file.write(chunk)
        if executable:
            target.chmod(0o755)


def _is_ours(folder: Path) -> bool:
    manifest = folder / MANIFEST_NAME
    try:
        manifest_loads(manifest.read_text(encoding="utf-8"), str(manifest))
    except (OSError, UnicodeDecodeError, InputError):
        return False
    return True


def _check_target(out_dir: Path, force: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"output {out_dir} exists and is a file; choose another -o folder")
    if any(out_dir.iterdir()):
        if not _is_ours(out_dir):
            raise InputError(
                f"output folder {out_dir} is not empty and was not written by qexport (no "
                "manifest.json); qexport will not replace it: choose another -o folder"
            )
        if not force:
            raise InputError(
                f"output folder {out_dir} already holds a qexport export; pass --force to "
                "replace it, or choose another -o folder"
            )


@contextmanager
def staged(out_dir: Path, *, force: bool = False) -> Iterator[StagedFolder]:
    """Yield a staging folder; on a clean exit it becomes ``out_dir``, on any error it goes.

    Checked before any work is done: an existing ``out_dir`` is replaced only with ``force`` and
    only if qexport wrote it; the parent must be writable.
    """
    out_dir = out_dir.absolute()
    _check_target(out_dir, force)
    parent = out_dir.parent
    # staging folders of an earlier run that was killed (SIGKILL cannot be caught)
    for stale in parent.glob(f".{out_dir.name}.*.partial") if parent.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=parent))
    except OSError as err:
        raise InputError(f"cannot write to {parent} ({err.strerror}); choose a writable -o folder") from err
    try:
        yield StagedFolder(staging)
        staging.chmod(0o755)  # mkdtemp makes it 0700
        _check_target(out_dir, force)  # it may have appeared while we worked
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=parent))
            old.rmdir()
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out_dir)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(
            f"writing {out_dir} failed ({err.strerror or err}); nothing was changed. Free space or "
            "choose a writable -o folder"
        ) from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_plan(plan: ExportPlan, out_dir: Path, *, force: bool = False) -> None:
    """Write an in-memory ``plan`` to ``out_dir``: all files or none, never a half-written folder."""
    with staged(out_dir, force=force) as folder:
        for relpath, content in sorted(plan.files.items()):
            folder.add(relpath, content, executable=relpath in plan.executable)
