"""The errors qexport raises. Only ``cli.py`` turns them into messages and exit codes."""

from __future__ import annotations


class QExportError(Exception):
    """Base of every error a user can cause; carries the CLI exit code."""

    exit_code = 2


class InputError(QExportError):
    """Bad checkpoint, wrong architecture, not a conv layer, unwritable folder (exit 2)."""

    exit_code = 2


class BitWidthError(InputError):
    """A value does not fit its declared bit width (exit 2)."""


class CheckFailed(QExportError):
    """A verify or compare check found a mismatch (exit 1)."""

    exit_code = 1
