"""``--model module.path:factory`` end to end: the course's own ``models/`` package, written into
``tmp_path`` (the tests' working folder), run through ``qexport layers``, ``verify`` and ``dump``;
the integers checked against a float64 reference computed here from the state dict."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from course_models import COURSE_WARNING, forget, imported, save_checkpoint, write_models
from torch import nn

from qexport import api
from qexport.cli.main import main
from qexport.frontend.capture import capture
from qexport.frontend.inputs import load_demo
from qexport.ir.integerize import integerize
from qexport.verify.decode import decode_file

pytestmark = pytest.mark.filterwarnings(COURSE_WARNING)

RESNET = "models.resnet_quant:resnet20_quant"
VGG_A2 = "models.vgg_quant:vgg_a2"


@pytest.fixture(autouse=True)
def _fresh_imports(tmp_path: Path) -> Any:
    # every test writes its own ``models`` package: none may see another's from sys.modules
    forget(tmp_path)
    yield
    forget(tmp_path)


def _checkpoint(root: Path, spec: str, class_name: str = "QuantConv2d", seed: int = 0) -> dict[str, Any]:
    """Write the course package and a checkpoint of ``spec``'s model; its state dict and model."""
    write_models(root, class_name)
    module_name, factory = spec.split(":")
    with imported(root):
        model = getattr(importlib.import_module(module_name), factory)()
        state = save_checkpoint(model, root / "ckpt.pth.tar", seed)
    return {"state": state, "model": model}


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _captured_input(model: nn.Module, name: str) -> torch.Tensor:
    """The input ``name`` sees for demo image 0 (what qexport uses with no CIFAR-10 here)."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda _m, a: seen.append(a[0].clone()))
    with torch.no_grad():
        model.eval()(load_demo("0").images)
    handle.remove()
    return seen[0]


def _w_int_reference(state: dict[str, torch.Tensor], name: str, w_bit: int) -> np.ndarray:
    """The course's weight quantizer in float64, from ``weight`` and ``wgt_alpha`` alone."""
    w = state[f"{name}.weight"].to(torch.float64)
    alpha = float(state[f"{name}.weight_quant.wgt_alpha"])
    scaled = ((w - w.mean()) / w.std() / alpha).clamp(-1.0, 1.0)
    levels = 2 ** (w_bit - 1) - 1
    return (torch.round(scaled.abs() * levels) * scaled.sign()).to(torch.int64).numpy()


def _x_int_reference(x: torch.Tensor, act_alpha: float, act_bit: int) -> np.ndarray:
    """The course's act_alq in float64: round(clip(x / α, max=1) · (2^b − 1))."""
    scaled = (x.to(torch.float64) / act_alpha).clamp(max=1.0)
    return torch.round(scaled * (2**act_bit - 1)).to(torch.int64).numpy()


