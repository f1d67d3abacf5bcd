"""Write a finished plan atomically: stage beside the target, then rename into place."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from qexport.errors import InputError
from qexport.manifest import MANIFEST_NAME


@dataclass
class ExportPlan:
    """Every file of an export, rendered in memory before anything touches the disk."""

    files: dict[str, bytes] = field(default_factory=dict)
    executable: set[str] = field(default_factory=set)

    def add(self, relpath: str, content: str | bytes, *, executable: bool = False) -> None:
        self.files[relpath] = content.encode("ascii") if isinstance(content, str) else content
        if executable:
            self.executable.add(relpath)


def _is_ours(folder: Path) -> bool:
    manifest = folder / MANIFEST_NAME
    try:
        return manifest.is_file() and '"qexport_version"' in manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def write_plan(plan: ExportPlan, out_dir: Path, *, force: bool = False) -> None:
    """Write ``plan`` to ``out_dir``: all files or none, never a half-written folder.

    An existing ``out_dir`` is replaced only with ``force`` and only if qexport wrote it.
    """
    out_dir = out_dir.absolute()
    if out_dir.exists():
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
        for relpath, content in sorted(plan.files.items()):
            target = staging / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            if relpath in plan.executable:
                target.chmod(0o755)
        staging.chmod(0o755)  # mkdtemp makes it 0700
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
