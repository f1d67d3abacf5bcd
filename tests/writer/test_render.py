"""Issue 13, items 5 and 6: [names] patterns are checked when a profile loads; a memory template
owns its file's whole shape (header tokens, each word's line) and must show its words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qexport import __version__
from qexport.cli.main import main
from qexport.errors import BitWidthError, InputError
from qexport.layout.flat import TensorPlan
from qexport.layout.placement import Placement
from qexport.layout.profile import parse_profile
from qexport.verify.decode import decode_file
from qexport.writer import formats, pack
from qexport.writer import render as render_module
from qexport.writer.formats import FORMATS
from qexport.writer.manifest import RenderedFacts, file_entry
from qexport.writer.pack import PackSpec
from qexport.writer.render import MemoryContext, render_memories, render_memory
from qexport.writer.write import ExportPlan, write_hashed

# --- item 5: file-name patterns -------------------------------------------------------------


def _course_with(line: str, replacement: str) -> str:
    """The course profile in its [names] form with ``line`` replaced (the [names] patterns' checks)."""
    source = (Path(__file__).parent / "names_course.toml").read_text()
    assert line in source
    return source.replace(line, replacement)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("act_{b}", r"uses unknown placeholder \{b\}; valid placeholders for activation are \{a\}"),
        ("act_{", r"is not a valid pattern \(Single '\{' encountered"),
        ("act_}", r"is not a valid pattern \(Single '\}' encountered"),
        ("act_{a!x}", r"placeholder \{a!x\} has a conversion; write \{a\}"),
        ("act_{}", r"uses a positional placeholder \{\}; name it: valid placeholders for activation"),
        ("act_{0}", r"uses a positional placeholder \{0\}"),
        ("act_{a.real}", r"uses unknown placeholder \{a.real\}"),
        ("act_{a:{b}}", r"uses unknown placeholder \{b\}"),
        ("act_{a:s}", r"cannot be formatted with integer placeholders \(Unknown format code 's'"),
    ],
    ids=[
        "unknown",
        "open-brace",
        "close-brace",
        "conversion",
        "positional",
        "index",
        "attribute",
        "nested",
        "spec",
    ],
)
def test_a_bad_activation_pattern_is_refused_naming_key_and_placeholders(pattern: str, message: str) -> None:
    text = _course_with('activation = "activation_tile{a}"', f'activation = "{pattern}"')
    with pytest.raises(InputError, match=r"^profile mine\.toml: \[names\] activation = .*" + message):
        parse_profile(text, "profile mine.toml")


@pytest.mark.parametrize(
    ("key", "line", "pattern", "message"),
    [
        ("weight", 'weight = "weight_itile{i}_otile{o}_kij{k}"', "w{i}{o}{a}", r"\{i\} .*, \{o\} .*, \{k\} "),
        ("psum", 'psum = "psum_tile{s}_itile{i}_otile{o}"', "p{s}{k}", r"\{s\} .*, \{i\} .*, \{o\} "),
        ("output_tiled", 'output_tiled = "out_tile{s}_otile{o}"', "o{i}", r"\{s\} .*, \{o\} "),
        ("output", 'output = "out"', "out{s}", r"output names a single file and takes only \{layer\}"),
        ("address", 'address = "acc_address"', "acc{x}", r"uses unknown placeholder \{x\}; address names"),
        ("weight", 'weight = "weight_itile{i}_otile{o}_kij{k}"', "w{layer:02d}", r"cannot be formatted"),
    ],
    ids=["weight", "psum", "output_tiled", "output", "address", "layer-spec"],
)
def test_each_key_lists_its_own_placeholders(key: str, line: str, pattern: str, message: str) -> None:
    text = _course_with(line, f'{key} = "{pattern}"')
    with pytest.raises(InputError, match=rf"\[names\] {key} = .*{message}"):
        parse_profile(text, "profile mine.toml")


def test_every_name_pattern_may_name_the_layer(tmp_path: Path) -> None:
    from qexport import api

    text = _course_with('output = "out"', 'output = "{layer}_out"')
    text = text.replace('address = "acc_address"', 'address = "acc_{layer}"')
    prof = parse_profile(text.replace('name = "course"', 'name = "mine"'), "mine")
    result = api.export(api.SourceOptions(), [33], tmp_path / "set", profile=prof)
    paths = {f.path for f in result.manifest.layers[0].files}
    assert {"layer33/layer33_out.txt", "layer33/acc_layer33.txt"} <= paths


