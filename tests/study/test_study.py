"""eval / sensitivity / search (seed 000's mixed-precision study): exactness against the seed loop.

A small VGG-style model is trained inside the tests on a synthetic task (the class is the brightest
quadrant), so 2-bit activations really change its accuracy. The seed notebook's loop (the whole
model re-evaluated per variant) is transcribed below and must agree with the cached evaluation to
the bit: every accuracy, every loss, every decision.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from quadrants import quadrant_study, trained_on_quadrants
from quadrants import seed_run as seed_run_on

from qexport import study
from qexport.cli import study as cli_study
from qexport.frontend.bits import read_bits_config
from qexport.frontend.models.network import conv_table
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.vgg import VGGQuant, _from_cfg, build_model

BATCH = 64


# ------------------------------------------------------------------------------------------
# the small trained model


@pytest.fixture(scope="module")
def tiny() -> tuple[VGGQuant, torch.Tensor, torch.Tensor]:
    """Five QuantConv2d layers, trained for 150 steps at 4 bits: (model, test images, labels)."""
    torch.manual_seed(0)
    arch = replace(_from_cfg("tiny", [4, "M", 8, "M", 8, "M", 16, "M", 16, "M"]), num_classes=4)
    model = build_model(arch)
    test_x, test_y = trained_on_quadrants(model)
    return model, test_x, test_y


def _study(model: VGGQuant, images: torch.Tensor, labels: torch.Tensor) -> study.Study:
    return quadrant_study(model, images, labels, "tiny")


@pytest.fixture(scope="module")
def seed_run(tiny: tuple[VGGQuant, torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """The seed loop on the tiny model, with epsilon halfway between the smallest and largest drop."""
    run = seed_run_on(*tiny, BATCH)
    return run


# ------------------------------------------------------------------------------------------
# the library against the seed loop


def test_seed_loop_makes_both_decisions(seed_run: dict[str, Any]) -> None:
    verdicts = {accepted for _, accepted, *_ in seed_run["decisions"]}
    assert verdicts == {True, False}, seed_run["decisions"]


def test_sensitivity_equals_the_seed_loop(
    tiny: tuple[VGGQuant, torch.Tensor, torch.Tensor], seed_run: dict[str, Any]
) -> None:
    model, x, y = tiny
    sens = study.sensitivity(_study(model, x, y), 4, 2, batch_size=BATCH)
    assert sens.baseline.accuracy == seed_run["acc"]
    assert sens.baseline.loss == seed_run["loss"]
    ours = [(r.conv_number, r.accuracy, r.result.loss, r.drop) for r in sens.ranked]
    seeds = [(r["layer"], r["acc"], r["loss"], r["acc_drop"]) for r in seed_run["ranked"]]
    assert ours == seeds
    assert [r.layer for r in sens.rows] == model.arch.qconv_indices()
    assert all(m.act_bit == 4 for m in model.features if isinstance(m, QuantConv2d))


@pytest.mark.parametrize("cache", ["none", "one-point", "unbounded"])
def test_greedy_equals_the_seed_loop_for_any_cache(
    tiny: tuple[VGGQuant, torch.Tensor, torch.Tensor], seed_run: dict[str, Any], cache: str
) -> None:
    model, x, y = tiny
    # one point: room for the smallest conv input only, so runs start from mixed places
    smallest = 16 * 2 * 2 * 4 * x.shape[0]
    cache_bytes = {"none": 0, "one-point": smallest, "unbounded": 1 << 40}[cache]
    result = study.search(_study(model, x, y), seed_run["epsilon"], batch_size=BATCH, cache_bytes=cache_bytes)
    ours = [(s.conv_number, s.accepted, s.result.accuracy, s.result.loss, s.drop) for s in result.steps]
    assert ours == seed_run["decisions"]
    assert [result.act_bits()[f"features.{c}"] for c in model.arch.qconv_indices()] == seed_run["precisions"]
    assert result.result.accuracy == seed_run["final"]
    assert all(m.act_bit == 4 for m in model.features if isinstance(m, QuantConv2d))


def test_sensitivity_runs_each_prefix_once(tiny: tuple[VGGQuant, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = tiny
    calls: Counter[int] = Counter()
    convs = model.arch.qconv_indices()
    hooks = [model.features[i].register_forward_hook(lambda *_, i=i: calls.update([i])) for i in convs]
    try:
        study.sensitivity(_study(model, x, y), batch_size=BATCH)
    finally:
        for hook in hooks:
            hook.remove()
    batches = x.shape[0] // BATCH
    # a batch runs conv k for the baseline and for the variants of convs 0..k (the seed: 6 times);
    # the 1 is the one-image pass that reads the activation shapes
    assert [calls[i] for i in convs] == [batches * (k + 2) + 1 for k in range(len(convs))]


@pytest.mark.parametrize("epsilon", ["seed", 1.0, 2.5, 5.0])
def test_budget_ties_or_beats_greedy(
    tiny: tuple[VGGQuant, torch.Tensor, torch.Tensor], seed_run: dict[str, Any], epsilon: float | str
) -> None:
    model, x, y = tiny
    epsilon = seed_run["epsilon"] if epsilon == "seed" else epsilon
    assert isinstance(epsilon, float)
    result = study.search(_study(model, x, y), epsilon, strategy="budget", batch_size=BATCH)
    assert result.budget is not None
    greedy_bits = sum(study.saved_bits(result.convs, result.greedy_names, 4, 2).values())
    assert sum(result.saved_bits().values()) >= greedy_bits
    assert result.drop <= epsilon
    # the verifying evaluation is the plain model's accuracy for that configuration
    check = _study(model, x, y)
    for c in result.convs:
        model.features[c.layer].act_bit = 2 if c.name in result.low_names else 4
    try:
        assert study.evaluate(check, BATCH) == result.result
    finally:
        for c in result.convs:
            model.features[c.layer].act_bit = 4


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(st.integers(-3, 8), st.integers(0, 20)), min_size=0, max_size=7),
    st.integers(0, 12),
)
def test_knapsack_is_optimal(items: list[tuple[int, int]], capacity: int) -> None:
    weights = [w for w, _ in items]
    values = [v for _, v in items]
    chosen = study.knapsack(weights, values, capacity)
    assert sum(weights[i] for i in chosen) <= capacity
    best = max(
        (
            sum(values[i] for i in subset)
            for k in range(len(items) + 1)
            for subset in itertools.combinations(range(len(items)), k)
            if sum(weights[i] for i in subset) <= capacity
        ),
        default=0,
    )
    assert sum(values[i] for i in chosen) == best


def test_ranking_sorts_by_drop_and_keeps_conv_order_on_ties() -> None:
    def row(n: int, correct: int) -> study.SensitivityRow:
        r = study.EvalResult(correct, 100, 0.5)
        return study.SensitivityRow(n, f"features.{3 * n}", r, 90.0 - r.accuracy, 3 * n)

    sens = study.Sensitivity(
        4, 2, study.EvalResult(90, 100, 0.4), (row(0, 80), row(1, 89), row(2, 91), row(3, 89))
    )
    assert [r.conv_number for r in sens.ranked] == [2, 1, 3, 0]


def test_saved_bits_use_the_real_input_shapes(tiny: tuple[VGGQuant, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = tiny
    infos = study.conv_infos(_study(model, x, y))
    assert [c.input_shape for c in infos] == [(3, 32, 32), (4, 16, 16), (8, 8, 8), (8, 4, 4), (16, 2, 2)]
    assert (infos[1].name, infos[1].layer, infos[1].title) == ("features.4", 4, "conv 1 (features[4])")
    assert study.saved_bits(infos, ["features.4", "features.16"], 4, 2) == {
        "features.0": 0,
        "features.4": 2048,
        "features.8": 0,
        "features.12": 0,
        "features.16": 128,
    }


# ------------------------------------------------------------------------------------------
# the commands


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def tiny_files(
    tiny: tuple[VGGQuant, torch.Tensor, torch.Tensor], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """checkpoint.pth, images.npy (normalised float) and labels.npy of the tiny model's test set."""
    model, x, y = tiny
    folder = tmp_path_factory.mktemp("tiny")
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, folder / "checkpoint.pth")
    np.save(folder / "images.npy", x.numpy())
    np.save(folder / "labels.npy", y.numpy())
    return folder


