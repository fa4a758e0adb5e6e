"""The canonical trace format: JSONL, one request a line.

Each line is an object with `request_id` (string or integer), `arrival_time_s`
(seconds from the trace's origin), `prompt_tokens` and `output_tokens`
(positive integers). Other fields may be present; they are ignored on read.

Reading is all-or-nothing: the first problem raises a UserError naming the
file, the line and the field, and no entries are returned.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from nexus.errors import UserError

FIELDS = ("request_id", "arrival_time_s", "prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class TraceEntry:
    request_id: str
    arrival_time_s: float
    prompt_tokens: int
    output_tokens: int


class _NonFinite(str):
    """What NaN/Infinity parse to, so the field holding one can be named in the error."""


class _LongInteger(str):
    """What an integer of more digits than any count or time needs parses to (its text).

    Python refuses to convert integers past 4300 digits, and floats overflow long before."""


# Token counts and arrival times need far fewer digits; longer integers become markers.
_MAX_DIGITS = 19
# A token count past this is no request any model serves; it also keeps sums in int64.
MAX_TOKENS = 10**9
# The format keeps arrival times to the microsecond, and float64 seconds hold every
# microsecond exactly only below 2**53 us (about 285 years); past that, latencies vanish.
MAX_ARRIVAL_S = 2**53 / 1e6


def _parse_int(text: str) -> int | str:
    return _LongInteger(text) if len(text.lstrip("-")) > _MAX_DIGITS else int(text)


# Python's json reads NaN and Infinity; they become markers that every number check rejects.
JSON_DECODER = json.JSONDecoder(parse_constant=_NonFinite, parse_int=_parse_int)


def show(value: Any) -> str:
    """A value as the user wrote it (JSON spelling), shortened for error messages."""
    if isinstance(value, _NonFinite):
        return str(value)
    if isinstance(value, _LongInteger):
        return f"an integer of {len(value.lstrip('-'))} digits"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _find_non_finite(value: Any) -> bool:
    if isinstance(value, _NonFinite):
        return True
    if isinstance(value, dict):
        return any(_find_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_find_non_finite(v) for v in value)
    return False


def is_int(value: Any) -> bool:
    """A JSON integer: bool is excluded and 12.0 does not count."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return is_int(value) or isinstance(value, float)


def check_tokens(value: Any, where: str, field: str) -> int:
    if isinstance(value, _LongInteger) or (is_int(value) and value > MAX_TOKENS):
        raise UserError(f"{where}: field '{field}': must be at most {MAX_TOKENS:,} tokens, got {show(value)}")
    if not is_int(value) or value <= 0:
        raise UserError(f"{where}: field '{field}': must be a positive integer, got {show(value)}")
    return value


def check_arrival(value: Any, where: str, field: str) -> float:
    if isinstance(value, _LongInteger) or (is_number(value) and math.isfinite(value) and value >= MAX_ARRIVAL_S):
        raise UserError(f"{where}: field '{field}': must be below 2**53 microseconds (9.0e9 s, 285 years): past "
                        f"that float64 seconds lose the microseconds latencies are measured in; got {show(value)}")
    if not is_number(value) or not math.isfinite(value):
        raise UserError(f"{where}: field '{field}': must be a finite number of seconds, got {show(value)}")
    if value < 0:
        raise UserError(f"{where}: field '{field}': must not be negative, got {show(value)}")
    return float(value)


def _check_request_id(value: Any, where: str) -> str:
    if is_int(value):
        return str(value)
    if isinstance(value, str) and not isinstance(value, _NonFinite) and value:
        return str(value)   # a long integer id keeps its digits
    raise UserError(f"{where}: field 'request_id': must be a non-empty string or an integer, got {show(value)}")


