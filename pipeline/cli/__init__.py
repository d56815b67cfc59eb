"""The `lsr` command line. Each subcommand lives with the module that implements it."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Learned sparse retrieval (SPLADE) at cluster scale on Ray.")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


from pipeline.commands.index import index  # noqa: E402
from pipeline.commands.search import search  # noqa: E402
from pipeline.evaluate.cli import evaluate  # noqa: E402
from pipeline.serve.cli import serve_command  # noqa: E402

app.command("index")(index)
app.command("search")(search)
app.command("evaluate")(evaluate)
app.command("serve")(serve_command)
app.command("reindex")(__import__("pipeline.reindex.cli", fromlist=["reindex"]).reindex)

def run() -> None:
    """Console entry point: user errors print one clear line and exit 1, without a traceback."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is the user's to fix
        from pipeline.errors import is_user_error

        if not is_user_error(exc):
            raise
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    run()
