"""The click shells: parse options, call one `qexport.api` function, map errors to exit codes."""

from __future__ import annotations

from qexport.cli.main import main, run

__all__ = ["main", "run"]
