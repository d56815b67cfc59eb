"""Subcommands of the `lsr` CLI that belong to no single library module."""
