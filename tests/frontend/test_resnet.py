"""The ResNet-CIFAR family against course-format checkpoints of every published variant.

The checkpoints are written here from the key names issue 15 lists (``conv1.*``, ``bn1.*``,
``layer{s}.{b}.conv{1,2}.*``, ``layer{s}.{b}.bn{1,2}.*``, ``layer{s}.0.downsample.{0,1}.*`` in the
first block of stages 2 and 3, ``fc.*``), not from the model code, so they are an independent
reading of the format; the block's formula is re-implemented in float64 from the state dict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from variant_checkpoints import ResNetVariant as Variant
from variant_checkpoints import StateDict, write_checkpoint
from variant_checkpoints import resnet_state as course_resnet_state

from qexport.errors import InputError
from qexport.frontend.checkpoint import load_checkpoint
from qexport.frontend.models.resnet import (
    RESNET_BUILTIN,
    BasicBlock,
    ResNetArch,
    build_resnet,
    infer_resnet,
    resolve_resnet,
)

StateDictEdit = Callable[[StateDict], None]


VARIANTS = {
    "resnet20": (Variant(), ResNetArch("resnet20_quant")),
    "resnet20-quant-stem": (
        Variant(stem="quant"),
        ResNetArch("resnet20", stem="quant"),
    ),
    "widths-8-16-48": (
        Variant(widths=(8, 16, 48)),
        ResNetArch("resnet20", widths=(8, 16, 48)),
    ),
    "widths-8-32-64-quant-stem": (
        Variant(widths=(8, 32, 64), stem="quant"),
        ResNetArch("resnet20", widths=(8, 32, 64), stem="quant"),
    ),
    "without-bn2": (
        Variant(without_bn2=("layer1.2", "layer3.0")),
        ResNetArch("resnet20", without_bn2=("layer1.2", "layer3.0")),
    ),
    "resnet32": (Variant(blocks=5), ResNetArch("resnet32_quant", blocks=(5, 5, 5))),
    "resnet44": (Variant(blocks=7), ResNetArch("resnet44_quant", blocks=(7, 7, 7))),
    "resnet56": (Variant(blocks=9), ResNetArch("resnet56_quant", blocks=(9, 9, 9))),
    "resnet110": (Variant(blocks=18), ResNetArch("resnet110_quant", blocks=(18, 18, 18))),
}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def variant(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[StateDict, ResNetArch]:
    """The variant's checkpoint as the loader reads it back (written once a module; read only)."""
    v, expected = VARIANTS[request.param]
    path = write_checkpoint(
        tmp_path_factory.mktemp(request.param) / "model_best.pth.tar", course_resnet_state(v)
    )
    return load_checkpoint(path).state_dict, expected


# --- the built-ins -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "blocks", "qconvs"),
    [
        ("resnet20_quant", 3, 20),
        ("resnet32_quant", 5, 32),
        ("resnet44_quant", 7, 44),
        ("resnet56_quant", 9, 56),
        ("resnet110_quant", 18, 110),
    ],
)
def test_builtin_zoo_depths_and_quantized_convs(name: str, blocks: int, qconvs: int) -> None:
    arch = RESNET_BUILTIN[name]
    assert arch.blocks == (blocks, blocks, blocks)
    assert arch.widths == (16, 32, 64) and arch.stem == "float"
    # 2 convs a block and the two 1x1 downsamples; the float stem is not a quantized conv
    names = arch.qconv_names()
    assert len(names) == qconvs
    assert names[:3] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    assert "layer2.0.downsample.0" in names and "layer3.0.downsample.0" in names
    assert "layer1.0.downsample.0" not in names


def test_model_geometry_is_the_issues() -> None:
    model = build_resnet(RESNET_BUILTIN["resnet20_quant"])
    assert type(model.conv1) is torch.nn.Conv2d and model.conv1.bias is None
    for s, stage in enumerate((model.layer1, model.layer2, model.layer3), start=1):
        for b, block in enumerate(stage):
            assert isinstance(block, BasicBlock)
            stride = 2 if s > 1 and b == 0 else 1
            assert block.conv1.stride == (stride, stride) and block.conv1.padding == (1, 1)
            assert block.conv2.stride == (1, 1) and block.conv2.padding == (1, 1)
            if s > 1 and b == 0:
                assert block.downsample is not None
                down = block.downsample[0]
                assert down.kernel_size == (1, 1) and down.stride == (2, 2) and down.padding == (0, 0)
            else:
                assert block.downsample is None
    assert model.avgpool.kernel_size == 8


