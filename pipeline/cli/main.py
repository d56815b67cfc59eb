"""The `lsr` Typer app: the global options, the subcommands registered, and the entry point
that turns a `UserError` into one line on stderr and exit status 1."""

from __future__ import annotations

import logging

import typer

from pipeline.cli.evaluate import evaluate
from pipeline.cli.export import export
from pipeline.cli.index import index
from pipeline.cli.info import info
from pipeline.cli.reindex import reindex
from pipeline.cli.search import search
from pipeline.cli.serve import serve_command
from pipeline.errors import is_user_error

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode="markdown",   # docstrings wrap as prose, not at their line ends
                  help="Learned sparse retrieval (SPLADE) at cluster scale on Ray.")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


app.command("index")(index)
app.command("search")(search)
app.command("reindex")(reindex)
app.command("evaluate")(evaluate)
app.command("serve")(serve_command)
app.command("export")(export)
app.command("info")(info)


def run() -> None:
    """Console entry point: user errors print one clear line and exit 1, without a traceback."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is the user's to fix
        if not is_user_error(exc):
            raise
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None

