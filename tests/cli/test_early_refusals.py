"""Issue 13, items 7, 8 and 10: honest checkpoint refusals, output folders checked before any work,
and a bits config that refuses typos, missing files and widths that are not integers 1..8."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from helpers import course_checkpoint

from qexport import api, study
from qexport.api import SourceOptions
from qexport.cli import study as cli_study
from qexport.cli.main import main
from qexport.cli.train import train_command
from qexport.errors import InputError
from qexport.frontend.bits import read_bits_config
from qexport.frontend.checkpoint import load_checkpoint
from qexport.frontend.models.network import conv_table
from qexport.frontend.models.vgg import BUILTIN, _from_cfg, build_model
from qexport.train import checkpoints, loop

SMALL = _from_cfg("small_course", [16, "M", 32, "M", 8, "S8", 32, "M", 32, "M", 32, "M"])
GRADUAL = BUILTIN["VGG16_quant_gradual"]
# a Python exception's name (KeyError, UnpicklingError, …) has no place in a user's message
EXCEPTION_NAME = re.compile(r"\b\w*(Error|Exception)\b")


def _refusal(path: Path) -> str:
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert not EXCEPTION_NAME.search(message), message
    return message


# --- item 7: what a file that is not a checkpoint is called ---------------------------------

TEXTS = {
    "prose": ("hello world\n", "hello world"),
    "json": ('{"state_dict": {}}\n', '{"state_dict": {}}'),
    "python": ("\n# my model\nweights = [1, 2]\n", "# my model"),
    "csv-crlf": ("1,2,3\r\n4,5,6\r\n", "1,2,3"),
    "utf8": ("héllo wörld\n", "héllo wörld"),
    "protocol-0-pickle-text": ("cos\nsystem\n(S'ls'\ntR.", "cos"),
}


@pytest.mark.parametrize(("text", "first"), TEXTS.values(), ids=TEXTS.keys())
def test_a_text_file_is_called_text_without_torch_internals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, first: str
) -> None:
    path = tmp_path / "notes.pth"
    path.write_bytes(text.encode("utf-8"))
    calls: list[Path] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a[0]))
    message = _refusal(path)
    assert message == (
        f"checkpoint {path} is not a PyTorch checkpoint (it looks like text, starting {first!r}); "
        "give the .pth/.pth.tar file that torch.save wrote"
    )
    assert calls == []  # told from its first bytes: torch never reads it


def test_binary_garbage_is_not_a_zip_or_pickle(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(bytes([0, 1, 2, 3, 0xFF, 0x80]) * 50)
    message = _refusal(path)
    assert message.startswith(
        f"checkpoint {path} is not a PyTorch checkpoint (not a zip or pickle file: it starts with the "
        "bytes 00 01 02 03, where torch.save writes 50 4b 03 04 or 80 02); give the .pth/.pth.tar"
    )


def test_a_git_lfs_pointer_says_to_fetch_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model_best.pth.tar"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 80611243\n")
    assert "is a Git LFS pointer (a small text file), not the checkpoint itself; fetch the real file " in (
        _refusal(path)
    )


def test_an_html_page_is_named(tmp_path: Path) -> None:
    path = tmp_path / "model_best.pth.tar"
    path.write_text("\n<!DOCTYPE html>\n<html><body>Sign in</body></html>\n")
    assert "is not a PyTorch checkpoint (it looks like text: an HTML page" in _refusal(path)


def _zip_checkpoint(tmp_path: Path) -> bytes:
    return course_checkpoint(tmp_path / "whole.pth", SMALL).read_bytes()


def test_a_truncated_zip_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "half.pth"
    path.write_bytes(_zip_checkpoint(tmp_path)[:5000])
    assert _refusal(path) == (
        f"checkpoint {path} is not a readable PyTorch checkpoint (truncated or damaged: it starts as a "
        "zip archive, as torch.save writes, but its end is missing); re-copy or re-save it"
    )


def test_a_truncated_legacy_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save({"w": torch.zeros(300)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:60])
    assert _refusal(path) == (
        f"checkpoint {path} is not a readable PyTorch checkpoint (truncated or damaged: a pickle, as "
        "torch.save writes, that ends early); re-copy or re-save it"
    )


def test_a_plain_pickle_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"features.0.weight": [1.0, 2.0]}, protocol=2))
    assert f"checkpoint {path} is a pickle file but not a PyTorch checkpoint, or a damaged one" in (
        _refusal(path)
    )


def test_a_zip_of_something_else_says_to_unzip(tmp_path: Path) -> None:
    path = tmp_path / "result.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "see model_best.pth.tar")
    assert f"checkpoint {path} is a zip archive but not a PyTorch checkpoint (it holds no data.pkl" in (
        _refusal(path)
    )


def test_the_legacy_format_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save(
        {"state_dict": {"features.0.weight": torch.ones(2)}}, path, _use_new_zipfile_serialization=False
    )
    assert torch.equal(load_checkpoint(path).state_dict["features.0.weight"], torch.ones(2))


def test_running_out_of_memory_is_not_called_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = course_checkpoint(tmp_path / "model_best.pth.tar", SMALL)
    size = path.stat().st_size

    def no_memory(*args: Any, **kwargs: Any) -> None:
        raise MemoryError

    monkeypatch.setattr(torch, "load", no_memory)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"the machine ran out of memory loading checkpoint {path} (")
    assert f"{size} bytes)" in message and "more RAM" in message
    assert "not a readable" not in message and "re-copy" not in message
    assert isinstance(info.value.__cause__, MemoryError)


def test_cli_text_checkpoint_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("hello world\n")
    result = CliRunner().invoke(main, ["dump", "--layer", "33", "--checkpoint", str(path), "-o", "out"])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: checkpoint {path} is not a PyTorch checkpoint (it looks like text, starting "
        "'hello world'); give the .pth/.pth.tar file that torch.save wrote\n"
    )


# --- item 8: eval / sensitivity / search / train check the output folder before any work ---------

STUDY_COMMANDS = {
    "eval": cli_study.eval_command,
    "sensitivity": cli_study.sensitivity_command,
    "search": cli_study.search_command,
}


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any attempt to load the model or images (``api.load``, which each command hands the study)."""
    calls: list[str] = []

    def load(*args: Any, **kwargs: Any) -> None:
        calls.append("load")
        raise InputError("the model was loaded")

    monkeypatch.setattr(api, "load", load)
    return calls


