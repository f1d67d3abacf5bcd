"""Every checkpoint variant issue 15 lists, written in ``tmp_path`` from its key names, through
qexport end to end: inference, strict loading, the integers against a float64 reference computed
here from the state dict, the seeds' checks, and flat and course-profile dumps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import course_checkpoint
from variant_checkpoints import (
    ResNetVariant,
    StateDict,
    make_tie,
    psum_reference,
    resnet_state,
    w_int_reference,
    weight_q,
    write_checkpoint,
    x_int_reference,
)

from qexport import api
from qexport.api import SourceOptions
from qexport.errors import InputError
from qexport.frontend.capture import capture
from qexport.frontend.models.resnet import ResNetArch
from qexport.frontend.models.vgg import Arch, ModuleSpec
from qexport.frontend.source import load
from qexport.ir.integerize import integerize
from qexport.ir.reference import conv_psum
from qexport.verify.check import check_set
from qexport.verify.decode import decode_file

RESNETS = {
    "w16-32-64": ResNetVariant(),
    "w8-16-48": ResNetVariant(widths=(8, 16, 48)),
    "w8-32-64": ResNetVariant(widths=(8, 32, 64)),
    "quant-stem": ResNetVariant(stem="quant"),
    "w8-32-64-quant-stem": ResNetVariant(widths=(8, 32, 64), stem="quant"),
    "without-bn2": ResNetVariant(widths=(8, 16, 48), without_bn2=("layer1.2", "layer3.0")),
    "depth-5": ResNetVariant(blocks=5, widths=(8, 16, 48)),
    "4-bit-quant-stem": ResNetVariant(widths=(8, 16, 48), stem="quant", bits=4),
    "2-bit": ResNetVariant(widths=(8, 16, 48), bits=2),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, StateDict]]:
    folder = tmp_path_factory.mktemp("variants")
    out = {}
    for name, v in RESNETS.items():
        sd = resnet_state(v, seed=len(out))
        out[name] = (write_checkpoint(folder / f"{name}.pth.tar", sd), sd)
    return out


def _qconv_names(v: ResNetVariant) -> list[str]:
    """The quantized convs in forward order, from the issue's block formula."""
    names = ["conv1"] if v.stem == "quant" else []
    for s in (1, 2, 3):
        for b in range(v.blocks):
            names += [f"layer{s}.{b}.conv1", f"layer{s}.{b}.conv2"]
            if b == 0 and s > 1:
                names.append(f"layer{s}.{b}.downsample.0")
    return names


@pytest.mark.parametrize("name", list(RESNETS))
def test_resnet_variant_loads_and_every_layer_is_exact(
    name: str, written: dict[str, tuple[Path, StateDict]]
) -> None:
    v = RESNETS[name]
    path, sd = written[name]
    loaded = load(SourceOptions(checkpoint=path))
    # inference: the architecture the keys describe
    arch = loaded.arch
    assert isinstance(arch, ResNetArch)
    assert arch.blocks == (v.blocks,) * 3 and arch.widths == v.widths
    assert arch.stem == v.stem and arch.without_bn2 == v.without_bn2
    assert loaded.table.names() == _qconv_names(v)
    # strict loading: every key of the checkpoint, unchanged, and no other
    own = loaded.model.state_dict()
    assert set(own) == set(sd)
    for key, value in sd.items():
        assert torch.equal(own[key].cpu(), value), key
    assert not loaded.report.problems and not loaded.report.ties
    # per-layer bits: w_bit from weight_q, act_bit = w_bit as the course QuantConv2d
    for layer in loaded.table.names():
        bits = loaded.bits[layer]
        assert (bits.w_bit, bits.act_bit) == (v.bits, v.bits), layer
        assert bits.w_source == "inferred from weight_q"
    captured = capture(loaded.model, loaded.inputs.images[:1], bits=loaded.bits)
    assert [t.name for t in captured] == _qconv_names(v)
    for t in captured:
        ints = integerize(t)
        psums = conv_psum(ints)
        w_int = w_int_reference(sd, t.name, v.bits)
        np.testing.assert_array_equal(ints.w_int, w_int, err_msg=t.name)
        if v.bits == 2:
            assert set(np.unique(ints.w_int)) <= {-1, 0, 1}
            assert ints.x_int.min() >= 0 or t.name == "conv1"
            assert ints.x_int.max() <= 3
        x_int = x_int_reference(t.x.numpy(), float(sd[f"{t.name}.act_alpha"]), v.bits)
        np.testing.assert_array_equal(ints.x_int, x_int, err_msg=t.name)
        k = int(sd[f"{t.name}.weight"].shape[-1])
        stride = (
            2 if (t.name.endswith((".0.conv1", "downsample.0")) and not t.name.startswith("layer1")) else 1
        )
        assert (t.kernel, t.stride, t.padding) == (k, stride, 1 if k == 3 else 0), t.name
        np.testing.assert_array_equal(psums.psum, psum_reference(x_int, w_int, stride, t.padding))
        assert psums.checks.passed, (t.name, psums.checks)


