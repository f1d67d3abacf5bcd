"""``manifest.json``: the packing contract another program decodes our files with."""

from __future__ import annotations

import json
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1


def dumps(manifest: dict[str, Any]) -> str:
    """Sorted, indented JSON with a final newline: byte-identical for identical content."""
    return json.dumps(manifest, sort_keys=True, indent=2, allow_nan=False) + "\n"


def loads(text: str, where: str) -> dict[str, Any]:
    from qexport.errors import InputError

    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where} is not valid JSON ({err}); it is not a qexport manifest") from err
    if not isinstance(manifest, dict) or "qexport_version" not in manifest:
        raise InputError(f"{where} has no 'qexport_version'; it was not written by qexport")
    return manifest
