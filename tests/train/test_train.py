"""``qexport train``: seed 003's recipe on a tiny fake CIFAR-10, resumable, and under torchrun.

Every run is VGG16_quant_gradual on 16 training and 16 test images, one batch an epoch, with
``--deterministic`` so a resumed run can be compared bit for bit with an unbroken one. One shared
two-epoch run (the reference) is snapshotted after epoch 1, as a run killed there leaves its folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from helpers import write_fake_cifar10
from PIL import Image

from qexport import api
from qexport.api import SourceOptions
from qexport.cli.common import MODELS
from qexport.cli.train import train_command
from qexport.errors import InputError
from qexport.frontend.checkpoint import load_checkpoint
from qexport.frontend.models.network import quantized_convs
from qexport.frontend.models.quant import QuantConv2d
from qexport.frontend.models.resnet import RESNET_BUILTIN, build_resnet, infer_resnet, resolve_resnet
from qexport.frontend.models.vgg import BUILTIN, build_model
from qexport.train import EpochResult, TrainEvent, TrainOptions, build_training_model, lr_at, train
from qexport.train.curves import SIZE, render_curves
from qexport.train.options import TRAIN_MODELS

MODEL = "VGG16_quant_gradual"
TINY = ["--limit-train", "16", "--limit-test", "16", "--batch-size", "16", "--workers", "0"]
TINY += ["--print-freq", "0", "--deterministic", "--milestones", "1"]
TINY_OPTIONS = {"limit_train": 16, "limit_test": 16, "batch_size": 16, "workers": 0}
TINY_OPTIONS |= {"print_freq": 0, "deterministic": True, "milestones": (1,)}
COURSE_KEYS = {"epoch", "state_dict", "best_prec", "optimizer"}

# The product keeps torchvision's MD5 check on; a subprocess gets the same test-only patch as the
# ``fake_cifar_md5`` fixture from this wrapper, run by torchrun in each process.
WRAPPER = """\
from pathlib import Path

import torchvision.datasets.cifar as cifar

cifar.check_integrity = lambda fpath, md5=None: Path(fpath).is_file()

from qexport.cli.train import train_command

train_command(prog_name="qexport train")
"""


def _accept_fake_md5(mp: pytest.MonkeyPatch) -> None:
    """``fake_cifar_md5`` for module-scoped fixtures: CIFAR10._check_integrity calls this too."""
    import torchvision.datasets.cifar as cifar

    mp.setattr(cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())


def _train(*args: str | Path) -> Result:
    return CliRunner().invoke(train_command, [str(a) for a in args])


def _load(path: Path) -> dict[str, Any]:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(loaded, dict)
    return loaded


@dataclass(frozen=True)
class Reference:
    """The shared run: ``folder`` after two epochs, ``epoch1`` a copy of it right after epoch 1."""

    data: Path
    folder: Path
    epoch1: Path
    events: list[TrainEvent]


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar10(root, n_test=16, n_train=8)
    return root


@pytest.fixture(scope="module")
def reference(fake_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Two epochs through the library, the single-process reference of the other tests."""
    base = tmp_path_factory.mktemp("reference")
    opts = TrainOptions(
        source=SourceOptions(data_dir=fake_data), out_dir=base / "result", epochs=2, **TINY_OPTIONS
    )
    folder, epoch1 = base / "result" / MODEL, base / "epoch1" / MODEL
    events: list[TrainEvent] = []
    with pytest.MonkeyPatch.context() as mp:
        _accept_fake_md5(mp)
        for event in train(opts):
            events.append(event)
            if isinstance(event, EpochResult) and event.epoch == 1:
                shutil.copytree(folder, epoch1)
    return Reference(fake_data, folder, epoch1, events)


def test_help_ends_with_an_example() -> None:
    result = CliRunner().invoke(train_command, ["--help"])
    assert result.exit_code == 0
    example = result.output.split("Example:")[1]
    assert "qexport train --model VGG16_quant_gradual --data-dir ./data" in example
    assert "torchrun --nproc_per_node" in example