def _course_set(out: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """A course-profile set's layer entry, and its w_int (OC, C, kh, kw) and padded x_int
    (C, H+2, W+2) reassembled from the tile files by the ranges the manifest gives."""
    manifest = json.loads((out / "manifest.json").read_text())
    (layer,) = manifest["layers"]
    k, c, oc = layer["kernel"], layer["in_channels"], layer["out_channels"]
    side = layer["input_shape"][-1]
    w = np.full((oc, c, k, k), 99, dtype=np.int64)
    x = np.full((c, side + 2, side + 2), 99, dtype=np.int64)
    for entry in layer["files"]:
        if entry["tensor"] == "weight":
            ki, kj = divmod(entry["kij"], k)
            values = decode_file(out / entry["path"], entry)  # (oc, 1, 1, ic)
            w[slice(*entry["oc"]), slice(*entry["ic"]), ki, kj] = values[:, 0, 0, :]
        elif entry["tensor"] == "input":
            grid = decode_file(out / entry["path"], entry)[0]  # (6, 6, ic): the tile with its halo
            y0, x0 = entry["y"][0], entry["x"][0]
            rows, cols = grid.shape[:2]
            x[slice(*entry["ic"]), y0 : y0 + rows, x0 : x0 + cols] = grid.transpose(2, 0, 1)
    return layer, w, x


# --- the course ResNet20, and a renamed copy of its layer -------------------------------------------


def test_layers_lists_every_quantized_conv_of_the_user_resnet(tmp_path: Path) -> None:
    _checkpoint(tmp_path, RESNET)
    result = _run("layers", "--checkpoint", "ckpt.pth.tar", "--model", RESNET)
    assert result.exit_code == 0, result.output
    # quantized conv rows: not the float convs (conv '-') nor the '#' footer
    rows = [
        r for r in (line.split() for line in result.output.splitlines()[2:]) if r[0] != "#" and r[1] != "-"
    ]
    assert [r[0] for r in rows][:3] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    assert len(rows) == 20  # 18 block convs + 2 downsample 1x1s; the float stem is not one
    downsample = next(r for r in rows if r[0] == "layer2.0.downsample.0")
    assert downsample[1:5] == ["8", "16", "32", "1/2/0"]
    assert {(r[5], r[6]) for r in rows} == {("4", "4")}  # w_bit, act_bit


@pytest.mark.parametrize("class_name", ["QuantConv2d", "MyQConv"])
def test_verify_passes_every_layer_of_the_user_resnet(tmp_path: Path, class_name: str) -> None:
    _checkpoint(tmp_path, RESNET, class_name)
    result = _run("verify", "--checkpoint", "ckpt.pth.tar", "--model", RESNET)
    assert result.exit_code == 0, result.output
    assert "all 20 layers pass" in result.output
    assert "layer3.0.downsample.0" in result.output


@pytest.mark.parametrize("class_name", ["QuantConv2d", "MyQConv"])
def test_course_dump_of_a_user_layer_holds_the_float64_reference_integers(
    tmp_path: Path, class_name: str
) -> None:
    made = _checkpoint(tmp_path, RESNET, class_name)
    name = "layer1.0.conv2"
    result = _run(
        "dump", "--checkpoint", "ckpt.pth.tar", "--model", RESNET,
        "--layer", name, "--profile", "course", "-o", "out",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"layer {name} " in result.output
    layer, w_int, x_int = _course_set(tmp_path / "out")
    assert (layer["name"], layer["w_bit"], layer["act_bit"]) == (name, 4, 4)
    assert layer["w_bit_source"] == "inferred from weight_q"
    assert layer["act_bit_source"] == "probed from act_alq"
    state = made["state"]
    expected_w = _w_int_reference(state, name, 4)
    np.testing.assert_array_equal(w_int, expected_w)
    # the stored weight_q is the same grid: w_int · w_delta
    w_delta = float(state[f"{name}.weight_quant.wgt_alpha"]) / 7
    np.testing.assert_allclose(expected_w * w_delta, state[f"{name}.weight_q"].numpy(), atol=1e-5)
    with imported(tmp_path):
        x = _captured_input(made["model"], name)[0]
    expected_x = _x_int_reference(x, float(state[f"{name}.act_alpha"]), 4)
    np.testing.assert_array_equal(x_int[:, 1:-1, 1:-1], expected_x)
    assert not x_int[:, [0, -1], :].any() and not x_int[:, :, [0, -1]].any()  # the zero border
    assert 0 < int(expected_x.max()) <= 15


# --- a VGG variant: float first conv, nn.Identity, 4-bit weights and 2-bit activations -------------


def test_vgg_variant_with_2_bit_activations_is_probed_and_exports_its_integers(tmp_path: Path) -> None:
    made = _checkpoint(tmp_path, VGG_A2)
    listed = _run("layers", "--checkpoint", "ckpt.pth.tar", "--model", VGG_A2)
    assert listed.exit_code == 0, listed.output
    # quantized conv rows: not the float convs (conv '-') nor the '#' footer
    rows = [
        r for r in (line.split() for line in listed.output.splitlines()[2:]) if r[0] != "#" and r[1] != "-"
    ]
    assert [(r[0], r[5], r[6]) for r in rows] == [("3", "4", "2"), ("7", "4", "2"), ("9", "4", "2")]
    checked = _run("verify", "--checkpoint", "ckpt.pth.tar", "--model", VGG_A2)
    # with act_bit assumed = w_bit (4) the recovered outputs would miss the model's by far more
    assert checked.exit_code == 0, checked.output
    dumped = _run(
        "dump",
        "--checkpoint",
        "ckpt.pth.tar",
        "--model",
        VGG_A2,
        "--layer",
        "7",
        "--format",
        "npy",
        "-o",
        "o",
    )
    assert dumped.exit_code == 0, dumped.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    (layer,) = manifest["layers"]
    assert (layer["name"], layer["act_bit"], layer["act_bit_source"]) == (
        "features.7",
        2,
        "probed from act_alq",
    )
    files = {f["tensor"]: f for f in layer["files"]}
    x_int = decode_file(tmp_path / "o" / files["input"]["path"], files["input"])
    w_int = decode_file(tmp_path / "o" / files["weight"]["path"], files["weight"])
    state = made["state"]
    with imported(tmp_path):
        x = _captured_input(made["model"], "features.7")
    expected_x = _x_int_reference(x, float(state["features.7.act_alpha"]), 2)
    assert int(expected_x.max()) == 3
    axes = files["input"]["axes"]
    np.testing.assert_array_equal(x_int, expected_x.transpose([("n", "c", "h", "w").index(a) for a in axes]))
    expected_w = _w_int_reference(state, "features.7", 4)
    w_axes = files["weight"]["axes"]
    np.testing.assert_array_equal(
        w_int, expected_w.transpose([("oc", "ic", "kh", "kw").index(a) for a in w_axes])
    )


# --- bad input: exit 2, one message, no traceback ------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _refused(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.strip()]  # one message
    return line


@pytest.mark.parametrize(
    ("spec", "files", "message"),
    [
        (
            "nowhere.resnet:build",
            {},
            r"cannot import 'nowhere.resnet'.*run qexport from the folder that holds nowhere/",
        ),
        (
            "mine.net:build",
            {"mine/__init__.py": "", "mine/net.py": "import not_installed_pkg\n"},
            r"importing mine.net failed: No module named 'not_installed_pkg'; install that package",
        ),
        (
            "mine.net:build",
            {"mine/__init__.py": "", "mine/net.py": "1 / 0\n"},
            r"importing mine.net raised ZeroDivisionError",
        ),
        (
            RESNET.replace(":resnet20_quant", ":resnet21_quant"),
            None,
            r"has no callable 'resnet21_quant'; it has .*resnet20_quant",
        ),
        (
            "mine.net:build",
            {"mine/__init__.py": "", "mine/net.py": "def build():\n    raise ValueError('no width given')\n"},
            r"build\(\) raised ValueError: no width given; the factory is called with no arguments",
        ),
        (
            "mine.net:build",
            {"mine/__init__.py": "", "mine/net.py": "def build():\n    return {'conv': 1}\n"},
            r"build\(\) returned a dict, not a torch nn.Module",
        ),
        (
            "mine.net:build",
            {
                "mine/__init__.py": "",
                "mine/net.py": "import torch.nn as nn\n\ndef build():\n    return nn.Conv2d(3, 8, 3)\n",
            },
            r"has no quantized conv \(no module carries act_alpha and weight_quant.wgt_alpha",
        ),
        ("models.resnet_quant", None, r"unknown model 'models.resnet_quant'.*--model module.path:factory"),
        ("models/resnet_quant.py:resnet20_quant", None, r"user model code is given as module.path:factory"),
        ("models.resnet_quant:resnet20_quant()", None, r"user model code is given as module.path:factory"),
    ],
    ids=[
        "no-module",
        "module-imports-a-missing-package",
        "module-raises",
        "no-factory",
        "factory-raises",
        "factory-returns-a-dict",
        "no-quantized-conv",
        "spec-without-factory",
        "spec-is-a-file-path",
        "spec-with-call",
    ],
)
def test_bad_user_model_exits_2_with_one_message(
    tmp_path: Path, spec: str, files: dict[str, str] | None, message: str
) -> None:
    _checkpoint(tmp_path, RESNET)
    _write(tmp_path, files or {})
    line = _refused("layers", "--checkpoint", "ckpt.pth.tar", "--model", spec)
    assert line.startswith("error: ")
    assert re.search(message, line), line


def _edited_checkpoint(root: Path, edit: Any) -> None:
    made = _checkpoint(root, RESNET)
    state = dict(made["state"])
    edit(state)
    torch.save({"state_dict": state}, root / "edited.pth.tar")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("layer2.0.conv1.act_alpha"), r"missing keys layer2\.0\.conv1\.act_alpha;"),
        (
            lambda s: s.update({"layer4.0.conv1.weight": torch.zeros(1)}),
            r"unexpected keys layer4\.0\.conv1\.weight;",
        ),
        (
            lambda s: s.update({"layer1.0.conv2.weight": torch.zeros(8, 16, 3, 3)}),
            r"wrongly shaped layer1\.0\.conv2\.weight: checkpoint \[8, 16, 3, 3\], model \[16, 16, 3, 3\]",
        ),
    ],
    ids=["missing-key", "unexpected-key", "mis-shaped-key"],
)
def test_checkpoint_that_does_not_fit_the_user_model_names_the_keys(
    tmp_path: Path, edit: Any, message: str
) -> None:
    _edited_checkpoint(tmp_path, edit)
    line = _refused("layers", "--checkpoint", "edited.pth.tar", "--model", RESNET)
    assert "does not fit the model ResNet_Cifar" in line
    assert line.endswith(
        "check that --model builds the network this checkpoint was trained with "
        "(same widths, depth and layer names)"
    )
    assert re.search(message, line), line