def test_placeholders_with_a_format_spec_are_fine() -> None:
    text = _course_with('weight = "weight_itile{i}_otile{o}_kij{k}"', 'weight = "w{i:02d}_{o:02d}_{k}"')
    assert parse_profile(text, "test").names["weight"] == "w{i:02d}_{o:02d}_{k}"


def test_cli_unknown_placeholder_is_exit_2_naming_the_profile_file(tmp_path: Path) -> None:
    profile = tmp_path / "mine.toml"
    profile.write_text(_course_with('activation = "activation_tile{a}"', 'activation = "act_{b}"'))
    result = CliRunner().invoke(main, ["dump", "--layer", "33", "--profile", str(profile), "-o", "out"])
    assert result.exit_code == 2, result.output
    assert (
        f"profile {profile}: [names] activation = 'act_{{b}}' uses unknown placeholder {{b}}" in result.output
    )
    assert "valid placeholders for activation are {a}" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


# --- item 6: templates own their words' syntax ----------------------------------------------


def _plan(words: int = 5, lanes: int = 2, bits: int = 8, tensor: str = "weight") -> TensorPlan:
    spec = PackSpec(bits, lanes, True)
    low, high = spec.value_range
    values = np.random.default_rng(words).integers(low, high + 1, size=(1, words * lanes))
    values[0, :2] = [low, high]
    return TensorPlan(tensor, f"layer33/{tensor}", values, ("n", "c"), spec)  # type: ignore[arg-type]


def _rendered(
    fmt: str, template_dir: Path | None = None, tp: TensorPlan | None = None
) -> tuple[str, dict[str, object]]:
    tp = tp or _plan()
    ctx = MemoryContext(
        "VGG16_quant_gradual", "demo, untrained", "flat", "33", "layer33", 10, fmt, "exact", template_dir
    )
    sink = ExportPlan()
    rendered = render_memory(tp, ctx)
    entry = file_entry(tp, rendered.facts, write_hashed(sink, rendered.facts.path, rendered.content))
    return sink.files[entry.path].decode("ascii"), entry.to_json()


def _template(root: Path, name: str, text: str) -> Path:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    return root


def _data_lines(text: str, entry: dict[str, object]) -> list[str]:
    return text.split("\n")[int(entry["header_lines"]) :][: int(entry["depth"])]  # type: ignore[call-overload]


def test_coe_word_separator_comes_from_the_template(tmp_path: Path) -> None:
    # COE also takes words separated by white space: no commas, `;` after the last
    tpl = _template(
        tmp_path,
        "coe/memory.coe.j2",
        '{% macro word(digits, last) %}{{ digits }}{{ ";" if last else "" }}{% endmacro %}\n'
        "memory_initialization_radix=16;\nmemory_initialization_vector=\n{{ body }}\n",
    )
    default, entry = _rendered("coe")
    text, mine = _rendered("coe", tpl)
    words = [line.rstrip(",;") for line in _data_lines(default, entry)]
    assert mine["header_lines"] == 2
    assert _data_lines(text, mine) == [*words[:-1], words[-1] + ";"]
    assert text == "memory_initialization_radix=16;\nmemory_initialization_vector=\n" + (
        "\n".join(words) + ";\n"
    )


def test_mif_word_line_comes_from_the_template(tmp_path: Path) -> None:
    tpl = _template(
        tmp_path,
        "mif/memory.mif.j2",
        "{% macro word(address, digits) %}[{{ address }}] : {{ digits }} ;{% endmacro %}\n"
        "CONTENT BEGIN\n{{ body }}\nEND;\n",
    )
    default, entry = _rendered("mif", tp=_plan(words=20))
    text, mine = _rendered("mif", tpl, _plan(words=20))
    words = [line.split(":")[1].strip(" ;") for line in _data_lines(default, entry)]
    assert _data_lines(text, mine) == [f"[{k:02x}] : {w} ;" for k, w in enumerate(words)]
    assert text.endswith(" ;\nEND;\n")


def test_c_array_element_syntax_comes_from_the_template(tmp_path: Path) -> None:
    tpl = _template(
        tmp_path,
        "h/memory.h.j2",
        '{% macro word(limbs, last) %}    UINT32_C(0x{{ limbs[0] }}){{ "" if last else "," }}{% endmacro %}\n'
        "{{ body }}\n",
    )
    text, entry = _rendered("h", tpl)
    default, default_entry = _rendered("h")
    words = [line.strip(" ,").removeprefix("0x") for line in _data_lines(default, default_entry)]
    assert text == ",\n".join(f"    UINT32_C(0x{w})" for w in words) + "\n"


