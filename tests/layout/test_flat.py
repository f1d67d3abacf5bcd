"""Issue 13, items 13 and 20: flat words never straddle pixels or kernel taps; pack refuses misfits.

Item 13: the flat layout pads each pixel's (and each kernel tap's) channels with zero lanes to a
multiple of the lanes, says so in the manifest (``channels``, ``padded_channels``), and
qexport.verify.decode drops the padding again. Every file is read a second way, by
tests/bitstring_decoder.py (no code shared with qexport), and checked lane by lane.

Item 20: pack.to_words / format_words / line_blocks / line_matrix / word_chars refuse values
their lanes cannot hold (out of range, not whole numbers, not numbers) with BitWidthError,
instead of wrapping (signed 4-bit [9, -9] -> "79") or truncating (1.7 -> 1).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bitstring_decoder import decode_memory_text

from qexport.api import SourceOptions, export, load
from qexport.errors import BitWidthError, InputError
from qexport.frontend.capture import capture
from qexport.ir.integerize import IntLayer, integerize
from qexport.layout.flat import TensorPlan
from qexport.layout.profile import parse_profile
from qexport.verify.check import check_set
from qexport.verify.compare import compare
from qexport.verify.decode import decode_file
from qexport.writer.manifest import file_entry
from qexport.writer.pack import PackSpec, format_words, line_blocks, line_matrix, to_words, word_chars
from qexport.writer.render import MemoryContext, render_memory
from qexport.writer.write import ExportPlan, write_hashed

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "vectors" / "tiny_vgg.pth.tar"
DECODER_KEYS = ("header_lines", "word_bits", "lanes", "lane_bits", "signed", "lane_order")


def _independent(path: Path, entry: dict[str, Any]) -> np.ndarray:
    """Every lane of every word of a hex/bin file, from the manifest alone: (words, lanes)."""
    radix = "hex" if entry["format"] == "hex" else "bin"
    values = decode_memory_text(path.read_text(), radix=radix, **{k: entry[k] for k in DECODER_KEYS})
    return np.array(values, dtype=np.int64).reshape(int(entry["words"]), int(entry["lanes"]))


def _real_and_padding(lanes: np.ndarray, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(words, lanes) -> the real tensor (``shape``) and the padding lanes, read the obvious way:
    every ``channels + padded_channels`` consecutive values are one pixel / tap."""
    shape = [int(s) for s in entry["shape"]]
    per_group = shape[-1] + int(entry.get("padded_channels", 0))
    groups = int(np.prod(shape[:-1]))
    flat = lanes.reshape(-1)
    assert not flat[groups * per_group :].any(), "lanes past the last group must be zero"
    grouped = flat[: groups * per_group].reshape(groups, per_group)
    return grouped[:, : shape[-1]].reshape(shape), grouped[:, shape[-1] :]


def _files(out: Path) -> dict[tuple[int, str], dict[str, Any]]:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return {(layer["index"], f["tensor"]): f for layer in manifest["layers"] for f in layer["files"]}


# --- item 13: the demo's layer 0 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_layer0(tmp_path_factory: pytest.TempPathFactory) -> tuple[IntLayer, Path]:
    """The demo's layer 0 integers straight from the model, and a flat hex export of that layer."""
    work = tmp_path_factory.mktemp("demo0")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)  # no ./data: the demo images
        loaded = load(SourceOptions())
        (tensors,) = [t for t in capture(loaded.model, loaded.inputs.images) if t.layer == 0]
        export(SourceOptions(), [0], work / "set", "hex")
    return integerize(tensors), work / "set"