def _tiny_args(folder: Path) -> list[str]:
    return [
        "--checkpoint", str(folder / "checkpoint.pth"),
        "--input", str(folder / "images.npy"),
        "--labels", str(folder / "labels.npy"),
        "--batch-size", str(BATCH),
    ]  # fmt: skip


def test_importing_the_commands_does_not_import_torch() -> None:
    code = "import sys; import qexport.cli.study; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("command", ["eval_command", "sensitivity_command", "search_command"])
def test_help_ends_with_an_example(runner: CliRunner, command: str) -> None:
    result = runner.invoke(getattr(cli_study, command), ["--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "qexport " in result.output.split("Example:")[1]
    assert "[default: all]" in result.output


def test_eval_prints_the_seed_line(
    runner: CliRunner, tiny_files: Path, seed_run: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "e"
    result = runner.invoke(cli_study.eval_command, [*_tiny_args(tiny_files), "-o", str(out)])
    assert result.exit_code == 0, result.output
    line = f"[Checkpoint model] Test Accuracy: {seed_run['acc']:.2f}% | Test Loss: {seed_run['loss']:.4f}"
    assert line in result.output.splitlines()
    report = json.loads((out / "eval.json").read_text())
    assert report["accuracy"] == seed_run["acc"] and report["loss"] == seed_run["loss"]
    assert report["labels"] == "labels.npy" and report["count"] == 512
    again = runner.invoke(cli_study.eval_command, [*_tiny_args(tiny_files), "-o", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


def test_eval_on_the_demo_uses_labelled_pseudo_labels(runner: CliRunner, tmp_path: Path) -> None:
    args = ["--limit", "6", "--batch-size", "4", "-o", str(tmp_path / "d")]
    result = runner.invoke(cli_study.eval_command, args)
    assert result.exit_code == 0, result.output
    note = "demo, untrained: accuracy vs the 4-bit model's own predictions"
    assert re.search(
        r"^\[Demo model\] Test Accuracy: 100\.00% \| Test Loss: \d+\.\d{4}  \(" + note, result.output, re.M
    )
    report = json.loads((tmp_path / "d" / "eval.json").read_text())
    assert report["label"] == note and report["labels"] == "pseudo" and report["count"] == 6


def test_search_prints_seed_decisions_and_writes_a_readable_bits_config(
    runner: CliRunner,
    tiny: tuple[VGGQuant, torch.Tensor, torch.Tensor],
    tiny_files: Path,
    seed_run: dict[str, Any],
    tmp_path: Path,
) -> None:
    eps = seed_run["epsilon"]
    out = tmp_path / "s"
    result = runner.invoke(
        cli_study.search_command, [*_tiny_args(tiny_files), "--epsilon", str(eps), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        f"=> Start greedy search from all-4bit baseline: acc={seed_run['acc']:.2f}%, epsilon={eps:.2f}%"
        in lines
    )
    decision_lines = [line for line in lines if line.startswith((" ACCEPT", " REJECT"))]
    for (idx, accepted, acc, _, drop), line in zip(seed_run["decisions"], decision_lines, strict=True):
        head = f"layer {idx:2d} -> 2bit | acc={acc:.2f}%, drop={drop:.2f}%"
        expected = f" ACCEPT {head}" if accepted else f" REJECT {head} (> {eps:.2f}%)"
        assert line.startswith(expected + " | features[")
    assert str(seed_run["precisions"]) in lines
    assert f"Final mixed-precision accuracy      : {seed_run['final']:.2f}%" in lines

    table = conv_table(tiny[0], "tiny")
    bits = read_bits_config(out / "bits_config.json", table).act
    assert [bits[name] for name in table.names()] == seed_run["precisions"]
    summary = json.loads((out / "summary.json").read_text())
    low = seed_run["precisions"].count(2)
    assert summary["low_bit_layers"] == low and summary["low_bit_share"] == low / 5
    assert summary["final"]["accuracy"] == seed_run["final"]
    per_layer = summary["activation_memory"]["per_layer"]
    assert summary["activation_memory"]["saved_bits"] == sum(p["saved_bits"] for p in per_layer)
    assert all(p["saved_bits"] == (p["input_elements"] * 2 if p["act_bit"] == 2 else 0) for p in per_layer)

    check = runner.invoke(
        cli_study.eval_command,
        [*_tiny_args(tiny_files), "--bits-config", str(out / "bits_config.json"), "-o", str(tmp_path / "e")],
    )
    assert check.exit_code == 0, check.output
    assert f"Test Accuracy: {seed_run['final']:.2f}%" in check.output


def test_sensitivity_writes_table_csv_and_chart(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "sens"
    result = runner.invoke(
        cli_study.sensitivity_command, ["--limit", "6", "--batch-size", "4", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "[All-4bit activation] Test Accuracy: 100.00%" in result.output
    rows = re.findall(
        r"^  Layer +(\d+): acc=([\d.]+)%, drop=(-?[\d.]+)% \| features\[(\d+)\]$", result.output, re.M
    )
    assert len(rows) == 17
    report = json.loads((out / "sensitivity.json").read_text())
    assert [r["drop"] for r in report["rows"]] == sorted(r["drop"] for r in report["rows"])
    assert [(str(r["conv"]), str(r["layer"])) for r in report["rows"]] == [
        (n, layer) for n, _, _, layer in rows
    ]
    table = list(csv.DictReader(io.StringIO((out / "sensitivity.csv").read_text())))
    assert [int(r["conv"]) for r in table] == [r["conv"] for r in report["rows"]]
    with Image.open(out / "sensitivity.png") as png:
        assert png.format == "PNG" and png.size == (960, 58 + 22 * 17 + 44)


def test_search_budget_on_the_demo(runner: CliRunner, tmp_path: Path) -> None:
    args = [
        "--limit",
        "6",
        "--batch-size",
        "4",
        "--epsilon",
        "20",
        "--strategy",
        "budget",
        "-o",
        str(tmp_path / "b"),
    ]
    result = runner.invoke(cli_study.search_command, args)
    assert result.exit_code == 0, result.output
    assert "=> Budget search" in result.output
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["strategy"] == "budget" and summary["final"]["drop"] <= 20
    assert summary["activation_memory"]["saved_bits"] >= sum(
        p["input_elements"] * 2
        for p in summary["activation_memory"]["per_layer"]
        if p["layer"] in summary["greedy"]["layers"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "x.npy"], "has no labels; pass --labels"),
        (["--input", "x.npy", "--labels", "short.npy"], "holds 3 labels but image 3 is used"),
        (["--input", "x.npy", "--labels", "bad.npy"], "the model has classes 0..9"),
        (["--from", "2", "--to", "4"], "--to 4 is not below --from 2"),
    ],
    ids=["input-without-labels", "too-few-labels", "label-out-of-range", "to-above-from"],
)
def test_bad_input_exits_2_with_the_fix(
    runner: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 32, 32), dtype=np.float32))
    np.save(tmp_path / "short.npy", np.zeros(3, dtype=np.int64))
    np.save(tmp_path / "bad.npy", np.array([0, 1, 2, 10], dtype=np.int64))
    args = [a if not a.endswith(".npy") else str(tmp_path / a) for a in args]
    result = runner.invoke(cli_study.sensitivity_command, [*args, "-o", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_progress_bar_is_quiet_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with cli_study._Bars() as bars:
        assert not bars.enabled
        bars("evaluate", 1, 2)
        assert bars.bar is None


def test_the_study_never_imports_the_api() -> None:
    # the dependency runs cli -> api -> study: the CLI hands the study api.load
    code = "import sys; import qexport.study; print('qexport.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
