"""qexport: bit-exact integer test vectors from 4-bit quantization-aware CNNs."""

from __future__ import annotations

__version__ = "0.1.0"
