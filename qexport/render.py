"""The one Jinja environment: strict, newline-keeping, loading templates through the package."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from qexport.errors import InputError


@lru_cache(maxsize=4)
def environment(template_dir: str | None = None) -> jinja2.Environment:
    """Package templates, with ``template_dir`` (if given) searched first to override any by name."""
    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        loaders.append(jinja2.FileSystemLoader(template_dir))
    loaders.append(jinja2.PackageLoader("qexport.templates", "."))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        # without it the final newline goes, and $readmem may lose the last word
        keep_trailing_newline=True,
        trim_blocks=True,
        autoescape=False,
    )


def render(name: str, context: dict[str, Any], template_dir: Path | None = None) -> str:
    """Render template ``name`` (e.g. ``hex/memory.hex.j2``) with ``context``."""
    env = environment(str(template_dir) if template_dir else None)
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as err:
        raise InputError(f"template {name} not found (looked in {template_dir or 'the package'})") from err
    except jinja2.UndefinedError as err:
        raise InputError(f"template {name} uses an unknown variable: {err.message}") from err