def _earlier_export(folder: Path) -> str:
    folder.mkdir()
    manifest = '{"command": "eval", "qexport_version": "0.1.0"}\n'
    (folder / "manifest.json").write_text(manifest)
    (folder / "eval.json").write_text("{}\n")
    return manifest


@pytest.mark.parametrize("command", STUDY_COMMANDS.values(), ids=STUDY_COMMANDS.keys())
def test_an_existing_export_is_refused_before_the_model_loads(
    tmp_path: Path, no_model: list[str], command: Any
) -> None:
    out = tmp_path / "out"
    manifest = _earlier_export(out)
    result = CliRunner().invoke(command, ["-o", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: output folder {out} already holds a qexport export; pass --force to replace it, or "
        "choose another -o folder\n"
    )
    assert no_model == []
    assert (out / "manifest.json").read_text() == manifest


@pytest.mark.parametrize("command", STUDY_COMMANDS.values(), ids=STUDY_COMMANDS.keys())
def test_a_foreign_folder_is_refused_before_the_model_loads(
    tmp_path: Path, no_model: list[str], command: Any
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    result = CliRunner().invoke(command, ["-o", str(out), "--force"])
    assert result.exit_code == 2, result.output
    assert "is not empty and was not written by qexport" in result.output
    assert no_model == []
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no staging folder left beside it


@pytest.mark.parametrize("command", STUDY_COMMANDS.values(), ids=STUDY_COMMANDS.keys())
def test_force_lets_the_work_start_and_a_failure_keeps_the_old_export(
    tmp_path: Path, no_model: list[str], command: Any
) -> None:
    out = tmp_path / "out"
    manifest = _earlier_export(out)
    result = CliRunner().invoke(command, ["-o", str(out), "--force"])
    assert result.exit_code == 2, result.output
    assert result.output == "error: the model was loaded\n"
    assert no_model == ["load"]
    assert (out / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_search_bits_config_reads_back_so_from_stops_at_8() -> None:
    with pytest.raises(InputError, match=r"^--from 9: activation bits must be 1\.\.8$"):
        study.run_search(SourceOptions(), Path("never"), load=api.load, from_bits=9, to_bits=2)
    result = CliRunner().invoke(cli_study.search_command, ["--from", "9"])
    assert result.exit_code == 2 and "9 is not in the range 1<=x<=8" in result.output


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any attempt of ``qexport train`` to load CIFAR-10 (its first piece of work)."""
    calls: list[str] = []

    def loaders(*args: Any, **kwargs: Any) -> None:
        calls.append("loaders")
        raise InputError("the data was loaded")

    monkeypatch.setattr(loop, "loaders", loaders)
    return calls


def _train(*args: str | Path) -> Result:
    return CliRunner().invoke(train_command, [str(a) for a in args])


def _earlier_run(out: Path) -> Path:
    run = out / "VGG16_quant_gradual"
    run.mkdir(parents=True)
    for name in ("checkpoint.pth", "model_best.pth.tar", "metrics.jsonl"):
        (run / name).write_bytes(b"an earlier run")
    return run


def test_train_refuses_an_earlier_run_before_loading_data(tmp_path: Path, no_data: list[str]) -> None:
    run = _earlier_run(tmp_path / "result")
    result = _train("--data-dir", tmp_path / "data", "--out", tmp_path / "result", "--epochs", "1")
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: run folder {run} already holds checkpoint.pth, model_best.pth.tar, metrics.jsonl from an "
        f"earlier run; pass --resume {run / 'checkpoint.pth'} to continue it, --force to train from "
        "scratch over it, or choose another --out folder\n"
    )
    assert no_data == []
    assert (run / "model_best.pth.tar").read_bytes() == b"an earlier run"


@pytest.mark.parametrize("flag", ["--force", "--resume"])
def test_train_force_or_resume_goes_on_to_the_data(tmp_path: Path, no_data: list[str], flag: str) -> None:
    run = _earlier_run(tmp_path / "result")
    extra = [flag] if flag == "--force" else [flag, run / "checkpoint.pth"]
    result = _train("--data-dir", tmp_path / "data", "--out", tmp_path / "result", *extra)
    assert result.exit_code == 2, result.output
    assert result.output == "error: the data was loaded\n"
    assert no_data == ["loaders"]


def test_train_run_folder_that_is_a_file_is_refused_before_loading_data(
    tmp_path: Path, no_data: list[str]
) -> None:
    (tmp_path / "result").mkdir()
    run = tmp_path / "result" / "VGG16_quant_gradual"
    run.write_text("not a folder")  # click itself refuses an --out that is a file
    result = _train("--data-dir", tmp_path / "data", "--out", tmp_path / "result")
    assert result.exit_code == 2
    assert result.output == f"error: output {run} exists and is a file; choose another --out folder\n"
    assert no_data == []


def test_train_from_scratch_clears_the_earlier_runs_files(tmp_path: Path) -> None:
    # a fresh run whose first epoch scores 0 % writes no model_best: the old one must not survive
    run = _earlier_run(tmp_path / "result")
    checkpoints.prepare_run_dir(run, fresh=True)
    assert list(run.iterdir()) == []
    resumed = _earlier_run(tmp_path / "other")
    checkpoints.prepare_run_dir(resumed, fresh=False)
    assert sorted(p.name for p in resumed.iterdir()) == [
        "checkpoint.pth",
        "metrics.jsonl",
        "model_best.pth.tar",
    ]


# --- item 10: the bits config -----------------------------------------------------------------


def _config(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


CONV_OF_33 = GRADUAL.qconv_indices().index(33)
TABLE = conv_table(build_model(GRADUAL), GRADUAL.name)
EVERY = {name: 3 for name in TABLE.names()}

VALID = {
    "act_bits-index": ({"act_bits": {"33": 2}}, {"features.33": 2}, {}),
    "act_bits-conv-number": ({"act_bits": {f"conv {CONV_OF_33}": 3}}, {"features.33": 3}, {}),
    "act_bits-features-bracket": ({"act_bits": {"features[33]": 1}}, {"features.33": 1}, {}),
    "act_bits-module-path": ({"act_bits": {"features.33": 1}}, {"features.33": 1}, {}),
    "flat": ({"33": 8, "conv 0": 4}, {"features.33": 8, "features.0": 4}, {}),
    "empty": ({"act_bits": {}}, {}, {}),
    "w_bits": ({"w_bits": {"33": 2}}, {}, {"features.33": 2}),
    "every-layer-and-one": ({"act_bits": {"*": 3, "33": 2}}, EVERY | {"features.33": 2}, {}),
}


@pytest.mark.parametrize(("content", "act", "w"), VALID.values(), ids=VALID.keys())
def test_valid_configs_still_read(
    tmp_path: Path, content: object, act: dict[str, int], w: dict[str, int]
) -> None:
    config = read_bits_config(_config(tmp_path, content), TABLE)
    assert (config.act, config.w) == (act, w)


INVALID = {
    "act_bit-typo": (
        {"act_bit": {"33": 2}},
        r"unknown top-level key 'act_bit'; did you mean 'act_bits'\? The file is \{\"act_bits\": ",
    ),
    "Act_Bits-case": (
        {"Act_Bits": {"33": 2}},
        r"unknown top-level key 'Act_Bits'; did you mean 'act_bits'\?",
    ),
    "unrelated-flat-key": (
        {"layers": {"33": 2}},
        r"unknown top-level key 'layers'; The file is .*a flat object whose keys are layers",
    ),
    "extra-key-beside-act_bits": (
        {"act_bits": {"33": 2}, "comment": "mine"},
        r"unknown top-level key 'comment'; the only ones are 'act_bits' and 'w_bits'",
    ),
    "string-width": (
        {"act_bits": {"33": "2"}},
        r"layer '33' \(features\[33\]\): act_bits \"2\" \(a string\) is not an integer; give a JSON "
        r"integer 1\.\.8, e\.g\. \{\"act_bits\": \{\"33\": 2\}\}$",
    ),
    "9-bits": ({"act_bits": {"33": 9}}, r"layer '33' \(features\[33\]\): act_bits 9 is outside 1\.\.8; "),
    "0-bits": ({"33": 0}, r"layer '33' \(features\[33\]\): act_bits 0 is outside 1\.\.8; "),
    "negative": ({"act_bits": {"33": -2}}, r"act_bits -2 is outside 1\.\.8"),
    "bool": ({"act_bits": {"33": True}}, r"act_bits true \(true/false\) is not an integer"),
    "float": ({"act_bits": {"33": 2.0}}, r"act_bits 2\.0 \(a float\) is not an integer"),
    "null": ({"act_bits": {"33": None}}, r"layer '33' \(features\[33\]\): act_bits null is not an integer"),
    "list": ({"act_bits": {"33": [2]}}, r"act_bits \[2\] \(a list\) is not an integer"),
    "conv-number-names-the-layer": (
        {"act_bits": {f"conv {CONV_OF_33}": 9}},
        rf"layer 'conv {CONV_OF_33}' \(features\[33\]\): act_bits 9 is outside",
    ),
    "one-layer-twice": (
        {"act_bits": {"33": 2, f"conv {CONV_OF_33}": 3}},
        rf"'33' and 'conv {CONV_OF_33}' both name features\[33\]; give each layer once",
    ),
    "json-key-twice": ('{"act_bits": {"33": 2, "33": 3}}', r"key '33' is given twice; give each key once"),
    "act_bits-not-an-object": (
        {"act_bits": [2, 2]},
        r"'act_bits' holds \[2, 2\] \(a list\); expected an object",
    ),
    "not-an-object": ([{"33": 2}], r"expected a JSON object, \{\"act_bits\": "),
    "bad-layer-name": (
        {"act_bits": {"last": 2}},
        r"layer last is not a quantized conv layer of VGG16_quant_gradual",
    ),
    "w_bits-1": ({"w_bits": {"33": 1}}, r"layer '33' \(features\[33\]\): w_bits 1 is outside 2\.\.8; "),
    "broken-json": ('{"act_bits": {"33": 2}', r"is not valid JSON \(line 1 column 23: "),
}


@pytest.mark.parametrize(("content", "message"), INVALID.values(), ids=INVALID.keys())
def test_invalid_configs_say_what_and_where(tmp_path: Path, content: object, message: str) -> None:
    path = _config(tmp_path, content)
    with pytest.raises(InputError, match=rf"^--bits-config {re.escape(str(path))}[: ].*{message}"):
        read_bits_config(path, TABLE)


def test_a_missing_config_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(InputError, match=rf"^--bits-config {re.escape(str(path))} does not exist; check the"):
        read_bits_config(path, TABLE)


def test_a_folder_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r" is a folder; give the JSON file, e\.g\. .*/bits_config\.json$"):
        read_bits_config(tmp_path, TABLE)


def test_a_binary_config_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(InputError, match=r" is not UTF-8 text; give a JSON file$"):
        read_bits_config(path, TABLE)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"act_bit": {"33": 2}}, "unknown top-level key 'act_bit'; did you mean 'act_bits'?"),
        (
            {"act_bits": {"33": "2"}},
            """layer '33' (features[33]): act_bits "2" (a string) is not an integer""",
        ),
    ],
    ids=["typo", "string"],
)
def test_cli_bad_config_exits_2_without_a_traceback(tmp_path: Path, content: object, message: str) -> None:
    path = _config(tmp_path, content)
    result = CliRunner().invoke(main, ["dump", "--layer", "33", "--bits-config", str(path), "-o", "out"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.output.startswith(f"error: --bits-config {path}: ") and message in result.output
    assert "Traceback" not in result.output and len(result.output.splitlines()) == 1
    assert not Path("out").exists()
