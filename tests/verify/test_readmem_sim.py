"""A real Verilog simulator reads qexport's hex/bin files with $readmemh/$readmemb.

For every file of a demo export (layer 33, flat profile) a small testbench declares
``reg [word_bits-1:0] mem [0:words-1]``, loads the file and prints each word in binary; Icarus
Verilog compiles and runs it. The printed words, split into lanes from the manifest alone, must
equal qexport.verify.decode.decode_file, the bitstring decoder, the layer recomputed from them
(psum = conv(input, weight), output = ReLU(psum)) and the demo model's own integers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bitstring_decoder import decode_memory_text

from qexport.api import SourceOptions, export, load
from qexport.frontend.capture import capture
from qexport.ir.integerize import IntLayer, integerize
from qexport.verify.decode import decode_file
from qexport.writer.pack import PackSpec, format_words, to_words

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog is not installed"),
]

LAYER = 33
FORMATS = ("hex", "bin")
TENSORS = ("weight", "input", "psum", "output")
DECODER_KEYS = ("header_lines", "word_bits", "lanes", "lane_bits", "signed", "lane_order")
_WORD_LINE = re.compile(r"word (\d+) ([01xzXZ]+)")


@dataclass(frozen=True)
class Exported:
    out_dir: Path
    fmt: str
    layer: dict[str, Any]  # the manifest's entry for the layer
    files: dict[str, dict[str, Any]]  # tensor -> the manifest's file entry


@dataclass(frozen=True)
class Simulated:
    exported: Exported
    words: dict[str, list[str]]  # tensor -> the words Icarus printed, MSB first
    values: dict[str, np.ndarray]  # tensor -> those words split into lanes, in manifest shape


def _simulate(mem: Path, radix: str, word_bits: int, words: int, work: Path) -> list[str]:
    """Load ``mem`` into a ``word_bits`` x ``words`` Icarus memory; its words, MSB first."""
    work.mkdir(parents=True, exist_ok=True)
    task = "$readmemh" if radix == "hex" else "$readmemb"
    testbench = work / "readmem_tb.v"
    testbench.write_text(
        f"""module readmem_tb;
  reg [{word_bits - 1}:0] mem [0:{words - 1}];
  integer i;
  initial begin
    {task}("{mem.as_posix()}", mem);
    for (i = 0; i < {words}; i = i + 1)
      $display("word %0d %b", i, mem[i]);
    $finish;
  end
endmodule
"""
    )
    sim = work / "readmem_tb.vvp"
    subprocess.run(
        ["iverilog", "-g2012", "-o", str(sim), str(testbench)],
        check=True,
        capture_output=True,
        text=True,
    )
    run = subprocess.run(["vvp", "-n", str(sim)], check=True, capture_output=True, text=True)
    log = run.stdout + run.stderr
    # $readmem warns about short files, too many words and bad digits; none may appear
    assert "warning" not in log.lower() and "error" not in log.lower(), log
    printed = [m.groups() for m in map(_WORD_LINE.fullmatch, run.stdout.splitlines()) if m]
    assert [int(index) for index, _ in printed] == list(range(words)), run.stdout
    bits = [word for _, word in printed]
    assert all(len(word) == word_bits and set(word) <= {"0", "1"} for word in bits), bits
    return bits


def _split_lanes(words: list[str], entry: dict[str, Any]) -> list[int]:
    """Binary words -> lane values in file order, from the manifest's description alone."""
    lanes, bits, signed = int(entry["lanes"]), int(entry["lane_bits"]), bool(entry["signed"])
    values = []
    for word in words:
        number = int(word, 2)
        assert number >> (lanes * bits) == 0, f"bits above the lanes in {word}"
        group = []
        for lane in range(lanes):  # lane 0 = the lowest bits
            value = (number >> (lane * bits)) & ((1 << bits) - 1)
            group.append(value - (1 << bits) if signed and value >> (bits - 1) else value)
        values += group if entry["lane_order"] == "lsb_first" else group[::-1]
    return values


def _shaped(values: list[int], entry: dict[str, Any]) -> np.ndarray:
    shape = [int(s) for s in entry["shape"]]
    count = int(np.prod(shape))
    assert len(values) >= count
    assert not any(values[count:]), "padding lanes must be zero"
    return np.array(values[:count], dtype=np.int64).reshape(shape)