def test_layer0_weight_words_hold_one_kernel_tap_each(demo_layer0: tuple[IntLayer, Path]) -> None:
    layer, out = demo_layer0
    entry = _files(out)[(0, "weight")]
    oc, ic = layer.w_int.shape[:2]
    assert (ic, entry["lanes"]) == (3, 8)
    # 3 input channels in 8 lanes: one word a tap, 9 words an output channel (was 216 words in all)
    assert entry["words"] == oc * 9 == 576
    assert (entry["channels"], entry["padded_channels"]) == (3, 5)
    assert entry["shape"] == [oc, 3, 3, 3] and entry["axes"] == ["oc", "kh", "kw", "ic"]
    lanes = _independent(out / entry["path"], entry)
    for word in (0, 1, 8, 9, 575):  # word = oc * 9 + kh * 3 + kw
        o, tap = divmod(word, 9)
        assert lanes[word, :3].tolist() == layer.w_int[o, :, tap // 3, tap % 3].tolist(), word
    assert not lanes[:, 3:].any(), "padding lanes are zero"
    real, _ = _real_and_padding(lanes, entry)
    assert np.array_equal(real, layer.w_int.transpose(0, 2, 3, 1))
    assert np.array_equal(decode_file(out / entry["path"], entry), real)


def test_layer0_input_words_hold_one_pixel_each(demo_layer0: tuple[IntLayer, Path]) -> None:
    layer, out = demo_layer0
    entry = _files(out)[(0, "input")]
    n, c, h, w = layer.x_int.shape
    assert (c, entry["lanes"], entry["padded"]) == (3, 8, False)
    assert entry["words"] == n * h * w == 1024  # one word a pixel (was 384)
    assert (entry["channels"], entry["padded_channels"]) == (3, 5)
    assert entry["shape"] == [n, h, w, 3]
    lanes = _independent(out / entry["path"], entry)
    for word in (0, 1, 31, 32, 33, 1023):  # word = y * 32 + x
        y, x = divmod(word, w)
        assert lanes[word, :3].tolist() == layer.x_int[0, :, y, x].tolist(), word
    assert not lanes[:, 3:].any(), "padding lanes are zero"
    decoded = decode_file(out / entry["path"], entry)
    assert decoded.shape == (n, h, w, 3)
    assert np.array_equal(decoded.transpose(0, 3, 1, 2), layer.x_int)


def test_layer0_one_lane_files_are_not_padded(demo_layer0: tuple[IntLayer, Path]) -> None:
    _, out = demo_layer0
    for tensor in ("psum", "output"):
        entry = _files(out)[(0, tensor)]
        assert entry["lanes"] == 1 and "padded_channels" not in entry and "channels" not in entry
        assert entry["words"] == int(np.prod(entry["shape"]))


def test_compare_and_check_see_the_real_channels(demo_layer0: tuple[IntLayer, Path], tmp_path: Path) -> None:
    layer, out = demo_layer0
    entry = _files(out)[(0, "input")]
    text = (out / entry["path"]).read_text()
    lines = text.split("\n")
    header = int(entry["header_lines"])
    spec = PackSpec(entry["lane_bits"], entry["lanes"], entry["signed"], entry["lane_order"])

    def with_word(index: int, lanes: list[int]) -> Path:
        changed = list(lines)
        changed[header + index] = format_words(np.array([lanes]), spec, "hex").strip()
        path = tmp_path / f"input_{index}.hex"
        path.write_text("\n".join(changed))
        return path

    # pixel (y=1, x=1) is word 33; its channel 1 changed
    pixel = layer.x_int[0, :, 1, 1].tolist()
    bumped = [pixel[0], pixel[1] + (1 if pixel[1] < 15 else -1), pixel[2], 0, 0, 0, 0, 0]
    report = compare(out, with_word(33, bumped), file=entry["path"])
    (diff,) = report.files[0].diffs
    assert diff.where == {"layer": 0, "n": 0, "y": 1, "x": 1, "channel": 1}
    # a nonzero padding lane breaks the contract: reported, but never as a real channel
    report = compare(out, with_word(33, [*pixel, 0, 0, 1, 0, 0]), file=entry["path"])
    (diff,) = report.files[0].diffs
    assert diff.where == {"layer": 0, "padding_lane": 33 * 8 + 5}
    # and `qexport check` regenerates the padded set byte for byte
    assert check_set(out, out.parent).identical


def test_profile_can_ask_for_words_that_straddle_pixels(tmp_path: Path) -> None:
    """``pad_channels = false`` (a flat profile key) gives back the old packing, unpadded."""
    profile = tmp_path / "packed.toml"
    profile.write_text(
        'name = "packed"\ndescription = "flat, channels packed across pixels"\nkind = "flat"\n'
        'format = "hex"\npad_channels = false\n'
    )
    export(SourceOptions(), [0], tmp_path / "set", "hex", profile=str(profile))
    files = _files(tmp_path / "set")
    weight, x = files[(0, "weight")], files[(0, "input")]
    assert (weight["words"], x["words"]) == (216, 384)
    assert "padded_channels" not in weight and "channels" not in x
    # a word holds channels of neighbouring pixels: word 0 = pixel 0's 3 channels, pixel 1's, 2 of pixel 2
    lanes = _independent(tmp_path / "set" / x["path"], x)
    decoded = decode_file(tmp_path / "set" / x["path"], x)
    assert lanes[0].tolist() == decoded.reshape(-1)[:8].tolist()
    assert lanes[0, 3:6].tolist() == decoded[0, 0, 1].tolist()
    # the built-in flat profile pads (its key, spelt out)
    assert "pad_channels = true" in (REPO / "templates" / "profiles" / "flat.toml").read_text()


@pytest.mark.parametrize("value", ["false", '"no"', "0"])
def test_pad_channels_profile_key_takes_booleans_only(value: str) -> None:
    text = f'name = "p"\ndescription = "d"\nkind = "flat"\nformat = "hex"\npad_channels = {value}\n'
    if value == "false":
        assert parse_profile(text, "profile p.toml").pad_channels is False
    else:
        with pytest.raises(
            InputError, match="profile p.toml: key 'pad_channels' = .*; expected true or false"
        ):
            parse_profile(text, "profile p.toml")


# --- item 13: the tiny checkpoint, every layer ---------------------------------------------------


def test_tiny_checkpoint_every_layer_round_trips(tmp_path: Path) -> None:
    shutil.copy(TINY, tmp_path / TINY.name)  # a relative path, so the recipe's check finds it
    out = tmp_path / "tiny"
    export(SourceOptions(checkpoint=Path(TINY.name)), None, out, "hex")
    files = _files(out)
    assert {index for index, _ in files} == {0, 4, 7, 9}
    for (index, tensor), entry in files.items():
        path = out / entry["path"]
        real, padding = _real_and_padding(_independent(path, entry), entry)
        assert not padding.any(), entry["path"]
        assert np.array_equal(decode_file(path, entry), real), entry["path"]
        channels = entry["shape"][-1]
        padded = index == 0 and tensor in ("weight", "input")  # the only channel count not a multiple of 8
        assert ("padded_channels" in entry) == padded, entry["path"]
        if padded:
            assert (entry["channels"], entry["padded_channels"]) == (3, 5)
        groups = int(np.prod(entry["shape"][:-1]))
        assert entry["words"] == groups * -(-channels // entry["lanes"]), entry["path"]
    assert check_set(out, tmp_path).identical


# --- item 13: every channel count, lanes 8 and 4 -------------------------------------------------


def _render(tp: TensorPlan, fmt: str) -> tuple[dict[str, Any], bytes]:
    plan = ExportPlan()
    ctx = MemoryContext("m", None, "flat", "0", "layer0", 0, fmt, "exact", None)
    rendered = render_memory(tp, ctx)
    entry = file_entry(tp, rendered.facts, write_hashed(plan, rendered.facts.path, rendered.content))
    return entry.to_json(), plan.files[entry.path]


CASES = [(c, lanes) for lanes in (8, 4) for c in range(1, 18)]


@pytest.mark.parametrize("radix", ["hex", "bin"])
@pytest.mark.parametrize("lane_order", ["lsb_first", "msb_first"])
@pytest.mark.parametrize(("channels", "lanes"), CASES, ids=[f"{c}ch-{lanes}lanes" for c, lanes in CASES])
def test_every_channel_count_round_trips(
    tmp_path: Path, channels: int, lanes: int, lane_order: str, radix: str
) -> None:
    rng = np.random.default_rng(channels * 10 + lanes)
    spec = PackSpec(4, lanes, True, lane_order)  # type: ignore[arg-type]
    # weights (oc, kh, kw, ic) and an input map (n, h, w, c): both pad their last axis
    for tensor, shape, axes in (
        ("weight", (2, 3, 3, channels), ("oc", "kh", "kw", "ic")),
        ("input", (1, 3, 5, channels), ("n", "h", "w", "c")),
    ):
        array = rng.integers(-8, 8, size=shape)
        tp = TensorPlan(tensor, f"t/{tensor}", array, axes, spec, pad_to=lanes)  # type: ignore[arg-type]
        entry, data = _render(tp, radix)
        path = tmp_path / f"{tensor}.{radix}"
        path.write_bytes(data)
        per_group = -(-channels // lanes) * lanes
        assert entry["shape"] == list(shape) and entry["axes"] == list(axes)
        assert entry["words"] == int(np.prod(shape[:-1])) * per_group // lanes
        if channels % lanes:
            assert (entry["channels"], entry["padded_channels"]) == (channels, per_group - channels)
        else:
            assert "channels" not in entry and "padded_channels" not in entry
        real, padding = _real_and_padding(_independent(path, entry), entry)
        assert np.array_equal(real, array)
        assert padding.shape[1] == per_group - channels and not padding.any()
        decoded = decode_file(path, entry)
        assert decoded.shape == shape and np.array_equal(decoded, array)


def test_a_damaged_padding_entry_is_refused(tmp_path: Path) -> None:
    spec = PackSpec(4, 8, False)
    tp = TensorPlan("input", "t/input", np.arange(6).reshape(1, 2, 3), ("n", "w", "c"), spec, pad_to=8)
    entry, data = _render(tp, "hex")
    (tmp_path / "input.hex").write_bytes(data)
    entry["channels"] = 4
    with pytest.raises(InputError, match="channels 4, padded_channels 5, but its shape .* ends in 3"):
        decode_file(tmp_path / "input.hex", entry)


# --- item 20: the public packers refuse what their lanes cannot hold -----------------------------

WIDTHS = [
    (1, False),
    (1, True),
    (4, False),
    (4, True),
    (5, True),
    (8, False),
    (8, True),
    (13, True),
    (32, False),
]


def _packers(spec: PackSpec) -> dict[str, Any]:
    """Each public function, given one word's lanes."""
    return {
        "to_words": lambda words: to_words(words.reshape(-1), spec),
        "format_words": lambda words: format_words(words, spec, "hex"),
        "line_matrix": lambda words: line_matrix(words, spec, "bin"),
        "word_chars": lambda words: word_chars(words, spec, "hex"),
        "line_blocks": lambda words: list(line_blocks(words, spec, "hex")),
    }


@pytest.mark.parametrize(("lane_bits", "signed"), WIDTHS, ids=[f"{'s' if s else 'u'}{b}" for b, s in WIDTHS])
def test_edges_min_minus_one_to_max_plus_one(lane_bits: int, signed: bool) -> None:
    spec = PackSpec(lane_bits, 2, signed)
    low, high = spec.value_range
    for name, pack in _packers(spec).items():
        pack(np.array([[low, high]]))  # min and max fit
        pack(np.array([[high, low]], dtype=np.float64))  # whole numbers as floats fit
        for value in (low - 1, high + 1):
            with pytest.raises(BitWidthError, match=rf"spans \[{min(value, low)}, {max(value, high)}\]"):
                pack(np.array([[value, low if value > high else high]]))
            with pytest.raises(BitWidthError, match=rf"{spec.describe()} holds \[{low}, {high}\]"):
                pack(np.array([[value, 0]]))
        assert name  # every packer was tried


def test_the_issue_examples_are_refused() -> None:
    spec = PackSpec(4, 2, True)
    with pytest.raises(
        BitWidthError, match=r"format_words: the words array spans \[-9, 9\]; signed 4-bit holds"
    ):
        format_words(np.array([[9, -9]]), spec, "hex")  # was "79"
    with pytest.raises(
        BitWidthError, match=r"to_words: the array holds 1.7 \(value 0 in C order\), not a whole"
    ):
        to_words(np.array([1.7, 0.0]), spec)  # was [[1, 0]]
    with pytest.raises(BitWidthError, match="holds 1.7"):
        format_words(np.array([[1.7, 0.0]]), spec, "hex")


def test_whole_floats_pack_as_integers() -> None:
    spec = PackSpec(4, 4, True)
    words = to_words(np.array([2.0, -3.0, 7.0, -8.0, 1.0]), spec)
    assert words.dtype.kind == "i" and words.tolist() == [[2, -3, 7, -8], [1, 0, 0, 0]]
    assert format_words(np.array([[1.0, -2.0, 3.0, 0.0]]), spec, "hex") == "03e1\n"
    assert to_words(np.zeros(0), spec).shape == (0, 4)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([np.nan, 1.0]), "holds NaN"),
        (np.array([np.inf, 1.0]), r"spans \[1.0, inf\]"),
        (np.array([-20.0, 1.0]), r"spans \[-20.0, 1.0\]; signed 4-bit holds \[-8, 7\]"),
        (np.array([True, False]), "is of dtype bool; signed 4-bit lanes take integers"),
        (np.array([1 + 0j, 2]), "is of dtype complex128"),
        (np.array([1, 2], dtype=object), "is of dtype object"),
    ],
    ids=["nan", "inf", "float-out-of-range", "bool", "complex", "object"],
)
def test_not_integers_are_refused(values: np.ndarray, message: str) -> None:
    spec = PackSpec(4, 2, True)
    with pytest.raises(BitWidthError, match=message):
        to_words(values, spec)
    with pytest.raises(BitWidthError, match=message):
        format_words(values.reshape(1, 2), spec, "bin")


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint64"])
def test_narrow_dtypes_are_checked_too(dtype: str) -> None:
    spec = PackSpec(4, 2, True)
    high = np.array([[8, 0]], dtype=dtype)
    with pytest.raises(BitWidthError, match=r"spans \[0, 8\]"):
        format_words(high, spec, "hex")
    # a dtype whose whole range fits needs no pass over the values
    assert format_words(np.array([[-128, 127]], dtype="int8"), PackSpec(8, 2, True), "hex") == "7f80\n"


def test_words_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(BitWidthError, match=r"words of shape \(1, 3\); expected \(words, 2 lanes\)"):
        format_words(np.array([[1, 2, 3]]), PackSpec(4, 2, True), "hex")


def test_check_false_is_the_unchecked_fast_path() -> None:
    """For values already checked (the export path checks once, in to_words): no second pass."""
    spec = PackSpec(4, 2, True)
    assert format_words(np.array([[9, -9]]), spec, "hex", check=False) == "79\n"
    assert to_words(np.array([1.7]), spec, check=False).tolist() == [[1, 0]]
