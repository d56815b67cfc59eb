"""`python -m pipeline.cli ...` runs the `lsr` command (for environments without the script)."""

from pipeline.cli.main import run

run()
