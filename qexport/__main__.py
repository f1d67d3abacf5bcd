"""`python -m qexport` runs the command line, as the `qexport` script does."""

from __future__ import annotations

from qexport.cli.main import run

run()
