"""Every `lsr` subcommand, one module each (`index`, `search`, `reindex`, `evaluate`,
`serve`), registered on one Typer app in `pipeline.cli.main`; `common` holds option parsing
shared by several. `jobs/index.py` and `jobs/reindex.py` are thin entry points over it.

The library never imports this package.
"""

from pipeline.cli.main import app, run

__all__ = ["app", "run"]
