"""The built-in architectures against the seeds, architecture inference, the course quantizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qexport.frontend.models.infer import infer_arch, same_arch
from qexport.frontend.models.quant import ActClip, QuantConv2d, quantize_act, quantize_weight
from qexport.frontend.models.vgg import BUILTIN, VGGQuant, build_model


def _meta_model(name: str) -> VGGQuant:
    with torch.device("meta"):  # module types and shapes only: no 20M-weight initialisation
        return build_model(BUILTIN[name])


def _qconvs(model: VGGQuant) -> list[tuple[int, QuantConv2d]]:
    return [(i, m) for i, m in enumerate(model.features) if isinstance(m, QuantConv2d)]


# --- the built-in models are the seeds' ---------------------------------------------------------


def test_vgg16_quant_has_the_13_convs_of_seed_000() -> None:
    convs = _qconvs(_meta_model("VGG16_quant"))
    channels = [(m.in_channels, m.out_channels) for _, m in convs]
    assert channels == [
        (3, 64),
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 256),
        (256, 512),
        *[(512, 512)] * 5,
    ]
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) and m.stride == (1, 1) for _, m in convs)
    assert [i for i, _ in convs] == BUILTIN["VGG16_quant"].qconv_indices()


GRADUAL_CONVS = [0, 4, 7, 11, 14, 17, 21, 24, 27, 30, 33, 35, 38, 41, 45, 48, 51]


def test_vgg16_quant_gradual_has_the_conv_indices_of_seed_003() -> None:
    model = _meta_model("VGG16_quant_gradual")
    assert [i for i, _ in _qconvs(model)] == GRADUAL_CONVS
    assert BUILTIN["VGG16_quant_gradual"].qconv_indices() == GRADUAL_CONVS
    f = model.features
    assert len(f) == 56
    assert isinstance(f[33], QuantConv2d)
    assert (f[33].in_channels, f[33].out_channels) == (8, 8)
    assert type(f[34]) is nn.ReLU  # no BatchNorm after the squeeze conv
    assert isinstance(f[55], nn.AvgPool2d)
    # every other conv is followed by its BatchNorm
    assert all(isinstance(f[i + 1], nn.BatchNorm2d) for i in GRADUAL_CONVS if i != 33)
    channels = [(m.in_channels, m.out_channels) for _, m in _qconvs(model)]
    assert channels == [
        (3, 64),
        (64, 128),
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 256),
        (256, 512),
        (512, 128),
        (128, 32),
        (32, 8),
        (8, 8),
        (8, 32),
        (32, 128),
        (128, 512),
        *[(512, 512)] * 3,
    ]
    assert model.classifier.in_features == 512


def test_vgg16_quant_squeeze_has_the_sudden_squeeze() -> None:
    model = _meta_model("VGG16_quant_squeeze")
    convs = _qconvs(model)
    channels = [(m.in_channels, m.out_channels) for _, m in convs]
    at = channels.index((512, 8))
    assert channels[at : at + 3] == [(512, 8), (8, 8), (8, 512)]
    index_8x8 = convs[at + 1][0]
    assert index_8x8 == 30
    assert type(model.features[index_8x8 + 1]) is nn.ReLU  # no BatchNorm
    assert isinstance(model.features[convs[at][0] + 1], nn.BatchNorm2d)


@pytest.mark.parametrize("name", list(BUILTIN))
def test_each_builtin_pools_32x32_down_to_the_classifier(name: str) -> None:
    model = _meta_model(name)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5  # 32 -> 1: the classifier sees 512 channels x 1 x 1
    assert all(p.kernel_size == 2 and p.stride == 2 for p in pools)
    assert isinstance(model.features[-1], nn.AvgPool2d)
    assert (model.classifier.in_features, model.classifier.out_features) == (512, 10)


@pytest.mark.parametrize("name", list(BUILTIN))
@pytest.mark.parametrize("weight_q", [True, False], ids=["with-weight_q", "without-weight_q"])
def test_infer_arch_round_trips_every_builtin(name: str, weight_q: bool) -> None:
    state = _meta_model(name).state_dict()
    if not weight_q:
        state = {k: v for k, v in state.items() if not k.endswith("weight_q")}
    inferred = infer_arch(state, name="inferred")
    assert same_arch(inferred, BUILTIN[name])
    assert inferred.expected_shapes() == BUILTIN[name].expected_shapes()


def test_expected_shapes_are_the_models_state_dict() -> None:
    for name, arch in BUILTIN.items():
        state = _meta_model(name).state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == arch.expected_shapes(), name


# --- the quantizers ------------------------------------------------------------------------------


@settings(max_examples=40, derandomize=True, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    alpha=st.floats(0.25, 4.0),
    scale=st.floats(1e-3, 10.0),
)
def test_4bit_weights_are_integers_in_minus7_to_7(seed: int, alpha: float, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(8, 4, 3, 3, generator=gen)
    wq = quantize_weight(w, torch.tensor(alpha), 4)
    levels = (wq.double() / alpha * 7).numpy()
    ints = np.round(levels)
    np.testing.assert_allclose(levels, ints, atol=1e-5)
    assert ints.min() >= -7 and ints.max() <= 7
    # alpha at most 4 normalised std: some weights reach the top level when the tail is long
    if alpha <= 1.0:
        assert ints.max() == 7 and ints.min() == -7


@settings(max_examples=40, derandomize=True, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    alpha=st.floats(0.25, 8.0),
    clip=st.sampled_from(["course", "relu"]),
)
def test_4bit_activations_of_relu_outputs_are_integers_in_0_to_15(
    seed: int, alpha: float, clip: ActClip
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.relu(3 * torch.randn(2, 4, 6, 6, generator=gen))
    xq = quantize_act(x, torch.tensor(alpha), 4, clip)
    levels = (xq.double() / alpha * 15).numpy()
    ints = np.round(levels)
    np.testing.assert_allclose(levels, ints, atol=1e-5)
    assert ints.min() >= 0 and ints.max() <= 15


def test_relu_clip_keeps_negative_inputs_at_0_and_course_clip_does_not() -> None:
    x = torch.linspace(-3.0, 3.0, 601)
    alpha = torch.tensor(2.0)
    relu = quantize_act(x, alpha, 4, "relu") / alpha * 15
    course = quantize_act(x, alpha, 4, "course") / alpha * 15
    assert relu.min() == 0 and relu.max() == 15
    assert course.max() == 15 and course.min() == -22  # round(-3 / 2 * 15): no lower clip


def test_act_clip_variants_differ_only_for_negative_inputs() -> None:
    x = 3 * torch.randn(4000, generator=torch.Generator().manual_seed(5))
    alpha = torch.tensor(1.5)
    relu = quantize_act(x, alpha, 4, "relu")
    course = quantize_act(x, alpha, 4, "course")
    differ = relu != course
    assert bool(differ.any())
    assert bool((x[differ] < 0).all())
    # below half a level the course quantizer rounds to a negative level; relu gives 0
    assert bool(differ[x < -alpha / 15 / 2 - 1e-6].all())
    assert torch.equal(relu[x >= 0], course[x >= 0])


# --- QuantConv2d against a from-scratch reimplementation of the course formula --------------------


def _course_weight(w: np.ndarray, alpha: float, w_bit: int) -> np.ndarray:
    levels = 2 ** (w_bit - 1) - 1
    normalised = (w - w.mean()) / w.std(ddof=1)  # unbiased std, as torch.std
    clipped = np.clip(normalised / alpha, -1.0, 1.0)
    return np.round(np.abs(clipped) * levels) / levels * np.sign(clipped) * alpha


def _course_act(x: np.ndarray, alpha: float, act_bit: int, clip: ActClip) -> np.ndarray:
    levels = 2**act_bit - 1
    scaled = np.minimum(x / alpha, 1.0)
    if clip == "relu":
        scaled = np.maximum(scaled, 0.0)
    return np.round(scaled * levels) / levels * alpha


def _conv2d(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    n, c, h, width = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = (h + 2 * padding - k) // stride + 1, (width + 2 * padding - k) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for r in range(k):
        for s in range(k):
            patch = xp[:, :, r : r + stride * oh : stride, s : s + stride * ow : stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, r, s])
    return out


CONVS = {
    "4bit-course-3x3": (4, "course", 3, 1, 1),
    "4bit-relu-3x3": (4, "relu", 3, 1, 1),
    "2bit-course-stride2": (2, "course", 3, 2, 0),
    "8bit-relu-1x1": (8, "relu", 1, 1, 0),
}


@pytest.mark.parametrize(("act_bit", "clip", "kernel", "stride", "padding"), CONVS.values(), ids=CONVS.keys())
def test_quant_conv_matches_the_course_formula(
    act_bit: int, clip: ActClip, kernel: int, stride: int, padding: int
) -> None:
    gen = torch.Generator().manual_seed(act_bit * 10 + kernel)
    conv = QuantConv2d(6, 5, kernel, stride=stride, padding=padding, act_bit=act_bit, act_clip=clip)
    with torch.no_grad():
        conv.weight.copy_(0.2 * torch.randn(conv.weight.shape, generator=gen))
        conv.act_alpha.fill_(1.75)
        conv.weight_quant.wgt_alpha.fill_(2.25)
    x = 1.5 * torch.randn(2, 6, 7, 7, generator=gen)  # negative inputs too: where the clips differ
    with torch.no_grad():
        out = conv(x)

    w_q = _course_weight(conv.weight.detach().double().numpy(), 2.25, 4)
    x_q = _course_act(x.double().numpy(), 1.75, act_bit, clip)
    # the integers: exactly equal
    np.testing.assert_array_equal(
        np.round(conv.weight_q.double().numpy() / 2.25 * 7), np.round(w_q / 2.25 * 7)
    )
    got_x = quantize_act(x, conv.act_alpha, act_bit, clip).detach().double().numpy()
    levels = 2**act_bit - 1
    np.testing.assert_array_equal(np.round(got_x / 1.75 * levels), np.round(x_q / 1.75 * levels))
    # weight_q is what the forward pass used, and the output is the conv of the quantized tensors
    np.testing.assert_allclose(conv.weight_q.double().numpy(), w_q, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.double().numpy(), _conv2d(x_q, w_q, stride, padding), atol=1e-4)


def test_weight_q_is_refreshed_by_every_forward() -> None:
    conv = QuantConv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        conv(x)
        first = conv.weight_q.clone()
        conv.weight.mul_(-1.0)
        conv(x)
    assert torch.equal(conv.weight_q, -first)
