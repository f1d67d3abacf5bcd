"""Issue 13, items 14-17: one folder layout for every set, `check` on mixed paths, a checkpoint
`check` finds from any folder, and overflow messages that name both widths."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from qexport.api import SourceOptions, export
from qexport.cli.main import main
from qexport.errors import BitWidthError
from qexport.layout.profile import load_profile, parse_profile
from qexport.verify.decode import decode_file

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "vectors" / "tiny_vgg.pth.tar"


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


# --- item 14: a set is manifest.json + layer<index>/ for every profile and layer count ---------


@pytest.mark.parametrize(
    ("profile", "layers"),
    [("flat", [33]), ("flat", [33, 35]), ("course", [33]), ("course", [33, 35]), ("course-os", [33])],
    ids=["flat-one", "flat-two", "course-one", "course-two", "course-os-one"],
)
def test_every_set_is_a_manifest_and_a_folder_a_layer(
    tmp_path: Path, profile: str, layers: list[int]
) -> None:
    out = tmp_path / "set"
    result = export(SourceOptions(), layers, out, profile=profile)
    top = {"manifest.json", "qexport_vectors_pkg.sv"}
    assert {p.name for p in out.iterdir()} == top | {f"layer{i}" for i in layers}
    for entry in result.manifest.layers:
        paths = {f.path for f in entry.files}
        assert all(p.startswith(f"layer{entry.index}/") and p.count("/") == 1 for p in paths)
        on_disk = {p.relative_to(out).as_posix() for p in (out / f"layer{entry.index}").iterdir()}
        assert on_disk == paths


@pytest.mark.parametrize(
    "args",
    [
        ["--layer", "33"],
        ["--layer", "33", "--profile", "course"],
        ["--layer", "33,35", "--profile", "course"],
    ],
    ids=["flat", "course", "course-two-layers"],
)
def test_dump_prints_the_real_paths(args: list[str]) -> None:
    code, output = _invoke("dump", *args)
    assert code == 0, output
    layers = args[1].split(",")
    default = Path("qexport-out") / ("layer" + "_".join(layers))
    assert f"to the vector set {default}:" in output
    assert f"manifest  {default / 'manifest.json'}" in output
    assert (default / "manifest.json").is_file()
    assert f"package   {default / 'qexport_vectors_pkg.sv'}  (" in output
    assert (default / "qexport_vectors_pkg.sv").is_file()
    for layer in layers:
        match = re.search(rf"layer {layer}\s+(\S+)/  (\d+) files", output)
        assert match, output
        folder = Path(match[1])
        assert folder == default / f"layer{layer}"
        assert len(list(folder.iterdir())) == int(match[2])
    assert "input.hex, output.hex, psum.hex, weight.hex" in output or "course" in args


def test_testbench_says_where_its_vectors_are_and_still_passes(tmp_path: Path) -> None:
    out = tmp_path / "tb33"
    code, output = _invoke("testbench", "--layer", "33", "-o", str(out))
    assert code == 0, output
    vectors = out / "vectors" / "layer33"
    assert f"(vectors in {vectors}/)" in output
    assert (vectors / "out.hex").is_file() and (vectors / "activation_tile0.hex").is_file()
    assert {p.name for p in out.iterdir()} == {
        "manifest.json",
        "qexport_vectors_pkg.sv",
        "vectors",
        "tb.sv",
        "qexport_ref_core.v",
        "run_iverilog.sh",
        "run_verilator.sh",
        "run_cocotb.sh",
        "cocotb_tb.py",
    }
    # the rendered bench reads the layer folder, and compare finds the golden file by path or name
    assert '"vectors/layer33/out.hex"' in (out / "tb.sv").read_text()
    shutil.copy(vectors / "out.hex", tmp_path / "sim.hex")
    for name in ("vectors/layer33/out.hex", "out.hex"):
        code, output = _invoke("compare", str(out), str(tmp_path / "sim.hex"), "--file", name)
        assert code == 0, output
        assert "vectors/layer33/out.hex (layer 33, matched by --file): identical" in output


# --- item 15: check on a glob that catches files ------------------------------------------------


def test_check_help_example_is_a_folder_glob() -> None:
    code, output = _invoke("check", "--help")
    assert code == 0
    assert "qexport check vectors/*/" in output


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sets")
    export(SourceOptions(), [33], base / "flat33")
    (base / "README.md").write_text("# not a set\n")
    (base / "notes").mkdir()
    return base


def test_check_skips_a_non_set_among_several(small_set: Path) -> None:
    readme, notes, good = small_set / "README.md", small_set / "notes", small_set / "flat33"
    code, output = _invoke("check", str(readme), str(good), str(notes))
    assert code == 0, output
    assert f"skipped {readme}: not a vector set (no manifest.json)" in output
    assert f"skipped {notes}: not a vector set (no manifest.json)" in output
    assert f"{good}: identical" in output


def test_check_of_nothing_fails(small_set: Path) -> None:
    code, output = _invoke("check", str(small_set / "README.md"), str(small_set / "notes"))
    assert code == 2
    assert "no vector set among the given paths" in output
    assert "identical" not in output


@pytest.mark.parametrize("name", ["README.md", "notes", "."], ids=["file", "empty-folder", "parent"])
def test_check_of_a_lone_non_set_names_it(small_set: Path, name: str) -> None:
    path = small_set / name
    code, output = _invoke("check", str(path))
    assert code == 2
    assert f"{path} is not a vector set (no manifest.json)" in output
    if name == ".":  # a folder of sets: say how to check them
        assert f"give {path.as_posix()}/*/" in output


def test_check_of_a_missing_path_fails(small_set: Path) -> None:
    code, output = _invoke("check", str(small_set / "flat33"), str(small_set / "nope"))
    assert code == 2
    assert f"{small_set / 'nope'} does not exist" in output


# --- item 16: the checkpoint is recorded so `check` finds it from anywhere ----------------------


def _dump_tiny(checkpoint: Path, out: Path) -> dict[str, object]:
    code, output = _invoke("dump", "--layer", "4", "--checkpoint", str(checkpoint.absolute()), "-o", str(out))
    assert code == 0, output
    recipe: dict[str, object] = json.loads((out / "manifest.json").read_text())["recipe"]
    return recipe


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_absolute_checkpoint_inside_the_tree_is_recorded_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "work"
    (tree / "models").mkdir(parents=True)
    ckpt = tree / "models" / "tiny.pth.tar"
    shutil.copy(TINY, ckpt)
    recipe = _dump_tiny(ckpt, tree / "tiny4")
    source = recipe["source"]
    assert isinstance(source, dict)
    # no git repository here: the set's parent folder is the tree
    assert source["checkpoint"] == {"path": "../models/tiny.pth.tar", "sha256": _sha256(ckpt)}
    assert "--checkpoint models/tiny.pth.tar" in str(recipe["command"])
    assert str(tmp_path) not in json.dumps(recipe)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, output = _invoke("check", str(tree / "tiny4"))
    assert code == 0, output
    # the whole tree moved: still found, relative to the manifest
    shutil.move(tree, tmp_path / "moved")
    code, output = _invoke("check", str(tmp_path / "moved" / "tiny4"))
    assert code == 0, output


def test_checkpoint_in_a_git_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "result").mkdir()
    ckpt = repo / "result" / "tiny.pth.tar"
    shutil.copy(TINY, ckpt)
    recipe = _dump_tiny(ckpt, repo / "vectors" / "tiny4")
    source = recipe["source"]
    assert isinstance(source, dict) and isinstance(source["checkpoint"], dict)
    assert source["checkpoint"]["path"] == "../../result/tiny.pth.tar"
    assert "--checkpoint result/tiny.pth.tar" in str(recipe["command"])
    monkeypatch.chdir(repo / "vectors")
    code, output = _invoke("check", "tiny4")
    assert code == 0, output


def test_checkpoint_outside_the_tree_is_recorded_absolute_and_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()
    ckpt = tmp_path / "models" / "tiny.pth.tar"
    shutil.copy(TINY, ckpt)
    out = tmp_path / "sets" / "deep" / "tiny4"
    recipe = _dump_tiny(ckpt, out)
    source = recipe["source"]
    assert isinstance(source, dict)
    sha = _sha256(ckpt)
    assert source["checkpoint"] == {"path": ckpt.resolve().as_posix(), "sha256": sha}
    monkeypatch.chdir(tmp_path / "sets")
    code, output = _invoke("check", str(out))
    assert code == 0, output

    # changed: exit 2 naming the path and the sha256 the set was made from
    original = ckpt.read_bytes()
    ckpt.write_bytes(original + b"\0")
    code, output = _invoke("check", str(out))
    assert code == 2
    assert f"checkpoint {ckpt.resolve()} has changed since the set was made" in output
    assert f"expected {sha}" in output and _sha256(ckpt) in output

    # moved away: exit 2 naming where it was expected
    ckpt.write_bytes(original)
    ckpt.rename(tmp_path / "models" / "moved.pth.tar")
    code, output = _invoke("check", str(out))
    assert code == 2
    assert f"checkpoint {ckpt.resolve()}" in output and "does not exist" in output and sha in output


def test_an_older_recipe_with_the_checkpoint_as_typed_still_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(TINY, tmp_path / "tiny.pth.tar")
    monkeypatch.chdir(tmp_path)
    _dump_tiny(tmp_path / "tiny.pth.tar", tmp_path / "set")
    manifest_path = tmp_path / "set" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["recipe"]["source"]["checkpoint"] = "tiny.pth.tar"  # as qexport <= 0.1 wrote it
    manifest_path.write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")
    code, output = _invoke("check", "set")
    assert code == 0, output


# --- item 17: overflow messages say what the values need and what the worst case needs ---------


def test_flat_overflow_names_the_needed_and_the_worst_case_width(tmp_path: Path) -> None:
    result = export(SourceOptions(), [33], tmp_path / "full")
    entry = next(f for f in result.manifest.layers[0].files if f.tensor == "psum")
    psum = decode_file(tmp_path / "full" / entry.path, entry)
    low, high = int(psum.min()), int(psum.max())
    need = next(b for b in range(2, 40) if -(1 << (b - 1)) <= low and high < 1 << (b - 1))
    worst = entry.lane_bits
    assert (need, worst) == (10, 14)  # the values need fewer bits than the worst case
    code, output = _invoke("dump", "--layer", "33", "--psum-bits", str(need - 2), "-o", str(tmp_path / "x"))
    assert code == 2
    assert (
        f"layer 33 psums span [{low}, {high}]: need {need} bits signed; --psum-bits {need - 2} is too "
        f"narrow; use --psum-bits {need} (these values) or {worst} (this layer's worst case)"
    ) in output
    code, output = _invoke("dump", "--layer", "33", "--psum-bits", str(need), "-o", str(tmp_path / "y"))
    assert code == 0, output


def test_systolic_overflow_names_the_tile_and_both_widths(tmp_path: Path) -> None:
    text = load_profile("course").source.replace("psum_bits = 16", "psum_bits = 8")
    narrow = parse_profile(text.replace('name = "course"', 'name = "narrow"'), "narrow.toml")
    with pytest.raises(BitWidthError) as err:
        export(SourceOptions(), [33], tmp_path / "n", profile=narrow)
    message = str(err.value)
    match = re.fullmatch(
        r"layer 33 tile 0 otile 0 psums span \[(-?\d+), (-?\d+)\]: need (\d+) bits signed; the narrow "
        r"core's 8-bit psums are too narrow; use a profile with psum_bits = (\d+) \(these values\) or 14 "
        r"\(this layer's worst case\)",
        message,
    )
    assert match, message
    low, high, need = int(match[1]), int(match[2]), int(match[3])
    assert need == int(match[4]) and 8 < need < 14
    assert -(1 << (need - 1)) <= low and high < 1 << (need - 1)
    assert not (-(1 << (need - 2)) <= low and high < 1 << (need - 2))  # need - 1 bits would not do
    fits = parse_profile(text.replace("psum_bits = 8", f"psum_bits = {need}"), "fits.toml")
    export(SourceOptions(), [33], tmp_path / "f", profile=fits)
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"path": 3, "sha256": "0"}, "'path' is an integer (3), expected a string"),
        ({"path": "c.pth"}, "'sha256' is missing"),
    ],
    ids=["not-text", "no-sha"],
)
def test_a_malformed_checkpoint_record_is_a_message(
    tmp_path: Path, record: dict[str, object], message: str
) -> None:
    from qexport.errors import InputError
    from qexport.writer.manifest import loads

    manifest = json.loads((ROOT / "tests" / "golden" / "layer33-hex" / "manifest.json").read_text())
    manifest["recipe"]["source"]["checkpoint"] = record
    with pytest.raises(InputError, match=re.escape(f"manifest.json: recipe.source.checkpoint: {message}")):
        loads(json.dumps(manifest), "manifest.json")
