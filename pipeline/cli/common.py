"""Small parsing helpers shared by CLI commands."""

from __future__ import annotations

import json
from typing import Any

import typer


def parse_json_option(value: str | None, name: str) -> dict:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{name} must be a JSON object: {exc}") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter(f"{name} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def parse_key_values(items: list[str] | None, name: str) -> dict[str, Any]:
    """KEY=VALUE pairs; values parsed as JSON when they parse (numbers, true/false), else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"{name} takes KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))
