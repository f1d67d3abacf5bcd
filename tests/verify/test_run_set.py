"""``qexport infer --from``: the integer network run from a vector set alone, against ``infer``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qexport.api import SourceOptions, export, infer
from qexport.cli.main import main
from qexport.errors import InputError
from qexport.verify.run_set import infer_set
from tests.helpers import course_checkpoint
from tests.variant_checkpoints import ResNetVariant, resnet_state, write_checkpoint

_SOURCES = {"demo-gradual": False, "course-VGG16_quant": True}  # name: from a test-built checkpoint


def _chained_set(name: str, root: Path) -> tuple[SourceOptions, Path]:
    """A ``dump --all --sfu --chain`` set (flat profile) and the options it was made from."""
    checkpoint = course_checkpoint(root / "ckpt.pth", "VGG16_quant") if _SOURCES[name] else None
    opts = SourceOptions(checkpoint=checkpoint, images="0:6")
    export(opts, None, root / "set", chain=True)
    return opts, root / "set"


@pytest.fixture(scope="module", params=sorted(_SOURCES))
def chained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SourceOptions, Path]:
    return _chained_set(request.param, tmp_path_factory.mktemp(request.param))


_RESNETS = {
    "tiny_resnet": None,
    "quant-stem-without-bn2": ResNetVariant(blocks=1, stem="quant", without_bn2=("layer2.0",)),
}


@pytest.fixture(scope="module", params=sorted(_RESNETS))
def resnet_sets(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SourceOptions, Path, Path]:
    """A ResNet's ``dump --all --chain`` and ``dump --all --sfu`` sets and their options."""
    root = tmp_path_factory.mktemp(request.param)
    variant = _RESNETS[request.param]
    checkpoint = (
        Path(__file__).parents[2] / "vectors" / "tiny_resnet.pth.tar"
        if variant is None
        else write_checkpoint(root / "r.pth", resnet_state(variant))
    )
    opts = SourceOptions(checkpoint=checkpoint, images="0:6")
    export(opts, None, root / "chain", chain=True)
    export(opts, None, root / "plain", sfu=True)
    return opts, root / "chain", root / "plain"


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's chained set (VGG16_quant_gradual: layers 0, 4, 7, 11 ...)."""
    return _chained_set("demo-gradual", tmp_path_factory.mktemp("demo"))[1]


def test_infer_from_a_set_equals_infer_on_the_model(chained: tuple[SourceOptions, Path]) -> None:
    opts, folder = chained
    ran = infer_set(folder, batch_size=4, keep=True)
    _, report = infer(opts)
    from qexport.frontend.source import load
    from qexport.infer import infer_network

    loaded = load(opts)
    model = infer_network(loaded.model, loaded.inputs.images, bits=loaded.bits, batch_size=4, keep_x_int=True)
    assert list(ran.x_int) == list(model.x_int)  # every conv, in order
    for name, parts in model.x_int.items():
        assert np.array_equal(ran.x_int[name], np.concatenate(parts)), name
    assert ran.predictions == model.predictions == report.predictions
    assert len(ran.predictions) == 6
    # the set's own input and requant files are the chained integer network's: nothing differs
    assert all(layer.differ_input == 0 for layer in ran.layers)
    assert all(layer.differ_requant == 0 for layer in ran.layers[:-1])
    assert ran.layers[-1].differ_requant is None


def test_infer_from_never_imports_torch(chained: tuple[SourceOptions, Path]) -> None:
    _check_without_torch(chained[1])


def _check_without_torch(folder: Path) -> None:
    code = (
        "import sys; from qexport.cli.main import main\n"
        f"try: main(['infer', '--from', {str(folder)!r}, '--json'])\n"
        "except SystemExit as done: assert done.code in (0, None), done.code\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stderr.strip() == "False"
    report = json.loads(result.stdout)
    assert report["images"] == 6
    assert report["predictions"] == infer_set(folder).predictions


def test_infer_from_prints_each_layer_and_the_predictions(demo_set: Path) -> None:
    folder = demo_set
    result = CliRunner().invoke(main, ["infer", "--from", str(folder)])
    assert result.exit_code == 0, result.output
    assert "from the vector set" in result.output
    assert "float end" in result.output
    assert "top-1: " + " ".join(map(str, infer_set(folder).predictions)) in result.output


def test_infer_from_refuses_source_options(demo_set: Path) -> None:
    folder = demo_set
    result = CliRunner().invoke(main, ["infer", "--from", str(folder), "--images", "0:2"])
    assert result.exit_code == 2
    assert "drop --images" in result.output


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def _edit_manifest(folder: Path, edit: object) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))


