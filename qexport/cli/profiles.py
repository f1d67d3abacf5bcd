"""``qexport profiles`` and ``profiles show``: list and print the layout profiles."""

from __future__ import annotations

import click

from qexport.cli.common import handles_errors

__all__ = ["profiles", "profiles_show"]


@click.group("profiles", invoke_without_command=True)
@click.pass_context
def profiles(ctx: click.Context) -> None:
    """List the layout profiles, or print one with `profiles show NAME`.

    A profile (TOML) describes how one accelerator wants its vectors: array rows x cols, lane
    widths, dataflow, lane order, header style, file names, golden ops. Copy one, edit it and pass
    the file with `dump --profile mine.toml`.

    \b
    Example:
      qexport profiles
      qexport profiles show course > mine.toml
    """
    if ctx.invoked_subcommand is not None:
        return
    from qexport.layout.profile import builtin_names, load_profile

    for name in builtin_names():
        profile = load_profile(name)
        click.echo(f"{name:<10} {profile.description}")


@profiles.command("show")
@click.argument("name")
@handles_errors
def profiles_show(name: str) -> None:
    """Print profile NAME (a built-in name or a TOML file) as TOML.

    \b
    Example:
      qexport profiles show course
    """
    from qexport.layout.profile import load_profile

    click.echo(load_profile(name).source, nl=False)
