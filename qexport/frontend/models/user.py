"""The user's own model code: ``--model module.path:factory`` (the convention uvicorn and gunicorn
use), imported with the current directory on ``sys.path`` and called with no arguments.

The user's code runs because they named it; a checkpoint's code never does (it is still loaded
with ``weights_only=True``).
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from qexport.errors import InputError
from qexport.frontend.models.network import quantized_convs

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_user_spec(model: str | None) -> bool:
    """Whether ``--model`` names user code (``module:factory``) rather than a built-in."""
    return model is not None and ":" in model


@dataclass(frozen=True)
class UserArch:
    """A model the user's factory builds; ``name`` is the ``module:factory`` spec as typed."""

    name: str
    num_classes: int = 10


@contextmanager
def _cwd_on_path() -> Iterator[None]:
    here = str(Path.cwd())
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        yield
    finally:
        if added and here in sys.path:
            sys.path.remove(here)


def build_user_model(spec: str) -> nn.Module:
    """Import ``module.path`` and call ``factory()``; every failure is one message naming it."""
    if not _SPEC.match(spec):
        raise InputError(
            f"--model {spec!r}: user model code is given as module.path:factory, e.g. "
            "--model models.resnet_quant:resnet20_quant (run from the folder that holds models/)"
        )
    module_name, factory_name = spec.split(":")
    # the factory runs with the folder on the path too: course code imports lazily inside functions
    with _cwd_on_path():
        importlib.invalidate_caches()  # a package written since the last import is found
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            parts = module_name.split(".")
            if err.name not in {".".join(parts[: i + 1]) for i in range(len(parts))}:
                raise InputError(  # the module exists; something it imports does not
                    f"--model {spec}: importing {module_name} failed: {err}; install that package "
                    f"or fix the import (check with `python -c 'import {module_name}'`)"
                ) from None
            raise InputError(
                f"--model {spec}: cannot import {module_name!r} ({err}); run qexport from the folder "
                f"that holds {parts[0]}/ (the current folder is on the import path)"
            ) from None
        except Exception as err:  # the user's module failed while importing: say where
            raise InputError(
                f"--model {spec}: importing {module_name} raised {type(err).__name__}: {err}; fix "
                f"the module, or check it imports with `python -c 'import {module_name}'`"
            ) from None
        factory = getattr(module, factory_name, None)
        if factory is None or not callable(factory):
            found = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v))
            raise InputError(
                f"--model {spec}: {module_name} has no callable {factory_name!r}; it has "
                f"{', '.join(found[:20]) or 'no public callables'}"
            )
        try:
            model = factory()
        except Exception as err:  # the user's factory failed: name it, never a traceback
            raise InputError(
                f"--model {spec}: {factory_name}() raised {type(err).__name__}: {err}; the factory is "
                "called with no arguments, so give it defaults"
            ) from None
    if not isinstance(model, nn.Module):
        raise InputError(
            f"--model {spec}: {factory_name}() returned a {type(model).__name__}, not a torch nn.Module"
        )
    if not quantized_convs(model):
        raise InputError(
            f"--model {spec}: the model {factory_name}() builds has no quantized conv (no module "
            "carries act_alpha and weight_quant.wgt_alpha, as the course's QuantConv2d does); "
            "qexport exports quantized convs only"
        )
    return model


def classes_of(model: nn.Module) -> int:
    """The number of classes: the last Linear's outputs (10 when there is none)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return int(linears[-1].out_features) if linears else 10
