"""Argument forms the nexus-sim and nexus-real command lines share, and how they report mistakes."""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Callable, NoReturn

from nexus.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other user error of the tools."""

    def error(self, message: str) -> NoReturn:
        print_error(self.prog, f"{message} (see {self.prog} --help)")
        sys.exit(2)


def _int_at_least(low: int, wording: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}")
        return value
    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


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
        if not sep or not key:
            raise UserError(f"--param takes KEY=VALUE, got {item!r}")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except ValueError:   # not JSON (or a number past the digit limit): keep the text
            params[key.replace("-", "_")] = value
    return params


def policy_names(policy: str, compare: str | None) -> list[str]:
    """The policies a command line names: --compare's list, or the single --policy."""
    flag, text = ("--compare", compare) if compare is not None else ("--policy", policy)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"{flag} names no policy, got {text!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{flag} names {', '.join(repeated)} more than once")
    return names


def print_error(prog: str, message: str) -> None:
    """One line on stderr, never wrapped (scripts grep it); red only on a terminal."""
    line = " ".join(str(message).split())
    prefix = f"{prog}: error:"
    if sys.stderr.isatty():
        prefix = f"\x1b[31m{prefix}\x1b[0m"
    sys.stderr.write(f"{prefix} {line}\n")
    sys.stderr.flush()


def run_reporting_user_errors(prog: str, body: Callable[[], int]) -> int:
    """Run a CLI body; a UserError prints one line and exits 2, an interrupt exits 130."""
    try:
        return body()
    except UserError as e:
        print_error(prog, str(e))
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; no results written\n")
        return 130
