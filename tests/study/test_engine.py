"""eval / sensitivity / search on a ResNet: layers named by module path, whole forward passes.

A small ResNet-CIFAR (one block a stage, widths 4/8/8, float stem: 8 quantized convs, two of them
1x1 stride-2 downsamples) is trained inside the tests on the brightest-quadrant task, so 2-bit
activations change its accuracy. The seed notebook's loop (``tests/seed_loop.py``: every variant
re-evaluated on the whole model, convs in ``model.modules()`` order) must agree with the study to
the bit, through the library and through the commands.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from quadrants import quadrant_study, trained_on_quadrants
from quadrants import seed_run as seed_run_on
from torch import nn

from qexport import study
from qexport.cli import study as cli_study
from qexport.frontend.bits import read_bits_config
from qexport.frontend.models.network import conv_table, quantized_convs
from qexport.frontend.models.resnet import ResNetArch, ResNetQuant, build_resnet
from qexport.frontend.models.vgg import _from_cfg, build_model
from qexport.study.engine import Engine, runs_in_pieces

BATCH = 64
NAMES = [
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer2.0.conv1",
    "layer2.0.conv2",
    "layer2.0.downsample.0",
    "layer3.0.conv1",
    "layer3.0.conv2",
    "layer3.0.downsample.0",
]


@pytest.fixture(scope="module")
def r8() -> tuple[ResNetQuant, torch.Tensor, torch.Tensor]:
    """The ResNet trained for 150 steps at 4 bits: (model, test images, labels)."""
    torch.manual_seed(0)
    model = build_resnet(ResNetArch("r8", blocks=(1, 1, 1), widths=(4, 8, 8), num_classes=4))
    test_x, test_y = trained_on_quadrants(model)
    return model, test_x, test_y


def _study(model: ResNetQuant, images: torch.Tensor, labels: torch.Tensor) -> study.Study:
    return quadrant_study(model, images, labels, "r8")


@pytest.fixture(scope="module")
def seed_run(r8: tuple[ResNetQuant, torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """The seed loop on the ResNet, epsilon halfway between the smallest and largest drop."""
    run = seed_run_on(*r8, BATCH)
    assert {accepted for _, accepted, *_ in run["decisions"]} == {True, False}, run["decisions"]
    return run


def _act_bits(model: nn.Module) -> list[int]:
    return [m.act_bit for _, m in quantized_convs(model)]


# ------------------------------------------------------------------------------------------
# the library


def test_a_resnet_runs_whole_and_a_vgg_in_pieces(r8: tuple[ResNetQuant, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = r8
    infos = study.conv_infos(_study(model, x, y))
    assert [c.name for c in infos] == NAMES == conv_table(model, "r8").names()
    assert [c.layer for c in infos] == [None] * 8
    assert infos[4].title == "conv 4 (layer2.0.downsample.0)"
    # the real input shapes: the downsample sees its block's input, the stride-2 conv1's
    assert infos[4].input_shape == infos[2].input_shape == (4, 32, 32)
    assert infos[7].input_shape == (8, 16, 16)
    assert not runs_in_pieces(model, infos)
    engine = Engine(_study(model, x, y), 4, 2, BATCH, 1 << 40, None)
    assert engine.cache_bytes == 0 and engine.features == []
    vgg = build_model(replace(_from_cfg("v", [4, "M", 8, "M", 8, "M", 16, "M", 16, "M"]), num_classes=4))
    vgg_infos = study.conv_infos(_study(vgg, x[:1], y[:1]))  # type: ignore[arg-type]
    assert [(c.name, c.layer) for c in vgg_infos] == [(f"features.{i}", i) for i in (0, 4, 8, 12, 16)]
    assert runs_in_pieces(vgg, vgg_infos)


def test_eval_equals_the_seed_evaluate(
    r8: tuple[ResNetQuant, torch.Tensor, torch.Tensor], seed_run: dict[str, Any]
) -> None:
    model, x, y = r8
    result = study.evaluate(_study(model, x, y), BATCH)
    assert (result.accuracy, result.loss, result.count) == (seed_run["acc"], seed_run["loss"], 512)


def test_sensitivity_equals_the_seed_loop(
    r8: tuple[ResNetQuant, torch.Tensor, torch.Tensor], seed_run: dict[str, Any]
) -> None:
    model, x, y = r8
    sens = study.sensitivity(_study(model, x, y), 4, 2, batch_size=BATCH)
    assert (sens.baseline.accuracy, sens.baseline.loss) == (seed_run["acc"], seed_run["loss"])
    ours = [(r.conv_number, r.accuracy, r.result.loss, r.drop) for r in sens.ranked]
    seeds = [(r["layer"], r["acc"], r["loss"], r["acc_drop"]) for r in seed_run["ranked"]]
    assert ours == seeds
    assert [(r.conv_number, r.name, r.layer) for r in sens.rows] == [
        (n, name, None) for n, name in enumerate(NAMES)
    ]
    assert _act_bits(model) == [4] * 8


@pytest.mark.parametrize("cache_bytes", [0, 1 << 40], ids=["no-cache", "unbounded-cache"])
@pytest.mark.parametrize("strategy", ["greedy", "budget"])
def test_greedy_follows_the_seed_rule(
    r8: tuple[ResNetQuant, torch.Tensor, torch.Tensor],
    seed_run: dict[str, Any],
    cache_bytes: int,
    strategy: study.Strategy,
) -> None:
    model, x, y = r8
    result = study.search(
        _study(model, x, y), seed_run["epsilon"], strategy=strategy, batch_size=BATCH, cache_bytes=cache_bytes
    )
    ours = [(s.conv_number, s.accepted, s.result.accuracy, s.result.loss, s.drop) for s in result.steps]
    assert ours == seed_run["decisions"]
    assert [s.name for s in result.steps] == [NAMES[n] for n, *_ in seed_run["decisions"]]
    assert [result.act_bits()[name] for name in NAMES] == seed_run["precisions"]
    assert result.greedy_names == tuple(
        n for n, b in zip(NAMES, seed_run["precisions"], strict=True) if b == 2
    )
    assert result.greedy_result.accuracy == seed_run["final"]
    if strategy == "budget":
        assert result.budget is not None and result.drop <= seed_run["epsilon"]
        # the verifying evaluation is the plain model's accuracy for that configuration
        modules = dict(quantized_convs(model))
        for name in result.low_names:
            modules[name].act_bit = 2
        try:
            assert study.evaluate(_study(model, x, y), BATCH) == result.result
        finally:
            for m in modules.values():
                m.act_bit = 4
    assert _act_bits(model) == [4] * 8


def test_summary_and_bits_config_name_layers_by_module_path(
    r8: tuple[ResNetQuant, torch.Tensor, torch.Tensor], seed_run: dict[str, Any], tmp_path: Path
) -> None:
    model, x, y = r8
    result = study.search(_study(model, x, y), seed_run["epsilon"], batch_size=BATCH)
    config = study.bits_config(result)
    assert config == {"act_bits": dict(zip(NAMES, seed_run["precisions"], strict=True))}
    path = tmp_path / "bits_config.json"
    path.write_text(json.dumps(config))
    read = read_bits_config(path, conv_table(model, "r8"))
    assert read.act == dict(zip(NAMES, seed_run["precisions"], strict=True)) and read.w == {}
    summary = study.summary(result)
    assert [p["name"] for p in summary["activation_memory"]["per_layer"]] == NAMES
    assert all("layer" not in p for p in summary["activation_memory"]["per_layer"])
    assert summary["greedy"] == {"names": list(result.greedy_names), **result.greedy_result.as_dict()}
    assert [r["name"] for r in summary["sensitivity"]] == [NAMES[r["layer"]] for r in seed_run["ranked"]]
    csv_rows = study.sensitivity_csv(result.sensitivity).splitlines()
    assert csv_rows[0] == "rank,conv,layer,name,act_bit,accuracy,drop,loss,correct,count"
    assert csv_rows[1].startswith(
        f"0,{seed_run['ranked'][0]['layer']},,{NAMES[seed_run['ranked'][0]['layer']]},2,"
    )


# ------------------------------------------------------------------------------------------
# the commands, on a course-format checkpoint


@pytest.fixture(scope="module")
def r8_files(
    r8: tuple[ResNetQuant, torch.Tensor, torch.Tensor], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """model_best.pth.tar (the course's wrapper), images.npy and labels.npy of the test set."""
    model, x, y = r8
    folder = tmp_path_factory.mktemp("r8")
    state = {"epoch": 1, "state_dict": model.state_dict(), "best_prec": 0.0, "optimizer": {}}
    torch.save(state, folder / "model_best.pth.tar")
    np.save(folder / "images.npy", x.numpy())
    np.save(folder / "labels.npy", y.numpy())
    return folder


def _args(folder: Path, out: Path) -> list[str]:
    return [
        "--checkpoint", str(folder / "model_best.pth.tar"),
        "--input", str(folder / "images.npy"),
        "--labels", str(folder / "labels.npy"),
        "--batch-size", str(BATCH),
        "-o", str(out),
    ]  # fmt: skip


def test_eval_command(r8_files: Path, seed_run: dict[str, Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_study.eval_command, _args(r8_files, tmp_path / "e"))
    assert result.exit_code == 0, result.output
    line = f"[Checkpoint model] Test Accuracy: {seed_run['acc']:.2f}% | Test Loss: {seed_run['loss']:.4f}"
    assert line in result.output.splitlines()
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["act_bits"] == dict.fromkeys(NAMES, 4)


def test_sensitivity_command(r8_files: Path, seed_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = CliRunner().invoke(cli_study.sensitivity_command, _args(r8_files, out))
    assert result.exit_code == 0, result.output
    rows = re.findall(r"^  Layer +(\d+): acc=([\d.]+)%, drop=(-?[\d.]+)% \| (\S+)$", result.output, re.M)
    assert [(int(n), name) for n, _, _, name in rows] == [
        (r["layer"], NAMES[r["layer"]]) for r in seed_run["ranked"]
    ]
    assert [f"{r['acc_drop']:.2f}" for r in seed_run["ranked"]] == [drop for _, _, drop, _ in rows]
    report = json.loads((out / "sensitivity.json").read_text())
    assert [r["name"] for r in report["rows"]] == [name for *_, name in rows]


def test_search_command_writes_a_bits_config_eval_reads_back(
    r8: tuple[ResNetQuant, torch.Tensor, torch.Tensor],
    r8_files: Path,
    seed_run: dict[str, Any],
    tmp_path: Path,
) -> None:
    eps = seed_run["epsilon"]
    out = tmp_path / "search"
    runner = CliRunner()
    result = runner.invoke(cli_study.search_command, [*_args(r8_files, out), "--epsilon", str(eps)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    decision_lines = [line for line in lines if line.startswith((" ACCEPT", " REJECT"))]
    for (idx, accepted, acc, _, drop), line in zip(seed_run["decisions"], decision_lines, strict=True):
        head = f"layer {idx:2d} -> 2bit | acc={acc:.2f}%, drop={drop:.2f}%"
        expected = f" ACCEPT {head}" if accepted else f" REJECT {head} (> {eps:.2f}%)"
        assert line == f"{expected} | {NAMES[idx]}"
    assert str(seed_run["precisions"]) in lines
    assert f"Final mixed-precision accuracy      : {seed_run['final']:.2f}%" in lines

    written = json.loads((out / "bits_config.json").read_text())
    assert written == {"act_bits": dict(zip(NAMES, seed_run["precisions"], strict=True))}
    read = read_bits_config(out / "bits_config.json", conv_table(r8[0], "r8"))
    assert [read.act[name] for name in NAMES] == seed_run["precisions"]

    again = runner.invoke(
        cli_study.eval_command,
        [*_args(r8_files, tmp_path / "e"), "--bits-config", str(out / "bits_config.json")],
    )
    assert again.exit_code == 0, again.output
    assert f"Test Accuracy: {seed_run['final']:.2f}%" in again.output
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["act_bits"] == written["act_bits"]
