"""The set's SystemVerilog package: each memory file's word count, widths, lanes, depth and path.

RTL imports it (``import qexport_vectors_pkg::*;``) and declares its memories from it, so a new
export with other shapes needs no edit of the RTL. The names are documented in the template
(``templates/sv/package.sv.j2``); :func:`sv_name` makes them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from qexport import __version__
from qexport.errors import InputError
from qexport.writer.manifest import FileEntry
from qexport.writer.render import render

SV_PACKAGE_NAME = "qexport_vectors_pkg.sv"

_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


def sv_name(path: str) -> str:
    """The localparams' prefix for a file: its layer folder and stem, an upper-case SV identifier.

    ``"layer33/weight_itile0_otile0_kij0.hex"`` -> ``"LAYER33_WEIGHT_ITILE0_OTILE0_KIJ0"``;
    ``"vectors/layer1.0.conv1/input.hex"`` -> ``"LAYER1_0_CONV1_INPUT"``. Upper case, so never
    a keyword (SystemVerilog's are all lower case).
    """
    # string splits, not PurePosixPath: a whole VGG16 course set names 211,042 files
    *folders, file = path.split("/")
    stem = file.rsplit(".", 1)[0] if "." in file else file
    name = _NOT_IDENTIFIER.sub("_", f"{folders[-1]}_{stem}" if folders else stem).upper()
    return name if name[:1].isalpha() else f"F_{name}"  # an identifier starts with a letter


class _Row(NamedTuple):
    """One file as the template reads it (attributes, which Jinja looks up first)."""

    name: str
    entry: FileEntry


def render_sv_package(
    files: Sequence[FileEntry],
    model: str,
    demo: str | None,
    profile: str,
    fmt: str,
    template_dir: Path | None = None,
) -> str:
    """The package's text for ``files`` (paths relative to the set's top, as the manifest has them)."""
    seen: dict[str, str] = {}
    rows: list[_Row] = []
    for f in files:
        name = sv_name(f.path)
        if name in seen:
            raise InputError(
                f"{seen[name]} and {f.path} both name their localparams {name}_* in {SV_PACKAGE_NAME}; "
                "rename a layer folder or a file pattern so their names differ in more than punctuation"
            )
        seen[name] = f.path
        rows.append(_Row(name, f))
    context = {"version": __version__, "model": model, "demo": demo, "profile": profile, "fmt": fmt}
    return render("sv/package.sv.j2", context | {"files": rows}, template_dir)