def test_wide_c_words_are_limbs_least_significant_first() -> None:
    tp = TensorPlan("weight", "layer33/weight", np.array([[1, -1, 2]]), ("n", "c"), PackSpec(30, 3, True))
    text, entry = _rendered("h", tp=tp)
    # 90 bits: lane 0 = 1 in bits 29:0, lane 1 = -1 in 59:30, lane 2 = 2 in 89:60
    word = 1 | ((1 << 30) - 1) << 30 | 2 << 60
    limbs = ", ".join(f"0x{(word >> (32 * k)) & 0xFFFFFFFF:08x}" for k in range(3))
    assert _data_lines(text, entry) == [f"    {{{limbs}}}"]


def test_txt_header_tokens_come_from_the_template(tmp_path: Path) -> None:
    default, _ = _rendered("txt")
    assert default.split("\n")[:3] == [
        f"#qexport_{__version__}_do_not_edit#",
        "#VGG16_quant_gradual_demo_untrained#",
        "#layer33_weight#",
    ]
    tpl = _template(
        tmp_path,
        "txt/memory.txt.j2",
        "#{{ 'my core, rev b' | token }}#\n#{{ model | token }}_L{{ layer }}#\n{{ body }}\n",
    )
    text, entry = _rendered("txt", tpl)
    assert text.split("\n")[:2] == ["#my_core_rev_b#", "#VGG16_quant_gradual_L33#"]
    assert entry["header_lines"] == 2
    assert text.split("\n")[2:] == default.split("\n")[3:]


def test_header_lines_count_the_lines_before_the_words_whatever_follows_them(tmp_path: Path) -> None:
    tpl = _template(tmp_path, "hex/memory.hex.j2", "// mine\n{{ body }}\n// end of words\n// really\n")
    text, entry = _rendered("hex", tpl)
    assert entry["header_lines"] == 1
    path = tmp_path / "weight.hex"
    path.write_text(text)
    assert np.array_equal(decode_file(path, entry), _plan().array)


@pytest.mark.parametrize(
    ("fmt", "tensor"),
    [
        ("hex", "weight"),
        ("bin", "weight"),
        ("txt", "weight"),
        ("txt", "address"),
        ("coe", "weight"),
        ("mif", "weight"),
        ("h", "weight"),
    ],
    ids=["hex", "bin", "txt", "txt-address", "coe", "mif", "h"],
)
def test_a_memory_template_without_the_body_is_refused(tmp_path: Path, fmt: str, tensor: str) -> None:
    name = "txt/address.txt.j2" if tensor == "address" else f"{fmt}/memory.{fmt}.j2"
    tpl = _template(tmp_path, name, "// {{ words }} words, no data\n")
    with pytest.raises(InputError, match=r"^template " + name + r" \(.*" + name + r"\) does not show"):
        _rendered(fmt, tpl, _plan(tensor=tensor))


def test_cli_template_without_the_body_is_exit_2_naming_it(tmp_path: Path) -> None:
    tpl = _template(tmp_path / "tpl", "coe/memory.coe.j2", "memory_initialization_radix=16;\n")
    result = CliRunner().invoke(
        main, ["dump", "--layer", "33", "--format", "coe", "--template-dir", str(tpl), "-o", "out"]
    )
    assert result.exit_code == 2, result.output
    path = tpl / "coe" / "memory.coe.j2"
    assert f"template coe/memory.coe.j2 ({path}) does not show the words" in result.output
    assert "must contain {{ body }}" in result.output
    assert "Traceback" not in result.output and "StopIteration" not in result.output


@pytest.mark.parametrize(
    ("macro", "message"),
    [
        ("{{ digits | upper }}", "changes a field"),
        ("{{ digits[1:] }}", "changes a field"),
        ("{{ digits }},\n", "must give one line"),
        ("{{ digits }}\u00b5", "must give one line of ASCII"),
    ],
    ids=["filter", "slice", "newline", "not-ascii"],
)
def test_a_word_macro_that_is_not_one_line_of_its_fields_is_refused(
    tmp_path: Path, macro: str, message: str
) -> None:
    tpl = _template(
        tmp_path, "coe/memory.coe.j2", f"{{% macro word(digits) %}}{macro}{{% endmacro %}}\n{{{{ body }}}}\n"
    )
    with pytest.raises(InputError, match=r"^template coe/memory.coe.j2 \(.*\): macro word " + message):
        _rendered("coe", tpl)


def test_a_word_macro_with_an_unknown_argument_is_refused(tmp_path: Path) -> None:
    tpl = _template(
        tmp_path, "mif/memory.mif.j2", "{% macro word(data) %}{{ data }}{% endmacro %}{{ body }}\n"
    )
    with pytest.raises(
        InputError, match="macro word takes data; it may take only digits, address, limbs, last"
    ):
        _rendered("mif", tpl)


