"""The recipe a manifest records: everything `qexport check` needs to regenerate a set."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qexport.errors import InputError
from qexport.frontend.models.quant import DEFAULT_ACT_CLIP
from qexport.layout.options import LayoutOptions
from qexport.layout.profile import Profile, builtin_names, load_profile
from qexport.writer.manifest import CheckpointRecord, Recipe, RecipeKind, RecipeSource

if TYPE_CHECKING:
    from qexport.api import SourceOptions


def path_text(path: Path | None) -> str | None:
    # what the user typed, so `qexport check` runs from the same folder; never an absolute path
    if path is None:
        return None
    return path.name if path.is_absolute() else path.as_posix()


def _tree_root(set_dir: Path) -> Path:
    """The tree a set's recorded paths may be relative in: its git repository, else its parent."""
    folder = set_dir.resolve()
    for parent in folder.parents:
        if (parent / ".git").exists():
            return parent
    return folder.parent


def checkpoint_record(checkpoint: Path, sha256: str, set_dir: Path) -> tuple[CheckpointRecord, str]:
    """Where `qexport check` finds the checkpoint again from any working folder, and its command text.

    Inside the set's tree (the git repository holding the set, else the set's parent folder)
    ``path`` is relative to the manifest's folder (``../tiny_vgg.pth.tar``) and the command shows
    it from the tree's root (``vectors/tiny_vgg.pth.tar``); outside it, both are absolute.
    """
    file, folder, root = checkpoint.resolve(), set_dir.resolve(), _tree_root(set_dir)
    if file.is_relative_to(root):
        path, command = Path(os.path.relpath(file, folder)).as_posix(), file.relative_to(root).as_posix()
    else:
        path = command = file.as_posix()
    return CheckpointRecord(path, sha256), command


def find_checkpoint(record: CheckpointRecord, set_dir: Path) -> Path:
    """The checkpoint a recipe names (relative to ``set_dir``), once its sha256 is the recorded one."""
    from qexport.frontend.checkpoint import file_sha256

    manifest = set_dir / "manifest.json"
    path = Path(record.path)
    if not path.is_absolute():
        path = (set_dir.resolve() / path).resolve()
    expected = record.sha256
    if not path.is_file():
        raise InputError(
            f"checkpoint {path} (recorded in {manifest}) does not exist; the set was made from a "
            f"file with sha256 {expected}: put that file back there, or re-export the set"
        )
    actual = file_sha256(path)
    if actual != expected:
        raise InputError(
            f"checkpoint {path} has changed since the set was made: sha256 {actual}, expected "
            f"{expected} (recorded in {manifest}); restore that file, or re-export the set"
        )
    return path


def build_recipe(
    kind: RecipeKind,
    opts: SourceOptions,
    layer_ids: Sequence[int | str] | None,
    fmt: str,
    layout: LayoutOptions,
    prof: Profile,
    depth: str,
    template_dir: Path | None,
    set_dir: Path | None = None,
    checkpoint_sha256: str | None = None,
    *,
    sfu: bool = False,
    chain: bool = False,
    widths: dict[str, int] | None = None,
    vcd: bool = False,
) -> Recipe:
    """Everything `qexport check` needs to regenerate this set, and the command that made it.

    With ``set_dir`` (the set's folder) the checkpoint is recorded by :func:`checkpoint_record`;
    without, as the text typed (an older recipe's form, resolved from the working folder).
    """
    checkpoint: CheckpointRecord | str | None = path_text(opts.checkpoint)
    command_checkpoint = path_text(opts.checkpoint)
    if opts.checkpoint is not None and set_dir is not None and checkpoint_sha256 is not None:
        checkpoint, command_checkpoint = checkpoint_record(opts.checkpoint, checkpoint_sha256, set_dir)
    source = RecipeSource(
        checkpoint=checkpoint,
        model=opts.model,
        data_dir=path_text(opts.data_dir),
        input_file=path_text(opts.input_file),
        # the effective selection, so a set made with the default and with `--images 0` agree
        images=opts.images or (None if opts.input_file else "0"),
        act_clip=opts.act_clip,
        trust_recomputed=opts.trust_recomputed,
        bits_config=path_text(opts.bits_config),
    )
    builtin = prof.name in builtin_names() and load_profile(prof.name).source == prof.source
    return Recipe(
        kind=kind,
        source=source,
        layers=None if layer_ids is None else tuple(layer_ids),
        format=fmt,
        profile=prof.name if builtin else None,
        profile_toml=None if builtin else prof.source,
        depth=depth,
        layout=layout,
        template_dir=path_text(template_dir),
        command=_command_line(
            kind,
            source.to_json() | {"checkpoint": command_checkpoint},
            layer_ids,
            fmt,
            layout,
            prof.name,
            depth,
        )
        + (" --sfu" if sfu and not chain else "")
        + (" --chain" if chain else "")
        + "".join(f" --{k.replace('_', '-')} {v}" for k, v in (widths or {}).items())
        + (" --vcd" if vcd else ""),
        sfu=sfu,
        chain=chain,
        fixed_point=widths,
        vcd=vcd,
    )


def _command_line(
    kind: str,
    source: dict[str, Any],
    layer_ids: Sequence[int | str] | None,
    fmt: str,
    layout: LayoutOptions,
    profile: str,
    depth: str,
) -> str:
    words = ["qexport", kind]
    words += ["--all"] if layer_ids is None else ["--layer", ",".join(map(str, layer_ids))]
    if profile != "flat":
        words += ["--profile", profile]
    words += ["--format", fmt]
    flags = {
        "checkpoint": "--checkpoint",
        "model": "--model",
        "data_dir": "--data-dir",
        "input_file": "--input",
        "bits_config": "--bits-config",
    }
    for key, flag in flags.items():
        if source[key] is not None:
            words += [flag, str(source[key])]
    if source["images"] is not None and (source["images"] != "0" or source["input_file"] is not None):
        words += ["--images", source["images"]]
    if source["act_clip"] != DEFAULT_ACT_CLIP:
        words += ["--act-clip", source["act_clip"]]
    if source["trust_recomputed"]:
        words.append("--trust-recomputed")
    if kind == "dump":
        if depth != "exact":
            words += ["--depth", depth]
        if profile == "flat":
            for key, flag, default in (
                ("lanes", "--lanes", 8),
                ("psum_lanes", "--psum-lanes", 1),
                ("lane_order", "--lane-order", "lsb_first"),
                ("psum_bits", "--psum-bits", None),
                ("input_sign", "--input-sign", "auto"),
            ):
                if getattr(layout, key) != default:
                    words += [flag, str(getattr(layout, key))]
            if layout.pad_input:
                words.append("--pad-input")
    return " ".join(words)
