"""`qexport check` compares hashes first and decodes only the files whose hash differs (issue 18 item 3)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from qexport.errors import InputError
from qexport.verify import check
from qexport.verify.check import check_set

ROOT = Path(__file__).resolve().parents[2]
SET = ROOT / "vectors" / "gradual33_flat_hex"


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "set"
    shutil.copytree(SET, copy)
    return copy


def _decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every file check decodes (and decode it as before)."""
    seen: list[str] = []
    real = check.compare_file

    def recorded(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[1].path)
        return real(*args, **kwargs)

    monkeypatch.setattr(check, "compare_file", recorded)
    return seen


def test_an_unchanged_set_is_never_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _decodes(monkeypatch)
    result = check_set(_copy(tmp_path), base=ROOT)
    assert result.identical, result.problems
    assert seen == []


def test_only_the_changed_file_is_decoded_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _copy(tmp_path)
    path = copy / "layer33" / "psum.hex"
    lines = path.read_text().splitlines()
    lines[3 + 9] = f"{int(lines[3 + 9], 16) ^ 0b100:0{len(lines[3 + 9])}x}"
    path.write_text("\n".join(lines) + "\n")
    seen = _decodes(monkeypatch)
    result = check_set(copy, base=ROOT)
    assert seen == ["layer33/psum.hex"]
    (problem,) = result.problems
    assert problem.startswith("layer33/psum.hex: 1 value(s) differ; first: word 9 lane 0")


def test_a_changed_coe_file_is_decoded_to_its_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "set"
    shutil.copytree(ROOT / "vectors" / "gradual33_flat_coe", copy)
    (path,) = (copy / "layer33").glob("psum*.coe")
    lines = path.read_text().split("\n")
    header = next(i for i, line in enumerate(lines) if line.startswith("memory_initialization_vector=")) + 1
    word = lines[header + 9]
    digits = word.rstrip(",;")
    lines[header + 9] = f"{int(digits, 16) ^ 1:0{len(digits)}x}" + word[len(digits) :]
    path.write_text("\n".join(lines))
    seen = _decodes(monkeypatch)
    (problem,) = check_set(copy, base=ROOT).problems
    assert seen == ["layer33/psum.coe"]
    assert problem.startswith("layer33/psum.coe: 1 value(s) differ; first: word 9 lane 0")


def test_a_missing_file_fails_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = _copy(tmp_path)
    (copy / "layer33" / "psum.hex").unlink()
    seen = _decodes(monkeypatch)
    result = check_set(copy, base=ROOT)
    assert not result.identical
    assert result.problems == [f"layer33/psum.hex: missing from {copy} (the recipe writes it)"]
    assert seen == []


def test_a_set_without_its_manifest_is_refused(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    (copy / "manifest.json").unlink()
    with pytest.raises(InputError, match="has no manifest.json"):
        check_set(copy, base=ROOT)
