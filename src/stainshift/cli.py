"""The `stainshift` command line. Each stage module contributes its verbs here."""
from __future__ import annotations

from typing import Optional

import typer

from stainshift import __version__

app = typer.Typer(
    help="stainshift: WSI tiling, stain normalization, stain-robust training and cross-center evaluation.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"stainshift {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """stainshift command line."""


if __name__ == "__main__":  # pragma: no cover
    app()
