"""The manifest schema: ``dumps`` and ``loads`` are each other's inverse, byte for byte on every set
qexport has written, and ``loads`` names a missing, mistyped or unknown key and where it is."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qexport import api
from qexport.api import SourceOptions, export, regenerate
from qexport.errors import InputError
from qexport.writer.manifest import FileEntry, Manifest, dumps, loads

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = sorted(p.parent for p in (ROOT / "vectors").glob("*/manifest.json"))
GOLDEN = sorted(p.parent for p in (ROOT / "tests" / "golden").glob("*/manifest.json"))
SYSTOLIC16 = str(ROOT / "vectors" / "systolic16.toml")


def _exported(tmp_path: Path, profile: str) -> Path:
    out = tmp_path / profile.rsplit("/", 1)[-1]
    if profile == "testbench":
        result = api.testbench(SourceOptions(), 33, out)
    else:
        result = export(SourceOptions(), [33], out, profile=profile)
    assert dumps(result.manifest) == (out / "manifest.json").read_text()  # what was written
    return out


@pytest.mark.parametrize(
    "profile", ["flat", "course", SYSTOLIC16, "testbench"], ids=["flat", "course", "systolic16", "testbench"]
)
def test_a_fresh_export_round_trips(tmp_path: Path, profile: str) -> None:
    text = (_exported(tmp_path, profile) / "manifest.json").read_text()
    manifest = loads(text)
    assert loads(dumps(manifest)) == manifest
    assert dumps(manifest) == text
    kinds = {f.tensor for _, f in manifest.files()}
    assert {"weight", "input", "output"} <= kinds


def test_a_systolic_export_places_every_tile_file(tmp_path: Path) -> None:
    manifest = loads((_exported(tmp_path, "course") / "manifest.json").read_text())
    (layer,) = manifest.layers
    weights = [f for f in layer.files if f.tensor == "weight"]
    assert {f.where.kij for f in weights} == set(range(9))
    assert all(f.where.ic is not None and f.where.oc is not None for f in weights)
    outputs = [f for f in layer.files if f.tensor == "output"]
    assert all(f.where.y is not None and f.where.n == 0 for f in outputs)


@pytest.mark.parametrize("folder", COMMITTED, ids=[p.name for p in COMMITTED])
def test_every_committed_manifest_loads_and_dumps_to_its_bytes(folder: Path) -> None:
    text = (folder / "manifest.json").read_text()
    manifest = loads(text, str(folder / "manifest.json"))
    assert manifest.recipe is not None and manifest.layers
    assert dumps(manifest) == text


@pytest.mark.parametrize("folder", GOLDEN, ids=[p.name for p in GOLDEN])
def test_dumps_of_a_fresh_export_is_the_golden_manifest(folder: Path) -> None:
    golden_text = (folder / "manifest.json").read_text()
    golden = loads(golden_text)
    assert golden.recipe is not None
    fresh = loads(regenerate(golden.recipe, ROOT, folder).files["manifest.json"].decode())
    # the seeds' float error figures depend on the BLAS in use; everything else must be identical
    same_figures = tuple(
        replace(a, checks=b.checks) for a, b in zip(fresh.layers, golden.layers, strict=True)
    )
    assert dumps(replace(fresh, layers=same_figures)) == golden_text


def _golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (ROOT / "tests" / "golden" / "layer33-hex" / "manifest.json").read_text()
    )
    return data


def _file(data: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = data["layers"][0]["files"][3]
    return entry


DAMAGE = {
    "file-missing": (lambda d: _file(d).pop("lane_bits"), "layers[0].files[3]: 'lane_bits' is missing"),
    "file-wrong-type": (
        lambda d: _file(d).update(words="12"),
        "layers[0].files[3]: 'words' is a string (\"12\"), expected an integer",
    ),
    "file-bool-for-int": (
        lambda d: _file(d).update(lanes=True),
        "layers[0].files[3]: 'lanes' is a boolean (true), expected an integer",
    ),
    "file-unknown": (lambda d: _file(d).update(colour="red"), "layers[0].files[3]: unknown key 'colour'"),
    "file-bad-lane-order": (
        lambda d: _file(d).update(lane_order="middle"),
        "layers[0].files[3]: 'lane_order' is 'middle', expected one of 'lsb_first', 'msb_first'",
    ),
    "file-bad-range": (
        lambda d: _file(d).update(oc=[0, 8, 16]),
        "layers[0].files[3]: 'oc' is [0, 8, 16], expected [start, stop]",
    ),
    "layer-missing": (lambda d: d["layers"][0].pop("stride"), "layers[0]: 'stride' is missing"),
    "layer-wrong-type": (
        lambda d: d["layers"][0].update(act_alpha="big"),
        "layers[0]: 'act_alpha' is a string (\"big\"), expected a number",
    ),
    "checks-missing": (
        lambda d: d["layers"][0]["checks"].pop("passed"),
        "layers[0].checks: 'passed' is missing",
    ),
    "checks-unknown": (
        lambda d: d["layers"][0]["checks"].update(extra=1.0),
        "layers[0].checks: unknown key 'extra'",
    ),
    "files-not-a-list": (
        lambda d: d["layers"][0].update(files={}),
        "layers[0]: 'files' is an object ({}), expected a list",
    ),
    "top-missing": (lambda d: d.pop("model"), "'model' is missing"),
    "top-unknown": (lambda d: d.update(colour="red"), "unknown key 'colour'"),
    "source-unknown": (lambda d: d["source"].update(seed=3), "source: unknown key 'seed'"),
    "inputs-wrong-type": (
        lambda d: d["inputs"].update(count="1"),
        "inputs: 'count' is a string (\"1\"), expected an integer",
    ),
    "recipe-missing": (lambda d: d["recipe"].pop("command"), "recipe: 'command' is missing"),
    "recipe-layers": (
        lambda d: d["recipe"].update(layers="some"),
        "recipe: 'layers' is a string (\"some\"), expected a list of features indices or module paths",
    ),
    "recipe-no-profile": (
        lambda d: d["recipe"].update(profile=None, profile_toml=None),
        "recipe: 'profile' and 'profile_toml' are both null",
    ),
    "recipe-layout-unknown": (
        lambda d: d["recipe"]["layout"].update(tiles=2),
        "recipe.layout: unknown key 'tiles'",
    ),
    "recipe-source-wrong-type": (
        lambda d: d["recipe"]["source"].update(trust_recomputed="yes"),
        "recipe.source: 'trust_recomputed' is a string (\"yes\"), expected true or false",
    ),
}


@pytest.mark.parametrize(("damage", "message"), DAMAGE.values(), ids=DAMAGE.keys())
def test_loads_names_the_bad_key_and_where_it_is(damage: Any, message: str) -> None:
    data = _golden()
    damage(data)
    with pytest.raises(InputError, match=re.escape(f"set/manifest.json: {message}")):
        loads(json.dumps(data), "set/manifest.json")


def test_loads_refuses_what_qexport_did_not_write() -> None:
    with pytest.raises(InputError, match="m.json has no 'qexport_version'; it was not written by qexport"):
        loads('{"model": "x"}', "m.json")
    with pytest.raises(InputError, match="m.json is not valid JSON"):
        loads('{"model": ', "m.json")


def test_optional_keys_are_absent_not_null() -> None:
    manifest = loads((GOLDEN[0] / "manifest.json").read_text())
    entry = manifest.layers[0].files[0]
    bare = replace(entry, padded=None, channels=None, padded_channels=None)
    assert not {"padded", "channels", "padded_channels", "tile", "oc"} & set(bare.to_json())
    assert FileEntry.from_json(bare.to_json(), "x") == bare
    assert isinstance(manifest, Manifest) and "label" in json.loads(dumps(manifest))
    assert "label" not in json.loads(dumps(replace(manifest, label=None)))


def test_the_classifier_entry_round_trips_and_is_absent_without_the_last_conv(tmp_path: Path) -> None:
    export(SourceOptions(images="0:1"), [48, 51], tmp_path / "end", sfu=True)
    text = (tmp_path / "end" / "manifest.json").read_text()
    manifest = loads(text)
    assert manifest.classifier is not None
    assert manifest.classifier.after == "features.51"
    assert [op.op for op in manifest.classifier.ops] == [
        "batchnorm",
        "relu",
        "maxpool",
        "avgpool",
        "flatten",
        "linear",
    ]
    assert {f.key for f in manifest.classifier.files} >= {"classifier.weight", "classifier.bias"}
    assert all((tmp_path / "end" / f.path).is_file() for f in manifest.classifier.files)
    assert dumps(manifest) == text
    export(SourceOptions(images="0:1"), [45, 48], tmp_path / "middle", sfu=True)
    assert "classifier" not in json.loads((tmp_path / "middle" / "manifest.json").read_text())
    export(SourceOptions(images="0:1"), [51], tmp_path / "plain")
    assert "classifier" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())


def test_dumps_spells_many_file_entries_as_json_dumps_does() -> None:
    """The file entries spliced in from templates (issue 18 item 4) are json.dumps' own bytes,
    whatever the paths hold (quotes, %, non-ASCII, backslashes), in every shape of entry."""
    folder = Path(__file__).parents[2] / "vectors" / "gradual27_course_txt"
    manifest = loads((folder / "manifest.json").read_text(), "gradual27 manifest")
    layer = manifest.layers[0]
    odd = ['a "quoted" %s %d 100%', "ünïcode/tilé", "back\\slash\ttab", "@@qexport-leaf@@"]
    files = tuple(
        replace(entry, path=f"{odd[k % len(odd)]}/{entry.path}", channels=k if k % 3 else None)
        for k, entry in enumerate(layer.files)
    )
    manifest = replace(manifest, layers=(replace(layer, files=files), replace(layer, files=())))
    assert dumps(manifest) == json.dumps(manifest.to_json(), sort_keys=True, indent=2, allow_nan=False) + "\n"
    assert loads(dumps(manifest)) == manifest
