from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qexport.cli.main import main
from qexport.verify.decode import decode_file


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_lists_commands_without_importing_torch() -> None:
    code = "import sys; from qexport.cli.main import main; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    "command",
    [
        "layers",
        "dump",
        "verify",
        "testbench",
        "compare",
        "check",
        "eval",
        "sensitivity",
        "search",
        "train",
        "infer",
    ],
)
def test_every_command_has_help_with_an_example(runner: CliRunner, command: str) -> None:
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert "qexport " + command in result.output


def test_layers_lists_the_gradual_convs(runner: CliRunner) -> None:
    result = runner.invoke(main, ["layers"])
    assert result.exit_code == 0, result.output
    assert "demo, untrained" in result.output
    rows = [line.split() for line in result.output.splitlines()[2:] if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == [
        0,
        4,
        7,
        11,
        14,
        17,
        21,
        24,
        27,
        30,
        33,
        35,
        38,
        41,
        45,
        48,
        51,
    ]
    row33 = next(r for r in rows if r[0] == "33")
    assert row33[2:4] == ["8", "8"]
    assert "8x4x4" in " ".join(row33)


def test_dump_layer33_hex_writes_decodable_files(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "v"
    result = runner.invoke(main, ["dump", "--layer", "33", "--format", "hex", "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == {"demo": True}
    assert manifest["label"] == "demo, untrained"
    (layer,) = manifest["layers"]
    assert layer["index"] == 33 and layer["in_channels"] == 8 and layer["out_channels"] == 8
    assert layer["checks"]["passed"] is True
    tensors = {f["tensor"]: f for f in layer["files"]}
    assert set(tensors) == {"weight", "input", "psum", "output"}
    weight = decode_file(out / tensors["weight"]["path"], tensors["weight"])
    assert weight.shape == (8, 3, 3, 8)
    assert weight.min() >= -7 and weight.max() <= 7
    psum = decode_file(out / tensors["psum"]["path"], tensors["psum"])
    output = decode_file(out / tensors["output"]["path"], tensors["output"])
    assert (output == psum.clip(min=0)).all()
    text = (out / tensors["weight"]["path"]).read_text()
    assert text.endswith("\n") and "demo, untrained" in text.splitlines()[1]


def test_dump_refuses_a_non_conv_layer_and_lists_valid_ones(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["dump", "--layer", "34", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "features[34] is a relu" in result.output
    assert "0, 4, 7" in result.output and "33" in result.output
    assert not (tmp_path / "x").exists()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", ["dump", "testbench"])
def test_layer_by_module_path_is_the_features_index(runner: CliRunner, tmp_path: Path, command: str) -> None:
    # issue 14 item 5: a layer's identity is its module path; the features index is its alias
    profile = ["--profile", "course"]
    by_index = runner.invoke(main, [command, "--layer", "33", *profile, "-o", str(tmp_path / "index")])
    by_path = runner.invoke(main, [command, "--layer", "features.33", *profile, "-o", str(tmp_path / "path")])
    assert by_index.exit_code == 0 and by_path.exit_code == 0, by_path.output
    index, path = _tree(tmp_path / "index"), _tree(tmp_path / "path")
    assert len(index) > 10 and index == path  # every byte, the manifest's recipe too


def test_layer_by_module_path_default_folder_and_refusal(runner: CliRunner, tmp_path: Path) -> None:
    with runner.isolated_filesystem(temp_dir=tmp_path):
        assert runner.invoke(main, ["dump", "--layer", "features.33"]).exit_code == 0
        assert Path("qexport-out/layer33/manifest.json").is_file()
    bad = runner.invoke(main, ["dump", "--layer", "features.34", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2
    assert "--layer features.34 is not a quantized conv layer" in bad.output
    assert "features.0, features.4" in bad.output and "features.33" in bad.output
    assert not (tmp_path / "x").exists()
    junk = runner.invoke(main, ["dump", "--layer", "33,x-y", "-o", str(tmp_path / "y")])
    assert junk.exit_code == 2 and "module path (features.33, layer1.0.conv2)" in junk.output


def test_dump_needs_layer_or_all(runner: CliRunner) -> None:
    result = runner.invoke(main, ["dump"])
    assert result.exit_code == 2
    assert "exactly one of --layer L or --all" in result.output


def test_existing_output_needs_force(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "v"
    args = ["dump", "--layer", "33", "-o", str(out)]
    assert runner.invoke(main, args).exit_code == 0
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(main, [*args, "--force"]).exit_code == 0


def test_psum_overflow_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["dump", "--layer", "33", "--psum-bits", "4", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "layer 33 psums span" in result.output and "--psum-bits" in result.output
    assert not (tmp_path / "o").exists()


def test_unsigned_first_layer_is_refused_with_the_fix(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        main, ["dump", "--layer", "0", "--input-sign", "unsigned", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "layer 0 x_int spans [-" in result.output
    assert "--act-clip relu" in result.output


def test_first_layer_auto_signed_with_notice(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["dump", "--layer", "0", "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "notice: layer 0: x_int spans [-" in result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    entry = next(f for f in manifest["layers"][0]["files"] if f["tensor"] == "input")
    assert entry["signed"] is True and entry["lane_bits"] >= 5
    values = decode_file(tmp_path / "o" / entry["path"], entry)
    assert values.min() < 0


def test_relu_clip_makes_first_layer_unsigned(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["dump", "--layer", "0", "--act-clip", "relu", "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    entry = next(f for f in manifest["layers"][0]["files"] if f["tensor"] == "input")
    assert entry["signed"] is False and entry["lane_bits"] == 4


@pytest.mark.slow
def test_dump_all_bin(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["dump", "--all", "--format", "bin", "-o", str(tmp_path / "all")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert len(manifest["layers"]) == 17
    for layer in manifest["layers"]:
        for entry in layer["files"]:
            decode_file(tmp_path / "all" / entry["path"], entry)


def test_verify_prints_a_table_and_passes(runner: CliRunner) -> None:
    result = runner.invoke(main, ["verify", "--images", "0:2"])
    assert result.exit_code == 0, result.output
    assert result.output.count("PASS") == 17
    assert "all 17 layers pass" in result.output


def test_npy_format_holds_the_integers(runner: CliRunner, tmp_path: Path) -> None:
    import numpy as np

    result = runner.invoke(main, ["dump", "--layer", "33", "--format", "npy", "-o", str(tmp_path / "n")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "n" / "manifest.json").read_text())
    entry = next(f for f in manifest["layers"][0]["files"] if f["tensor"] == "weight")
    array = np.load(tmp_path / "n" / entry["path"])
    assert array.dtype == np.int8 and array.shape == (8, 3, 3, 8)


def test_installed_console_script_runs(tmp_path: Path) -> None:
    exe = shutil.which("qexport")
    assert exe is not None, "the qexport console script is not installed"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        [exe, "dump", "--layer", "33", "--format", "bin", "-o", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s" / "layer33" / "weight.bin").is_file()
    bad = subprocess.run(
        [exe, "dump", "--layer", "2", "-o", str(tmp_path / "t")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --layer 2 is not a quantized conv layer")


def test_template_dir_overrides_a_template_by_name(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "tpl" / "hex").mkdir(parents=True)
    (tmp_path / "tpl" / "hex" / "memory.hex.j2").write_text("// my header for {{ tensor }}\n{{ body }}\n")
    out = tmp_path / "o"
    result = runner.invoke(
        main, ["dump", "--layer", "33", "--template-dir", str(tmp_path / "tpl"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    text = (out / "layer33" / "weight.hex").read_text()
    assert text.startswith("// my header for weight\n")
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(f for f in manifest["layers"][0]["files"] if f["tensor"] == "weight")
    assert entry["header_lines"] == 1
    assert decode_file(out / entry["path"], entry).shape == (8, 3, 3, 8)


def test_a_template_may_show_the_body_twice(runner: CliRunner, tmp_path: Path) -> None:
    # the body is streamed in place of each marker; a template without one is refused
    # (tests/writer/test_render.py)
    template, bodies = "{{ body }}\n// again\n{{ body }}\n", 2
    (tmp_path / "tpl" / "hex").mkdir(parents=True)
    (tmp_path / "tpl" / "hex" / "memory.hex.j2").write_text(template)
    plain = tmp_path / "plain"
    assert runner.invoke(main, ["dump", "--layer", "33", "-o", str(plain)]).exit_code == 0
    out = tmp_path / "o"
    result = runner.invoke(
        main, ["dump", "--layer", "33", "--template-dir", str(tmp_path / "tpl"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = [
        line
        for line in (plain / "layer33" / "weight.hex").read_text().splitlines()
        if not line.startswith(("//", "#"))
    ]
    text = (out / "layer33" / "weight.hex").read_text()
    assert text.count("\n".join(data)) == bodies
    assert "\x00" not in text


@pytest.mark.slow
def test_installed_wheel_ships_templates_and_profiles(tmp_path: Path) -> None:
    import zipfile

    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("qexport-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "qexport/templates/hex/memory.hex.j2",
        "qexport/templates/txt/memory.txt.j2",
        "qexport/templates/profiles/course.toml",
        "qexport/templates/testbench/qexport_ref_core.v",
        "qexport/py.typed",
    ):
        assert name in names, name
    # the wheel alone (no source tree) renders: unpack it and import from there
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import qexport.layout.profile as p, qexport.writer.render as r;"
        "assert p.builtin_names() == ['course', 'course-os', 'flat', 'systolic', 'systolic-is'];"
        "assert r.environment().get_template('hex/memory.hex.j2').filename.startswith(sys.argv[1]);"
        "print(p.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(site))


def test_package_reexports_the_api_lazily() -> None:
    code = (
        "import sys, qexport; assert 'torch' not in sys.modules;"
        "assert qexport.__all__ == sorted(qexport.__all__);"
        "missing = [n for n in qexport.__all__ if getattr(qexport, n, None) is None]; print(missing)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_verify_a_course_checkpoint_on_cifar10(tmp_path: Path, fake_cifar_md5: None) -> None:
    from helpers import course_checkpoint, write_fake_cifar10  # type: ignore[import-not-found]

    ckpt = course_checkpoint(tmp_path / "model_best.pth.tar", module_prefix=True)
    write_fake_cifar10(tmp_path / "data", n_test=8, n_train=2)
    result = CliRunner().invoke(
        main, ["verify", "--checkpoint", str(ckpt), "--data-dir", str(tmp_path / "data"), "--images", "0:8"]
    )
    assert result.exit_code == 0, result.output
    assert "VGG16_quant_gradual from model_best.pth.tar, 8 image(s)" in result.output
    assert result.output.count("PASS") == 17
    dumped = CliRunner().invoke(
        main,
        [
            "dump",
            "--layer",
            "33",
            "--checkpoint",
            str(ckpt),
            "--data-dir",
            str(tmp_path / "data"),
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert dumped.exit_code == 0, dumped.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["source"]["checkpoint"] == "model_best.pth.tar"
    assert manifest["inputs"]["cifar10"] == "test"
    assert "label" not in manifest  # not the demo


@pytest.mark.parametrize(
    ("images", "count"), [(None, 3), ("0", 1), ("1:3", 2)], ids=["default-all", "first", "range"]
)
def test_images_with_an_input_file(tmp_path: Path, images: str | None, count: int) -> None:
    import numpy as np

    from qexport.frontend.demo import demo_images

    path = tmp_path / "imgs.npy"
    np.save(path, demo_images(3))
    args = ["dump", "--layer", "33", "--input", str(path), "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args + (["--images", images] if images else []))
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["inputs"]["count"] == count
    assert manifest["layers"][0]["input_shape"][0] == count


def test_dump_timings_names_every_stage(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["dump", "--layer", "33", "-o", str(tmp_path / "out"), "--timings"])
    assert result.exit_code == 0, result.output
    line = result.stderr.strip().splitlines()[-1]
    match = re.fullmatch(
        r"timings: load ([\d.]+) s, forward\+capture ([\d.]+) s, integerize\+reference ([\d.]+) s, "
        r"pack\+write ([\d.]+) s, total ([\d.]+) s",
        line,
    )
    assert match, line
    stages = [float(x) for x in match.groups()]
    assert stages[0] > 0 and abs(sum(stages[:4]) - stages[4]) < 0.02
    assert "timings:" not in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "stream", "text"),
    [
        (["dump", "--layer", "33", "-o", "out"], 0, "stdout", "wrote 4 hex files"),
        (["dump", "--layer", "34", "-o", "out"], 2, "stderr", "features[34] is a relu"),
        (["verify", "--layer", "33"], 0, "stdout", "pass (mean error < 1e-3)"),
    ],
    ids=["success", "bad-input", "verify"],
)
def test_console_script_keeps_output_and_exit_code_through_the_fast_exit(
    tmp_path: Path, args: list[str], code: int, stream: str, text: str
) -> None:
    # stdout and stderr are pipes, so they are block-buffered: the fast exit must flush them
    result = subprocess.run(
        [sys.executable, "-m", "qexport", *args], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == code, result.stderr
    assert text in getattr(result, stream)
    if code == 0:
        assert result.stderr == "" or "notice" in result.stderr


RESNET = ["--model", "resnet20_quant"]


def test_resnet_demo_layers_lists_every_quantized_conv_by_module_path(runner: CliRunner) -> None:
    result = runner.invoke(main, ["layers", *RESNET])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# resnet20_quant (demo, untrained)")
    # quantized conv rows: not the float convs (conv '-') nor the '#' footer
    rows = [
        r for r in (line.split() for line in result.output.splitlines()[2:]) if r[0] != "#" and r[1] != "-"
    ]
    assert len(rows) == 20
    assert rows[8][:6] == ["layer2.0.downsample.0", "8", "16", "32", "1/2/0", "4"]
    assert rows[6][:5] == ["layer2.0.conv1", "6", "16", "32", "3/2/1"]


def test_resnet_demo_verify_passes_every_layer(runner: CliRunner) -> None:
    result = runner.invoke(main, ["verify", *RESNET, "--images", "0:2"])
    assert result.exit_code == 0, result.output
    assert "all 20 layers pass (mean error < 1e-3)" in result.output
    assert result.output.count("PASS") == 20
    assert "layer3.0.downsample.0" in result.output


def test_resnet_demo_dump_all_flat(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "all"
    result = runner.invoke(main, ["dump", "--all", *RESNET, "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["label"] == "demo, untrained"
    assert [layer["name"] for layer in manifest["layers"]][8] == "layer2.0.downsample.0"
    assert len(manifest["layers"]) == 20
    entry = manifest["layers"][8]
    weight = next(f for f in entry["files"] if f["tensor"] == "weight")
    assert decode_file(out / weight["path"], weight).size == 32 * 16  # 1x1: one tap an (oc, ic)
    assert runner.invoke(main, ["check", str(out)]).exit_code == 0


@pytest.mark.parametrize("layer", ["layer2.0.downsample.0", "layer2.0.conv1"])
def test_resnet_demo_dump_strided_and_1x1_layers_in_the_course_profile(
    runner: CliRunner, tmp_path: Path, layer: str
) -> None:
    out = tmp_path / "set"
    result = runner.invoke(main, ["dump", *RESNET, "--layer", layer, "--profile", "course", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"layer {layer} " in result.output
    assert (out / layer / "acc_address.txt").is_file()
    kij = 1 if "downsample" in layer else 9
    assert len(list((out / layer).glob("weight_itile0_otile0_kij*.txt"))) == kij
    check = runner.invoke(main, ["check", str(out)])
    assert check.exit_code == 0, check.output
