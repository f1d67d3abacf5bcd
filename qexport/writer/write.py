"""Write an export atomically: stage beside the target, then rename into place.

Files are written to the staging folder as they are rendered (a layer at a time, so a whole
model's text is never held in memory at once); the folder appears under its name only when
every file is there, each fsynced.

Runs on one target take turns: a run holds ``.NAME.lock`` beside the target (``flock``) from its
first check to its rename, so a second run waits, then finds the first one's set (and needs
``--force`` to replace it). Each staging folder ``.NAME.<random>.partial`` is itself ``flock``ed
by the run that writes it; one that nobody holds is a killed run's and is removed by the next run.
The lock file is removed when its run ends (a SIGKILLed run's is reused and removed by the next).
Replacing a set swaps it in with one ``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere it takes
two renames, and a crash between them (``.NAME.old`` beside the target) is undone by the next run.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Callable, Container, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qexport.errors import InputError
from qexport.writer.manifest import MANIFEST_NAME, written_by_qexport

# a file's content: text, bytes, or chunks written one after another (a large body is not
# copied). A chunk may be a view of a buffer the producer reuses for the next chunk.
Content = str | bytes | Iterable[bytes | memoryview]


class FileSink(Protocol):
    """Where rendered files go: memory (ExportPlan) or a staging folder (StagedFolder).

    ``add`` takes in each chunk before asking for the next, and all of them before it returns.
    """

    def add(self, relpath: str, content: Content, *, executable: bool = False) -> None: ...


def refuse_twice(relpath: str, written: Container[str]) -> None:
    """A second file of one name would silently replace the first: refuse it instead."""
    if relpath in written:
        raise InputError(
            f"two files of this set are both named {relpath}: the profile's [names] patterns must give "
            "every file its own name (use every placeholder of the key, separated, e.g. "
            "'weight_itile{i}_otile{o}_kij{k}')"
        )


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
        refuse_twice(relpath, self.files)
        if isinstance(content, bytes):
            self.files[relpath] = content
        else:
            self.files[relpath] = b"".join([bytes(chunk) for chunk in _chunks(content)])
        if executable:
            self.executable.add(relpath)


def _load_syncfs() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int
    return call


_SYNCFS = _load_syncfs()


@dataclass
class StagedFolder:
    """Files written straight into a hidden staging folder next to the output folder.

    ``sync_each``: fsync every file as it is written. Off where ``syncfs(2)`` exists (Linux): one
    call then makes every file of the set durable before the rename, instead of a disk flush a file
    (thousands of tile files: the fsyncs were nine tenths of the time).
    """

    root: Path
    written: set[str] = field(default_factory=set)
    made: set[str] = field(default_factory=set)
    """Folders (relative, "/"-separated) already made in the staging folder."""
    sync_each: bool = field(default_factory=lambda: _SYNCFS is None)

    def add(self, relpath: str, content: Content, *, executable: bool = False) -> None:
        refuse_twice(relpath, self.written)
        self.written.add(relpath)
        parent, _, _ = relpath.rpartition("/")
        if parent not in self.made:  # a folder is made once, not checked again for each of its files
            folder = self.root
            for part in Path(parent).parts:  # never parents=True: a vanished root stays gone
                folder = folder / part
                folder.mkdir(exist_ok=True)
            self.made.add(parent)
        target = f"{self.root}/{relpath}"  # a str path: pathlib costs more than the open on small files
        with open(target, "wb") as file:  # noqa: PTH123
            for chunk in _chunks(content):
                file.write(chunk)
            if self.sync_each:
                file.flush()
                os.fsync(file.fileno())  # on disk before the folder is renamed into place
        if executable:
            os.chmod(target, 0o755)  # noqa: PTH101


def write_hashed(sink: FileSink, relpath: str, content: Content) -> str:
    """Write ``content`` to ``sink`` as ``relpath`` and return its sha256 (hex)."""
    if isinstance(content, bytes):  # a small file whole: one call each, no chunk pipeline
        sink.add(relpath, content)
        return hashlib.sha256(content).hexdigest()
    digest = hashlib.sha256()
    sink.add(relpath, _hashed(_chunks(content), digest.update))  # add takes every chunk before it returns
    return digest.hexdigest()


def _hashed(
    chunks: Iterable[bytes | memoryview], update: Callable[[bytes | memoryview], None]
) -> Iterator[bytes | memoryview]:
    """Pass ``chunks`` on, hashing each while it is still in cache (a block may be reused after)."""
    for chunk in chunks:
        update(chunk)
        yield chunk


def _is_ours(folder: Path) -> bool:
    try:
        return written_by_qexport((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return False


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


def _unusable_path(shown: Path, err: OSError) -> InputError:
    """Say what is wrong with ``-o shown`` when a folder or file cannot be created under it."""
    where = next((a for a in shown.parents if a.exists()), shown.parent)
    if not where.is_dir():
        return InputError(f"-o {shown}: {where} is a file, not a folder; choose another path")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return InputError(f"-o {shown}: no space left on the device holding {where}; free space first")
    if err.errno == errno.EROFS:
        return InputError(f"-o {shown}: {where} is on a read-only file system; choose another path")
    if not os.access(where, os.W_OK | os.X_OK):
        return InputError(
            f"-o {shown}: permission denied: you may not create files in {where}; choose a writable path"
        )
    if err.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP):
        # writable by its permissions, yet creating fails: /proc, /sys and the like
        return InputError(
            f"-o {shown}: cannot create a folder in {where} (read-only or special file system); "
            "choose another path"
        )
    return InputError(f"-o {shown}: cannot write in {where} ({err.strerror or err}); choose a writable path")


def _holds(fd: int) -> bool:
    """Take ``fd``'s exclusive flock without waiting; False if another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


