"""Loading course-format checkpoints: formats, architectures, inference, every kind of bad file."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import StateDict, course_checkpoint, course_state_dict, randomised_model

from qexport import api
from qexport.api import Loaded, SourceOptions, load
from qexport.errors import InputError
from qexport.frontend.checkpoint import load_checkpoint
from qexport.frontend.models.infer import same_arch
from qexport.frontend.models.load import load_weights
from qexport.frontend.models.resolve import resolve_arch
from qexport.frontend.models.vgg import BUILTIN, Arch, ModuleSpec, _from_cfg, build_model

GRADUAL = "VGG16_quant_gradual"
# the course's layer pattern at a fraction of VGG16's 20M parameters, for the value checks;
# features[11] is an 8->8 conv without BatchNorm, like the gradual model's features[33]
SMALL = _from_cfg("small_course", [16, "M", 32, "M", 8, "S8", 32, "M", 32, "M", 32, "M"])


def _load(path: Path, *, model: str | None = None, trust_recomputed: bool = False) -> Loaded:
    return load(SourceOptions(checkpoint=path, model=model, trust_recomputed=trust_recomputed))


def _refused(path: Path, layer: int, match: str) -> str:
    """Loading succeeds; the bad layer (and every later one) is refused by name, the earlier
    convs still verify. Returns the refusal."""
    loaded = _load(path)
    name = f"features.{layer}"
    assert re.search(match, loaded.blocked()[name]), loaded.blocked()[name]
    with pytest.raises(InputError, match=match) as info:
        api.verify(SourceOptions(checkpoint=path), [layer])
    earlier = [ref.index for ref in loaded.table.convs if ref.name not in loaded.blocked()]
    assert earlier == [ref.index for ref in loaded.table.convs[: loaded.table.names().index(name)]]
    if earlier:
        _, checks = api.verify(SourceOptions(checkpoint=path), earlier)
        assert [c.layer for c in checks] == earlier and all(c.checks.passed for c in checks)
    with pytest.raises(InputError, match=rf"cannot be exported \({name}\).*--skip-invalid"):
        api.verify(SourceOptions(checkpoint=path))
    return str(info.value)


# --- the course's own formats ------------------------------------------------------------------

FORMATS = {
    "wrapper": {},
    "bare-state-dict": {"wrapper": False},
    "wrapper-module-prefix": {"module_prefix": True},
    "bare-module-prefix": {"wrapper": False, "module_prefix": True},
    "wrapper-without-weight_q": {"weight_q": False},
    "bare-module-prefix-without-weight_q": {
        "wrapper": False,
        "module_prefix": True,
        "weight_q": False,
    },
}


def _assert_loads_every_parameter(path: Path, arch: str | Arch) -> None:
    loaded = _load(path)
    if isinstance(arch, str):
        assert loaded.arch is BUILTIN[arch]
    else:
        assert same_arch(loaded.arch, arch)
    assert loaded.source == {
        "checkpoint": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    # weight_q is recomputed on load; it must equal what the training forward pass stored
    want = course_state_dict(arch)
    got = loaded.model.state_dict()
    assert got.keys() == want.keys()
    assert [k for k in want if not torch.equal(got[k], want[k])] == []


@pytest.mark.parametrize("kwargs", FORMATS.values(), ids=FORMATS.keys())
def test_course_formats_load_every_parameter(tmp_path: Path, kwargs: dict[str, bool]) -> None:
    # SMALL has no built-in twin, so this also runs inference on every format
    _assert_loads_every_parameter(course_checkpoint(tmp_path / "model_best.pth.tar", SMALL, **kwargs), SMALL)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"module_prefix": True, "weight_q": False}],
    ids=["as-saved", "dataparallel-no-weight_q"],
)
def test_gradual_checkpoint_loads_every_parameter(tmp_path: Path, kwargs: dict[str, bool]) -> None:
    _assert_loads_every_parameter(
        course_checkpoint(tmp_path / "model_best.pth.tar", GRADUAL, **kwargs), GRADUAL
    )


def test_checkpoint_without_weight_q_is_the_same_checkpoint_minus_weight_q(tmp_path: Path) -> None:
    # guards the helper's shortcut: weight_q=False skips the forward pass
    full = load_checkpoint(course_checkpoint(tmp_path / "full.pth", SMALL)).state_dict
    lean = load_checkpoint(course_checkpoint(tmp_path / "lean.pth", SMALL, weight_q=False)).state_dict
    assert lean.keys() == {k for k in full if not k.endswith(".weight_q")}
    assert [k for k in lean if not torch.equal(lean[k], full[k])] == []
    assert all(bool(full[k].abs().sum() > 0) for k in full if k.endswith(".weight_q"))


@pytest.mark.parametrize(
    ("kwargs", "epoch", "best_prec"),
    [({}, 3, 12.5), ({"wrapper": False}, None, None)],
    ids=["wrapper-keeps-epoch-and-best_prec", "bare-has-none"],
)
def test_checkpoint_metadata(
    tmp_path: Path, kwargs: dict[str, bool], epoch: int | None, best_prec: float | None
) -> None:
    ckpt = load_checkpoint(course_checkpoint(tmp_path / "c.pth", SMALL, **kwargs))
    assert (ckpt.epoch, ckpt.best_prec) == (epoch, best_prec)
    assert not any(k.startswith("module.") for k in ckpt.state_dict)


def test_best_prec_saved_as_a_tensor_is_read(tmp_path: Path) -> None:
    # the course's validate() returns a tensor, so best_prec = max(prec, best_prec) often is one
    sd = course_state_dict(SMALL)
    path = tmp_path / "c.pth"
    torch.save({"epoch": torch.tensor(7), "state_dict": sd, "best_prec": torch.tensor(91.25)}, path)
    ckpt = load_checkpoint(path)
    assert (ckpt.epoch, ckpt.best_prec) == (7, 91.25)


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_architecture_is_detected_without_model(tmp_path: Path, name: str) -> None:
    path = course_checkpoint(tmp_path / "c.pth", name, module_prefix=True, weight_q=False)
    ckpt = load_checkpoint(path)
    assert resolve_arch(ckpt, None) is BUILTIN[name]
    assert resolve_arch(ckpt, name) is BUILTIN[name]


# --- stored weight_q -------------------------------------------------------------------------


def _shift_weight_q(layer: int, steps: float) -> Callable[[StateDict], None]:
    def mutate(sd: StateDict) -> None:
        step = float(sd[f"features.{layer}.weight_quant.wgt_alpha"]) / 7
        sd[f"features.{layer}.weight_q"][0, 0, 0, 0] += steps * step

    return mutate


@pytest.mark.parametrize(
    ("arch", "layer"),
    [(GRADUAL, 33), (SMALL, 0), (SMALL, 11)],
    ids=["gradual-features33", "small-features0", "small-features11"],
)
def test_stale_weight_q_is_refused_naming_the_layer(tmp_path: Path, arch: str | Arch, layer: int) -> None:
    path = course_checkpoint(tmp_path / "c.pth", arch, mutate=_shift_weight_q(layer, 2))
    message = _refused(path, layer, rf"^layer {layer}: stored weight_q disagrees")
    assert "2.00 quantization steps" in message
    assert "--trust-recomputed" in message


def test_stale_weight_q_is_replaced_with_trust_recomputed(tmp_path: Path) -> None:
    path = course_checkpoint(tmp_path / "c.pth", SMALL, mutate=_shift_weight_q(11, 2))
    loaded = _load(path, trust_recomputed=True)
    want = course_state_dict(SMALL)["features.11.weight_q"]
    assert torch.equal(loaded.model.features[11].weight_q, want)


def test_float_noise_in_weight_q_is_accepted(tmp_path: Path) -> None:
    path = course_checkpoint(tmp_path / "c.pth", SMALL, mutate=_shift_weight_q(11, 1e-4))
    loaded = _load(path)
    want = course_state_dict(SMALL)["features.11.weight_q"]
    assert torch.equal(loaded.model.features[11].weight_q, want)


# --- --model -----------------------------------------------------------------------------------


def test_wrong_model_lists_every_kind_of_mismatch_and_names_the_fit(tmp_path: Path) -> None:
    path = course_checkpoint(tmp_path / "c.pth", GRADUAL)
    start = r"^checkpoint c\.pth does not fit model VGG16_quant:"
    with pytest.raises(InputError, match=start) as info:
        _load(path, model="VGG16_quant")
    message = str(info.value)
    assert "\n" not in message
    for part in ("missing keys features.", "unexpected keys features.", "wrongly shaped features."):
        assert part in message
    # shapes read as "key: checkpoint [...], model [...]"
    assert "features.4.weight: checkpoint [128, 64, 3, 3], model [64]" in message
    assert message.endswith(
        "it fits the built-in model VGG16_quant_gradual: pass --model VGG16_quant_gradual"
    )


def test_unknown_model_name_lists_the_builtins(tmp_path: Path) -> None:
    path = course_checkpoint(tmp_path / "c.pth", SMALL)
    with pytest.raises(InputError, match=r"unknown model .VGG19.; built-in models are VGG16_q"):
        _load(path, model="VGG19")


# --- a student's own variant: inferred -------------------------------------------------------

VARIANTS = {
    "fewer-layers": _from_cfg("mine", [16, "M", 32, "M", 64, "M", 64, "M", 128, "M"]),
    "convs-without-bn": _from_cfg("mine", [16, "M", "S16", "M", 32, "S8", "M", 32, "M", "M"]),
    "float-first-conv-5x5-1x1-7-classes": Arch(
        "mine",
        (
            ModuleSpec("conv", 3, 8),
            ModuleSpec("bn", out_channels=8),
            ModuleSpec("relu"),
            ModuleSpec("maxpool"),
            ModuleSpec("qconv", 8, 16, kernel=5, padding=2),
            ModuleSpec("relu"),
            ModuleSpec("maxpool"),
            ModuleSpec("qconv", 16, 16, kernel=1, padding=0),
            ModuleSpec("bn", out_channels=16),
            ModuleSpec("relu"),
            ModuleSpec("maxpool"),
            ModuleSpec("maxpool"),
            ModuleSpec("avgpool"),
        ),
        num_classes=7,
        classifier_in=16 * 2 * 2,
    ),
}


@pytest.mark.parametrize("arch", VARIANTS.values(), ids=VARIANTS.keys())
def test_own_variant_is_inferred_and_computes_the_same(tmp_path: Path, arch: Arch) -> None:
    assert all(a.features != arch.features for a in BUILTIN.values())
    path = course_checkpoint(tmp_path / "mine.pth", arch, module_prefix=True)
    loaded = _load(path)
    assert loaded.arch.name == "inferred"
    assert loaded.arch.features == arch.features
    assert loaded.arch.num_classes == arch.num_classes
    assert loaded.arch.classifier_in == arch.classifier_in
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = randomised_model(arch)(x)
        got = loaded.model(x)
    assert float(want.std()) > 0  # a real computation, not all zeros
    assert torch.equal(got, want)


def test_own_variant_with_model_says_to_leave_it_out(tmp_path: Path) -> None:
    path = course_checkpoint(tmp_path / "mine.pth", VARIANTS["fewer-layers"])
    with pytest.raises(
        InputError, match=r"an inferred VGG-style architecture with 5 convs does: leave out --model"
    ):
        _load(path, model=GRADUAL)


# --- files that are not checkpoints ----------------------------------------------------------


class _WritesMarker:
    """A custom class: unpickling it would call its constructor, which writes a file."""

    def __init__(self, marker: str) -> None:
        Path(marker).write_text("ran\n")


class _Payload:
    def __init__(self, kind: str, marker: Path) -> None:
        self.kind, self.marker = kind, str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        if self.kind == "os.system":
            return os.system, (f"touch {shlex.quote(self.marker)}",)
        if self.kind == "exec":
            return exec, (f"import pathlib; pathlib.Path({self.marker!r}).touch()",)
        return _WritesMarker, (self.marker,)


PAYLOADS = ["os.system", "exec", "custom-class"]
GLOBALS = {
    "os.system": r"(posix|nt|os)\.system",
    "exec": r"(builtins\.)?exec",
    "custom-class": r"_WritesMarker",
}


@pytest.mark.parametrize("container", ["torch.save", "plain-pickle"])
@pytest.mark.parametrize("kind", PAYLOADS)
def test_pickle_that_would_run_code_is_refused_and_never_runs(
    tmp_path: Path, kind: str, container: str
) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"features.0.weight": _Payload(kind, marker)}}
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    refused = r"refused by the safe loader \(weights_only=True\)"
    with pytest.raises(InputError, match=refused) as info:
        _load(path)
    assert re.search(rf"it would import \S*{GLOBALS[kind]}\. ", str(info.value))
    assert not marker.exists()
    # the payload is live: an unsafe load does run it, so the assertion above could fail
    if container == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())  # noqa: S301 - the point of the test
    assert marker.exists()


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "model_best.pth.tar"
    path.touch()
    with pytest.raises(InputError, match=r"is empty \(0 bytes\); re-copy or re-save it"):
        _load(path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    whole = course_checkpoint(tmp_path / "whole.pth", SMALL).read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"half\.pth is not a readable PyTorch checkpoint \(trunc"):
        _load(path)


TEXTS = {
    "prose": "hello world\n",
    "python": "# my model\nweights = [1, 2]\n",
    "json": '{"state_dict": {}}\n',
    "csv": "1,2,3\n4,5,6\n",
}


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_text_file_is_not_a_checkpoint_and_not_called_code(tmp_path: Path, text: str) -> None:
    path = tmp_path / "notes.pth"
    path.write_text(text)
    with pytest.raises(InputError, match=r"notes\.pth is not a PyTorch checkpoint \(it looks like") as info:
        _load(path)
    assert "run code" not in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"is a folder; pass the file inside it, e\.g\. .*/model_"):
        _load(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"does not exist; check the path given to --checkpoint"):
        _load(tmp_path / "nope.pth")


NOT_STATE_DICTS = {
    "list": [torch.zeros(2)],
    "empty-state_dict": {"state_dict": {}},
    "tensor": torch.zeros(3),
}


@pytest.mark.parametrize("obj", NOT_STATE_DICTS.values(), ids=NOT_STATE_DICTS.keys())
def test_checkpoint_without_a_state_dict(tmp_path: Path, obj: object) -> None:
    path = tmp_path / "c.pth"
    torch.save(obj, path)
    with pytest.raises(InputError, match=r"holds no state dict \(expected a dict of tensors"):
        _load(path)


def test_state_dict_entry_that_is_not_a_tensor(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    torch.save({"epoch": 3, "model": {"features.0.weight": torch.zeros(1)}}, path)
    with pytest.raises(InputError, match=r"state dict entry 'epoch' is not a tensor"):
        _load(path)


def _resnet_like() -> StateDict:
    return {
        "conv1.weight": torch.randn(64, 3, 7, 7),
        "bn1.weight": torch.ones(64),
        "bn1.running_mean": torch.zeros(64),
        "layer1.0.conv1.weight": torch.randn(64, 64, 3, 3),
        "fc.weight": torch.randn(10, 512),
        "fc.bias": torch.zeros(10),
    }


def _torchvision_resnet18() -> StateDict:
    import torchvision

    with torch.device("meta"):  # the real key set and shapes, without initialising 11M weights
        meta = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in meta.items()}


@pytest.mark.parametrize(
    "state", [_resnet_like, _torchvision_resnet18], ids=["resnet-keys", "torchvision-resnet18"]
)
def test_other_architecture(tmp_path: Path, state: Callable[[], StateDict]) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"epoch": 1, "state_dict": state()}, path)
    # ResNet-shaped keys are judged as a ResNet-CIFAR course model: which keys do not fit
    with pytest.raises(
        InputError,
        match=r"cannot infer a ResNet architecture: no block convs in layer2, layer3|"
        r"does not fit the ResNet resnet14 .*missing keys layer1\.0\.conv1\.act_alpha.*"
        r"unexpected keys layer4\..*the closest variant is",
    ):
        _load(path)
    with pytest.raises(
        InputError,
        match=r"does not fit model VGG16_quant_gradual: missing keys features\.0\.weight, .*"
        r"unexpected keys .*conv1\.weight.*no built-in model fits and cannot infer",
    ):
        _load(path, model=GRADUAL)


def _drop(*suffixes: str, layer: int | None = None) -> Callable[[StateDict], None]:
    def mutate(sd: StateDict) -> None:
        for key in list(sd):
            if key.endswith(suffixes) and (layer is None or key.startswith(f"features.{layer}.")):
                del sd[key]

    return mutate


SAME = "same"
MISSING_ALPHAS = {
    "act_alpha-of-features0": (
        _drop("act_alpha", layer=0),
        True,
        r"features\.0 is a quantized conv \(it has weight_q, weight_quant\.wgt_alpha\) but "
        r"features\.0\.act_alpha is missing",
        SAME,
    ),
    "wgt_alpha-of-features11": (
        _drop("wgt_alpha", layer=11),
        True,
        r"features\.11 is a quantized conv \(it has act_alpha, weight_q\) but "
        r"features\.11\.weight_quant\.wgt_alpha is missing",
        SAME,
    ),
    "both-alphas-of-features4": (
        _drop("alpha", layer=4),
        True,
        r"features\.4 is a quantized conv \(it has weight_q\) but features\.4\.act_alpha and "
        r"features\.4\.weight_quant\.wgt_alpha are missing",
        SAME,
    ),
    "every-alpha-and-weight_q": (
        _drop("alpha"),
        False,
        r"has convs but no quantized ones \(no features\.<i>\.act_alpha keys\)",
        r"does not fit model VGG16_quant_gradual: missing keys features\.0\.act_alpha, "
        r"features\.0\.weight_quant\.wgt_alpha, features\.4\.act_alpha",
    ),
}


@pytest.mark.parametrize(
    ("mutate", "weight_q", "auto_message", "model_message"),
    MISSING_ALPHAS.values(),
    ids=MISSING_ALPHAS.keys(),
)
def test_missing_alphas_are_named(
    tmp_path: Path,
    mutate: Callable[[StateDict], None],
    weight_q: bool,
    auto_message: str,
    model_message: str,
) -> None:
    path = course_checkpoint(tmp_path / "c.pth", SMALL, weight_q=weight_q, mutate=mutate)
    with pytest.raises(InputError, match=auto_message):
        _load(path)
    with pytest.raises(InputError, match=auto_message if model_message == SAME else model_message):
        _load(path, model=GRADUAL)


def _set(key: str, value: float, *, everywhere: bool = False) -> Callable[[StateDict], None]:
    def mutate(sd: StateDict) -> None:
        if everywhere:
            sd[key].fill_(value)
        else:
            sd[key].view(-1)[0] = value

    return mutate


NON_FINITE = {
    "nan-conv-weight": ("features.0.weight", float("nan")),
    "inf-conv-weight": ("features.11.weight", float("inf")),
    "minus-inf-classifier": ("classifier.bias", -float("inf")),
    "nan-bn-running_var": ("features.1.running_var", float("nan")),
    "nan-act_alpha": ("features.8.act_alpha", float("nan")),
    "nan-weight_q": ("features.4.weight_q", float("nan")),
}


@pytest.mark.parametrize(("key", "value"), NON_FINITE.values(), ids=NON_FINITE.keys())
def test_nan_and_inf_are_refused_naming_the_tensor(tmp_path: Path, key: str, value: float) -> None:
    path = course_checkpoint(tmp_path / "c.pth", SMALL, mutate=_set(key, value))
    message = rf"checkpoint tensor {key} holds 1 NaN/Inf value\(s\)"
    part = key.split(".")[1]
    if part.isdigit() and SMALL.features[int(part)].kind == "qconv":
        layer = int(part)
        _refused(path, layer, message)  # a quantized conv's own tensor: that layer is bad
    else:  # a BatchNorm or the classifier: every later layer sees it
        with pytest.raises(InputError, match=message):
            _load(path)


BAD_ALPHAS = {
    "act_alpha-zero": ("features.0.act_alpha", 0.0),
    "act_alpha-negative": ("features.11.act_alpha", -1.5),
    "wgt_alpha-zero": ("features.4.weight_quant.wgt_alpha", 0.0),
    "wgt_alpha-negative": ("features.21.weight_quant.wgt_alpha", -0.25),
}


@pytest.mark.parametrize(("key", "value"), BAD_ALPHAS.values(), ids=BAD_ALPHAS.keys())
def test_alpha_not_positive_is_refused(tmp_path: Path, key: str, value: float) -> None:
    path = course_checkpoint(tmp_path / "c.pth", SMALL, mutate=_set(key, value))
    _refused(path, int(key.split(".")[1]), rf"checkpoint {key} = {value:g}; an alpha must be > 0")


def test_conv_with_all_equal_weights_cannot_be_quantized(tmp_path: Path) -> None:
    # std 0: the course formula divides by it; the weight integers would be NaN, not refused
    path = course_checkpoint(
        tmp_path / "c.pth", SMALL, mutate=_set("features.11.weight", 0.0, everywhere=True)
    )
    _refused(path, 11, r"^layer 11: the course's weight quantizer gives NaN")


def test_load_weights_alone_leaves_the_model_untouched_on_refusal() -> None:
    model = build_model(SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = course_state_dict(SMALL)
    state["features.14.running_var"] = torch.full_like(state["features.14.running_var"], float("nan"))
    with pytest.raises(InputError, match=r"features\.14\.running_var holds 32 NaN/Inf"):
        load_weights(model, state)
    after = model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
