"""Model inputs: CIFAR-10 test images through torchvision, user arrays, or the demo images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qexport.errors import InputError

# the seeds' normalisation (seed 000; seed 003's std list is cut short)
CIFAR_FOLDER = "cifar-10-batches-py"  # what torchvision unpacks under its root
CIFAR_MEAN = (0.491, 0.482, 0.447)
CIFAR_STD = (0.247, 0.243, 0.262)
CIFAR_TEST_SIZE = 10000


@dataclass(frozen=True)
class Inputs:
    """Normalised model inputs (N, 3, 32, 32) float32, their labels if known, and their origin."""

    images: torch.Tensor
    labels: torch.Tensor | None
    source: dict[str, object]
    indices: tuple[int, ...]


def parse_images(spec: str, available: int) -> list[int]:
    """``"0"``, ``"0:128"`` (Python slice, end exclusive) or ``"1,5,9"`` -> image indices."""
    try:
        if ":" in spec:
            start_text, _, stop_text = spec.partition(":")
            start = int(start_text) if start_text else 0
            stop = int(stop_text) if stop_text else available
            indices = list(range(start, stop))
        else:
            indices = [int(part) for part in spec.split(",")]
    except ValueError:
        raise InputError(
            f"--images {spec!r} is not an index, a range or a list; use e.g. 0, 0:128 or 1,5,9"
        ) from None
    if not indices:
        raise InputError(f"--images {spec!r} selects no images; use e.g. 0 or 0:128")
    bad = [i for i in indices if not 0 <= i < available]
    if bad:
        raise InputError(
            f"--images {spec!r} asks for image {bad[0]}, but only 0..{available - 1} exist "
            f"({available} images)"
        )
    return indices


def normalise_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 images, (N, H, W, 3) or (N, 3, H, W) -> the seeds' normalised float32 (N, 3, H, W)."""
    array = images if images.shape[1] == 3 else images.transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32) / 255.0
    mean = torch.tensor(CIFAR_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def load_cifar10(data_dir: Path, spec: str, *, download: bool = False, train: bool = False) -> Inputs:
    """CIFAR-10 images by index through torchvision (integrity check on), normalised as the seeds do."""
    import torchvision

    try:
        dataset = torchvision.datasets.CIFAR10(root=str(data_dir), train=train, download=download)
    except (RuntimeError, OSError) as err:  # OSError: --download without internet
        raise InputError(
            f"CIFAR-10 not found or damaged under {data_dir} ({err}); put cifar-10-batches-py "
            "there, pass --data-dir, add --download on a machine with internet, or leave out the "
            "data options to run the demo"
        ) from err
    indices = parse_images(spec, len(dataset))
    data: np.ndarray = dataset.data[indices]
    labels = torch.tensor([int(dataset.targets[i]) for i in indices], dtype=torch.int64)
    return Inputs(
        normalise_uint8(data),
        labels,
        {"cifar10": "test" if not train else "train", "images": spec},
        tuple(indices),
    )


def _read_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"--input {path} is not a file; give a .npy or .pt array of N×3×32×32")
    if path.suffix not in (".npy", ".pt"):
        raise InputError(f"--input {path}: unknown suffix {path.suffix!r}; use .npy or .pt")
    try:
        if path.suffix == ".npy":
            loaded: object = np.load(path, allow_pickle=False)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # np.load / torch.load on arbitrary bytes: EOFError (empty), ValueError, UnpicklingError …
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise InputError(
            f"--input {path} could not be read as an array ({type(err).__name__}: "
            f"{lines[0][:200] if lines else ''}); save it with numpy.save or torch.save(tensor)"
        ) from err
    if isinstance(loaded, torch.Tensor):
        tensor = loaded.detach().cpu()
        # numpy has no bfloat16; float16/64 become float32 below anyway
        return (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    if isinstance(loaded, np.ndarray):
        return loaded
    raise InputError(f"--input {path} holds a {type(loaded).__name__}, not one array or tensor")


def load_array(path: Path, spec: str | None) -> Inputs:
    """``.npy`` or ``.pt`` input: float N×3×32×32 taken as normalised; uint8 taken as images."""
    array = _read_array(path)
    if array.dtype == np.uint8 and array.ndim == 4 and array.shape[1:] in ((32, 32, 3), (3, 32, 32)):
        images = normalise_uint8(array)
    elif array.dtype.kind == "f" and array.ndim == 4 and array.shape[1:] == (3, 32, 32):
        if not np.isfinite(array).all():
            raise InputError(f"--input {path} holds NaN/Inf values")
        images = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    else:
        raise InputError(
            f"--input {path} has shape {list(array.shape)} and dtype {array.dtype}; expected "
            "normalised float N×3×32×32, or uint8 images N×32×32×3 / N×3×32×32"
        )
    indices = parse_images(spec, images.shape[0]) if spec else list(range(images.shape[0]))
    return Inputs(images[indices], None, {"input": path.name, "images": spec or "all"}, tuple(indices))


def load_demo(spec: str) -> Inputs:
    from qexport.frontend.demo import DEMO_IMAGES, DEMO_LABEL, demo_images

    indices = parse_images(spec, DEMO_IMAGES)
    images = normalise_uint8(demo_images(max(indices) + 1)[indices])
    return Inputs(images, None, {"demo": DEMO_LABEL, "images": spec}, tuple(indices))


def read_labels(path: Path, indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class indices from ``.npy`` / ``.pt`` (one per input row), picked at ``indices``."""
    if not path.is_file():
        raise InputError(f"--labels {path} is not a file; give a .npy or .pt array of class indices")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix == ".pt":
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(loaded, torch.Tensor):
                raise InputError(f"--labels {path} holds a {type(loaded).__name__}, not one tensor")
            array = loaded.numpy()
        else:
            raise InputError(f"--labels {path}: unknown suffix {path.suffix!r}; use .npy or .pt")
    except (ValueError, OSError, RuntimeError) as err:
        raise InputError(f"--labels {path} could not be read as an array: {err}") from err
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise InputError(
            f"--labels {path} has shape {list(array.shape)} and dtype {array.dtype}; expected a 1-D "
            "integer array with one class index per input row"
        )
    needed = max(indices) + 1
    if array.shape[0] < needed:
        raise InputError(
            f"--labels {path} holds {array.shape[0]} labels but image {needed - 1} is used; give one "
            "label per input row"
        )
    picked = array[list(indices)]
    bad = picked[(picked < 0) | (picked >= num_classes)]
    if bad.size:
        raise InputError(
            f"--labels {path} holds class {int(bad[0])}; the model has classes 0..{num_classes - 1}"
        )
    return torch.from_numpy(picked.astype(np.int64))
