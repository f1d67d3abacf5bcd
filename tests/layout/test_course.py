"""The `course` profile: the 8x8 core's file set, to the bit (docs: README, "The course profile")."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qexport.api import SourceOptions, export
from qexport.errors import BitWidthError, InputError
from qexport.ir.reference import integer_conv

VERILOG = Path(__file__).parents[1] / "verilog" / "course_tb.v"
SPEC_NAMES = {
    "acc_address.txt",
    "activation_tile0.txt",
    "out.txt",
    *(f"weight_itile0_otile0_kij{k}.txt" for k in range(9)),
}


@pytest.fixture(scope="module")
def course33(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The layer folder of a course set: the files the course testbench reads."""
    out = tmp_path_factory.mktemp("course") / "set33"
    export(SourceOptions(), [33], out, profile="course")
    return out / "layer33"


def _words(path: Path, width: int, header: int = 3) -> list[str]:
    """Read a file the way the testbench does: skip `header` tokens, then one word a line."""
    tokens = path.read_text().split()
    words = tokens[header:]
    assert all(len(w) == width and set(w) <= {"0", "1"} for w in words), path.name
    return words


def _lanes(word: str, lanes: int, bits: int, signed: bool) -> list[int]:
    values = []
    for lane in range(lanes):  # lane 0 in the lowest bits = rightmost characters
        chunk = word[len(word) - (lane + 1) * bits : len(word) - lane * bits]
        value = int(chunk, 2)
        if signed and value >= 1 << (bits - 1):
            value -= 1 << bits
        values.append(value)
    return values


def test_exactly_the_spec_files(course33: Path) -> None:
    assert {p.name for p in course33.parent.iterdir()} == {
        "manifest.json",
        "qexport_vectors_pkg.sv",
        "layer33",
    }
    assert {p.name for p in course33.iterdir()} == SPEC_NAMES


def test_headers_are_three_single_tokens_and_text_ends_with_newline(course33: Path) -> None:
    for name in SPEC_NAMES - {"acc_address.txt"}:
        text = (course33 / name).read_text()
        assert text.endswith("\n")
        header = text.splitlines()[:3]
        assert all(line and " " not in line and "\t" not in line for line in header), name
        assert header[1].startswith("#VGG16_quant_gradual_demo_untrained")


