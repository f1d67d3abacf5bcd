"""Bad input fails loudly and early: one message (what, where, fix), exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from qexport.cli.main import main
from qexport.errors import InputError


def _dump(tmp_path: Path, *args: str) -> tuple[int, str, Path]:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["dump", *args, "-o", str(out)])
    return result.exit_code, result.output, out


def _no_partial_folders(tmp_path: Path) -> None:
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and "partial" in p.name]
    assert leftovers == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "99"], "features has 56 entries, so 99 is out of range"),
        (["--layer", "34"], "features[34] is a relu"),
        (["--layer", "33", "--images", "128"], "only 0..127 exist"),
        (["--layer", "33", "--images", "x:y"], "is not an index, a range or a list"),
        (["--layer", "33", "--psum-bits", "8"], "layer 33 psums span"),
        (["--layer", "0", "--input-sign", "unsigned"], "layer 0 x_int spans [-"),
        (["--layer", "0", "--profile", "course"], "unsigned 4-bit holds [0, 15]"),
        (["--layer", "33", "--profile", "nope.toml"], "no built-in profile of that name"),
        (["--layer", "33", "--format", "txt"], "use it with --profile course"),
        (["--layer", "33", "--checkpoint", "missing.pth"], "does not exist"),
        (["--layer", "33", "--data-dir", "no_such_dir"], "--data-dir"),
    ],
    ids=[
        "layer-out-of-range",
        "layer-not-conv",
        "images-out-of-range",
        "images-garbage",
        "psum-overflow",
        "negative-input-unsigned",
        "course-negative-input",
        "unknown-profile",
        "txt-needs-course",
        "missing-checkpoint",
        "missing-cifar",
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    code, output, out = _dump(tmp_path, *args)
    assert code == 2, output
    assert message in output
    assert output.startswith("error: ") and output.count("error: ") == 1
    assert "Traceback" not in output
    assert not out.exists()
    _no_partial_folders(tmp_path)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 3, 32), dtype=np.float32), "has shape [2, 3, 32]"),
        (np.zeros((2, 32, 32, 3), dtype=np.int32), "dtype int32"),
        (np.full((1, 3, 32, 32), np.nan, dtype=np.float32), "NaN/Inf"),
    ],
    ids=["wrong-shape", "wrong-dtype", "nan"],
)
def test_bad_input_arrays(tmp_path: Path, array: np.ndarray, message: str) -> None:
    path = tmp_path / "x.npy"
    np.save(path, array)
    code, output, out = _dump(tmp_path, "--layer", "33", "--input", str(path))
    assert code == 2, output
    assert message in output
    assert not out.exists()


def test_read_only_output_folder(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        probe = parent / "probe"
        try:
            probe.mkdir()
        except PermissionError:
            pass
        else:  # root ignores permissions: simulate with a path under a file instead
            probe.rmdir()
            parent.chmod(0o755)
            (parent / "file").write_text("x")
            parent = parent / "file"
        result = CliRunner().invoke(main, ["dump", "--layer", "33", "-o", str(parent / "out")])
        assert result.exit_code == 2, result.output
        # what is wrong with the path: denied (a user), or a file where a folder must be (root)
        assert "permission denied" in result.output or "is a file, not a folder" in result.output
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_existing_foreign_folder_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    result = CliRunner().invoke(main, ["dump", "--layer", "33", "-o", str(out), "--force"])
    assert result.exit_code == 2
    assert "was not written by qexport" in result.output
    assert (out / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "manifest",
    ['{"tool": {"qexport_version": "0.1.0"}}\n', '{"qexport_version": "0.1.0"', "[]\n"],
    ids=["key-nested-elsewhere", "broken-json", "not-an-object"],
)
def test_a_manifest_that_only_looks_like_ours_is_not_replaced(tmp_path: Path, manifest: str) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text(manifest)
    result = CliRunner().invoke(main, ["dump", "--layer", "33", "-o", str(out), "--force"])
    assert result.exit_code == 2
    assert "was not written by qexport" in result.output
    assert (out / "manifest.json").read_text() == manifest


def test_failed_replacement_keeps_the_old_set(tmp_path: Path) -> None:
    out = tmp_path / "set"
    assert CliRunner().invoke(main, ["dump", "--layer", "33", "-o", str(out)]).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = CliRunner().invoke(
        main, ["dump", "--layer", "33", "--psum-bits", "4", "-o", str(out), "--force"]
    )
    assert result.exit_code == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    _no_partial_folders(tmp_path)


def test_stale_staging_folder_of_a_killed_run_is_cleaned(tmp_path: Path) -> None:
    out = tmp_path / "set"
    stale = tmp_path / ".set.abc123.partial"
    stale.mkdir()
    (stale / "half.hex").write_text("0\n")
    assert CliRunner().invoke(main, ["dump", "--layer", "33", "-o", str(out)]).exit_code == 0
    assert not stale.exists()
    assert (out / "manifest.json").is_file()


def test_sigterm_leaves_old_set_and_no_partial_folder(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "set"
    assert CliRunner().invoke(main, ["dump", "--layer", "33", "-o", str(out)]).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # 128 images: seconds of streaming layers into the staging folder, so the signal lands mid-export
    proc = subprocess.Popen(
        [sys.executable, "-m", "qexport", "dump", "--all", "--images", "0:128", "-o", str(out), "--force"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob(".set.*.partial/*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0, "the export ended before the signal; it must be caught mid-export"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    _no_partial_folders(tmp_path)


def test_a_failure_mid_export_removes_the_layers_already_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qexport import api
    from qexport.errors import CheckFailed

    real_checked = api._checked
    streamed: list[list[str]] = []

    def fail_on_third_layer(t: Any, x_int: Any = None) -> Any:
        # files of the layers before are already on disk, in the staging folder
        streamed.append(sorted(p.name for p in tmp_path.glob(".set.*.partial/layer*/*")))
        if len(streamed) == 3:
            raise CheckFailed("layer 7: injected failure")
        return real_checked(t, x_int)

    monkeypatch.setattr(api, "_checked", fail_on_third_layer)
    with pytest.raises(CheckFailed, match="injected"):
        api.export(api.SourceOptions(), None, tmp_path / "set", "hex")
    assert streamed[0] == [] and len(streamed[2]) == 8  # two layers of 4 files each were written
    assert not (tmp_path / "set").exists()
    _no_partial_folders(tmp_path)


def test_output_folder_is_checked_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qexport import api

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    monkeypatch.setattr(api, "load", lambda opts: pytest.fail("loaded a model before checking -o"))
    with pytest.raises(InputError, match="was not written by qexport"):
        api.export(api.SourceOptions(), [33], out, "hex")
