"""The `lsr` command line. Each subcommand lives with the module that implements it."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Learned sparse retrieval (SPLADE) at cluster scale on Ray.")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


from pipeline.commands.index import index  # noqa: E402
from pipeline.commands.search import search  # noqa: E402
from pipeline.evaluate.cli import evaluate  # noqa: E402

app.command("index")(index)
app.command("search")(search)
app.command("evaluate")(evaluate)

if __name__ == "__main__":
    app()