@contextmanager
def _target_lock(lock_path: Path) -> Iterator[None]:
    """Hold ``lock_path``'s flock; the file is removed (while still held) when the block ends.

    A waiter that wakes on a file removed or replaced meanwhile tries again on the current one.
    """
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a second run on this target waits here
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, lock_path):
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()
        os.close(fd)


def _old_path(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.old")


def _trash(old: Path) -> None:
    """Remove a moved-aside set: renamed to a staging name first, so a crash mid-way leaves a stale one."""
    doomed = old.with_name(f"{old.name}.{secrets.token_hex(4)}.partial")
    try:
        old.rename(doomed)
    except OSError:
        doomed = old
    shutil.rmtree(doomed, ignore_errors=True)


def _recover(out_dir: Path) -> None:
    """Finish a replacement a crash interrupted between its two renames (the rename-pair path)."""
    old = _old_path(out_dir)
    if not old.is_dir():
        return
    if out_dir.exists():
        _trash(old)  # the new set was in place: only the old one's removal was left
    else:
        old.rename(out_dir)  # the old set had been moved aside: put it back


def _remove_stale(out_dir: Path) -> None:
    """Staging folders of runs that are gone (SIGKILL cannot be caught); live ones stay."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.partial"):
        try:
            fd = os.open(stale, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            if _holds(fd):  # its owner is gone (the kernel drops a dead process's locks)
                shutil.rmtree(stale, ignore_errors=True)
        finally:
            os.close(fd)


def _new_staging(out_dir: Path) -> tuple[Path, int]:
    """A fresh staging folder beside ``out_dir`` and its open, flocked descriptor."""
    while True:
        staging = out_dir.with_name(f".{out_dir.name}.{secrets.token_hex(4)}.partial")
        try:
            staging.mkdir(mode=0o755)
        except FileExistsError:
            continue
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # another target's cleaner (its glob may match this name) may have taken it before the lock
        if _same_file(fd, staging):
            return staging, fd
        os.close(fd)


def _fsync_dir(folder: Path | str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(folder: Path) -> None:
    """Every file under ``folder`` on disk: one ``syncfs(2)`` of its file system, which reports a
    write-back error of any of them (Linux >= 5.8) as an OSError."""
    assert _SYNCFS is not None
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(folder))
    finally:
        os.close(fd)


def _fsync_tree(root: Path, files_synced: bool) -> None:
    """Make ``root``'s files (unless fsynced as they were written) and every folder under it durable,
    root last."""
    if not files_synced:
        _syncfs(root)
    for folder, _dirs, _files in os.walk(root, topdown=False):
        _fsync_dir(folder)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100  # linux/fcntl.h


@functools.cache
def _renameat2() -> Any:

    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # a C library without renameat2 (glibc < 2.28)
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = _renameat2() if sys.platform == "linux" else None
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this file system cannot swap
        return False
    raise OSError(code, os.strerror(code), str(a))


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block is done (they arrive right after it)."""
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _publish(staging: Path, out_dir: Path) -> None:
    """Put the complete ``staging`` folder at ``out_dir``; the target is never missing on Linux."""
    if not out_dir.exists():
        staging.rename(out_dir)
    elif _exchange(staging, out_dir):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the old set
    else:
        # two renames; a crash between them leaves .NAME.old, which the next run's _recover handles
        old = _old_path(out_dir)
        with _signals_held():
            out_dir.rename(old)
            try:
                staging.rename(out_dir)
            except OSError:
                old.rename(out_dir)
                raise
        _trash(old)
    with contextlib.suppress(OSError):  # the set is in place; this only makes the rename durable
        _fsync_dir(out_dir.parent)


@contextmanager
def staged(out_dir: Path, *, force: bool = False) -> Iterator[StagedFolder]:
    """Yield a staging folder; on a clean exit it becomes ``out_dir``, on any error it goes.

    Checked before any work is done: an existing ``out_dir`` is replaced only with ``force`` and
    only if qexport wrote it; the parent must be writable. The target's lock is held throughout,
    so runs on one target take turns (see the module docstring).
    """
    shown = out_dir
    out_dir = out_dir.absolute()
    _check_target(out_dir, force)  # a foreign folder is refused before anything is made beside it
    with contextlib.ExitStack() as held:
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(_target_lock(out_dir.with_name(f".{out_dir.name}.lock")))
            _recover(out_dir)
            _remove_stale(out_dir)
            _check_target(out_dir, force)  # again: the run we waited for may have written it
            staging, staging_fd = _new_staging(out_dir)
        except OSError as err:
            raise _unusable_path(shown, err) from err
        held.callback(os.close, staging_fd)
        try:
            folder = StagedFolder(staging)
            yield folder
            _fsync_tree(staging, folder.sync_each)
            _check_target(out_dir, force)  # a program other than qexport may have made it meanwhile
            _publish(staging, out_dir)
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


def write_file_atomic(target: Path, data: bytes) -> None:
    """Replace one file whole or not at all: write ``.NAME.<pid>.tmp`` beside it, fsync, rename.

    For a file rewritten in place while its folder stays (a training run's checkpoint, every
    epoch): a reader, or a run killed at any moment, sees the old file or the new one. A killed
    writer's temporary file is found by :func:`temp_leftovers`.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(target)  # os.replace: atomic within one folder
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {target} ({err}); free some space or pick another --out") from err
    with contextlib.suppress(OSError):  # the file is in place; this only makes the rename durable
        _fsync_dir(target.parent)


def temp_leftovers(target: Path) -> list[Path]:
    """The temporary files :func:`write_file_atomic` left beside ``target`` when killed mid-write."""
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))