def _drop_tensor(tensor: str, layer: int) -> object:
    def edit(data: dict[str, object]) -> None:
        entry = data["layers"][layer]  # type: ignore[index]
        entry["files"] = [f for f in entry["files"] if f["tensor"] != tensor]

    return edit


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "layer4" / "threshold.hex").unlink(), r"layer4/threshold\.hex is missing"),
        (
            lambda f: (f / "classifier" / "classifier.weight.npy").unlink(),
            r"classifier\.weight\.npy is missing",
        ),
        (lambda f: (f / "layer7" / "weight.hex").write_text("// x\n"), r"layer7/weight\.hex does not match"),
        (lambda f: _edit_manifest(f, _drop_tensor("threshold", 1)), "layer 4 has no threshold file"),
        (lambda f: _edit_manifest(f, _drop_tensor("direction", 2)), "layer 7 has no direction file"),
        (lambda f: _edit_manifest(f, _drop_tensor("input", 0)), "layer 0 has no input file"),
        (lambda f: _edit_manifest(f, lambda d: d.pop("classifier")), "has no 'classifier'"),
        (
            lambda f: _edit_manifest(f, lambda d: d.__setitem__("layers", d["layers"][:3])),
            "feeds features.11, which the set does not hold",
        ),
        (
            lambda f: _edit_manifest(f, lambda d: d.__setitem__("layers", d["layers"][1:])),
            "starts at layer 4",
        ),
    ],
    ids=[
        "threshold-file",
        "classifier-file",
        "damaged-weight",
        "threshold-entry",
        "direction-entry",
        "first-input",
        "classifier-entry",
        "missing-layer",
        "missing-first-layer",
    ],
)
def test_a_set_missing_a_file_is_refused_naming_it(
    demo_set: Path, tmp_path: Path, damage: object, message: str
) -> None:
    copy = _copy(demo_set, tmp_path)
    damage(copy)  # type: ignore[operator]
    with pytest.raises(InputError, match=message):
        infer_set(copy)
    result = CliRunner().invoke(main, ["infer", "--from", str(copy)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_a_set_without_sfu_files_is_refused(tmp_path: Path) -> None:
    export(SourceOptions(images="0:1"), [0, 4], tmp_path / "plain")
    with pytest.raises(InputError, match="layer 0 has no SFU files"):
        infer_set(tmp_path / "plain")


_TINY_VGG = Path(__file__).resolve().parents[2] / "vectors" / "tiny_vgg.pth.tar"


@pytest.fixture(scope="module")
def tiny_flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_vgg's flat ``dump --all --sfu --act-clip relu`` set of images 0:2."""
    folder = tmp_path_factory.mktemp("tiny") / "flat"
    export(SourceOptions(checkpoint=_TINY_VGG, images="0:2", act_clip="relu"), None, folder, sfu=True)
    return folder


@pytest.mark.parametrize("profile", ["course", "systolic"])
def test_infer_from_a_tiled_set_equals_infer_from_the_flat_set(
    tiny_flat: Path, tmp_path: Path, profile: str
) -> None:
    folder = tmp_path / profile
    opts = SourceOptions(checkpoint=_TINY_VGG, images="0:2", act_clip="relu")
    export(opts, None, folder, profile=profile, sfu=True, chain=True)
    tiled, flat = infer_set(folder, keep=True), infer_set(tiny_flat, keep=True)
    assert tiled.predictions == flat.predictions and len(tiled.predictions) == 2
    assert list(tiled.x_int) == list(flat.x_int) == ["features.0", "features.4", "features.7", "features.9"]
    for name, x in flat.x_int.items():
        assert np.array_equal(tiled.x_int[name], x), name
    # the tile files' inputs and requants, put back together, are what the run makes
    assert [layer.differ_input for layer in tiled.layers] == [0, 0, 0, 0]
    assert [layer.differ_requant for layer in tiled.layers] == [0, 0, 0, None]


@pytest.mark.parametrize("profile", ["course-os", "systolic-is"])
def test_a_set_whose_activations_are_streams_is_refused_naming_the_file(tmp_path: Path, profile: str) -> None:
    folder = tmp_path / profile
    opts = SourceOptions(checkpoint=_TINY_VGG, images="0:1", act_clip="relu")
    export(opts, None, folder, profile=profile, sfu=True)
    with pytest.raises(InputError, match=r"layer0/activation_tile0_.*an activation stream"):
        infer_set(folder)


def test_infer_from_a_tiled_resnet_set_equals_the_flat_set(tmp_path: Path) -> None:
    opts = SourceOptions(
        checkpoint=Path(__file__).parents[2] / "vectors" / "tiny_resnet.pth.tar", images="0:2"
    )
    export(replace(opts, act_clip="relu"), None, tmp_path / "tiled", profile="systolic", sfu=True, chain=True)
    export(replace(opts, act_clip="relu"), None, tmp_path / "flat", sfu=True, chain=True)
    tiled, flat = infer_set(tmp_path / "tiled", keep=True), infer_set(tmp_path / "flat", keep=True)
    assert tiled.predictions == flat.predictions and len(tiled.predictions) == 2
    assert list(tiled.x_int) == list(flat.x_int) and len(flat.x_int) > 3
    for name, x in flat.x_int.items():
        assert np.array_equal(tiled.x_int[name], x), name
    assert all(layer.differ_requant in (0, None) for layer in tiled.layers)
    assert all(layer.differ_skip in (0, None) for layer in tiled.layers)


@pytest.fixture(scope="module")
def tiny_course(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "course"
    export(
        SourceOptions(checkpoint=_TINY_VGG, images="0:2", act_clip="relu"),
        None,
        folder,
        profile="course",
        sfu=True,
    )
    return folder


def _drop_file(path: str) -> object:
    def edit(data: dict[str, object]) -> None:
        for entry in data["layers"]:  # type: ignore[attr-defined]
            entry["files"] = [f for f in entry["files"] if f["path"] != path]

    return edit


def test_infer_from_a_resnet_set_equals_infer_on_the_model(
    resnet_sets: tuple[SourceOptions, Path, Path],
) -> None:
    opts, chain, plain = resnet_sets
    _, report = infer(opts, batch_size=4)
    ran = infer_set(chain, batch_size=4, keep=True)
    assert ran.predictions == report.predictions and len(ran.predictions) == 6
    # the chained set's inputs, requants and skips are the run's own: nothing differs
    assert all(layer.differ_input == 0 for layer in ran.layers)
    assert all(layer.differ_requant in (0, None) for layer in ran.layers)
    assert all(layer.differ_skip in (0, None) for layer in ran.layers)
    # a quantized stem's output is layer1.0's shortcut, which the run carries itself (tiny_resnet's
    # stem is float: its only identity shortcut comes from the skip file)
    carried = [layer.name for layer in ran.layers if layer.differ_skip is not None]
    assert carried == ([] if opts.checkpoint.name == "tiny_resnet.pth.tar" else ["layer1.0.conv2"])
    # the set made from the float model's inputs runs the same integer network ...
    from_plain = infer_set(plain, batch_size=3, keep=True)
    assert from_plain.predictions == ran.predictions
    assert list(from_plain.x_int) == list(ran.x_int)
    for name, x in ran.x_int.items():
        np.testing.assert_array_equal(from_plain.x_int[name], x, err_msg=name)
    # ... and its inputs are the float model's x_int: each conv differs from them where infer
    # counts the chained integer network differing, conv by conv
    for layer in from_plain.layers:
        counted = sum(row.differ_chained for row in report.layers if row.next == layer.name)
        assert layer.differ_input == counted, layer.name
    assert sum(row.differ_chained for row in report.layers) > 0 or report.x_int_equal == 1.0


def test_infer_from_a_resnet_set_never_imports_torch(resnet_sets: tuple[SourceOptions, Path, Path]) -> None:
    _check_without_torch(resnet_sets[1])


def _layer_index(folder: Path, name: str) -> int:
    layers = json.loads((folder / "manifest.json").read_text())["layers"]
    return next(k for k, layer in enumerate(layers) if layer["name"] == name)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda f: (f / "layer4" / "threshold_otile1.txt").unlink(),
            r"layer4/threshold_otile1\.txt is missing",
        ),
        (
            lambda f: (f / "layer0" / "weight_itile0_otile0_kij4.txt").unlink(),
            r"layer0/weight_itile0_otile0_kij4\.txt is missing",
        ),
        (
            lambda f: _edit_manifest(f, _drop_file("layer0/activation_tile5.txt")),
            r"layer 0: no input tile file in the manifest holds value \(n 0, h 0, w 20, c 0\)",
        ),
        (
            lambda f: _edit_manifest(f, _drop_file("layer4/direction_otile1.txt")),
            r"layer 4: no direction tile file in the manifest holds value \(c 8\)",
        ),
    ],
    ids=["threshold-tile", "weight-tap", "input-tile-entry", "direction-tile-entry"],
)
def test_a_tiled_set_missing_a_tile_file_names_it(
    tiny_course: Path, tmp_path: Path, damage: object, message: str
) -> None:
    copy = _copy(tiny_course, tmp_path)
    damage(copy)  # type: ignore[operator]
    with pytest.raises(InputError, match=message):
        infer_set(copy)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "layer1.0.conv2" / "skip.hex").unlink(), r"layer1\.0\.conv2/skip\.hex is missing"),
        (
            lambda f: _edit_manifest(f, _drop_tensor("multiplier", _layer_index(f, "layer2.0.conv2"))),
            "layer layer2.0.conv2 has no multiplier file",
        ),
        (
            lambda f: _edit_manifest(f, _drop_tensor("skip", _layer_index(f, "layer1.0.conv2"))),
            "layer layer1.0.conv2 has no skip file",
        ),
        (
            lambda f: _edit_manifest(
                f,
                lambda d: d.__setitem__("layers", [x for x in d["layers"] if "downsample" not in x["name"]]),
            ),
            "adds layer2.0.downsample.0's fold, which the set does not hold",
        ),
    ],
    ids=["skip-file", "multiplier-entry", "skip-entry", "downsample-layer"],
)
def test_a_resnet_set_missing_a_file_is_refused_naming_it(
    tmp_path: Path, damage: object, message: str
) -> None:
    folder = tmp_path / "set"
    export(
        SourceOptions(checkpoint=Path(__file__).parents[2] / "vectors" / "tiny_resnet.pth.tar"),
        None,
        folder,
        sfu=True,
    )
    damage(folder)  # type: ignore[operator]
    with pytest.raises(InputError, match=message):
        infer_set(folder)
    result = CliRunner().invoke(main, ["infer", "--from", str(folder)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
