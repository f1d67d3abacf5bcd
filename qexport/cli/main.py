"""The ``qexport`` command: the click group, the console script and every command registered on it.

The commands live in one module a command group: :mod:`qexport.cli.export` (layers, dump,
testbench, verify), :mod:`qexport.cli.sets` (compare, check), :mod:`qexport.cli.profiles`,
:mod:`qexport.cli.study` (eval, sensitivity, search) and :mod:`qexport.cli.train`; their shared
options and the error-to-exit-code mapping are in :mod:`qexport.cli.common`. torch is imported
inside command bodies only, so ``qexport --help`` stays instant.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys

import click

from qexport import __version__
from qexport.cli.common import MODELS, handles_errors, source_options
from qexport.cli.export import dump, layers, testbench_command, verify
from qexport.cli.infer import infer_command
from qexport.cli.profiles import profiles
from qexport.cli.sets import check_command, compare_command
from qexport.cli.study import eval_command, search_command, sensitivity_command
from qexport.cli.train import train_command

__all__ = ["MODELS", "handles_errors", "main", "run", "source_options"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qexport")
def main() -> None:
    """Export bit-exact integer test vectors from 4-bit quantized CNNs for RTL simulation.

    \b
    Example:
      qexport layers
      qexport dump --layer 33 --format hex -o out/layer33
    """
    # a terminated run unwinds like Ctrl-C, so its staging folder is removed and the old set kept
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run() -> None:
    """The console script: run the command, then skip torch's slow interpreter teardown.

    Once torch is imported, a normal exit spends 0.5-1 s tearing it down after the work is done.
    Every file has been written and closed by then, so when no child process is left the
    process ends at once with the command's exit code.
    """
    try:
        main()
        code: int | str | None = 0
    except SystemExit as done:
        code = done.code
    if "torch" not in sys.modules or multiprocessing.active_children():
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


for _command in (
    layers,
    dump,
    testbench_command,
    compare_command,
    check_command,
    profiles,
    verify,
    infer_command,
    eval_command,
    sensitivity_command,
    search_command,
    train_command,
):
    main.add_command(_command)