@pytest.fixture(scope="module", params=FORMATS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    fmt = request.param
    out = tmp_path_factory.mktemp(f"export-{fmt}") / "vectors"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(out.parent)  # no ./data here: the demo images, whatever the caller's cwd
        export(SourceOptions(), [LAYER], out, fmt)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    (layer,) = manifest["layers"]
    return Exported(out, fmt, layer, {f["tensor"]: f for f in layer["files"]})


@pytest.fixture(scope="module")
def model_layer(tmp_path_factory: pytest.TempPathFactory) -> IntLayer:
    """The layer's integers straight from the demo model, without any packing or file."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("model"))  # no ./data: the demo images, as export
        loaded = load(SourceOptions())
        (tensors,) = [t for t in capture(loaded.model, loaded.inputs.images) if t.layer == LAYER]
    return integerize(tensors)


def _conv_nhwc(x: np.ndarray, weight: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Exact integer conv, written out here: x (n, h, w, c) * weight (oc, kh, kw, ic)."""
    kernel = weight.shape[1]
    padded = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = (padded.shape[1] - kernel) // stride + 1
    cols = (padded.shape[2] - kernel) // stride + 1
    out = np.zeros((x.shape[0], rows, cols, weight.shape[0]), dtype=np.int64)
    for i in range(kernel):
        for j in range(kernel):
            window = padded[:, i : i + stride * rows : stride, j : j + stride * cols : stride, :]
            out += np.einsum("nyxc,oc->nyxo", window, weight[:, i, j, :].astype(np.int64))
    return out


@pytest.fixture(scope="module")
def simulated(exported: Exported, tmp_path_factory: pytest.TempPathFactory) -> Simulated:
    work = tmp_path_factory.mktemp(f"sim-{exported.fmt}")
    words = {}
    values = {}
    for tensor, entry in exported.files.items():
        words[tensor] = _simulate(
            exported.out_dir / entry["path"],
            entry["format"],
            int(entry["word_bits"]),
            int(entry["words"]),
            work / tensor,
        )
        values[tensor] = _shaped(_split_lanes(words[tensor], entry), entry)
    return Simulated(exported, words, values)


def test_the_export_is_four_readmem_files(exported: Exported) -> None:
    assert set(exported.files) == set(TENSORS)
    for entry in exported.files.values():
        assert entry["format"] == exported.fmt
        assert entry["path"].endswith(f".{exported.fmt}")
        assert entry["depth"] == entry["words"]  # exact depth: the memory is the file
        assert (exported.out_dir / entry["path"]).is_file()


@pytest.mark.parametrize("tensor", TENSORS)
def test_simulator_reads_the_file_words(simulated: Simulated, tensor: str) -> None:
    entry = simulated.exported.files[tensor]
    lines = (simulated.exported.out_dir / entry["path"]).read_text(encoding="ascii").splitlines()
    header, data = lines[: entry["header_lines"]], lines[entry["header_lines"] :]
    assert all(line.startswith("//") for line in header)
    if entry["format"] == "bin":
        expected = data
    else:  # each hex digit is 4 bits; the padding bits above word_bits are cut off (and zero)
        expanded = ["".join(format(int(d, 16), "04b") for d in line) for line in data]
        cut = len(expanded[0]) - int(entry["word_bits"])
        assert all(set(word[:cut]) <= {"0"} for word in expanded)
        expected = [word[cut:] for word in expanded]
    assert simulated.words[tensor] == expected


@pytest.mark.parametrize("tensor", TENSORS)
def test_simulator_values_equal_decode_file(simulated: Simulated, tensor: str) -> None:
    entry = simulated.exported.files[tensor]
    decoded = decode_file(simulated.exported.out_dir / entry["path"], entry)
    assert decoded.shape == simulated.values[tensor].shape
    np.testing.assert_array_equal(simulated.values[tensor], decoded)


@pytest.mark.parametrize("tensor", TENSORS)
def test_simulator_values_equal_the_bitstring_decoder(simulated: Simulated, tensor: str) -> None:
    entry = simulated.exported.files[tensor]
    path = simulated.exported.out_dir / entry["path"]
    text = path.read_text(encoding="ascii")
    values = decode_memory_text(text, radix=entry["format"], **{k: entry[k] for k in DECODER_KEYS})
    np.testing.assert_array_equal(simulated.values[tensor], _shaped(values, entry))


def test_simulator_values_are_the_layer(simulated: Simulated) -> None:
    """psum = conv(input, weight) and output = ReLU(psum), all three as the simulator read them."""
    layer = simulated.exported.layer
    weight, x, psum = (simulated.values[t] for t in ("weight", "input", "psum"))
    assert list(x.transpose(0, 3, 1, 2).shape) == layer["input_shape"]
    assert list(psum.transpose(0, 3, 1, 2).shape) == layer["output_shape"]
    expected = _conv_nhwc(x, weight, int(layer["stride"]), int(layer["padding"]))
    np.testing.assert_array_equal(psum, expected)
    assert (psum < 0).any() and (psum > 0).any()  # both signs: the signed lanes are exercised
    np.testing.assert_array_equal(simulated.values["output"], np.maximum(expected, 0))


def test_simulator_values_are_the_model(simulated: Simulated, model_layer: IntLayer) -> None:
    """The same tensors from the demo model itself: the lanes are the right channels, in order."""
    assert simulated.exported.files["weight"]["axes"] == ["oc", "kh", "kw", "ic"]
    assert simulated.exported.files["input"]["axes"] == ["n", "h", "w", "c"]
    weight = model_layer.w_int.transpose(0, 2, 3, 1)
    x = model_layer.x_int.transpose(0, 2, 3, 1)
    assert np.count_nonzero(weight) > weight.size // 2 and len(np.unique(x)) > 8
    np.testing.assert_array_equal(simulated.values["weight"], weight)
    np.testing.assert_array_equal(simulated.values["input"], x)
    psum = _conv_nhwc(x, weight, model_layer.stride, model_layer.padding)
    np.testing.assert_array_equal(simulated.values["psum"], psum)
    np.testing.assert_array_equal(simulated.values["output"], np.maximum(psum, 0))
    # and the psums the simulator read are the float model's conv output, scaled
    recovered = simulated.values["psum"] * (model_layer.x_delta * model_layer.w_delta)
    y_float = model_layer.y_float.transpose(0, 2, 3, 1).astype(np.float64)
    assert np.abs(recovered - y_float).mean() < 1e-3


def test_a_changed_digit_is_seen_by_the_simulator(exported: Exported, tmp_path: Path) -> None:
    """The simulator reads the file it is given: one changed digit changes exactly one value."""
    entry = exported.files["weight"]
    original = exported.out_dir / entry["path"]
    lines = original.read_text(encoding="ascii").splitlines()
    row = int(entry["header_lines"]) + 5
    lines[row] = lines[row][:-1] + ("1" if lines[row][-1] == "0" else "0")
    changed = tmp_path / original.name
    changed.write_text("\n".join(lines) + "\n", encoding="ascii")
    words = _simulate(changed, entry["format"], int(entry["word_bits"]), int(entry["words"]), tmp_path)
    read = _shaped(_split_lanes(words, entry), entry).reshape(-1)
    (index,) = np.flatnonzero(read != decode_file(original, entry).reshape(-1))
    assert index == 5 * int(entry["lanes"])  # word 5's lowest bits: its first value, lsb_first


ODD = [
    # (id, spec): word_bits neither lanes * lane_bits nor a multiple of 4
    ("s5x3-in-18-lsb", PackSpec(5, 3, True, "lsb_first", 18)),
    ("s5x3-in-18-msb", PackSpec(5, 3, True, "msb_first", 18)),
    ("u3x4-in-13-msb", PackSpec(3, 4, False, "msb_first", 13)),
    ("s1x7-lsb", PackSpec(1, 7, True, "lsb_first")),
]


@pytest.mark.parametrize("radix", FORMATS)
@pytest.mark.parametrize("spec", [case[1] for case in ODD], ids=[case[0] for case in ODD])
def test_simulator_reads_odd_widths(spec: PackSpec, radix: str, tmp_path: Path) -> None:
    low, high = spec.value_range
    groups = -(-(high - low + 1) // spec.lanes)
    values = np.resize(np.arange(low, high + 1), groups * spec.lanes + 1)  # all, and a short group
    words = to_words(values, spec)
    mem = tmp_path / f"odd.{radix}"
    mem.write_text("// a header $readmem skips\n// and a second line\n" + format_words(words, spec, radix))
    entry: dict[str, Any] = {
        "lanes": spec.lanes,
        "lane_bits": spec.lane_bits,
        "signed": spec.signed,
        "lane_order": spec.lane_order,
    }
    printed = _simulate(mem, radix, spec.word_bits, words.shape[0], tmp_path)
    expected = [*values.tolist(), *[0] * (words.size - values.size)]
    assert _split_lanes(printed, entry) == expected
    entry |= {"format": radix, "shape": [values.size], "words": words.shape[0]}
    entry |= {"word_bits": spec.word_bits, "header_lines": 2}
    # decode_file reads a whole manifest entry through the schema
    entry |= {
        "path": mem.name,
        "tensor": "input",
        "axes": ["c"],
        "depth": words.shape[0],
        "fill": 0,
        "sha256": "",
    }
    assert decode_file(mem, entry).tolist() == values.tolist()
    text = mem.read_text(encoding="ascii")
    assert decode_memory_text(text, radix=radix, **{k: entry[k] for k in DECODER_KEYS}) == expected
