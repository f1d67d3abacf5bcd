"""The atomic writer under misuse: concurrent runs on one target, killed runs, crashes mid-replace,
and -o paths that cannot hold a folder (issue 13, items 3 and 11)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from qexport.cli.main import main
from qexport.errors import InputError
from qexport.writer import write
from qexport.writer.write import ExportPlan, staged, write_plan

MANIFEST = '{"qexport_version": "0.1.0"}\n'


def _plan(tag: str) -> ExportPlan:
    plan = ExportPlan()
    plan.add("layer0/a.hex", f"{tag}\n")
    plan.add("b.hex", f"{tag}{tag}\n")
    plan.add("manifest.json", MANIFEST)
    return plan


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _listed(node: Any) -> dict[str, str]:
    """Every ``{"path", "sha256"}`` pair anywhere in a manifest."""
    found: dict[str, str] = {}
    if isinstance(node, dict):
        if isinstance(node.get("path"), str) and isinstance(node.get("sha256"), str):
            found[node["path"]] = node["sha256"]
        for value in node.values():
            found.update(_listed(value))
    elif isinstance(node, list):
        for value in node:
            found.update(_listed(value))
    return found


def _assert_one_complete_set(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = _listed(manifest)
    assert len(listed) == 69  # 17 conv layers x 4 files, and the SV package
    on_disk = _files(folder)
    assert sorted(on_disk) == sorted([*listed, "manifest.json"])
    for path, sha in listed.items():
        assert hashlib.sha256(on_disk[path]).hexdigest() == sha, path


def _qexport(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "qexport", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


# item 3: concurrent runs


def _start_while_the_first_writes(tmp_path: Path, first: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while not any(tmp_path.glob(".T.*.partial/layer*/*")) and first.poll() is None:
        assert time.monotonic() < deadline, "the first run never started writing"
        time.sleep(0.02)


@pytest.mark.slow
def test_concurrent_dumps_on_one_target_leave_one_complete_set_and_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "T"
    # 1. the first run streams 64 images' layers; three more start while it writes. They wait for
    # it, then find its set and refuse it without --force. (Before the fix they removed its staging
    # folder at their start, and it published a manifest listing files that were gone.)
    first = _qexport("dump", "--all", "--images", "0:64", "--force", "-o", str(target), cwd=tmp_path)
    _start_while_the_first_writes(tmp_path, first)
    later = [_qexport("dump", "--all", "-o", str(target), cwd=tmp_path) for _ in range(3)]
    _out, err = first.communicate(timeout=900)
    assert first.returncode == 0, err.decode()
    for proc in later:
        _out, err = proc.communicate(timeout=900)
        assert proc.returncode == 2 and "already holds a qexport export; pass --force" in err.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["T"]
    _assert_one_complete_set(target)
    assert json.loads((target / "manifest.json").read_text())["inputs"]["count"] == 64
    # 2. four runs with --force at once, twice: each replaces the set in turn
    for _round in range(2):
        runs = [_qexport("dump", "--all", "--force", "-o", str(target), cwd=tmp_path) for _ in range(4)]
        for proc in runs:
            _out, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, err.decode()
        # exactly one set, complete, and nothing beside it: no staging, no .old, no lock file
        assert sorted(p.name for p in tmp_path.iterdir()) == ["T"]
        _assert_one_complete_set(target)
        assert json.loads((target / "manifest.json").read_text())["inputs"]["count"] == 1


def test_a_live_staging_folder_of_another_run_is_never_removed(tmp_path: Path) -> None:
    # ".set.*.partial" also matches the staging folder of a target named "set.x"
    with staged(tmp_path / "set.x") as live:
        live.add("layer0/a.hex", "1\n")
        write_plan(_plan("2"), tmp_path / "set")
        assert live.root.is_dir() and (live.root / "layer0" / "a.hex").read_text() == "1\n"
        live.add("manifest.json", MANIFEST)
    assert _files(tmp_path / "set.x") == {"layer0/a.hex": b"1\n", "manifest.json": MANIFEST.encode()}
    assert _files(tmp_path / "set") == _plan("2").files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set", "set.x"]


def test_a_staging_folder_that_vanished_is_not_recreated(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing was changed"), staged(tmp_path / "set") as folder:
        folder.add("a.hex", "1\n")
        for path in folder.root.iterdir():
            path.unlink()
        folder.root.rmdir()
        folder.add("layer0/b.hex", "2\n")
    assert list(tmp_path.iterdir()) == []


def test_a_sigkilled_run_leaves_a_staging_folder_the_next_run_removes(tmp_path: Path) -> None:
    out = tmp_path / "set"
    proc = _qexport("dump", "--all", "--images", "0:128", "-o", str(out), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob(".set.*.partial/*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert any(tmp_path.glob(".set.*.partial")), "the kill must land mid-export"
    assert not out.exists()
    result = CliRunner().invoke(main, ["dump", "--layer", "33", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize("per_file", [False, True], ids=["syncfs", "fsync-each"])
def test_files_and_folders_are_synced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_file: bool
) -> None:
    # Linux: one syncfs(2) of the staging folder's file system makes every file durable; elsewhere
    # (no syncfs) each file is fsynced as it is written. Either way before the rename.
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", str(Path(f"/proc/self/fd/{fd}").readlink())))
        real_fsync(fd)

    def syncfs(fd: int) -> int:
        events.append(("syncfs", str(Path(f"/proc/self/fd/{fd}").readlink())))
        return 0

    def rename(self: Path, target: Any) -> Path:
        events.append(("rename", str(self)))
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(write, "_SYNCFS", None if per_file else syncfs)
    monkeypatch.setattr(Path, "rename", rename)
    write_plan(_plan("1"), tmp_path / "set")
    renames = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    assert len(renames) == 1
    staging = events[renames[0]][1]
    before = events[: renames[0]]
    synced = {path for kind, path in before if kind == "fsync"}
    for name in ["layer0", ""]:
        assert str(Path(staging) / name) in synced, name
    files = [str(Path(staging) / name) for name in ["layer0/a.hex", "b.hex", "manifest.json"]]
    if per_file:
        assert set(files) <= synced
    else:
        assert ("syncfs", staging) in before and not set(files) & synced
    assert ("fsync", str(tmp_path)) in events[renames[0] :]  # the rename itself made durable


def test_a_syncfs_error_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(write, "_SYNCFS", failing)
    with pytest.raises(InputError, match=r"writing .*set failed \(Input/output error\); nothing was changed"):
        write_plan(_plan("1"), tmp_path / "set")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []


def test_the_real_syncfs_is_found_on_linux() -> None:
    if sys.platform == "linux":
        assert write._SYNCFS is not None and write.StagedFolder(Path("x")).sync_each is False


# item 3: replacing a set (--force): an atomic swap, or a rename pair a crash can interrupt


def test_exchange_swaps_two_folders_or_leaves_both(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("A")
    (b / "f").write_text("B")
    swapped = write._exchange(a, b)
    assert ((a / "f").read_text(), (b / "f").read_text()) == (("B", "A") if swapped else ("A", "B"))
    if sys.platform == "linux":
        assert swapped  # renameat2 RENAME_EXCHANGE (tmpfs, ext4, xfs, btrfs): no moment without the target


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "rename-pair"])
def test_force_replaces_the_set_and_leaves_nothing_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: bool
) -> None:
    if not swap:
        monkeypatch.setattr(write, "_exchange", lambda a, b: False)
    write_plan(_plan("1"), tmp_path / "set")
    with pytest.raises(InputError, match="pass --force"):
        write_plan(_plan("2"), tmp_path / "set")
    write_plan(_plan("2"), tmp_path / "set", force=True)
    assert _files(tmp_path / "set") == _plan("2").files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_a_failed_second_rename_puts_the_old_set_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write, "_exchange", lambda a, b: False)
    write_plan(_plan("1"), tmp_path / "set")
    real_rename = Path.rename

    def rename(self: Path, target: Any) -> Path:
        if self.name.endswith(".partial") and Path(target).name == "set":
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(InputError, match="nothing was changed"):
        write_plan(_plan("2"), tmp_path / "set", force=True)
    assert _files(tmp_path / "set") == _plan("1").files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_a_crash_between_the_renames_is_recovered_by_the_next_run(tmp_path: Path) -> None:
    # what a crash right after "set -> .set.old" leaves: no target, the old set beside it
    write_plan(_plan("1"), tmp_path / "set")
    (tmp_path / "set").rename(tmp_path / ".set.old")
    with pytest.raises(InputError, match="pass --force"):  # the old set is back, so it needs --force
        write_plan(_plan("2"), tmp_path / "set")
    assert _files(tmp_path / "set") == _plan("1").files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_a_crash_before_the_old_set_was_removed_is_finished_by_the_next_run(tmp_path: Path) -> None:
    # a crash after both renames: the new set in place, the old one still beside it
    write_plan(_plan("2"), tmp_path / "set")
    write_plan(_plan("1"), tmp_path / ".set.old")
    write_plan(_plan("3"), tmp_path / "set", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    assert _files(tmp_path / "set") == _plan("3").files


def test_a_second_run_on_the_same_target_waits_for_the_lock(tmp_path: Path) -> None:
    # the lock is held while this run works: another process cannot take it meanwhile
    import fcntl

    with staged(tmp_path / "set") as folder:
        lock = tmp_path / ".set.lock"
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        folder.add("manifest.json", MANIFEST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # the lock file goes with the run


# item 11: -o paths that cannot hold a folder


def _dump_to(out: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["dump", "--layer", "33", "-o", out])
    return result.exit_code, result.output


def test_o_under_a_file_says_which_part_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").write_text("x")
    code, output = _dump_to("a/b/c")
    assert code == 2
    assert output == "error: -o a/b/c: a/b is a file, not a folder; choose another path\n"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/b"]
    assert (tmp_path / "a" / "b").read_text() == "x"


def test_o_directly_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "b").write_text("x")
    code, output = _dump_to("b/c/d")
    assert code == 2
    assert output == "error: -o b/c/d: b is a file, not a folder; choose another path\n"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a /proc file system")
def test_o_in_proc_says_the_file_system_cannot_hold_a_folder() -> None:
    code, output = _dump_to("/proc/qexport-x")
    assert code == 2
    assert output == (
        "error: -o /proc/qexport-x: cannot create a folder in /proc (read-only or special file "
        "system); choose another path\n"
    )
    assert not Path("/proc/qexport-x").exists()


def test_o_without_permission_says_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tests run as root here, which no mode bits stop: the denial the kernel gives a user is simulated
    (tmp_path / "ro").mkdir()

    def denied(self: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "ro")
    code, output = _dump_to("ro/sub/out")
    assert code == 2
    assert output == (
        "error: -o ro/sub/out: permission denied: you may not create files in ro; choose a writable path\n"
    )
    assert list((tmp_path / "ro").iterdir()) == []


# --- the one atomic file writer (training checkpoints, metrics, curves) ------------------------


def test_write_file_atomic_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"epoch 1")
    write.write_file_atomic(target, b"epoch 2")
    assert target.read_bytes() == b"epoch 2"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temporary file left


def test_write_file_atomic_failure_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "metrics.jsonl"
    target.write_bytes(b"old\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(
        InputError, match=r"^cannot write .*metrics\.jsonl .*No space left.*; free some space"
    ):
        write.write_file_atomic(target, b"new\n")
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_temp_leftovers_finds_a_killed_writers_file_only(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pth"
    (tmp_path / ".checkpoint.pth.4242.tmp").write_bytes(b"half")
    (tmp_path / ".model_best.pth.tar.4242.tmp").write_bytes(b"other target's")
    assert write.temp_leftovers(target) == [tmp_path / ".checkpoint.pth.4242.tmp"]