def test_user_model_without_checkpoint_says_to_give_one(tmp_path: Path) -> None:
    write_models(tmp_path)
    line = _refused("layers", "--model", RESNET)
    assert "your own model code: give its trained weights with --checkpoint" in line


def test_checkpoint_with_a_pickled_callable_is_refused_even_with_user_code(tmp_path: Path) -> None:
    """weights_only=True still guards the checkpoint: the user's code runs, the file's never does."""
    made = _checkpoint(tmp_path, RESNET)
    marker = tmp_path / "the-checkpoint-ran-code"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[Path]]:
            return (Path.touch, (marker,))

    torch.save({"state_dict": made["state"], "hook": Payload()}, tmp_path / "evil.pth.tar")
    line = _refused("layers", "--checkpoint", "evil.pth.tar", "--model", RESNET)
    assert "refused by the safe loader (weights_only=True)" in line
    assert not marker.exists()


def test_a_rounding_tie_in_user_code_exports_the_stored_weight(tmp_path: Path) -> None:
    # the user's forward recomputes weight_q; at a tie the stored (trained) value must still win
    made = _checkpoint(tmp_path, RESNET)
    state = {k: v.clone() for k, v in made["state"].items()}
    name = "layer1.0.conv2"
    weight = state[f"{name}.weight"].double()
    norm = ((weight - weight.mean()) / weight.std()).flatten()
    at = int((norm.abs() - 0.3).abs().argmin())
    alpha = float(norm[at].abs()) * 7 / 2.5  # |n| / alpha * 7 = 2.5: a tie between levels 2 and 3
    state[f"{name}.weight_quant.wgt_alpha"] = torch.tensor(alpha, dtype=torch.float32)
    levels = (norm / alpha).clamp(-1, 1) * 7
    cpu = torch.round(levels.float()).double()  # what the CPU's float32 forward gives, near 2 or 3
    stored = cpu.clone()
    stored[at] = torch.sign(norm[at]) * (5 - cpu[at].abs())  # the other side of the tie
    state[f"{name}.weight_q"] = (stored * alpha / 7).float().view_as(state[f"{name}.weight"])
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "tie.pth.tar")
    with imported(tmp_path):
        loaded = api.load(api.SourceOptions(checkpoint=tmp_path / "tie.pth.tar", model=RESNET))
        assert loaded.report.ties.get(name) == 1 and name not in loaded.report.problems
        (t,) = [t for t in capture(loaded.model, loaded.inputs.images, bits=loaded.bits) if t.name == name]
    w_int = integerize(t).w_int.flatten()
    assert int(w_int[at]) == int(stored[at]) != int(cpu[at])
    np.testing.assert_array_equal(np.delete(w_int, at), np.delete(stored.numpy().astype(np.int64), at))
