"""The user's own model code: building it from ``module:factory``, and reading each quantized conv's
widths off the module itself (``act_bit`` probed from its ``act_alq``, never assumed)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from course_models import COURSE_WARNING, QUANT_LAYER, forget, imported, save_checkpoint, write_models
from torch import nn

from qexport.errors import InputError
from qexport.frontend.models.load import load_weights
from qexport.frontend.models.probe import probe_act_bit
from qexport.frontend.models.user import build_user_model
from qexport.frontend.source import SourceOptions, load

pytestmark = pytest.mark.filterwarnings(COURSE_WARNING)


@pytest.fixture(autouse=True)
def _fresh_imports(tmp_path: Path) -> Any:
    forget(tmp_path)
    yield
    forget(tmp_path)


def _course() -> dict[str, Any]:
    """The course's quant_layer.py, run as a module of its own (its act_quantization et al.)."""
    namespace: dict[str, Any] = {}
    exec(compile(QUANT_LAYER, "quant_layer.py", "exec"), namespace)
    return namespace


class _Probed(nn.Conv2d):
    """A quantized conv (act_alpha, weight_quant.wgt_alpha) with any act_alq."""

    def __init__(self, act_alq: Any = None, act_alpha: float = 2.5) -> None:
        super().__init__(4, 4, 3, padding=1, bias=False)
        self.weight_quant = nn.Module()
        self.weight_quant.wgt_alpha = nn.Parameter(torch.tensor(3.0))
        self.act_alpha = nn.Parameter(torch.tensor(act_alpha))
        if act_alq is not None:
            self.act_alq = act_alq


# --- the probe ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("act_bit", range(1, 9), ids=lambda b: f"{b}-bit")
def test_probe_counts_the_levels_of_the_course_act_quantization(act_bit: int) -> None:
    module = _Probed(_course()["act_quantization"](act_bit), act_alpha=2.7)
    assert probe_act_bit(module, "features.3") == act_bit


def test_probe_reads_the_course_quantconv2d_itself() -> None:
    conv = _course()["QuantConv2d"](16, 16, 3, padding=1)
    assert probe_act_bit(conv, "layer1.0.conv2") == 4
    conv_a2 = _course()["QuantConv2dA2"](16, 16, 3, padding=1)
    assert probe_act_bit(conv_a2, "features.7") == 2


def test_nothing_to_probe_is_none() -> None:
    assert probe_act_bit(_Probed(), "features.3") is None
    assert probe_act_bit(_Probed(act_alq=3), "features.3") is None  # not callable


def _three_levels(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return torch.round((x / alpha).clamp(max=1) * 2) / 2 * alpha


def _uneven_levels(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    # 4 levels, but at 0, 0.2, 0.5 and 1 of alpha: not round(x / α · 3)
    levels = torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=x.dtype)
    return levels[torch.bucketize((x / alpha).clamp(max=1), torch.tensor([0.1, 0.35, 0.75]))] * alpha


def _raises(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("expected a CUDA tensor")


@pytest.mark.parametrize(
    ("act_alq", "message"),
    [
        (
            lambda x, a: x.clone(),
            r"layer features\.3 \(_Probed\): its activation quantiser act_alq gives 8193 distinct",
        ),
        (_three_levels, r"layer features\.3 \(_Probed\): .*gives 3 distinct level\(s\) over \[0, 3\.125\]"),
        (lambda x, a: torch.zeros_like(x), r"gives 1 distinct level\(s\)"),
        (
            lambda x, a: torch.round(x / a * 511).clamp(max=511) / 511 * a,
            r"gives 512 distinct level\(s\).*act_bit 1\.\.8",
        ),
        (_uneven_levels, r"has 4 levels over \[0, 2\.5\] but they are not the uniform grid k·act_alpha/3"),
        (_raises, r"act_alq\(x, act_alpha\) raised RuntimeError: expected a CUDA tensor"),
        (lambda x, a: float(a), r"act_alq\(x, act_alpha\) returned float, not a tensor of x's shape"),
    ],
    ids=["not-quantized", "3-levels", "1-level", "9-bit", "uneven-grid", "raises", "returns-a-float"],
)
def test_a_quantiser_without_a_2_to_the_b_grid_is_refused_naming_the_layer(
    act_alq: Any, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        probe_act_bit(_Probed(act_alq), "features.3")


# --- load_weights reads every width off the user's module --------------------------------------------


def _user_model(root: Path, spec: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    write_models(root)
    module_name, factory = spec.split(":")
    with imported(root):
        made = getattr(importlib.import_module(module_name), factory)()
        state = save_checkpoint(made, root / "ckpt.pth.tar")
    return build_user_model(spec), state


def test_load_weights_probes_act_bit_of_the_users_2_bit_activation_layers(tmp_path: Path) -> None:
    model, state = _user_model(tmp_path, "models.vgg_quant:vgg_a2")
    report = load_weights(model, state)
    assert set(report.bits) == {"features.3", "features.7", "features.9"}
    for bits in report.bits.values():
        assert (bits.w_bit, bits.act_bit) == (4, 2)
        assert (bits.w_source, bits.act_source) == ("inferred from weight_q", "probed from act_alq")


def test_without_weight_q_the_users_w_bit_is_its_bit(tmp_path: Path) -> None:
    model, state = _user_model(tmp_path, "models.resnet_quant:resnet20_quant")
    state = {k: v for k, v in state.items() if not k.endswith(".weight_q")}
    bits = load_weights(model, state).bits["layer2.0.downsample.0"]
    assert (bits.w_bit, bits.act_bit, bits.act_source) == (4, 4, "probed from act_alq")
    assert bits.w_source == "module (no stored weight_q)"


def test_without_act_alq_act_bit_falls_back_to_w_bit_and_says_so(tmp_path: Path) -> None:
    model, state = _user_model(tmp_path, "models.resnet_quant:resnet20_quant")
    for module in model.modules():
        if hasattr(module, "act_alq"):
            del module.act_alq
    bits = load_weights(model, state).bits["layer1.0.conv1"]
    assert (bits.w_bit, bits.act_bit) == (4, 4)
    assert bits.act_source == "= w_bit (no act_alq to probe)"


def test_source_load_carries_the_probed_bits_into_the_loaded_model(tmp_path: Path) -> None:
    _user_model(tmp_path, "models.vgg_quant:vgg_a2")
    loaded = load(SourceOptions(checkpoint=tmp_path / "ckpt.pth.tar", model="models.vgg_quant:vgg_a2"))
    assert loaded.table.names() == ["features.3", "features.7", "features.9"]
    assert {b.act_bit for b in loaded.bits.values()} == {2}


def test_the_factory_runs_with_the_current_folder_on_the_import_path(tmp_path: Path) -> None:
    # course code imports inside its functions; the folder must still be importable then
    write_models(tmp_path)
    (tmp_path / "lazy.py").write_text(
        "def build():\n    from models.resnet_quant import resnet20_quant\n    return resnet20_quant()\n"
    )
    model = build_user_model("lazy:build")
    assert type(model).__name__ == "ResNet_Cifar"
    assert str(tmp_path) not in sys.path  # and taken off again