def test_acc_address_is_the_spec_table(course33: Path) -> None:
    words = _words(course33 / "acc_address.txt", 11, header=0)
    assert len(words) == 144
    values = [int(w, 2) for w in words]
    assert values[:9] == [0, 37, 74, 114, 151, 188, 228, 265, 302]
    expected = [36 * k + (o // 4 + k // 3) * 6 + (o % 4 + k % 3) for o in range(16) for k in range(9)]
    assert values == expected


def test_values_follow_the_spec_formula(course33: Path) -> None:
    manifest = json.loads((course33.parent / "manifest.json").read_text())
    layer = manifest["layers"][0]
    act = [_lanes(w, 8, 4, False) for w in _words(course33 / "activation_tile0.txt", 32)]
    assert len(act) == 36
    x = np.array(act).T.reshape(8, 6, 6)  # [ic][r][c] over the padded grid
    assert (x[:, 0, :] == 0).all() and (x[:, :, 5] == 0).all()  # the zero border
    weights = np.zeros((8, 8, 3, 3), dtype=np.int64)
    for k in range(9):
        rows = _words(course33 / f"weight_itile0_otile0_kij{k}.txt", 32)
        assert len(rows) == 8
        for oc, word in enumerate(rows):
            weights[oc, :, k // 3, k % 3] = _lanes(word, 8, 4, True)
    out = [_lanes(w, 8, 16, True) for w in _words(course33 / "out.txt", 128)]
    assert len(out) == 16
    for o in range(16):
        orow, ocol = divmod(o, 4)
        for oc in range(8):
            total = sum(
                int(x[ic, orow + ki, ocol + kj]) * int(weights[oc, ic, ki, kj])
                for ic in range(8)
                for ki in range(3)
                for kj in range(3)
            )
            assert out[o][oc] == max(0, total)
    # and the tile is the layer itself: same psums as the flat reference (ReLU'd)
    ref = integer_conv(x[None, :, 1:5, 1:5], weights, 1, 1)
    assert np.array_equal(np.maximum(ref[0], 0).reshape(8, 16).T, np.array(out))
    assert layer["index"] == 33 and len(layer["files"]) == 12
    assert manifest["profile"] == "course" and manifest["format"] == "txt"


def test_first_layer_is_refused_by_unsigned_lanes(tmp_path: Path) -> None:
    # the message says why (the signed image, the unsigned lanes) and the fix, as for `dump --all
    # --chain --profile course` on the demo, which stops at this layer
    why = (
        r"layer 0 x_int spans \[-\d+, \d+\]; unsigned 4-bit holds \[0, 15\]; layer 0's input is the "
        r"normalised image, which is signed, and the course core's activation lanes are unsigned "
        r"4-bit; add --act-clip relu"
    )
    with pytest.raises(BitWidthError, match=why):
        export(SourceOptions(), [0], tmp_path / "c0", profile="course")
    assert not (tmp_path / "c0").exists()


def test_channel_and_spatial_tiling(tmp_path: Path) -> None:
    out = tmp_path / "c30"
    export(SourceOptions(), [27], out, profile="course")  # 128 -> 32 channels, 4x4 map
    names = {p.name for p in (out / "layer27").iterdir()}
    assert {"activation_tile15.txt", "weight_itile15_otile3_kij8.txt", "out_tile0_otile3.txt"} <= names
    assert "psum_tile0_itile15_otile3.txt" in names
    out2 = tmp_path / "c17"
    export(SourceOptions(), [17], out2, profile="course")  # 256 channels, 8x8 map -> 4 spatial tiles
    assert (out2 / "layer17" / "out_tile3_otile31.txt").is_file()


@pytest.mark.sim
@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not installed")
def test_icarus_reads_the_course_files(course33: Path, tmp_path: Path) -> None:
    sim = tmp_path / "course_tb.vvp"
    subprocess.run(
        ["iverilog", "-g2012", f'-Pcourse_tb.DIR="{course33}"', "-o", str(sim), str(VERILOG)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = subprocess.run(["vvp", "-n", str(sim)], capture_output=True, text=True, check=True)
    assert "PASS 128 outputs" in result.stdout, result.stdout
    # a corrupted golden word must make the same testbench fail, naming pixel and channel
    broken = tmp_path / "broken"
    shutil.copytree(course33, broken)
    lines = (broken / "out.txt").read_text().splitlines()
    lines[3] = lines[3][:-1] + ("1" if lines[3][-1] == "0" else "0")
    (broken / "out.txt").write_text("\n".join(lines) + "\n")
    subprocess.run(
        ["iverilog", "-g2012", f'-Pcourse_tb.DIR="{broken}"', "-o", str(sim), str(VERILOG)],
        check=True,
        capture_output=True,
    )
    failed = subprocess.run(["vvp", "-n", str(sim)], capture_output=True, text=True, check=True)
    assert "MISMATCH pixel 0 oc 0" in failed.stdout and "FAIL 1 mismatches" in failed.stdout


def test_requantized_golden_is_the_next_layers_input(tmp_path: Path) -> None:
    from qexport.layout.profile import load_profile, parse_profile
    from qexport.verify.decode import decode_file

    text = load_profile("course").source.replace('name = "course"', 'name = "course-requant"')
    text = text.replace('golden = ["accumulate", "relu"]', 'golden = ["accumulate", "relu", "requantize"]')
    export(SourceOptions(), [33], tmp_path / "rq", profile=parse_profile(text, "test"))
    out = [_lanes(w, 8, 4, False) for w in _words(tmp_path / "rq" / "layer33" / "out.txt", 32)]
    export(SourceOptions(), [35], tmp_path / "flat35")
    manifest = json.loads((tmp_path / "flat35" / "manifest.json").read_text())
    entry = next(f for f in manifest["layers"][0]["files"] if f["tensor"] == "input")
    x35 = decode_file(tmp_path / "flat35" / entry["path"], entry)  # (n, h, w, c)
    assert np.array_equal(np.array(out), x35[0].reshape(16, 8))
    with pytest.raises(InputError, match="requantization needs the next conv right after a ReLU"):
        export(SourceOptions(), [30], tmp_path / "rq30", profile=parse_profile(text, "test"))
