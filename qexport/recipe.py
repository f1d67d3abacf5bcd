"""The recipe a manifest records: everything `qexport check` needs to regenerate a set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qexport.layout import LayoutOptions
from qexport.profile import Profile, builtin_names, load_profile
from qexport.quant_layer import DEFAULT_ACT_CLIP

if TYPE_CHECKING:
    from qexport.api import SourceOptions


def path_text(path: Path | None) -> str | None:
    # what the user typed, so `qexport check` runs from the same folder; never an absolute path
    if path is None:
        return None
    return path.name if path.is_absolute() else path.as_posix()


def build_recipe(
    kind: str,
    opts: SourceOptions,
    layer_ids: Sequence[int] | None,
    fmt: str,
    layout: LayoutOptions,
    prof: Profile,
    depth: str,
    template_dir: Path | None,
) -> dict[str, Any]:
    """Everything `qexport check` needs to regenerate this set, and the command that made it."""
    source = {
        "checkpoint": path_text(opts.checkpoint),
        "model": opts.model,
        "data_dir": path_text(opts.data_dir),
        "input_file": path_text(opts.input_file),
        # the effective selection, so a set made with the default and with `--images 0` agree
        "images": opts.images or (None if opts.input_file else "0"),
        "act_clip": opts.act_clip,
        "trust_recomputed": opts.trust_recomputed,
        "bits_config": path_text(opts.bits_config),
    }
    layout_fields = {
        "lanes": layout.lanes,
        "psum_lanes": layout.psum_lanes,
        "lane_order": layout.lane_order,
        "psum_bits": layout.psum_bits,
        "input_sign": layout.input_sign,
        "pad_input": layout.pad_input,
    }
    builtin = prof.name in builtin_names() and load_profile(prof.name).source == prof.source
    return {
        "kind": kind,
        "source": source,
        "layers": "all" if layer_ids is None else list(layer_ids),
        "format": fmt,
        "profile": prof.name if builtin else None,
        "profile_toml": None if builtin else prof.source,
        "depth": depth,
        "layout": layout_fields,
        "template_dir": path_text(template_dir),
        "command": _command_line(kind, source, layer_ids, fmt, layout_fields, prof.name, depth),
    }


def _command_line(
    kind: str,
    source: dict[str, Any],
    layer_ids: Sequence[int] | None,
    fmt: str,
    layout: dict[str, Any],
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
                if layout[key] != default:
                    words += [flag, str(layout[key])]
            if layout["pad_input"]:
                words.append("--pad-input")
    return " ".join(words)
