"""Full IEEE float32 math, on CPU and CUDA, for every pass that makes integers.

qexport's integers come from float passes: the capture forward (``x_int`` is a rounding of the
captured float input, and the seeds' 1e-3 check compares against the captured float output), the
study's accuracy counts, and the float32/float64 reference conv. ``exact_math()`` makes each of
them compute what its dtype says, whatever the user's torch settings and on either device:

- NNPACK off. PyTorch's CPU conv uses it when oneDNN is off (``torch.backends.mkldnn.enabled =
  False``) and the batch is 16 or more; its convs transform the inputs (Winograd, FFT), so a
  64->64 3x3 conv of 4-bit integers comes out up to 0.03 off. What remains on the CPU sums the
  products directly: oneDNN (``alg:convolution_direct``) or im2col + GEMM.
- TF32 and bf16 off: every ``fp32_precision`` (oneDNN and cuDNN convs and RNNs, oneDNN and cuBLAS
  matmuls) is "ieee", and the legacy ``torch.backends.cudnn.allow_tf32`` and
  ``torch.set_float32_matmul_precision`` agree. cuDNN convs default to TF32, which keeps 10
  mantissa bits of each factor, so a CUDA capture would round differently from a CPU one.
- cuBLAS fp16/bf16 reduced-precision reductions and fp16 accumulation off.

cuDNN may still pick a Winograd or FFT algorithm for a CUDA capture; in full float32 those differ
from a direct sum by a few ulps, the size of any change of summation order. The reference conv,
where exactness is claimed, always runs on the CPU.

Every setting is restored on exit, also after an exception. Settings a torch version lacks are
skipped (``fp32_precision`` came with torch 2.9; before it the legacy flags are the whole state).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

# (backend module, operator) pairs of torch's fp32_precision API; cuda.matmul is cuBLAS
_PRECISION_SLOTS = (
    ("mkldnn", "conv"),
    ("mkldnn", "matmul"),
    ("mkldnn", "rnn"),
    ("cudnn", "conv"),
    ("cudnn", "rnn"),
    ("cuda", "matmul"),
)
# cuBLAS reductions that may round partial sums to fp16/bf16; each is (allowed, split_k allowed)
_REDUCTIONS = ("fp16", "bf16")


def _legacy(get: Callable[[], Any]) -> Any:
    """A legacy flag's value, or None when torch refuses to read it.

    torch 2.9+ refuses to read ``cudnn.allow_tf32`` or the matmul precision once the legacy and
    the new API disagree (a user set only ``cudnn.conv.fp32_precision``); the new settings, which
    the ops use, are saved either way.
    """
    try:
        return get()
    except RuntimeError:
        return None


def _reductions(matmul: Any) -> dict[str, Any]:
    """cuBLAS's reduced-precision reduction flags, as their setters take them back.

    torch 2.10+ pairs each with a split-K flag, (allowed, split_k allowed); before, a bool.
    """
    saved: dict[str, Any] = {}
    for kind in _REDUCTIONS:
        name = f"allow_{kind}_reduced_precision_reduction"
        if not hasattr(matmul, name):
            continue
        split_k = f"{name}_split_k"
        allowed = getattr(matmul, name)
        saved[name] = (allowed, getattr(matmul, split_k)) if hasattr(matmul, split_k) else allowed
    return saved


@functools.cache
def _slots() -> tuple[Any, ...]:
    """The fp32_precision settings this torch has, found once (the reference conv enters
    exact_math at every call, and on a small layer finding them cost as much as the conv)."""
    backends = torch.backends
    return tuple(
        getattr(getattr(backends, name), op)
        for name, op in _PRECISION_SLOTS
        if hasattr(getattr(getattr(backends, name), op, None), "fp32_precision")
    )


@contextlib.contextmanager
def exact_math() -> Iterator[None]:
    """Run the block with full-precision float math on every backend, then restore the settings.

    Usable as a decorator too (``@exact_math()``).
    """
    backends = torch.backends
    matmul = backends.cuda.matmul
    slots = _slots()
    saved_slots = [slot.fp32_precision for slot in slots]
    reductions = _reductions(matmul)
    fp16_accumulation = getattr(matmul, "allow_fp16_accumulation", None)
    cudnn_tf32 = _legacy(lambda: backends.cudnn.allow_tf32)
    matmul_precision = _legacy(torch.get_float32_matmul_precision)
    with backends.nnpack.flags(enabled=False):
        try:
            # legacy setters first: they overwrite the per-operator precisions set after them
            if cudnn_tf32 is not None:
                backends.cudnn.allow_tf32 = False
            if matmul_precision is not None:
                torch.set_float32_matmul_precision("highest")
            for slot in slots:
                slot.fp32_precision = "ieee"
            for name, value in reductions.items():
                setattr(matmul, name, (False, value[1]) if isinstance(value, tuple) else False)
            if fp16_accumulation is not None:
                matmul.allow_fp16_accumulation = False
            yield
        finally:
            if cudnn_tf32 is not None:
                backends.cudnn.allow_tf32 = cudnn_tf32
            if matmul_precision is not None:
                torch.set_float32_matmul_precision(matmul_precision)
            for slot, value in zip(slots, saved_slots, strict=True):
                slot.fp32_precision = value
            for name, value in reductions.items():
                setattr(matmul, name, value)
            if fp16_accumulation is not None:
                matmul.allow_fp16_accumulation = fp16_accumulation