# --- every published variant loads -------------------------------------------------------------


def test_inference_returns_the_variant(variant: tuple[StateDict, ResNetArch]) -> None:
    state, expected = variant
    assert infer_resnet(state) == expected


def test_strict_load_and_forward(variant: tuple[StateDict, ResNetArch]) -> None:
    state, _ = variant
    model = build_resnet(infer_resnet(state))
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    # the forward refreshed every weight_q from weight: the course formula gives what was stored
    after = model.state_dict()
    for key in (k for k in state if k.endswith(".weight_q")):
        assert torch.equal(after[key], state[key]), key


def test_resolve_names_the_builtin_or_the_inferred_variant(
    variant: tuple[StateDict, ResNetArch], tmp_path: Path
) -> None:
    state, expected = variant
    ckpt = load_checkpoint(write_checkpoint(tmp_path / "again.pth.tar", state))
    assert resolve_resnet(ckpt) == expected
    if expected.name in RESNET_BUILTIN:
        assert resolve_resnet(ckpt, expected.name) == expected


# --- the block is the issue's formula ----------------------------------------------------------


def _ref_qconv(sd: StateDict, prefix: str, x: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """QuantConv2d in float64: activations on 2^4-1 levels of [.., alpha], weights on 2^3-1 a sign."""
    w = sd[f"{prefix}.weight"].double()
    wgt_alpha = sd[f"{prefix}.weight_quant.wgt_alpha"].double()
    act_alpha = sd[f"{prefix}.act_alpha"].double()
    scaled = ((w - w.mean()) / w.std()) / wgt_alpha
    clipped = scaled.clamp(-1.0, 1.0)
    w_q = torch.round(clipped.abs() * 7) / 7 * clipped.sign() * wgt_alpha
    x_q = torch.round((x / act_alpha).clamp(max=1.0) * 15) / 15 * act_alpha
    return F.conv2d(x_q, w_q, None, stride, padding)


def _ref_bn(sd: StateDict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    def per_channel(name: str) -> torch.Tensor:
        return sd[f"{prefix}.{name}"].double().view(1, -1, 1, 1)

    normed = (x - per_channel("running_mean")) / torch.sqrt(per_channel("running_var") + 1e-5)
    return normed * per_channel("weight") + per_channel("bias")


def _ref_block(sd: StateDict, path: str, x: torch.Tensor, stride: int) -> torch.Tensor:
    out = torch.relu(_ref_bn(sd, f"{path}.bn1", _ref_qconv(sd, f"{path}.conv1", x, stride, 1)))
    out = _ref_qconv(sd, f"{path}.conv2", out, 1, 1)
    if f"{path}.bn2.weight" in sd:
        out = _ref_bn(sd, f"{path}.bn2", out)
    if f"{path}.downsample.0.weight" in sd:
        out = out + _ref_bn(sd, f"{path}.downsample.1", _ref_qconv(sd, f"{path}.downsample.0", x, stride, 0))
    else:
        out = out + x
    return torch.relu(out)


@pytest.mark.parametrize(
    ("path", "in_c", "out_c", "side", "stride"),
    [
        ("layer1.1", 16, 16, 32, 1),  # identity shortcut
        ("layer2.0", 16, 32, 32, 2),  # stride 2 and the 1x1 downsample
        ("layer1.2", 16, 16, 32, 1),  # no bn2
        ("layer3.0", 32, 64, 16, 2),  # no bn2 and a downsample
    ],
    ids=["identity", "downsample", "no-bn2", "no-bn2-downsample"],
)
def test_block_computes_the_issues_formula(path: str, in_c: int, out_c: int, side: int, stride: int) -> None:
    sd = course_resnet_state(Variant(without_bn2=("layer1.2", "layer3.0")), seed=3)
    model = build_resnet(infer_resnet(sd))
    model.load_state_dict(sd, strict=True)
    stage, index = (int(p) for p in path.removeprefix("layer").split("."))
    block = (model.layer1, model.layer2, model.layer3)[stage - 1][index]
    block.double().eval()
    x = 3.0 * torch.rand(2, in_c, side, side, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        got = block(x)
    want = _ref_block(sd, path, x, stride)
    assert got.shape == (2, out_c, side // stride, side // stride)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# --- almost fitting ----------------------------------------------------------------------------


def _drop(key: str) -> StateDictEdit:
    def edit(sd: StateDict) -> None:
        del sd[key]

    return edit


def _add(key: str, shape: tuple[int, ...]) -> StateDictEdit:
    def edit(sd: StateDict) -> None:
        sd[key] = torch.zeros(shape)

    return edit


NEAR_MISSES = {
    "missing-key": (_drop("layer2.1.bn1.running_var"), r"missing keys layer2\.1\.bn1\.running_var;"),
    "unexpected-key": (
        _add("layer1.0.conv3.weight", (16, 16, 3, 3)),
        r"unexpected keys layer1\.0\.conv3\.weight;",
    ),
    "mis-shaped-key": (
        _add("layer3.0.downsample.0.weight", (64, 32, 3, 3)),
        r"wrongly shaped layer3\.0\.downsample\.0\.weight: "
        r"checkpoint \[64, 32, 3, 3\], model \[64, 32, 1, 1\];",
    ),
}


@pytest.mark.parametrize("case", list(NEAR_MISSES), ids=list(NEAR_MISSES))
def test_almost_fitting_names_the_key_and_the_closest_variant(case: str, tmp_path: Path) -> None:
    edit, names_key = NEAR_MISSES[case]
    sd = course_resnet_state(Variant())
    edit(sd)
    ckpt = load_checkpoint(write_checkpoint(tmp_path / "near.pth.tar", sd))
    with pytest.raises(InputError, match=names_key) as raised:
        resolve_resnet(ckpt)
    assert "the closest variant is resnet20_quant (3/3/3 blocks, widths 16/32/64, float stem" in str(
        raised.value
    )


def test_almost_fitting_inferred_variant_is_named_as_closest(tmp_path: Path) -> None:
    sd = course_resnet_state(Variant(widths=(8, 16, 48), stem="quant", without_bn2=("layer2.1",)))
    del sd["layer3.2.conv2.act_alpha"]
    ckpt = load_checkpoint(write_checkpoint(tmp_path / "near.pth.tar", sd))
    with pytest.raises(InputError, match=r"missing keys layer3\.2\.conv2\.act_alpha;") as raised:
        resolve_resnet(ckpt)
    assert (
        "closest variant is resnet20 (3/3/3 blocks, widths 8/16/48, quant stem, without bn2 in layer2.1)"
        in str(raised.value)
    )


def test_named_builtin_that_does_not_fit_points_at_the_variant_that_does(tmp_path: Path) -> None:
    ckpt = load_checkpoint(
        write_checkpoint(tmp_path / "q.pth.tar", course_resnet_state(Variant(stem="quant")))
    )
    with pytest.raises(InputError, match=r"unexpected keys conv1\.act_alpha") as raised:
        resolve_resnet(ckpt, "resnet20_quant")
    assert "it fits the variant resnet20 (3/3/3 blocks, widths 16/32/64, quant stem" in str(raised.value)
    assert "leave out --model" in str(raised.value)


def test_not_a_resnet_and_unknown_names_are_input_errors(tmp_path: Path) -> None:
    vgg = {"features.0.weight": torch.zeros(8, 3, 3, 3), "classifier.weight": torch.zeros(10, 8)}
    ckpt = load_checkpoint(write_checkpoint(tmp_path / "vgg.pth.tar", vgg))
    with pytest.raises(InputError, match="not a ResNet-CIFAR course model"):
        resolve_resnet(ckpt)
    with pytest.raises(
        InputError, match=r"unknown ResNet model 'resnet18_quant'; built-in ResNets are resnet20"
    ):
        resolve_resnet(ckpt, "resnet18_quant")
