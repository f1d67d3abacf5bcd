"""SFU files (``dump --sfu``) and chained inputs (``dump --chain``) across every stage.

Each threshold, direction and requant file is decoded twice (``qexport.verify.decode`` and an
independent reader), the thresholds are compared with :mod:`qexport.ir.sfu`, and the documented rule
(``count(psum >= T)`` for direction 1 or 0, ``count(psum <= T)`` for -1, then max-pool) applied to
the decoded golden psum file gives the requant file exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from qexport.api import SourceOptions, export
from qexport.cli.main import main
from qexport.frontend.capture import capture
from qexport.frontend.source import load
from qexport.infer.chain import chain_thresholds, vgg_chains
from qexport.ir.integerize import integerize
from qexport.ir.reference import integer_conv
from qexport.ir.sfu import float32_band, max_pool, scale
from qexport.verify.check import check_set
from qexport.verify.decode import decode_file
from tests.bitstring_decoder import decode_memory_text
from tests.variant_checkpoints import ResNetVariant, resnet_state, write_checkpoint

VECTORS = Path(__file__).parent.parent / "vectors"


def _independent(path: Path, f: dict[str, Any]) -> np.ndarray | None:
    """The file read without qexport: bitstring for hex/bin, numpy for npy (None for other formats)."""
    if f["format"] == "npy":
        return np.asarray(np.load(path).astype(np.int64).reshape(f["shape"]))
    if f["format"] not in ("hex", "bin"):
        return None
    lanes = decode_memory_text(
        path.read_text(),
        radix=f["format"],
        header_lines=f["header_lines"],
        word_bits=f["word_bits"],
        lanes=f["lanes"],
        lane_bits=f["lane_bits"],
        signed=f["signed"],
        lane_order=f["lane_order"],
    )
    shape = list(f["shape"])
    if f.get("padded_channels"):
        shape[-1] += f["padded_channels"]
    values = np.array(lanes[: int(np.prod(shape))], dtype=np.int64).reshape(shape)
    return values[..., : f["shape"][-1]]


def _tensors(out: Path, layer: dict[str, Any]) -> dict[str, np.ndarray]:
    found = {}
    for f in layer["files"]:
        value = decode_file(out / f["path"], f)
        other = _independent(out / f["path"], f)
        if other is not None:
            np.testing.assert_array_equal(value, other, err_msg=f["path"])
        found[f["tensor"]] = value
    return found


def _rule(psum: np.ndarray, thresholds: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The manifest's rule, written out: psum (N, H, W, C), thresholds (C, L), direction (C)."""
    up = (psum[..., None] >= thresholds).sum(-1)
    down = (psum[..., None] <= thresholds).sum(-1)
    return np.where(direction < 0, down, up)