def test_training_takes_the_shared_source_options(tmp_path: Path) -> None:
    # one SourceOptions for export, study and train: train reads its model, data and bits fields
    opts = TrainOptions(SourceOptions(model="VGG16_quant", data_dir=tmp_path))
    assert (opts.model, opts.data_dir, opts.source.download) == ("VGG16_quant", tmp_path, False)
    assert TrainOptions().source == SourceOptions(model=MODEL, data_dir=Path("data"))
    with pytest.raises(
        InputError, match=r"takes no source checkpoint \(c\.pth\); continue a run with resume"
    ):
        list(train(TrainOptions(SourceOptions(checkpoint=Path("c.pth")), out_dir=tmp_path)))


def test_the_defaults_are_the_seed_recipe() -> None:
    opts = TrainOptions()
    recipe = (opts.batch_size, opts.lr, opts.momentum, opts.weight_decay, opts.epochs, opts.milestones)
    assert recipe == (128, 0.01, 0.9, 1e-4, 200, (80, 120))
    assert (opts.model, opts.out_dir, opts.workers) == (MODEL, Path("result"), 2)
    # adjust_learning_rate: x0.1 at the start of epochs 80 and 120
    lrs = [lr_at(opts, e) for e in (0, 79, 80, 119, 120, 199)]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])