def test_a_template_with_a_syntax_error_is_named_with_its_line(tmp_path: Path) -> None:
    tpl = _template(tmp_path, "hex/memory.hex.j2", "// ok\n{{ body }\n")
    result = CliRunner().invoke(main, ["dump", "--layer", "33", "--template-dir", str(tpl), "-o", "out"])
    assert result.exit_code == 2, result.output
    assert f"template hex/memory.hex.j2 ({tpl / 'hex' / 'memory.hex.j2'}, line 2) is not valid Jinja" in (
        result.output
    )


@pytest.mark.parametrize("fmt", ["hex", "txt", "coe", "mif", "h"])
def test_bodies_made_a_few_lines_at_a_time_are_the_same(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    tp = _plan(words=300, lanes=3, bits=30)  # 90-bit words: limbs in C
    whole, entry = _rendered(fmt, tp=tp)
    monkeypatch.setattr(formats, "_BLOCK_BYTES", 64)
    monkeypatch.setattr(pack.text, "_BLOCK_BYTES", 64)
    blocks, block_entry = _rendered(fmt, tp=tp)
    assert blocks == whole
    assert block_entry == entry
    assert len(_data_lines(whole, entry)) == 300


def test_a_word_that_is_not_a_macro_is_refused(tmp_path: Path) -> None:
    tpl = _template(tmp_path, "coe/memory.coe.j2", '{% set word = "x" %}\n{{ body }}\n')
    with pytest.raises(InputError, match=r"`word` must be a macro: \{% macro word\(digits, last\) %\}"):
        _rendered("coe", tpl)


def test_a_name_pattern_that_gives_two_files_one_name_is_refused(tmp_path: Path) -> None:
    # "w{i}{o}" leaves out {k}: all nine kernel taps would be written to one file, the last one winning
    text = _course_with('weight = "weight_itile{i}_otile{o}_kij{k}"', 'weight = "w{i}{o}"')
    mine = tmp_path / "mine.toml"
    mine.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["dump", "--layer", "33", "--profile", str(mine), "-o", str(out)])
    assert result.exit_code == 2, result.output
    # the pattern is refused when the profile is read, before anything is written
    assert (
        "[files.weight] name = 'w{i}{o}' does not tell its files apart: add {kij} (or {a})" in result.output
    )
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mine.toml"]  # no staging folder left either


# --- issue 18 item 4: many small files, rendered a group at a time ------------------------------

BATCH_PROPERTY = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _tiles(
    count: int, spec: PackSpec, shape: tuple[int, ...], seed: int, pad_to: int = 1, tensor: str = "weight"
) -> list[TensorPlan]:
    """``count`` tile files of one kind, as a systolic layout hands them over (own name and place)."""
    low, high = spec.value_range
    rng = np.random.default_rng(seed)
    return [
        TensorPlan(
            tensor,  # type: ignore[arg-type]
            f"layer33/{tensor}_itile{k}_otile{k % 3}_kij{k % 9}",
            rng.integers(low, high + 1, size=shape),
            tuple("nhwc"[-len(shape) :]),
            spec,
            padded=True if tensor == "input" else None,
            where=Placement(itile=k, otile=k % 3, kij=k % 9, ic=(8 * k, 8 * k + 8), oc=(0, 8)),
            pad_to=pad_to,
        )
        for k in range(count)
    ]


def _context(fmt: str, depth: str = "exact", template_dir: Path | None = None) -> MemoryContext:
    return MemoryContext(
        "VGG16_quant_gradual",
        "demo, untrained",
        "course",
        "33",
        "layer33",
        10,
        fmt,
        depth,
        template_dir,  # type: ignore[arg-type]
    )


def _alone(tp: TensorPlan, ctx: MemoryContext) -> tuple[bytes, RenderedFacts]:
    rendered = render_memory(tp, ctx)
    return b"".join(bytes(chunk) for chunk in rendered.content), rendered.facts


def _batched(tps: list[TensorPlan], ctx: MemoryContext) -> list[tuple[bytes, RenderedFacts]]:
    out = []
    for rendered in render_memories(tps, ctx):
        content = rendered.content
        out.append((content if isinstance(content, bytes) else b"".join(map(bytes, content)), rendered.facts))
    return out


