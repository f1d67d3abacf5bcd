"""The committed vector sets regenerate byte for byte from their recipes (`qexport check`)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner

from qexport.cli.main import main
from qexport.verify.check import check_set

ROOT = Path(__file__).resolve().parent.parent
SETS = sorted(p for p in (ROOT / "vectors").iterdir() if (p / "manifest.json").is_file())


def test_there_are_sets() -> None:
    assert len(SETS) >= 16


@pytest.mark.parametrize(
    ("folder", "profile", "name", "geometry"),
    [
        ("tiny_resnet_layer1.0.conv1_course_txt", "course", "layer1.0.conv1", (8, 8, 3, 1, [1, 8, 32, 32])),
        (
            "tiny_resnet_layer2.0.downsample.0_hex",
            "flat",
            "layer2.0.downsample.0",
            (8, 16, 1, 2, [1, 8, 32, 32]),
        ),
    ],
    ids=["resnet-8to8-32x32-course", "resnet-1x1-downsample-flat"],
)
def test_the_resnet_sets_are_the_layers_they_say(
    folder: str, profile: str, name: str, geometry: tuple[object, ...]
) -> None:
    import json

    manifest = json.loads((ROOT / "vectors" / folder / "manifest.json").read_text())
    assert manifest["model"] == "resnet8" and manifest["profile"] == profile
    (layer,) = manifest["layers"]
    assert layer["name"] == name and "index" not in layer
    got = (
        layer["in_channels"],
        layer["out_channels"],
        layer["kernel"],
        layer["stride"],
        layer["input_shape"],
    )
    assert got == geometry
    assert layer["checks"]["passed"]
    assert {PurePosixPath(f["path"]).parts[0] for f in layer["files"]} == {name}


def test_the_tiny_resnet_checkpoint_is_what_its_script_writes(tmp_path: Path) -> None:
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "make_tiny_resnet.py"))
    out = tmp_path / "tiny_resnet.pth.tar"  # torch.save names the archive after the file
    script["main"](out)
    assert out.read_bytes() == (ROOT / "vectors" / "tiny_resnet.pth.tar").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("folder", SETS, ids=[p.name for p in SETS])
def test_committed_set_is_reproduced(folder: Path) -> None:
    result = check_set(folder, base=ROOT)
    assert result.identical, "\n".join(result.problems)


def test_check_names_the_first_differing_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    copy = tmp_path / "set"
    shutil.copytree(ROOT / "vectors" / "gradual33_flat_hex", copy)
    path = copy / "layer33" / "psum.hex"
    lines = path.read_text().splitlines()
    # one psum a word over (n, h, w, c): word 9 = pixel (y=0, x=1), channel 1
    lines[3 + 9] = f"{int(lines[3 + 9], 16) ^ 0b100:04x}"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["check", str(copy)])
    assert result.exit_code == 1
    assert (
        "layer33/psum.hex: 1 value(s) differ; first: word 9 lane 0 at layer=33, n=0, y=0, x=1, channel=1"
        in (result.output)
    )


@pytest.fixture(scope="module")
def regenerated_flat_hex() -> dict[str, bytes]:
    from qexport.api import regenerate
    from qexport.writer.manifest import loads

    manifest = loads((ROOT / "vectors" / "gradual33_flat_hex" / "manifest.json").read_text())
    assert manifest.recipe is not None
    return regenerate(manifest.recipe, ROOT).files


def test_check_survives_malformed_committed_files(
    tmp_path_factory: pytest.TempPathFactory,
    regenerated_flat_hex: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bad digits, wrong widths, missing and extra lines: always a report, never a crash."""
    import shutil

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from qexport import api
    from qexport.writer.write import ExportPlan

    # regenerating is the slow, already-tested part: do it once
    monkeypatch.setattr(
        api, "regenerate", lambda recipe, base, folder: ExportPlan(dict(regenerated_flat_hex))
    )

    base = tmp_path_factory.mktemp("fuzz")
    source = ROOT / "vectors" / "gradual33_flat_hex"
    original = (source / "layer33" / "psum.hex").read_text().splitlines()

    @settings(max_examples=40, derandomize=True, deadline=None)
    @given(
        edits=st.lists(
            st.tuples(
                st.integers(0, len(original) + 2),
                st.sampled_from(["drop", "dup", "digit", "widen", "narrow", "junk"]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def run(edits: list[tuple[int, str]]) -> None:
        folder = base / "set"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder)
        lines = list(original)
        for index, edit in edits:
            i = min(index, len(lines) - 1)
            if edit == "drop":
                del lines[i]
            elif edit == "dup":
                lines.insert(i, lines[i])
            elif edit == "digit":
                lines[i] = "z" + lines[i][1:]
            elif edit == "widen":
                lines[i] += "0"
            elif edit == "narrow":
                lines[i] = lines[i][:-1]
            else:
                lines.insert(i, "not a word")
        (folder / "layer33" / "psum.hex").write_text("\n".join(lines) + "\n")
        result = check_set(folder, base=ROOT)
        changed = "\n".join(lines) + "\n" != "\n".join(original) + "\n"
        assert result.identical is not changed
        if changed:
            assert any(p.startswith("layer33/psum.hex") for p in result.problems)

    run()
