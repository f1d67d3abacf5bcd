"""qexport: bit-exact integer test vectors from 4-bit quantization-aware CNNs.

The library API lives in :mod:`qexport.api`; its names are re-exported here lazily, so that
importing ``qexport`` (and ``qexport --help``) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CheckFailed": "qexport.errors",
    "BitWidthError": "qexport.errors",
    "InputError": "qexport.errors",
    "LayoutOptions": "qexport.layout.flat",
    "PackSpec": "qexport.writer.pack",
    "QExportError": "qexport.errors",
    "SourceOptions": "qexport.api",
    "check_set": "qexport.verify.check",
    "compare": "qexport.verify.compare",
    "export": "qexport.api",
    "layers": "qexport.api",
    "load_profile": "qexport.layout.profile",
    "testbench": "qexport.api",
    "verify": "qexport.api",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qexport' has no attribute {name!r}")