def test_each_epoch_writes_the_course_checkpoint(reference: Reference) -> None:
    results = [e for e in reference.events if isinstance(e, EpochResult)]
    assert [(r.epoch, r.lr) for r in results] == [(1, 0.01), (2, pytest.approx(0.001))]  # --milestones 1
    ckpt = _load(reference.folder / "checkpoint.pth")
    assert set(ckpt) == COURSE_KEYS
    assert ckpt["epoch"] == 2
    expected = build_model(BUILTIN[MODEL]).state_dict()
    assert list(ckpt["state_dict"]) == list(expected)  # no "module." prefix, nothing extra
    assert all(v.shape == expected[k].shape for k, v in ckpt["state_dict"].items())
    assert set(ckpt["optimizer"]) == {"state", "param_groups"}
    assert ckpt["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)
    lines = (reference.folder / "metrics.jsonl").read_text().splitlines()
    assert lines == [json.dumps(r.record(), sort_keys=True) for r in results]
    assert (results[0].train_images, results[0].test_images) == (16, 16)
    assert ckpt["best_prec"] == max(r.test_top1 for r in results)
    # as the course: model_best only when top-1 beat best_prec, which starts at 0
    best = reference.folder / "model_best.pth.tar"
    assert best.is_file() == (ckpt["best_prec"] > 0)
    if best.is_file():
        best_epoch = max(r.epoch for r in results if r.is_best)
        assert _load(best)["epoch"] == best_epoch
    with Image.open(reference.folder / "training_curves.png") as png:
        assert (png.format, png.size) == ("PNG", SIZE)
    leftovers = {p.name for p in reference.folder.iterdir()} - {"model_best.pth.tar"}
    assert leftovers == {"checkpoint.pth", "metrics.jsonl", "training_curves.png"}


def test_the_checkpoint_exports_with_no_conversion(reference: Reference, tmp_path: Path) -> None:
    # export loads through api.load, which refuses a stale weight_q: the run must have refreshed
    # it with an eval forward after the last optimizer step
    opts = SourceOptions(checkpoint=reference.folder / "checkpoint.pth")
    result = api.export(opts, [33], tmp_path / "vectors")
    assert (tmp_path / "vectors" / "manifest.json").is_file()
    assert (result.manifest.model, result.manifest.source.checkpoint) == (MODEL, "checkpoint.pth")


def test_resume_continues_at_the_next_epoch_as_if_never_stopped(
    reference: Reference, tmp_path: Path, fake_cifar_md5: None
) -> None:
    out = tmp_path / "result"
    folder = out / MODEL
    shutil.copytree(reference.epoch1, folder)
    # what a kill during epoch 2 can leave: a half-written temp file and, at worst, metrics lines
    (folder / ".checkpoint.pth.4242.tmp").write_bytes(b"half a checkpoint")
    with (folder / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "test_top1": 99.0}\n{"epoch": 3, "tr')
    resume = folder / "checkpoint.pth"
    result = _train("--data-dir", reference.data, "--out", out, "--epochs", "2", "--resume", resume, *TINY)
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 1" in result.output
    assert "epoch 1/" not in result.output
    assert "epoch 2/2  lr 0.001  train loss" in result.output
    assert not list(folder.glob(".*.tmp"))
    ckpt = _load(folder / "checkpoint.pth")
    unbroken = _load(reference.folder / "checkpoint.pth")
    assert ckpt["epoch"] == unbroken["epoch"] == 2
    assert ckpt["best_prec"] == unbroken["best_prec"]
    assert ckpt["optimizer"]["param_groups"] == unbroken["optimizer"]["param_groups"]
    different = [k for k, v in unbroken["state_dict"].items() if not torch.equal(v, ckpt["state_dict"][k])]
    assert different == []
    assert (folder / "metrics.jsonl").read_text() == _without_seconds(
        reference.folder / "metrics.jsonl", folder
    )


def _without_seconds(reference_metrics: Path, folder: Path) -> str:
    """The reference's metrics with this run's epoch times, the one thing a rerun may change."""
    times = [json.loads(line)["seconds"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in reference_metrics.read_text().splitlines()]
    return "".join(
        json.dumps(r | {"seconds": t}, sort_keys=True) + "\n" for r, t in zip(records, times, strict=True)
    )


def test_resume_keeps_best_prec(reference: Reference, tmp_path: Path, fake_cifar_md5: None) -> None:
    ckpt = _load(reference.epoch1 / "checkpoint.pth")
    ckpt["best_prec"] = 100.0
    torch.save(ckpt, tmp_path / "best100.pth")
    out = tmp_path / "out"
    args = ["--data-dir", reference.data, "--out", out, "--epochs", "2", "--resume", tmp_path / "best100.pth"]
    result = _train(*args, *TINY)
    assert result.exit_code == 0, result.output
    after = _load(out / MODEL / "checkpoint.pth")
    assert (after["epoch"], after["best_prec"]) == (2, 100.0)
    assert not (out / MODEL / "model_best.pth.tar").exists()  # epoch 2 did not beat 100 %


@pytest.mark.parametrize("state", ["missing", "damaged"])
def test_a_bad_data_dir_is_one_clear_error(tmp_path: Path, state: str) -> None:
    data = tmp_path / "nowhere"
    if state == "damaged":
        write_fake_cifar10(data, n_test=2, n_train=2)  # wrong MD5s: torchvision's check is on here
    result = _train("--data-dir", data, "--out", tmp_path / "out", "--epochs", "1", *TINY)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    message = result.output.strip()
    assert message.startswith("error: ") and message.count("\n") == 0
    assert str(data / "cifar-10-batches-py") in message
    assert "--download" in message
    assert not (tmp_path / "out").exists()


def test_download_asks_torchvision_and_reports_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision

    calls: list[dict[str, Any]] = []

    def offline(**kwargs: Any) -> None:
        calls.append(kwargs)
        raise OSError("network is unreachable")  # what urllib raises with no internet

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    result = _train("--data-dir", tmp_path / "data", "--download", "--out", tmp_path / "out", *TINY)
    assert result.exit_code == 2
    assert [(c["root"], c["train"], c["download"]) for c in calls] == [(str(tmp_path / "data"), True, True)]
    assert "the download failed" in result.output and "Traceback" not in result.output


def test_bits_options_reach_every_conv(tmp_path: Path) -> None:
    config = tmp_path / "bits.json"
    config.write_text(json.dumps({"act_bits": {"33": 4, "conv 0": 8}}))
    model = build_training_model(TrainOptions(SourceOptions(bits_config=config), w_bit=3, a_bit=2))
    convs = {i: m for i, m in enumerate(model.features) if isinstance(m, QuantConv2d)}
    assert {m.w_bit for m in convs.values()} == {3}
    assert {i: m.act_bit for i, m in convs.items() if m.act_bit != 2} == {0: 8, 33: 4}


def test_a_bits_config_naming_no_conv_is_refused(
    reference: Reference, tmp_path: Path, fake_cifar_md5: None
) -> None:
    config = tmp_path / "bits.json"
    config.write_text(json.dumps({"34": 2}))
    result = _train("--data-dir", reference.data, "--bits-config", config, "--out", tmp_path, *TINY)
    assert result.exit_code == 2
    assert "layer 34 is not a quantized conv layer" in result.output
    assert "features[34] is a relu" in result.output


RESNET = "resnet20_quant"


@pytest.fixture(scope="module")
def resnet_run(fake_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of resnet20_quant through the command; its run folder."""
    out = tmp_path_factory.mktemp("resnet") / "result"
    with pytest.MonkeyPatch.context() as mp:
        _accept_fake_md5(mp)
        result = _train("--model", RESNET, "--data-dir", fake_data, "--out", out, "--epochs", "1", *TINY)
    assert result.exit_code == 0, result.output
    assert f"training {RESNET} on cpu" in result.output
    return out / RESNET


def test_every_builtin_vgg_and_resnet_is_a_train_model() -> None:
    # the command spells the ResNet names out (no torch for --help): they must stay the built-ins
    assert tuple(RESNET_BUILTIN) == MODELS[-len(RESNET_BUILTIN) :]
    assert set(TRAIN_MODELS) == set(MODELS) == set(BUILTIN) | set(RESNET_BUILTIN)


def test_an_unknown_model_is_refused_listing_every_one(tmp_path: Path) -> None:
    result = _train("--model", "resnet18_quant", "--out", tmp_path, *TINY)
    assert result.exit_code == 2
    assert all(name in result.output for name in TRAIN_MODELS), result.output
    with pytest.raises(InputError, match="unknown model 'resnet18_quant'; qexport train builds") as err:
        build_training_model(TrainOptions(SourceOptions(model="resnet18_quant")))
    assert all(name in str(err.value) for name in TRAIN_MODELS)


def test_a_resnet_checkpoint_is_the_course_format_and_loads_back(resnet_run: Path) -> None:
    path = resnet_run / "checkpoint.pth"
    raw = _load(path)
    assert set(raw) == COURSE_KEYS and raw["epoch"] == 1
    assert set(raw["optimizer"]) == {"state", "param_groups"}
    state = raw["state_dict"]
    assert "layer2.0.downsample.0.weight_quant.wgt_alpha" in state and "fc.bias" in state
    assert not any(k.startswith("module.") for k in state)
    arch = RESNET_BUILTIN[RESNET]
    assert infer_resnet(state) == arch
    ckpt = load_checkpoint(path)
    assert resolve_resnet(ckpt, RESNET) == resolve_resnet(ckpt) == arch
    model = build_resnet(arch)
    model.load_state_dict(ckpt.state_dict, strict=True)
    # weight_q is the weights the last forward (the test pass) computed from the saved weights
    for name, conv in quantized_convs(model):
        assert isinstance(conv, QuantConv2d)
        with torch.no_grad():
            assert torch.equal(state[f"{name}.weight_q"], conv.quantized_weight()), name
    untrained = build_resnet(arch).state_dict()
    assert not torch.equal(state["layer1.0.conv1.weight"], untrained["layer1.0.conv1.weight"])


def test_a_resnet_run_resumes_and_refuses_another_depth(
    resnet_run: Path, fake_data: Path, tmp_path: Path, fake_cifar_md5: None
) -> None:
    out = tmp_path / "result"
    shutil.copytree(resnet_run, out / RESNET)
    resume = out / RESNET / "checkpoint.pth"
    args = ["--data-dir", fake_data, "--out", out, "--epochs", "2", "--resume", resume, *TINY]
    deeper = _train("--model", "resnet32_quant", *args)
    assert deeper.exit_code == 2
    assert "does not fit the ResNet resnet32_quant" in deeper.output and "Traceback" not in deeper.output
    result = _train("--model", RESNET, *args)
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 1" in result.output
    assert _load(out / RESNET / "checkpoint.pth")["epoch"] == 2


def test_width_options_and_a_bits_config_reach_resnet_convs_by_module_path(tmp_path: Path) -> None:
    model = build_training_model(TrainOptions(SourceOptions(model=RESNET), w_bit=3, a_bit=2))
    convs = [m for _, m in quantized_convs(model)]
    assert len(convs) == len(RESNET_BUILTIN[RESNET].qconv_names()) == 20
    assert {(m.w_bit, m.weight_quant.w_bit, m.act_bit) for m in convs} == {(3, 3, 2)}
    config = tmp_path / "bits.json"
    config.write_text(json.dumps({"act_bits": {"layer2.0.downsample.0": 2, "*": 3}, "w_bits": {"conv 0": 2}}))
    model = build_training_model(TrainOptions(SourceOptions(model=RESNET, bits_config=config)))
    widths = {name: (m.w_bit, m.act_bit) for name, m in quantized_convs(model)}
    assert widths["layer2.0.downsample.0"] == (4, 2)
    assert widths["layer1.0.conv1"] == (2, 3)  # conv 0: the float stem is not a quantized conv
    assert {widths[n] for n in widths if n not in ("layer2.0.downsample.0", "layer1.0.conv1")} == {(4, 3)}
    config.write_text(json.dumps({"act_bits": {"33": 2}}))
    with pytest.raises(InputError, match=r"layer 33 is not a quantized conv layer of resnet20_quant"):
        build_training_model(TrainOptions(SourceOptions(model=RESNET, bits_config=config)))


def test_curves_skip_a_diverged_loss() -> None:
    records = [
        {"epoch": 1, "train_loss": 2.3, "test_loss": 2.2, "train_top1": 10.0, "test_top1": 12.0},
        {"epoch": 2, "train_loss": float("nan"), "test_loss": 1.9, "train_top1": 30.0, "test_top1": 25.0},
        {"epoch": 3, "train_loss": 1.5, "test_loss": 1.7, "train_top1": 45.0, "test_top1": 40.0},
    ]
    path = Path("curves.png")
    path.write_bytes(render_curves(records, "test"))
    with Image.open(path) as png:
        colours = {c for _, c in png.convert("RGB").getcolors(maxcolors=SIZE[0] * SIZE[1]) or []}
    assert png.size == SIZE
    assert {(31, 119, 180), (230, 110, 10)} <= colours  # a train and a test line


@pytest.mark.slow
def test_torchrun_two_processes_write_what_one_process_writes(reference: Reference, tmp_path: Path) -> None:
    wrapper = tmp_path / "train_fake_cifar.py"
    wrapper.write_text(WRAPPER)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(wrapper), "--data-dir", str(reference.data), "--out", str(out), "--epochs", "1"]
    command += ["--limit-train", "16", "--limit-test", "16", "--workers", "0"]
    command += ["--batch-size", "8"]  # 8 a process: 16 images a step, as the single-process run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(2 processes)" in done.stdout
    assert done.stdout.count("epoch 1/1") == 1  # only rank 0 reports
    ddp = _load(out / MODEL / "checkpoint.pth")
    single = _load(reference.folder / "checkpoint.pth")
    assert set(ddp) == set(single) == COURSE_KEYS
    assert list(ddp["state_dict"]) == list(single["state_dict"])
    assert all(v.shape == single["state_dict"][k].shape for k, v in ddp["state_dict"].items())
    assert set(ddp["optimizer"]["state"]) == set(single["optimizer"]["state"])
    assert ddp["optimizer"]["param_groups"][0].keys() == single["optimizer"]["param_groups"][0].keys()
    assert ddp["optimizer"]["param_groups"][0]["params"] == single["optimizer"]["param_groups"][0]["params"]
    # metrics are summed over both processes: every image counted once
    (record,) = [json.loads(line) for line in (out / MODEL / "metrics.jsonl").read_text().splitlines()]
    assert (record["world_size"], record["train_images"], record["test_images"]) == (2, 16, 16)
    loaded = api.load(SourceOptions(checkpoint=out / MODEL / "checkpoint.pth"))
    assert loaded.arch.name == MODEL
