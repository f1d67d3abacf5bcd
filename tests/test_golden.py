"""Golden files: what `qexport dump` writes for the demo, byte for byte.

Refresh with `python -m pytest tests/test_golden.py --update-golden` and review the diff.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qexport.api import SourceOptions, export
from qexport.frontend.demo import demo_images, demo_model
from qexport.frontend.models.vgg import BUILTIN
from qexport.layout.flat import LayoutOptions
from qexport.verify.check import without_check_figures
from qexport.writer.pack import text as pack_text

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "layer33-hex": (33, "hex", LayoutOptions()),
    "layer33-bin-msb": (33, "bin", LayoutOptions(lane_order="msb_first", psum_lanes=8)),
    "layer33-hex-padded": (33, "hex", LayoutOptions(pad_input=True, lanes=4)),
    "layer0-hex-signed": (0, "hex", LayoutOptions()),
}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _check_or_update(name: str, got: dict[str, bytes], update: bool) -> None:
    folder = GOLDEN / name
    if update:
        for rel, content in got.items():
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return
    expected = _files(folder)
    assert sorted(got) == sorted(expected), f"{name}: file set differs from {folder}"
    for rel in expected:
        if rel.endswith("manifest.json"):
            # the float check figures may move in their last digits with the BLAS in use; the
            # integers they check are compared byte for byte in the data files
            assert without_check_figures(got[rel]) == without_check_figures(expected[rel])
            continue
        assert got[rel] == expected[rel], f"{name}/{rel} differs from the golden file"


@pytest.mark.parametrize("name", sorted(CASES))
def test_dump_matches_golden(name: str, tmp_path: Path, update_golden: bool) -> None:
    layer, fmt, layout = CASES[name]
    export(SourceOptions(), [layer], tmp_path / name, fmt, layout)  # type: ignore[arg-type]
    _check_or_update(name, _files(tmp_path / name), update_golden)


@pytest.mark.parametrize("name", ["layer33-hex", "layer33-bin-msb"])
def test_files_streamed_in_many_blocks_match_golden(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body written and hashed a few lines at a time gives the same files and manifest hashes."""
    monkeypatch.setattr(pack_text, "_BLOCK_BYTES", 100)
    layer, fmt, layout = CASES[name]
    export(SourceOptions(), [layer], tmp_path / name, fmt, layout)  # type: ignore[arg-type]
    _check_or_update(name, _files(tmp_path / name), update=False)


def test_demo_parameters_and_images_are_pinned(update_golden: bool) -> None:
    digest = hashlib.sha256()
    state = demo_model(BUILTIN["VGG16_quant_gradual"]).state_dict()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    digest.update(demo_images(128).tobytes())
    _check_or_update("demo-sha256", {"demo.sha256": (digest.hexdigest() + "\n").encode()}, update_golden)


def test_same_bytes_across_processes_threads_and_hash_seeds(tmp_path: Path) -> None:
    outputs = []
    for run, (threads, hash_seed) in enumerate([("1", "1"), ("2", "4242")]):
        out = tmp_path / f"run{run}"
        env = {
            **os.environ,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONHASHSEED": hash_seed,
        }
        subprocess.run(
            [
                sys.executable,
                "-m",
                "qexport",
                "dump",
                "--all",
                "--images",
                "0:2",
                "-o",
                str(out),
            ],
            check=True,
            env=env,
            cwd=tmp_path,
            capture_output=True,
        )
        outputs.append(_files(out))
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 2 + 17 * 4  # the manifest, the SV package, 17 layers of 4 files


def test_nothing_written_names_a_machine_path(tmp_path: Path) -> None:
    export(SourceOptions(), [33], tmp_path / "p")
    for rel, content in _files(tmp_path / "p").items():
        assert str(tmp_path).encode() not in content, rel
        assert str(Path.home()).encode() + b"/" not in content, rel


def test_torch_threads_do_not_change_psums() -> None:
    from qexport.ir.reference import integer_conv

    rng = np.random.default_rng(7)
    x = rng.integers(0, 16, size=(2, 64, 8, 8))
    w = rng.integers(-7, 8, size=(32, 64, 3, 3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = integer_conv(x, w, 1, 1)
        torch.set_num_threads(2)
        two = integer_conv(x, w, 1, 1)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one, two)