# --- dumps of a stride-2 layer, a 1x1 downsample and an 8->8 layer at 32x32 ---------------------

DUMPS = [
    ("w16-32-64", "layer2.0.conv1", (16, 32, 3, 2, 32)),
    ("w16-32-64", "layer2.0.downsample.0", (16, 32, 1, 2, 32)),
    ("w8-16-48", "layer1.0.conv1", (8, 8, 3, 1, 32)),
    ("2-bit", "layer2.0.downsample.0", (8, 16, 1, 2, 32)),
]


@pytest.mark.parametrize("profile", ["flat", "course"])
@pytest.mark.parametrize(("name", "layer", "geometry"), DUMPS, ids=[f"{n}-{la}" for n, la, _ in DUMPS])
def test_dump_writes_the_reference_integers(
    name: str,
    layer: str,
    geometry: tuple[int, ...],
    profile: str,
    written: dict[str, tuple[Path, StateDict]],
    tmp_path: Path,
) -> None:
    path, sd = written[name]
    bits = RESNETS[name].bits
    out = tmp_path / "set"
    result = api.export(SourceOptions(checkpoint=path), [layer], out, profile=profile)
    (entry,) = result.manifest.layers
    c_in, c_out, k, stride, side = geometry
    assert entry.name == layer and entry.index is None
    assert (entry.in_channels, entry.out_channels, entry.kernel, entry.stride) == (c_in, c_out, k, stride)
    assert entry.input_shape == (1, c_in, side, side)
    assert entry.output_shape == (1, c_out, side // stride, side // stride)
    assert (entry.w_bit, entry.act_bit) == (bits, bits)
    assert entry.w_bit_source == "inferred from weight_q"
    assert entry.act_bit_source == "= w_bit (course QuantConv2d)"
    assert entry.weight_q_ties == 0 and entry.checks.passed
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["layers"][0]["w_bit"] == bits and on_disk["layers"][0]["act_bit"] == bits
    assert all(f.path.startswith(f"{layer}/") for f in entry.files)
    w_int = w_int_reference(sd, layer, bits)
    if profile == "flat":
        tensors = {f.tensor: _canonical(decode_file(out / f.path, f), f.axes) for f in entry.files}
        np.testing.assert_array_equal(tensors["weight"], w_int)
        x_int = tensors["input"]
        assert x_int.shape == entry.input_shape
        assert x_int.max() <= 2**bits - 1 and x_int.min() >= 0
        psum = psum_reference(x_int, w_int, stride, 1 if k == 3 else 0)
        np.testing.assert_array_equal(tensors["psum"], psum)
        np.testing.assert_array_equal(tensors["output"], np.maximum(psum, 0))
    else:
        # the course core tiles the conv: one weight file a kernel position and channel tile
        assert {f.tensor for f in entry.files} >= {"weight", "input", "output"}
    checked = check_set(out, tmp_path)
    assert checked.identical, checked.problems


def _canonical(array: np.ndarray, axes: tuple[str, ...] | list[str]) -> np.ndarray:
    """A decoded flat tensor in (oc, ic, kh, kw) or (n, c, h, w) order, from the manifest's axes."""
    order = ["oc", "ic", "kh", "kw"] if "oc" in axes and "kh" in axes else ["n", "c", "h", "w"]
    return np.transpose(array, [list(axes).index(a) for a in order])


# --- 2 bits: rounding ties and disagreements ---------------------------------------------------


def test_two_bit_rounding_tie_exports_the_stored_value(tmp_path: Path) -> None:
    sd = resnet_state(RESNETS["2-bit"], seed=7)
    at = make_tie(sd, "layer1.1.conv2")
    path = write_checkpoint(tmp_path / "tie.pth.tar", sd)
    out = tmp_path / "set"
    result = api.export(SourceOptions(checkpoint=path), ["layer1.1.conv2"], out)
    (entry,) = result.manifest.layers
    assert entry.weight_q_ties == 1 and entry.w_bit == 2 and entry.checks.passed
    assert json.loads((out / "manifest.json").read_text())["layers"][0]["weight_q_ties"] == 1
    weights = next(
        _canonical(decode_file(out / f.path, f), f.axes) for f in entry.files if f.tensor == "weight"
    ).reshape(-1)
    key = "layer1.1.conv2"
    alpha = sd[f"{key}.weight_quant.wgt_alpha"]
    recomputed = (weight_q(sd[f"{key}.weight"], alpha, 2) / alpha).reshape(-1).round().long().numpy()
    stored = w_int_reference(sd, "layer1.1.conv2", 2).reshape(-1)
    assert recomputed[at] == 0 and stored[at] in (-1, 1)
    np.testing.assert_array_equal(weights, stored)  # the trained model's value, not the CPU's
    # every other layer is untouched, and --all exports them all
    every = api.export(SourceOptions(checkpoint=path), None, tmp_path / "all")
    assert {e.name: e.weight_q_ties for e in every.manifest.layers if e.weight_q_ties} == {
        "layer1.1.conv2": 1
    }


def test_two_bit_disagreement_away_from_a_tie_is_refused_by_name(tmp_path: Path) -> None:
    sd = resnet_state(RESNETS["2-bit"], seed=8)
    key = "layer2.1.conv1"
    norm = sd[f"{key}.weight"]
    scaled = ((norm - norm.mean()) / norm.std()).abs() / sd[f"{key}.weight_quant.wgt_alpha"]
    at = int((scaled - 0.2).abs().argmin())  # rounds to 0, far from the .5 tie
    flat = sd[f"{key}.weight_q"].flatten().clone()
    flat[at] = sd[f"{key}.weight_quant.wgt_alpha"]
    sd[f"{key}.weight_q"] = flat.view_as(sd[f"{key}.weight_q"])
    path = write_checkpoint(tmp_path / "bad.pth.tar", sd)
    with pytest.raises(InputError, match=r"layer layer2\.1\.conv1: stored weight_q disagrees"):
        api.export(SourceOptions(checkpoint=path), [key], tmp_path / "x")
    # an earlier layer it cannot affect still exports
    api.export(SourceOptions(checkpoint=path), ["layer2.0.conv2"], tmp_path / "ok")


# --- custom VGG variants -----------------------------------------------------------------------


def _vgg(name: str, cfg: list[int | str], first: str = "qconv") -> Arch:
    """A course ``_make_layers`` network (int = conv+BN+ReLU, 'S<n>' = conv+ReLU, 'M' = pool)."""
    specs: list[ModuleSpec] = []
    in_c = 3
    for item in cfg:
        if item == "M":
            specs.append(ModuleSpec("maxpool"))
            continue
        bare = isinstance(item, str)
        out = int(str(item).removeprefix("S"))
        specs.append(ModuleSpec("conv" if not specs and first == "conv" else "qconv", in_c, out))
        if not bare:
            specs.append(ModuleSpec("bn", out_channels=out))
        specs.append(ModuleSpec("relu"))
        in_c = out
    specs.append(ModuleSpec("avgpool"))
    return Arch(name, tuple(specs), classifier_in=in_c)


# 32 -> 16 -> 16 -> 64: the 256 -> 16 -> 16 -> 512 squeeze, narrowed to keep the test fast
SQUEEZE: list[int | str] = [16, "M", 32, "M", 32, 16, "S16", 64, "M", 64, "M", 64, "M"]


def _vgg_checkpoint(tmp_path: Path, arch: Arch, **kwargs: object) -> Path:
    return course_checkpoint(tmp_path / f"{arch.name}.pth.tar", arch, **kwargs)  # type: ignore[arg-type]


def _check_layers(loaded: object, sd: StateDict, act_bits: dict[str, int] | None = None) -> list[str]:
    from qexport.frontend.source import Loaded

    assert isinstance(loaded, Loaded)
    names = []
    for t in capture(loaded.model, loaded.inputs.images[:1], bits=loaded.bits):
        act_bit = (act_bits or {}).get(t.name, 4)
        assert (t.w_bit, t.act_bit) == (4, act_bit), t.name
        ints = integerize(t)
        w_int = w_int_reference(sd, t.name, 4)
        np.testing.assert_array_equal(ints.w_int, w_int, err_msg=t.name)
        x_int = x_int_reference(t.x.numpy(), float(sd[f"{t.name}.act_alpha"]), act_bit)
        np.testing.assert_array_equal(ints.x_int, x_int, err_msg=t.name)
        psums = conv_psum(ints)
        np.testing.assert_array_equal(psums.psum, psum_reference(x_int, w_int, 1, t.padding))
        assert psums.checks.passed, t.name
        names.append(t.name)
    return names


def _state(path: Path) -> StateDict:
    return torch.load(path, weights_only=True)["state_dict"]  # type: ignore[no-any-return]


def test_vgg_squeeze_of_other_widths(tmp_path: Path) -> None:
    arch = _vgg("squeeze", SQUEEZE)
    path = _vgg_checkpoint(tmp_path, arch)
    loaded = load(SourceOptions(checkpoint=path))
    assert isinstance(loaded.arch, Arch) and loaded.arch.features == arch.features
    sd = _state(path)
    names = _check_layers(loaded, sd)
    assert names == [f"features.{i}" for i in arch.qconv_indices()]
    # the 16 -> 16 conv with no BatchNorm, by features index as ever
    i = next(
        i for i, m in enumerate(arch.features) if m.kind == "qconv" and m.in_channels == m.out_channels == 16
    )
    result = api.export(SourceOptions(checkpoint=path), [i], tmp_path / "set", profile="course")
    assert result.manifest.layers[0].index == i and result.manifest.layers[0].name == f"features.{i}"


def test_vgg_float_first_conv_is_listed_not_exported(tmp_path: Path) -> None:
    arch = _vgg("floatfirst", [16, "M", 32, "M", 32, "M", 32, "M", 32, "M"], first="conv")
    path = _vgg_checkpoint(tmp_path, arch)
    loaded = load(SourceOptions(checkpoint=path))
    sd = _state(path)
    assert "features.0.act_alpha" not in sd
    assert _check_layers(loaded, sd) == ["features.4", "features.8", "features.12", "features.16"]
    with pytest.raises(InputError, match="--layer 0 is not a quantized conv layer"):
        api.export(SourceOptions(checkpoint=path), [0], tmp_path / "x")


def test_vgg_four_bit_weights_two_bit_activations_from_a_bits_config(tmp_path: Path) -> None:
    arch = _vgg("w4a2", [16, "M", 32, "M", 32, "M", 32, "M", 32, "M"])
    path = _vgg_checkpoint(tmp_path, arch, act_bit=2)
    config = tmp_path / "bits.json"
    config.write_text(json.dumps({"act_bits": {"*": 2}}))
    opts = SourceOptions(checkpoint=path, bits_config=config)
    loaded = load(opts)
    sd = _state(path)
    _check_layers(loaded, sd, {n: 2 for n in loaded.table.names()})
    (entry,) = api.export(opts, ["features.4"], tmp_path / "set").manifest.layers
    assert (entry.w_bit, entry.act_bit) == (4, 2)
    assert entry.w_bit_source == "inferred from weight_q" and "bits config" in entry.act_bit_source


def test_vgg_negative_act_alpha_at_a_later_layer(tmp_path: Path) -> None:
    arch = _vgg("negalpha", [16, "M", 32, "M", 32, "M", 32, "M", 32, "M"])

    def negative(sd: StateDict) -> None:
        sd["features.12.act_alpha"] = torch.tensor(-0.5)

    path = _vgg_checkpoint(tmp_path, arch, mutate=negative)
    opts = SourceOptions(checkpoint=path)
    # the earlier layers still export
    result = api.export(opts, ["features.0", "features.4", "features.8"], tmp_path / "early")
    assert [e.name for e in result.manifest.layers] == ["features.0", "features.4", "features.8"]
    # that layer and the later ones are refused by name
    with pytest.raises(InputError, match=r"checkpoint features\.12\.act_alpha = -0\.5; an alpha must be > 0"):
        api.export(opts, [12], tmp_path / "bad")
    with pytest.raises(InputError, match=r"layer 16: its input passes through layer 12"):
        api.export(opts, [16], tmp_path / "later")
    with pytest.raises(InputError, match=r"cannot be exported \(features\.12\).*--skip-invalid"):
        api.export(opts, None, tmp_path / "all")
    skipped = api.export(opts, None, tmp_path / "skip", skip_invalid=True)
    assert [e.name for e in skipped.manifest.layers] == ["features.0", "features.4", "features.8"]
    assert any("features.12, features.16" in n for n in skipped.notices)
    _, checks = api.verify(opts, skip_invalid=True)
    assert [c.name for c in checks] == ["features.0", "features.4", "features.8"]
    assert all(c.checks.passed for c in checks)


def test_vgg_batchnorm_replaced_by_identity_is_inferred(tmp_path: Path) -> None:
    from dataclasses import replace

    base = _vgg("identity", [16, "M", 32, "M", 32, 16, "S16", 64, "M", 64, "M", 64, "M"])
    features = list(base.features)
    bn = [i for i, m in enumerate(features) if m.kind == "bn"][2]  # mid-network, before a pool gap
    features[bn] = ModuleSpec("identity", out_channels=features[bn].out_channels)
    arch = replace(base, features=tuple(features))
    path = _vgg_checkpoint(tmp_path, arch)
    sd = _state(path)
    assert not any(k.startswith(f"features.{bn}.") for k in sd)  # nn.Identity has no keys
    loaded = load(SourceOptions(checkpoint=path))
    assert isinstance(loaded.arch, Arch) and loaded.arch.features == arch.features
    assert _check_layers(loaded, sd) == [f"features.{i}" for i in arch.qconv_indices()]