@st.composite
def _tile_groups(draw: st.DrawFn) -> tuple[list[TensorPlan], MemoryContext]:
    """Two kinds of tiles, interleaved, of any spec, in every format, exact or pow2 depth."""
    bits = draw(st.integers(1, 33))
    lanes = draw(st.integers(1, 9))
    order = draw(st.sampled_from(["lsb_first", "msb_first"]))
    spec = PackSpec(bits, lanes, draw(st.booleans()), order)  # type: ignore[arg-type]
    shape = (1, draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 9)))
    pad_to = draw(st.sampled_from([1, lanes]))
    first = _tiles(draw(st.integers(2, 6)), spec, shape, draw(st.integers(0, 99)), pad_to, "input")
    second = _tiles(draw(st.integers(1, 4)), spec, shape[1:], 7, 1, "weight")
    tps = first + second
    perm = draw(st.permutations(range(len(tps))))
    fmt = draw(st.sampled_from(FORMATS))
    return [tps[k] for k in perm], _context(fmt, draw(st.sampled_from(["exact", "pow2"])))


@BATCH_PROPERTY
@given(_tile_groups())
def test_batched_rendering_equals_rendering_each_file_alone(
    case: tuple[list[TensorPlan], MemoryContext],
) -> None:
    """Every format, header, spec and lane order: a group's files are byte for byte (and fact for
    fact) what render_memory makes of each, in the order given."""
    tps, ctx = case
    assert _batched(tps, ctx) == [_alone(tp, ctx) for tp in tps]


@pytest.mark.parametrize("fmt", ["txt", "hex", "bin", "coe", "mif"])
def test_a_group_renders_its_template_once_and_checks_it_on_its_first_file(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-file values go in after one render: render_memory runs once a group (the check)."""
    tps = _tiles(40, PackSpec(4, 8, True), (8, 8), 1) + _tiles(30, PackSpec(16, 8, True), (1, 4, 4, 8), 2)
    ctx = _context(fmt)
    expected = [_alone(tp, ctx) for tp in tps]
    calls = []

    def counted(tp: TensorPlan, ctx: MemoryContext) -> object:
        calls.append(tp.stem)
        return render_memory(tp, ctx)

    monkeypatch.setattr(render_module, "render_memory", counted)
    assert _batched(tps, ctx) == expected
    assert calls == [tps[0].stem, tps[40].stem]


_PER_FILE_TEMPLATES = {
    "compares": "{% if name == 'weight_itile3_otile0_kij3' %}third{% endif %}#{{ name }}\n{{ body }}\n",
    "filters": "#{{ name | upper }}#{{ where | length }}#{{ name[:9] }}#\n{{ body }}\n",
    "methods": "#{{ name.replace('_', '-') }}#{{ name.startswith('weight_itile1') }}#\n{{ body }}\n",
    "iterates": "#{% for c in name %}{{ c }}.{% endfor %}#{{ (name ~ where) | wordcount }}\n{{ body }}\n",
    "concatenates": "#{{ 'x' + name + 'y' }}#{{ c_name ~ '_' ~ where }}#\n{{ body }}\n",
    "formats": "#{{ '%-30s|' | format(name) }}#{{ name | truncate(12) }}\n{{ body }}\n",
    "twice": "#{{ name }}\n{{ body }}\n--\n{{ body }}\n{{ where }}\n",
}


@pytest.mark.parametrize("use", sorted(_PER_FILE_TEMPLATES))
def test_a_template_that_does_more_than_show_a_per_file_value_gives_each_file_its_own_outcome(
    use: str, tmp_path: Path
) -> None:
    """Comparisons, filters, methods, loops, string formatting: whatever a template does with
    ``name`` or ``where``, each file's bytes are those it would have alone."""
    root = _template(tmp_path, "txt/memory.txt.j2", _PER_FILE_TEMPLATES[use])
    tps = _tiles(12, PackSpec(4, 8, True), (8, 8), 3)
    ctx = _context("txt", template_dir=root)
    assert _batched(tps, ctx) == [_alone(tp, ctx) for tp in tps]


def test_a_value_that_does_not_fit_in_a_group_is_refused_naming_it_as_alone(tmp_path: Path) -> None:
    tps = _tiles(5, PackSpec(4, 8, True), (8, 8), 4)
    tps[3].array[2, 5] = 9
    with pytest.raises(BitWidthError, match=r"spans \[-?\d+, 9\]; signed 4-bit holds \[-8, 7\]"):
        list(render_memories(tps, _context("txt")))


def test_a_group_larger_than_a_window_is_made_in_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_module, "_WINDOW_WORDS", 20)
    tps = _tiles(25, PackSpec(4, 8, True), (8, 8), 5)
    ctx = _context("hex")
    assert _batched(tps, ctx) == [_alone(tp, ctx) for tp in tps]
