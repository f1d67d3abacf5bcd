"""``qexport compare`` and ``check``: the commands that read vector sets already on disk.

torch is imported inside command bodies only, so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from qexport.cli.common import _fail, handles_errors
from qexport.errors import CheckFailed

__all__ = ["check_command", "compare_command"]


@click.command("compare")
@click.argument("golden_dir", type=click.Path(path_type=Path, file_okay=False))
@click.argument("sim_output", type=click.Path(path_type=Path))
@click.option(
    "--file",
    "file_name",
    help="Which golden file SIM_OUTPUT is: its path in the manifest, its name, or its path on disk.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for CI).")
@click.option(
    "--detail",
    type=int,
    default=20,
    show_default=True,
    help="Differing values a file to list in full; every one is counted and summarised.",
)
@handles_errors
def compare_command(
    golden_dir: Path, sim_output: Path, file_name: str | None, as_json: bool, detail: int
) -> None:
    """Compare a simulator's output with a golden set; exit 0 identical, 1 different, 2 unreadable.

    SIM_OUTPUT is a memory dump in any of our text formats ($writememh output included), a folder
    of them laid out like the golden set, or a `qexport testbench` log. The first --detail
    differing values are decoded to layer / tile / pixel / channel / expected / got / xor (the
    lane's bits, unsigned); every differing value is summarised: the channels affected and how many
    differ in each, the pixels (count, range, the first --detail of them), taps and tiles; and
    patterns are named only when they hold for every differing value (a stuck lane, swapped lane
    order, a word shift, one bit). A dump shorter or longer than the golden file fails, saying how
    many words were read and expected.
    Exit 0 needs at least one value compared and every value equal.

    Which golden file a single dump is: the one --file names (a name not in the set is exit 2,
    listing the set's files); without --file, the one with the dump's word width and word count;
    if several have them, the one among them with the dump's file name; if none has them, the one
    with the dump's file name. Anything else (no match, several, or a name and a shape that point
    at different files) is exit 2 asking for --file.

    \b
    Example:
      qexport compare tb33 sim/out_dump.hex --file vectors/layer33/out.hex
    """
    import json

    from qexport.verify.compare import compare

    report = compare(golden_dir, sim_output, file_name, detail)
    if as_json:
        click.echo(json.dumps(report.to_json(), sort_keys=True, indent=2))
    else:
        for f in report.files:
            click.echo(f"{f.path} (layer {f.layer}, matched by {f.matched_by}): {f.status}")
            for pattern in f.patterns:
                click.echo(f"  pattern: {pattern}")
            for d in f.diffs:
                click.echo(f"  {d.describe()}")
            if f.differences > len(f.diffs):
                click.echo(f"  ... and {f.differences - len(f.diffs)} more")
            for line in f.affected_lines():
                click.echo(f"  {line}")
    if not report.identical:
        _fail(CheckFailed(f"{report.summary()} (golden set {golden_dir})"))


@click.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@handles_errors
def check_command(paths: tuple[Path, ...]) -> None:
    """Regenerate vector sets from their manifests and compare byte for byte; exit 1 on any difference.

    Each manifest records the command and inputs that made its set; the checkpoint is found from
    the manifest's folder and its sha256 verified, other relative paths in it (--input,
    --bits-config) are resolved from the current folder. Among several paths, one that is not a
    set (no manifest.json) is skipped with a line; if none is a set, exit 2.

    \b
    Example:
      qexport check vectors/*/
    """
    from qexport.verify.check import check_set, vector_sets

    folders, skipped = vector_sets(paths)
    for line in skipped:
        click.echo(line)
    failed = 0
    for folder in folders:
        result = check_set(folder)
        if result.identical:
            click.echo(f"{folder}: identical ({result.command})")
            continue
        failed += 1
        click.echo(f"{folder}: DIFFERS from `{result.command}`")
        for problem in result.problems:
            click.echo(f"  {problem}")
    if failed:
        _fail(CheckFailed(f"{failed} of {len(folders)} vector set(s) differ from their recipe"))