def _pool(x: np.ndarray, between: list[str]) -> np.ndarray:
    pools = [int(op.removeprefix("maxpool")) for op in between if op.startswith("maxpool")]
    if not pools:
        return x
    nchw = max_pool(x.transpose(0, 3, 1, 2), pools[0])
    return np.asarray(nchw.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("fmt", ["hex", "bin", "coe", "mif", "h", "npy"])
def test_sfu_files_decode_and_reproduce_requant(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / fmt
    result = export(SourceOptions(), [30, 41, 51], out, fmt, sfu=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["sfu"] is True and "--sfu" in manifest["recipe"]["command"]
    loaded = load(SourceOptions())
    captured = {t.name: t for t in capture(loaded.model, loaded.inputs.images, bits=loaded.bits)}
    chains = {c.name: c for c in vgg_chains(loaded.model)[0]}
    by_name = {layer["name"]: layer for layer in manifest["layers"]}
    assert by_name["features.30"]["next"] == "features.33"
    assert by_name["features.30"]["between"] == ["batchnorm", "relu"]
    assert by_name["features.41"]["between"] == ["batchnorm", "relu", "maxpool2"]
    # the last conv: nothing reads its output, so no SFU files and no next/between
    last = by_name["features.51"]
    assert "next" not in last and "between" not in last
    assert {f["tensor"] for f in last["files"]} == {"weight", "input", "psum", "output"}
    for name in ("features.30", "features.41"):
        layer = by_name[name]
        files = {f["tensor"]: f for f in layer["files"]}
        psum_bits = files["psum"]["lane_bits"]
        t_entry = files["threshold"]
        assert t_entry["axes"] == ["c", "t"] and t_entry["signed"]
        assert t_entry["shape"] == [layer["out_channels"], 15]
        assert files["direction"]["axes"] == ["c"] and files["direction"]["lane_bits"] == 2
        assert files["requant"]["axes"] == ["n", "h", "w", "c"] and not files["requant"]["signed"]
        values = _tensors(out, layer)
        chain = chains[name]
        rule = chain_thresholds(chain, captured[name], captured[layer["next"]])
        limit = 2 ** (psum_bits - 1)
        np.testing.assert_array_equal(values["threshold"], rule.clamped(limit).thresholds)
        np.testing.assert_array_equal(values["direction"], rule.direction)
        assert t_entry["lane_bits"] <= psum_bits + 1
        assert np.abs(values["threshold"]).max() < 2 ** (t_entry["lane_bits"] - 1)
        # the rule on the golden psum file gives the requant file exactly
        requant = _pool(_rule(values["psum"], values["threshold"], values["direction"]), layer["between"])
        np.testing.assert_array_equal(requant, values["requant"])
        # and the float model's next x_int, except values within float32 rounding of a threshold
        this, nxt = integerize(captured[name]), integerize(captured[layer["next"]])
        own = nxt.x_int.transpose(0, 2, 3, 1)
        differ = requant != own
        if differ.any():
            s = scale(this.act_alpha, this.act_bit, this.wgt_alpha, this.w_bit)
            psum = values["psum"].transpose(0, 3, 1, 2)
            low, high = float32_band(psum, this.y_float, s, chain.bn, nxt.act_alpha, nxt.act_bit)
            low, high = (_pool(v.transpose(0, 2, 3, 1), layer["between"]) for v in (low, high))
            assert ((own >= low) & (own <= high))[differ].all()
    assert not result.notices
    assert check_set(out).identical


def test_sfu_off_writes_no_sfu_files(tmp_path: Path) -> None:
    export(SourceOptions(), [30], tmp_path / "plain")
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    (layer,) = manifest["layers"]
    assert "next" not in layer and "sfu" not in manifest["recipe"] and "chain" not in manifest["recipe"]
    assert {f["tensor"] for f in layer["files"]} == {"weight", "input", "psum", "output"}


def _rshift_up(v: np.ndarray, s: np.ndarray | int) -> np.ndarray:
    """README: ``(v + 2^(S-1)) >> S``, a tie toward +inf (``v`` itself at S = 0); floor division."""
    s = np.asarray(s, dtype=np.int64)
    return np.asarray((v + (np.int64(2) ** s) // 2) // np.int64(2) ** s)


def _rshift_even(v: np.ndarray, s: int) -> np.ndarray:
    """README: ``round(v / 2^S)``, a tie to the even integer."""
    q, r = np.divmod(v, np.int64(2) ** s)
    up = (2 * r > 2**s) | ((2 * r == 2**s) & (q % 2 == 1))
    return np.asarray(q + up)


def _resnet_checkpoint(tmp_path: Path, source: str) -> Path:
    if source == "tiny_resnet":
        return VECTORS / "tiny_resnet.pth.tar"
    variant = ResNetVariant(blocks=1, stem="quant", without_bn2=("layer2.0",))
    return write_checkpoint(tmp_path / "r.pth", resnet_state(variant))


def _check_fixed_point_files(out: Path, chain: bool) -> int:
    """Decode every SFU file of a ResNet set (qexport's decoder and the independent reader) and
    apply the README's arithmetic to the golden psum files: it gives every requant file exactly."""
    manifest = json.loads((out / "manifest.json").read_text())
    layers = {layer["name"]: layer for layer in manifest["layers"]}
    values = {name: _tensors(out, layer) for name, layer in layers.items()}
    ends = 0
    for name, layer in layers.items():
        v, fp = values[name], layer.get("fixed_point")
        files = {f["tensor"]: f for f in layer["files"]}
        if fp is None:  # a block's conv1: thresholds to conv2, as for a VGG
            assert layer["between"] == ["batchnorm", "relu"] and layer["next"].endswith("conv2")
            np.testing.assert_array_equal(_rule(v["psum"], v["threshold"], v["direction"]), v["requant"])
            continue
        assert (fp["mult_bits"], fp["frac_bits"], fp["skip_bits"], fp["bias_bits"]) == (28, 20, 32, 40)
        assert fp["fold_rounding"] == "half_up" and fp["requant_rounding"] == "half_even"
        assert files["multiplier"]["signed"] and files["multiplier"]["lane_bits"] == fp["mult_bits"]
        assert files["bias"]["signed"] and files["bias"]["lane_bits"] == fp["bias_bits"]
        assert not files["shift"]["signed"] and files["multiplier"]["axes"] == ["c"]
        assert files["multiplier"]["shape"] == [layer["out_channels"]]
        if fp["role"] == "shortcut":
            assert layers[fp["add_into"]]["fixed_point"]["add"] == name
            continue
        acc = _rshift_up(v["psum"] * v["multiplier"], v["shift"]) + v["bias"]
        if fp.get("add") == "identity":
            assert not files["skip"]["signed"] and files["skip"]["lane_bits"] == fp["skip_bits"]
            acc = acc + _rshift_up(v["skip"] * fp["skip_multiplier"], fp["skip_shift"])
        elif "add" in fp:
            ds = values[fp["add"]]
            acc = acc + _rshift_up(ds["psum"] * ds["multiplier"], ds["shift"]) + ds["bias"]
        out_ = np.maximum(acc, 0)
        for rq in fp["requant"]:
            x = np.minimum(_rshift_even(out_ * rq["multiplier"], rq["shift"]), rq["levels"])
            np.testing.assert_array_equal(x, v[rq["tensor"]], err_msg=f"{name} -> {rq['consumer']}")
            assert files[rq["tensor"]]["lane_bits"] == layers[rq["consumer"]]["act_bit"]
            if chain:  # the consumer's input is this requant
                np.testing.assert_array_equal(values[rq["consumer"]]["input"], x)
        if not fp["requant"]:
            assert manifest["classifier"]["after"] == name
        ends += 1
    return ends


@pytest.mark.parametrize("fmt", ["hex", "bin", "coe", "mif", "h", "npy"])
def test_resnet_fixed_point_files_reproduce_requant(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / fmt
    result = export(SourceOptions(checkpoint=VECTORS / "tiny_resnet.pth.tar"), None, out, fmt, sfu=True)
    assert not any("SFU" in n for n in result.notices)
    assert _check_fixed_point_files(out, chain=False) == 3  # a block end a stage
    manifest = json.loads((out / "manifest.json").read_text())
    ends = {layer["name"]: layer for layer in manifest["layers"]}
    assert ends["layer2.0.conv2"]["between"] == ["batchnorm", "add layer2.0.downsample.0", "relu"]
    assert ends["layer2.0.downsample.0"]["fixed_point"]["add_into"] == "layer2.0.conv2"
    assert "next" not in ends["layer3.0.conv2"]  # the last conv: the float end reads it
    assert "fixed_point" not in manifest["recipe"]  # the default widths
    assert check_set(out).identical


@pytest.mark.parametrize("source", ["tiny_resnet", "quant-stem-without-bn2"])
def test_resnet_chain_inputs_are_the_integer_networks(tmp_path: Path, source: str) -> None:
    out = tmp_path / "chain"
    export(
        SourceOptions(checkpoint=_resnet_checkpoint(tmp_path, source), images="0:2"), None, out, chain=True
    )
    assert _check_fixed_point_files(out, chain=True) >= 3
    assert check_set(out).identical


def test_dump_takes_the_fixed_point_widths(tmp_path: Path) -> None:
    args = ["dump", "--all", "--sfu", "--checkpoint", str(VECTORS / "tiny_resnet.pth.tar")]
    widths = ["--mult-bits", "20", "--frac-bits", "12", "--skip-bits", "24", "--bias-bits", "30"]
    result = CliRunner().invoke(main, [*args, *widths, "-o", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    recorded = {"mult_bits": 20, "frac_bits": 12, "skip_bits": 24, "bias_bits": 30}
    assert manifest["recipe"]["fixed_point"] == recorded
    assert " ".join(widths) in manifest["recipe"]["command"]
    layer = next(layer for layer in manifest["layers"] if layer["name"] == "layer1.0.conv2")
    assert {k: layer["fixed_point"][k] for k in recorded} == recorded
    files = {f["tensor"]: f for f in layer["files"]}
    assert (files["multiplier"]["lane_bits"], files["bias"]["lane_bits"], files["skip"]["lane_bits"]) == (
        20,
        30,
        24,
    )
    assert check_set(tmp_path / "w").identical  # `check` makes it again at the recorded widths
    # too narrow a bias is refused naming the layer and the width it needs
    narrow = CliRunner().invoke(main, [*args, "--bias-bits", "2", "-o", str(tmp_path / "n")])
    assert narrow.exit_code == 2
    assert "layer1.0.conv2 (bn2 fold)" in narrow.output and "try --bias-bits" in narrow.output


def test_course_profile_resnet_fixed_point_tiles(tmp_path: Path) -> None:
    # tiny_resnet layer1.0.conv2: 8 -> 8 channels, 32x32, an identity shortcut: 64 output tiles
    opts = SourceOptions(checkpoint=VECTORS / "tiny_resnet.pth.tar")
    export(opts, ["layer1.0.conv2"], tmp_path / "flat", sfu=True)
    export(opts, ["layer1.0.conv2"], tmp_path / "course", profile="course", sfu=True)
    flat = json.loads((tmp_path / "flat" / "manifest.json").read_text())["layers"][0]
    flat_values = _tensors(tmp_path / "flat", flat)
    (layer,) = json.loads((tmp_path / "course" / "manifest.json").read_text())["layers"]
    assert layer["fixed_point"] == flat["fixed_point"]
    out = tmp_path / "course"
    files = {Path(f["path"]).name: f for f in layer["files"]}
    for tensor in ("multiplier", "shift", "bias"):
        f = files[f"{tensor}_otile0.txt"]
        assert f["axes"] == ["c"] and f["oc"] == [0, 8] and f["lanes"] == 8
        np.testing.assert_array_equal(decode_file(out / f["path"], f), flat_values[tensor])
    for tensor in ("skip", "requant"):
        tiles = [f for f in layer["files"] if f["tensor"] == tensor]
        assert len(tiles) == 64
        for f in tiles:
            assert Path(f["path"]).name == f"{tensor}_tile{f['tile']}_otile0.txt"
            (y0, y1), (x0, x1) = f["y"], f["x"]
            window = flat_values[tensor][f["n"] : f["n"] + 1, y0:y1, x0:x1]
            np.testing.assert_array_equal(decode_file(out / f["path"], f), window)
    assert check_set(out).identical


def _integer_network(act_clip: str) -> dict[str, np.ndarray]:
    """Every conv's x_int (N, C, H, W) as the integer network makes it, written out in the test."""
    opts = SourceOptions(act_clip=act_clip)  # type: ignore[arg-type]
    loaded = load(opts)
    captured = {t.name: t for t in capture(loaded.model, loaded.inputs.images, bits=loaded.bits)}
    chains, _ = vgg_chains(loaded.model)
    x = integerize(captured[chains[0].name]).x_int
    inputs = {}
    for chain in chains:
        inputs[chain.name] = x
        if chain.next is None:
            break
        layer = integerize(captured[chain.name])
        psum = integer_conv(x, layer.w_int, layer.stride, layer.padding)
        x = chain_thresholds(chain, captured[chain.name], captured[chain.next]).apply(psum)
        x = x if chain.pool is None else max_pool(x, chain.pool)
    return inputs


def test_chain_inputs_are_the_integer_networks(tmp_path: Path) -> None:
    # under --act-clip relu the demo's integer network departs from the float model at layer 21
    out = tmp_path / "chain"
    result = export(SourceOptions(act_clip="relu"), [24, 27], out, chain=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["chain"] is True and "--chain" in manifest["recipe"]["command"]
    network = _integer_network("relu")
    loaded = load(SourceOptions(act_clip="relu"))
    captured = {t.name: t for t in capture(loaded.model, loaded.inputs.images, bits=loaded.bits)}
    for layer in manifest["layers"]:
        values = _tensors(out, layer)
        chained = network[layer["name"]].transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(values["input"], chained)
        assert "requant" in values  # --chain implies --sfu
    float_input = integerize(captured["features.27"]).x_int.transpose(0, 2, 3, 1)
    assert (values["input"] != float_input).any()  # the chain is not the float model's input
    assert any("--chain: layer 27" in n for n in result.notices)
    # layer 24's requant is layer 27's chained input
    layers = {layer["name"]: layer for layer in manifest["layers"]}
    np.testing.assert_array_equal(_tensors(out, layers["features.24"])["requant"], values["input"])
    assert check_set(out).identical


def test_course_profile_sfu_tiles(tmp_path: Path) -> None:
    # tiny_vgg layer 0: 8 channels, 32x32 -> 64 output tiles, a 2x2 max-pool after it
    opts = SourceOptions(checkpoint=VECTORS / "tiny_vgg.pth.tar", act_clip="relu")
    export(opts, [0], tmp_path / "flat", sfu=True)
    export(opts, [0], tmp_path / "course", profile="course", sfu=True)
    flat = json.loads((tmp_path / "flat" / "manifest.json").read_text())["layers"][0]
    flat_values = _tensors(tmp_path / "flat", flat)
    (layer,) = json.loads((tmp_path / "course" / "manifest.json").read_text())["layers"]
    assert layer["next"] == "features.4" and layer["between"] == ["batchnorm", "relu", "maxpool2"]
    out = tmp_path / "course"
    files = {Path(f["path"]).name: f for f in layer["files"]}
    threshold = files["threshold_otile0.txt"]
    assert threshold["axes"] == ["t", "c"] and threshold["oc"] == [0, 8] and threshold["lanes"] == 8
    np.testing.assert_array_equal(decode_file(out / threshold["path"], threshold), flat_values["threshold"].T)
    direction = files["direction_otile0.txt"]
    np.testing.assert_array_equal(decode_file(out / direction["path"], direction), flat_values["direction"])
    requants = [f for f in layer["files"] if f["tensor"] == "requant"]
    assert len(requants) == 64
    for f in requants:
        assert Path(f["path"]).name == f"requant_tile{f['tile']}_otile0.txt"
        (y0, y1), (x0, x1) = f["y"], f["x"]
        assert (y1 - y0, x1 - x0) == (2, 2)
        window = flat_values["requant"][f["n"] : f["n"] + 1, y0:y1, x0:x1]
        np.testing.assert_array_equal(decode_file(out / f["path"], f), window)
    assert check_set(out).identical


def test_course_profile_without_sfu_keeps_its_files(tmp_path: Path) -> None:
    export(SourceOptions(), [33], tmp_path / "c", profile="course")
    names = {p.name for p in (tmp_path / "c" / "layer33").iterdir()}
    assert not any(n.startswith(("threshold", "direction", "requant")) for n in names)
