"""``--end int8``: the model's end as int8 matmuls, against a float64 / int64 reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from torch import nn

from qexport import api
from qexport.cli.main import main
from qexport.errors import BitWidthError, InputError
from qexport.infer.end import EndLinear, EndOp, int8_linear, run_int8_end
from qexport.infer.run import end_ops


def _reference_linear(w: np.ndarray, b: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    """Written out value by value: per-row scale max|w|/127, input scale max|x|/127, Python
    ints for the accumulation, float64 for the scaling."""
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    top_x = max(abs(float(v)) for v in x64.ravel())
    xs = top_x / 127 if top_x else 1.0
    out = np.zeros((x.shape[0], w.shape[0]))
    for o in range(w.shape[0]):
        top_w = max(abs(float(v)) for v in w64[o])
        ws = top_w / 127 if top_w else 1.0
        w_int = [min(127, max(-127, round(float(v) / ws))) for v in w64[o]]  # round: half to even
        for n in range(x.shape[0]):
            x_int = [min(127, max(-127, round(float(v) / xs))) for v in x64[n]]
            acc = sum(a * c for a, c in zip(x_int, w_int, strict=True))
            assert abs(acc) < 2**31
            out[n, o] = acc * (xs * ws) + (0.0 if b is None else float(b[o]))
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(16)


def test_one_linear_equals_the_reference(rng: np.random.Generator) -> None:
    w = rng.normal(size=(6, 20)).astype(np.float32)
    w[2] = 0.0  # a zero row: scale 1, all zero
    w[3] = 0.0
    w[3, :3] = [127 / 128, 0.5 / 128, 1.5 / 128]  # scale 1/128 exactly: ties 0.5 -> 0, 1.5 -> 2
    b = rng.normal(size=6).astype(np.float32)
    x = rng.normal(size=(9, 20)).astype(np.float32)
    layer = int8_linear(EndLinear("fc", w, b), x)
    assert layer.w_int.dtype == np.int8
    assert np.abs(layer.w_int).max() == 127
    assert (layer.w_int[2] == 0).all() and layer.w_scale[2] == 1.0
    assert layer.w_int[3, :3].tolist() == [127, 0, 2]
    assert layer.x_scale == pytest.approx(float(np.abs(x.astype(np.float64)).max()) / 127, rel=1e-15)
    ours = layer.apply(x)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, _reference_linear(w, b, x), rtol=1e-6, atol=1e-6)


def test_the_docstring_example() -> None:
    layer = int8_linear(EndLinear("fc", np.array([[0.5, -0.25]], np.float32), None), np.array([[12.7, 0.0]]))
    assert layer.w_int.tolist() == [[127, -64]]
    assert layer.x_scale == pytest.approx(0.1)
    assert layer.apply(np.array([[1.0, 0.3]])).tolist() == [[pytest.approx(1078 * 0.1 * 0.5 / 127, rel=1e-6)]]


def test_layers_are_calibrated_in_order_on_what_the_int8_layers_before_make(rng: np.random.Generator) -> None:
    w1, b1 = rng.normal(size=(12, 16)).astype(np.float32), rng.normal(size=12).astype(np.float32)
    w2 = rng.normal(size=(4, 12)).astype(np.float32)
    x = np.maximum(rng.normal(size=(7, 16)), 0).astype(np.float32)
    ops: list[EndOp] = [EndLinear("classifier.0", w1, b1), "relu", EndLinear("classifier.3", w2, None)]
    logits, layers = run_int8_end(ops, x)
    hidden = np.maximum(_reference_linear(w1, b1, x).astype(np.float32), 0)
    np.testing.assert_allclose(logits, _reference_linear(w2, None, hidden), rtol=1e-5, atol=1e-5)
    assert [layer.path for layer in layers] == ["classifier.0", "classifier.3"]
    assert layers[1].x_scale == pytest.approx(float(hidden.max()) / 127, rel=1e-6)


def test_an_accumulator_that_could_overflow_int32_is_refused() -> None:
    wide = EndLinear("classifier.0", np.ones((1, 140_000), np.float32), None)
    with pytest.raises(BitWidthError, match=r"classifier\.0: 140000 inputs .* \(--end float\)"):
        int8_linear(wide, np.ones((1, 140_000), np.float32))


def test_end_ops_read_a_classifier_and_refuse_what_they_cannot_run() -> None:
    head = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Dropout(), nn.Linear(4, 2, bias=False))
    ops = end_ops(head, "classifier")
    assert [op if isinstance(op, str) else op.path for op in ops] == ["classifier.0", "relu", "classifier.3"]
    assert isinstance(ops[2], EndLinear) and ops[2].bias is None
    with pytest.raises(InputError, match=r"classifier\.1 \(Sigmoid\) is in the model's end"):
        end_ops(nn.Sequential(nn.Linear(8, 4), nn.Sigmoid()), "classifier")


@pytest.mark.parametrize("model", ["VGG16_quant_gradual", "resnet20_quant"], ids=["vgg", "resnet"])
def test_the_report_carries_both_ends_agreement(model: str) -> None:
    opts = api.SourceOptions(model=model, images="0:8")
    _, floating = api.infer(opts, batch_size=4)
    _, int8 = api.infer(opts, batch_size=4, end="int8")
    assert floating.end == "float" and not floating.agreement_by_end
    assert int8.end == "int8"
    # the float end agrees on every image; the int8 figure is the int8 predictions' own agreement
    float_top1 = floating.predictions if floating.agreement == 1.0 else None
    assert float_top1 is not None
    agree = sum(a == b for a, b in zip(int8.predictions, float_top1, strict=True))
    assert int8.top1_agree == agree and int8.images == 8
    assert int8.agreement_by_end == {"float": 1.0, "int8": agree / 8}
    head = "classifier" if model.startswith("VGG") else "fc"
    assert list(int8.int8_scales) == [head] and int8.int8_scales[head] > 0
    # the integer layers themselves are not touched by the end
    assert [r.differ for r in int8.layers] == [r.differ for r in floating.layers]


def test_cli_end_int8_json() -> None:
    result = CliRunner().invoke(main, ["infer", "--images", "0:4", "--end", "int8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["end"] == "int8"
    assert set(report["top1_agreement_by_end"]) == {"float", "int8"}
    assert report["top1_agreement"] == report["top1_agreement_by_end"]["int8"]
    table = CliRunner().invoke(main, ["infer", "--images", "0:4", "--end", "int8"])
    assert "top-1 agreement by end: float 100.00%, int8" in table.output
