"""Model inputs: CIFAR-10 through torchvision (on a fake dataset), --images, arrays and the demo."""

from __future__ import annotations

import os
import shlex
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CIFAR_FOLDER, write_fake_cifar10

from qexport.errors import InputError
from qexport.frontend.inputs import load_array, load_cifar10, load_demo, parse_images
from qexport.frontend.source import SourceOptions, _inputs

# the seeds' normalisation, written out rather than imported
MEAN = np.array([0.491, 0.482, 0.447])
STD = np.array([0.247, 0.243, 0.262])


def _normalised(images_nhwc: np.ndarray) -> np.ndarray:
    """(uint8 / 255 - mean) / std, NCHW, in float64."""
    x = images_nhwc.astype(np.float64) / 255.0
    return ((x - MEAN) / STD).transpose(0, 3, 1, 2)


# --- CIFAR-10 through torchvision --------------------------------------------------------------


@pytest.fixture
def fake_cifar(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path / "cifar"
    images, labels = write_fake_cifar10(root, n_test=20, n_train=4, seed=3)
    return root, images, labels


def test_cifar10_images_are_normalised_as_the_seeds_do(
    fake_cifar: tuple[Path, np.ndarray, np.ndarray], fake_cifar_md5: None
) -> None:
    root, images, labels = fake_cifar
    inputs = load_cifar10(root, "0:5")
    assert inputs.images.dtype == torch.float32
    assert tuple(inputs.images.shape) == (5, 3, 32, 32)
    np.testing.assert_allclose(inputs.images.numpy(), _normalised(images[:5]), rtol=0, atol=1e-6)
    assert inputs.labels is not None
    assert inputs.labels.tolist() == labels[:5].tolist()
    assert inputs.indices == (0, 1, 2, 3, 4)
    assert inputs.source == {"cifar10": "test", "images": "0:5"}


def test_cifar10_list_keeps_the_order_given(
    fake_cifar: tuple[Path, np.ndarray, np.ndarray], fake_cifar_md5: None
) -> None:
    root, images, labels = fake_cifar
    inputs = load_cifar10(root, "19,3,7")
    np.testing.assert_allclose(inputs.images.numpy(), _normalised(images[[19, 3, 7]]), atol=1e-6)
    assert inputs.labels is not None
    assert inputs.labels.tolist() == [int(labels[i]) for i in (19, 3, 7)]


def test_cifar10_train_split_has_the_five_batches(
    fake_cifar: tuple[Path, np.ndarray, np.ndarray], fake_cifar_md5: None
) -> None:
    root, _, _ = fake_cifar
    inputs = load_cifar10(root, "0:", train=True)
    assert inputs.images.shape[0] == 5 * 4
    assert inputs.source["cifar10"] == "train"


def test_cifar10_out_of_range_names_the_range(
    fake_cifar: tuple[Path, np.ndarray, np.ndarray], fake_cifar_md5: None
) -> None:
    root, _, _ = fake_cifar
    with pytest.raises(InputError, match=r"asks for image 20, but only 0\.\.19 exist \(20 images\)"):
        load_cifar10(root, "15:25")


def test_the_product_keeps_torchvisions_md5_check_on(
    fake_cifar: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    # no fake_cifar_md5 here: the fake files' MD5s are wrong, so torchvision must refuse them
    root, _, _ = fake_cifar
    with pytest.raises(InputError, match=r"CIFAR-10 not found or damaged under .*cifar"):
        load_cifar10(root, "0")


@pytest.mark.parametrize("md5", [True, False], ids=["md5-patched", "md5-checked"])
def test_missing_data_dir_says_data_dir_and_download(
    tmp_path: Path, request: pytest.FixtureRequest, md5: bool
) -> None:
    if md5:
        request.getfixturevalue("fake_cifar_md5")
    with pytest.raises(InputError, match=r"not found or damaged under .*nowhere") as info:
        load_cifar10(tmp_path / "nowhere", "0")
    assert "--data-dir" in str(info.value)
    assert "--download" in str(info.value)


def test_download_without_internet_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as cifar

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(InputError, match=r"Temporary failure in name resolution.*--data-dir"):
        load_cifar10(tmp_path / "data", "0", download=True)


def test_source_options_pick_cifar10_from_data_dir_and_from_dot_data(
    tmp_path: Path, fake_cifar_md5: None
) -> None:
    images, _ = write_fake_cifar10(tmp_path / "elsewhere", n_test=6, n_train=1, seed=1)
    from_dir = _inputs(SourceOptions(data_dir=tmp_path / "elsewhere", images="1:3"), [])
    np.testing.assert_allclose(from_dir.images.numpy(), _normalised(images[1:3]), atol=1e-6)
    # the tests run in tmp_path: a ./data/cifar-10-batches-py there is used without --data-dir
    assert Path.cwd() == tmp_path
    dot_images, _ = write_fake_cifar10(tmp_path / "data", n_test=4, n_train=1, seed=2)
    assert (tmp_path / "data" / CIFAR_FOLDER).is_dir()
    notices: list[str] = []
    from_dot = _inputs(SourceOptions(images="2"), notices)
    np.testing.assert_allclose(from_dot.images.numpy(), _normalised(dot_images[2:3]), atol=1e-6)
    assert from_dot.source == {"cifar10": "test", "images": "2"}
    assert notices == []


# --- --images ---------------------------------------------------------------------------------

GOOD_SPECS = {
    "index": ("7", [7]),
    "first": ("0", [0]),
    "range": ("2:5", [2, 3, 4]),
    "open-end": ("17:", [17, 18, 19]),
    "open-start": (":3", [0, 1, 2]),
    "list": ("1,5,9", [1, 5, 9]),
    "list-with-spaces": (" 1, 5 ", [1, 5]),
    "last": ("19", [19]),
}


@pytest.mark.parametrize(("spec", "want"), GOOD_SPECS.values(), ids=GOOD_SPECS.keys())
def test_images_spec(spec: str, want: list[int]) -> None:
    assert parse_images(spec, 20) == want


OUT_OF_RANGE = {
    "index": ("20", 20),
    "negative": ("-1", -1),
    "range-end": ("18:22", 20),
    "list": ("3,25,4", 25),
}


@pytest.mark.parametrize(("spec", "bad"), OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_images_out_of_range_names_the_range(spec: str, bad: int) -> None:
    with pytest.raises(
        InputError, match=rf"--images '{spec}' asks for image {bad}, but only 0\.\.19 exist \(20"
    ):
        parse_images(spec, 20)


@pytest.mark.parametrize("spec", ["abc", "1-3", "0:5:2", "", "1,,2", "2.5", "0x3"])
def test_images_garbage(spec: str) -> None:
    with pytest.raises(InputError, match=r"is not an index, a range or a list; use e\.g\. 0, 0:128"):
        parse_images(spec, 20)


@pytest.mark.parametrize("spec", ["5:2", "3:3"], ids=["reversed", "empty"])
def test_images_selecting_nothing(spec: str) -> None:
    with pytest.raises(InputError, match=rf"--images '{spec}' selects no images"):
        parse_images(spec, 20)


# --- --input arrays ---------------------------------------------------------------------------

RNG = np.random.default_rng(11)
UINT8_NHWC = RNG.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
FLOAT = RNG.standard_normal((4, 3, 32, 32))


def _save(path: Path, value: np.ndarray | torch.Tensor | object) -> Path:
    if path.suffix == ".npy":
        np.save(path, value)
    else:
        torch.save(value, path)
    return path


ARRAYS = {
    "npy-float64": ("x.npy", FLOAT, FLOAT),
    "npy-float32": ("x.npy", FLOAT.astype(np.float32), FLOAT),
    "npy-uint8-nhwc": ("x.npy", UINT8_NHWC, _normalised(UINT8_NHWC)),
    "npy-uint8-nchw": ("x.npy", UINT8_NHWC.transpose(0, 3, 1, 2), _normalised(UINT8_NHWC)),
    "pt-float": ("x.pt", torch.from_numpy(FLOAT).float(), FLOAT),
    "pt-bfloat16": ("x.pt", torch.zeros(1, 3, 32, 32, dtype=torch.bfloat16) + 0.5, None),
    "pt-uint8-nhwc": ("x.pt", torch.from_numpy(UINT8_NHWC), _normalised(UINT8_NHWC)),
}


@pytest.mark.parametrize(("name", "value", "want"), ARRAYS.values(), ids=ARRAYS.keys())
def test_load_array(
    tmp_path: Path, name: str, value: np.ndarray | torch.Tensor, want: np.ndarray | None
) -> None:
    inputs = load_array(_save(tmp_path / name, value), None)
    assert inputs.images.dtype == torch.float32
    expected = np.full((1, 3, 32, 32), 0.5) if want is None else want
    np.testing.assert_allclose(inputs.images.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert inputs.labels is None
    assert inputs.indices == tuple(range(len(expected)))
    assert inputs.source == {"input": name, "images": "all"}


def test_load_array_selects_images(tmp_path: Path) -> None:
    inputs = load_array(_save(tmp_path / "x.npy", FLOAT), "3,1")
    np.testing.assert_allclose(inputs.images.numpy(), FLOAT[[3, 1]], rtol=1e-6)
    assert inputs.indices == (3, 1)
    with pytest.raises(InputError, match=r"asks for image 4, but only 0\.\.3 exist"):
        load_array(tmp_path / "x.npy", "4")


BAD_ARRAYS = {
    "float-nhwc": (
        "x.npy",
        FLOAT.transpose(0, 2, 3, 1),
        r"has shape \[4, 32, 32, 3\] and dtype float64",
    ),
    "float-64x64": ("x.npy", np.zeros((1, 3, 64, 64)), r"has shape \[1, 3, 64, 64\]"),
    "one-image-no-batch": ("x.npy", FLOAT[0], r"has shape \[3, 32, 32\]"),
    "int32": ("x.npy", UINT8_NHWC.astype(np.int32), r"and dtype int32; expected normalised float"),
    "uint8-28x28": ("x.npy", np.zeros((2, 28, 28, 3), np.uint8), r"dtype uint8; expected"),
    "nan": ("x.npy", np.full((1, 3, 32, 32), np.nan), r"holds NaN/Inf values"),
    "pt-dict": ("x.pt", {"images": torch.zeros(1, 3, 32, 32)}, r"holds a dict, not one array"),
    "pt-int64": ("x.pt", torch.zeros(1, 3, 32, 32, dtype=torch.int64), r"dtype int64"),
    "npy-object": ("x.npy", np.array([{"a": 1}], dtype=object), r"could not be read as an array"),
}


@pytest.mark.parametrize(("name", "value", "message"), BAD_ARRAYS.values(), ids=BAD_ARRAYS.keys())
def test_load_array_refuses_wrong_shape_and_dtype(
    tmp_path: Path, name: str, value: object, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        load_array(_save(tmp_path / name, value), None)


UNREADABLE = {
    "empty-npy": ("x.npy", b""),
    "empty-pt": ("x.pt", b""),
    "text-npy": ("x.npy", b"1 2 3\n"),
    "text-pt": ("x.pt", b"hello world\n"),
    "truncated-npy": ("x.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order'"),
}


@pytest.mark.parametrize(("name", "data"), UNREADABLE.values(), ids=UNREADABLE.keys())
def test_load_array_unreadable_file(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError, match=rf"--input .*{name} could not be read as an array"):
        load_array(path, None)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_load_array_never_runs_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = _save(tmp_path / "x.pt", _Payload(marker))
    with pytest.raises(InputError, match=r"could not be read as an array \(UnpicklingError"):
        load_array(path, None)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live
    assert marker.exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing.npy", r"is not a file"), ("x.csv", r"unknown suffix '\.csv'; use \.npy or \.pt")],
    ids=["missing", "unknown-suffix"],
)
def test_load_array_path_problems(tmp_path: Path, name: str, message: str) -> None:
    if name.endswith(".csv"):
        (tmp_path / name).write_text("1,2,3\n")
    with pytest.raises(InputError, match=message):
        load_array(tmp_path / name, None)


# --- demo images ------------------------------------------------------------------------------


def test_demo_images_are_deterministic_and_indexable() -> None:
    first = load_demo("0:6")
    again = load_demo("0:6")
    assert torch.equal(first.images, again.images)
    assert torch.equal(load_demo("4").images[0], first.images[4])
    assert torch.equal(load_demo("5,2").images, first.images[[5, 2]])
    assert first.labels is None
    assert first.indices == (0, 1, 2, 3, 4, 5)
    assert first.source == {"demo": "demo, untrained", "images": "0:6"}
    # normalised images: the uint8 range maps to about [-2, 2.1]
    assert float(first.images.min()) >= -0.491 / 0.247 - 1e-6
    assert float(first.images.max()) <= (1 - 0.447) / 0.262 + 1e-6
    assert float(first.images.std()) > 0.1


def test_demo_out_of_range() -> None:
    with pytest.raises(InputError, match=r"asks for image 128, but only 0\.\.127 exist"):
        load_demo("120:130")


def test_read_labels_picks_the_used_rows_and_refuses_unknown_classes(tmp_path: Path) -> None:
    from qexport.frontend.inputs import read_labels

    path = tmp_path / "labels.npy"
    np.save(path, np.array([3, 1, 4, 1, 5]))
    assert read_labels(path, [4, 0], 10).tolist() == [5, 3]
    with pytest.raises(
        InputError, match=r"^--labels .*labels\.npy holds class 5; the model has classes 0\.\.4$"
    ):
        read_labels(path, [4], 5)
