"""Every profile x format round-trips: the files decode to the layer's integers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bitstring_decoder import decode_memory_text  # type: ignore[import-not-found]

from qexport.api import SourceOptions, export
from qexport.frontend.capture import capture
from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.vgg import BUILTIN
from qexport.ir.integerize import integerize
from qexport.ir.reference import conv_psum
from qexport.verify.decode import decode_file
from qexport.writer import formats

PROFILES = ["flat", "course", "course-os", "systolic"]
FORMATS = ["hex", "bin", "txt", "coe", "mif", "h", "npy"]


@pytest.fixture(scope="module")
def layer33() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = next(
        t for t in capture(demo_model(BUILTIN["VGG16_quant_gradual"]), load_demo("0").images) if t.layer == 33
    )
    layer = integerize(t)
    return layer.w_int, layer.x_int, conv_psum(layer).psum


CASES = [(p, f) for p in PROFILES for f in FORMATS if not (f == "txt" and p == "flat")]


@pytest.mark.parametrize(("profile", "fmt"), CASES, ids=[f"{p}-{f}" for p, f in CASES])
def test_round_trip(
    tmp_path: Path, layer33: tuple[np.ndarray, np.ndarray, np.ndarray], profile: str, fmt: str
) -> None:
    w_int, x_int, psum = layer33
    out = tmp_path / "set"
    export(SourceOptions(), [33], out, fmt, profile=profile, depth="pow2")
    manifest = json.loads((out / "manifest.json").read_text())
    files = manifest["layers"][0]["files"]
    weights = np.zeros_like(w_int)
    outputs = np.zeros((psum.shape[1], psum.shape[2], psum.shape[3]), dtype=np.int64)
    for entry in files:
        values = decode_file(out / entry["path"], entry)
        assert list(values.shape) == entry["shape"]
        text_formats = ("hex", "bin", "txt")
        if fmt in text_formats:  # the independent decoder agrees, word for word
            independent = decode_memory_text(
                (out / entry["path"]).read_text(),
                radix="hex" if fmt == "hex" else "bin",
                header_lines=entry["header_lines"],
                word_bits=entry["word_bits"],
                lanes=entry["lanes"],
                lane_bits=entry["lane_bits"],
                signed=entry["signed"],
                lane_order=entry["lane_order"],
            )
            flat = np.array(independent[: values.size])
            assert np.array_equal(flat, values.reshape(-1)), entry["path"]
        if entry["tensor"] == "weight":
            if profile == "flat":
                weights = values.transpose(0, 3, 1, 2)
            elif profile == "course-os":  # (ic, 1, 1, oc): a line an input channel, lane = oc
                k = entry["kij"]
                oc0, oc1 = entry["oc"]
                lines = values.reshape(values.shape[0], values.shape[-1])  # axes ic, kh=1, kw=1, oc
                weights[oc0:oc1, :, k // 3, k % 3] = lines[:, : oc1 - oc0].T
            else:
                k = entry["kij"]
                oc0, oc1 = entry["oc"]
                ic0, ic1 = entry["ic"]
                weights[oc0:oc1, ic0:ic1, k // 3, k % 3] = values[: oc1 - oc0, 0, 0, : ic1 - ic0]
        if entry["tensor"] == "output":
            if profile == "flat":
                outputs = values[0].transpose(2, 0, 1)
            elif profile == "course-os":  # (r, oc): the pass's pixels p0..p1 of the 4x4 tile, row-major
                oc0, oc1 = entry["oc"]
                p0, p1 = entry["pixels"]
                outputs[oc0:oc1].reshape(oc1 - oc0, 16)[:, p0:p1] = values[:, : oc1 - oc0].T
            else:
                oc0, oc1 = entry["oc"]
                outputs[oc0:oc1] = values[0, :, :, : oc1 - oc0].transpose(2, 0, 1)
        if entry["tensor"] == "input" and profile == "flat":
            assert np.array_equal(values.transpose(0, 3, 1, 2), x_int)
    assert np.array_equal(weights, w_int)
    assert np.array_equal(outputs, np.maximum(psum[0], 0))
    for entry in files:
        if entry["format"] != "npy":
            text = (out / entry["path"]).read_text()
            assert text.endswith("\n"), entry["path"]
            assert entry["depth"] >= entry["words"]
            if fmt != "txt":  # the course core's files keep their fixed line counts
                assert entry["depth"] & (entry["depth"] - 1) == 0  # pow2 asked for


def test_mif_declares_depth_and_width(tmp_path: Path) -> None:
    export(SourceOptions(), [33], tmp_path / "m", "mif", depth="pow2")
    text = (tmp_path / "m" / "layer33" / "weight.mif").read_text()
    assert "DEPTH = 128;" in text and "WIDTH = 32;" in text
    assert text.rstrip().endswith("END;")
    assert "    48 : 00000000;" in text  # word 72 on: padding to the declared depth with fill 0


def test_c_header_compiles_and_holds_the_values(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    export(SourceOptions(), [33], tmp_path / "c", "h", profile="course")
    main = tmp_path / "main.c"
    main.write_text(
        '#include <stdio.h>\n#include "out.h"\n#include "weight_itile0_otile0_kij4.h"\n'
        "int main(void) { long s = 0; for (int i = 0; i < 128; i++) s += layer33_out_values[i];\n"
        '  printf("%ld %u\\n", s, (unsigned)layer33_weight_itile0_otile0_kij4_words[0]); return 0; }\n'
    )
    headers = tmp_path / "c" / "layer33"  # the set's layer folder
    subprocess.run(
        ["gcc", "-Wall", "-Werror", "-I", str(headers), str(main), "-o", str(tmp_path / "a")],
        check=True,
    )
    printed = subprocess.run([str(tmp_path / "a")], capture_output=True, text=True, check=True).stdout.split()
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    out_entry = next(f for f in manifest["layers"][0]["files"] if f["tensor"] == "output")
    assert int(printed[0]) == int(decode_file(tmp_path / "c" / out_entry["path"], out_entry).sum())


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 33, 500])
@pytest.mark.parametrize(("low", "high"), [(-8, 7), (0, 15), (-(2**31), 2**31 - 1), (0, 2**32 - 1), (0, 0)])
def test_c_values_match_python_formatting(count: int, low: int, high: int) -> None:
    rng = np.random.default_rng(count)
    values = rng.integers(low, high, size=count, endpoint=True)
    values[: min(count, 3)] = [low, high, 0][: min(count, 3)]
    lines = [", ".join(str(int(v)) for v in values[i : i + 16]) for i in range(0, count, 16)]
    assert formats.c_values(values) == "    " + ",\n    ".join(lines)