def parse_entry(obj: Any, where: str) -> TraceEntry:
    """One decoded line to a TraceEntry; `where` is the "file:line" prefix for errors."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {_json_type(obj)}")
    for field in FIELDS:
        if field not in obj:
            raise UserError(f"{where}: field '{field}': missing")
    entry = TraceEntry(
        request_id=_check_request_id(obj["request_id"], where),
        arrival_time_s=check_arrival(obj["arrival_time_s"], where, "arrival_time_s"),
        prompt_tokens=check_tokens(obj["prompt_tokens"], where, "prompt_tokens"),
        output_tokens=check_tokens(obj["output_tokens"], where, "output_tokens"),
    )
    # NaN in an extra field is not JSON either; a trace holding it would not load elsewhere.
    for key, value in obj.items():
        if key not in FIELDS and _find_non_finite(value):
            raise UserError(f"{where}: field '{key}': NaN and Infinity are not valid JSON")
    return entry


class SequenceChecker:
    """Checks what only a whole trace can violate: arrival order and unique ids.

    Importers name their own arrival field, and its unit as a multiple of seconds.
    """

    def __init__(self, arrival_field: str = "arrival_time_s", per_second: float = 1.0) -> None:
        self._arrival_field = arrival_field
        self._per_second = per_second
        self._first_line: dict[str, int] = {}
        self._last_arrival = -math.inf
        self._last_line = 0

    def add(self, entry: TraceEntry, line: int, where: str) -> None:
        if entry.arrival_time_s < self._last_arrival:
            # Rounding hides the float noise that converting units back can add.
            now, before = (round(x * self._per_second, 6) for x in (entry.arrival_time_s, self._last_arrival))
            raise UserError(
                f"{where}: field '{self._arrival_field}': arrivals must not decrease, "
                f"{now!r} comes after {before!r} on line {self._last_line}"
            )
        first = self._first_line.get(entry.request_id)
        if first is not None:
            raise UserError(
                f"{where}: field 'request_id': duplicate id {entry.request_id!r}, first used on line {first}"
            )
        self._first_line[entry.request_id] = line
        self._last_arrival = entry.arrival_time_s
        self._last_line = line


def read_text(path: str | Path) -> str:
    """A file's text; a leading UTF-8 byte-order mark (as Windows tools write) is dropped."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a trace file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        line = Path(path).read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text") from None


def json_lines(path: str | Path):
    """(line number, parsed object, 'file:line') for each non-blank line of a JSONL file."""
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield number, JSON_DECODER.decode(line), where
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from None


def read_trace(path: str | Path) -> list[TraceEntry]:
    """Read and validate a whole trace file; raise UserError on the first problem."""
    checker = SequenceChecker()
    entries: list[TraceEntry] = []
    for number, obj, where in json_lines(path):
        entry = parse_entry(obj, where)
        checker.add(entry, number, where)
        entries.append(entry)
    if not entries:
        raise UserError(f"{path}: the trace is empty")
    return entries


def _round_us(seconds: float) -> float:
    # Rounding to microseconds keeps the text short and stable; +0.0 turns -0.0 into 0.0.
    return round(seconds, 6) + 0.0


def format_entry(entry: TraceEntry) -> str:
    return json.dumps(
        {
            "request_id": str(entry.request_id),
            "arrival_time_s": _round_us(entry.arrival_time_s),
            "prompt_tokens": entry.prompt_tokens,
            "output_tokens": entry.output_tokens,
        },
        ensure_ascii=False,
        allow_nan=False,
    )


def write_trace(entries: Iterable[TraceEntry], path: str | Path) -> None:
    """Write entries as canonical JSONL: fixed key order, arrivals rounded to microseconds.

    The entries are validated first (as read_trace would), so a written trace always reads back.
    """
    entries = list(entries)
    checker = SequenceChecker()
    lines = []
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: entry {number}"
        rounded = TraceEntry(
            request_id=_check_request_id(entry.request_id, where),
            arrival_time_s=_round_us(check_arrival(entry.arrival_time_s, where, "arrival_time_s")),
            prompt_tokens=check_tokens(entry.prompt_tokens, where, "prompt_tokens"),
            output_tokens=check_tokens(entry.output_tokens, where, "output_tokens"),
        )
        checker.add(rounded, number, where)
        lines.append(format_entry(rounded) + "\n")
    if not lines:
        raise UserError(f"{path}: refusing to write an empty trace")
    try:
        Path(path).write_bytes("".join(lines).encode("utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot write: {e.strerror or e}") from None
