"""Argument forms the nexus-sim and nexus-real command lines share."""
from __future__ import annotations

import json
from typing import Callable

from nexus.errors import UserError


def parse_split(text: str) -> tuple[int, int]:
    try:
        prefill, decode = (int(x) for x in text.split(":"))
    except ValueError:
        raise UserError(f"--split takes PREFILL_SMS:DECODE_SMS, e.g. 64:68; got {text!r}") from None
    return prefill, decode


def parse_params(items: list[str]) -> dict:
    """--param key=value pairs; values parse as JSON where they can (numbers, true, lists)."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--param takes KEY=VALUE, got {item!r}")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params


def run_reporting_user_errors(prog: str, body: Callable[[], int]) -> int:
    """Run a CLI body; a UserError prints one line and exits 2, an interrupt exits 130."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        return body()
    except UserError as e:
        console.print(f"[red]{prog}: error:[/red] {e}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print(f"{prog}: interrupted; no results written")
        return 130
